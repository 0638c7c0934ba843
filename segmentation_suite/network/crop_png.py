"""A training crop as PNG bytes (what `send_training_data` sends; legacy_format.check_png is
the receiving side's check)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def encode_png(array: Any, what: str) -> bytes:
    """A 2-D crop (or H x W x 3/4) as PNG bytes, with Pillow. uint8 and uint16 keep their
    values; bool becomes 0/255; floats are scaled to 0-255 over the crop's range."""
    from PIL import Image

    values = np.asarray(array)
    if values.ndim not in (2, 3) or values.size == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array, got shape {values.shape}")
    if values.dtype == np.bool_:
        values = values.astype(np.uint8) * 255
    elif np.issubdtype(values.dtype, np.floating):
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        scale = 255.0 / (high - low) if high > low else 0.0
        values = np.nan_to_num((values - low) * scale).astype(np.uint8)
    elif values.dtype not in (np.uint8, np.uint16):
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"{what}: integer values outside 0..65535 cannot be a PNG")
        values = values.astype(np.uint16 if values.max() > 255 else np.uint8)
    if values.ndim == 3 and values.dtype != np.uint8:
        raise ValueError(f"{what}: colour crops must be uint8")
    if values.ndim == 3 and values.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected 3 or 4 channels, got {values.shape[2]}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(values)).save(buffer, format="PNG")
    return buffer.getvalue()
