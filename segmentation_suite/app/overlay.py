"""Images with masks overlaid, as Qt pixmaps: the Predict page's views and the Training
page's data preview."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap

#: Overlay colours (RGB) and opacity: a prediction orange, a reference (or training) mask green.
PREDICTED_COLOUR = (255, 140, 0)
MASK_COLOUR = (0, 200, 80)
OVERLAY_ALPHA = 0.45


def overlay(image: np.ndarray, mask: np.ndarray | None, colour) -> np.ndarray:
    """RGB uint8: the gray image (values in [0, 1]) with `mask` (nonzero = cell) tinted."""
    gray = np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if mask is not None:
        cells = np.asarray(mask) > 0
        tint = np.asarray(colour, np.float32)
        rgb[cells] = (1 - OVERLAY_ALPHA) * rgb[cells] + OVERLAY_ALPHA * tint
    return rgb.astype(np.uint8)


def to_pixmap(rgb: np.ndarray, size: int) -> QPixmap:
    """Scaled to fit `size` pixels, nearest neighbour (pixels stay visible)."""
    height, width = rgb.shape[:2]
    data = np.ascontiguousarray(rgb)
    image = QImage(data.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(image).scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation
    )
