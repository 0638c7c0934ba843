"""The original app's payload formats, for mixed rooms (docs/protocol.md, "Mixed rooms").

Weights: `gzip` of `torch.save` of the state dict with floats as float16. Crops: PNG. This
module writes both, and reads them back under strict bounds:

* weights are read only when the user opted in (`accept_legacy_weights`), because the format
  is a Python pickle: only PyTorch's restricted loader (`torch.load(weights_only=True)`) ever
  sees the bytes, after a gunzip that stops at `limit` bytes of output (a gzip bomb costs at
  most `limit` bytes of memory, never what it claims to expand to);
* crops are checked as PNG by Pillow, with a cap on their pixel count, before anyone gets them.

Nothing here does I/O; the client decides who gets which format (peer_kinds.py).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: An original push may expand to at most this many times the room's model size (float32
#: bytes): a float16 pickle is about half of it, so 4x leaves room for pickle overhead while
#: refusing a bomb early.
EXPANSION_FACTOR = 4

#: Without a known model size, the bound is the relay's default `--max-message-size`.
DEFAULT_MAX_EXPANDED_BYTES = 64 * 1024 * 1024

#: A crop larger than this many pixels (image or mask) is refused unread by Pillow.
MAX_CROP_PIXELS = 4096 * 4096

# Input is fed to the decompressor in pieces of this size, so one call never produces more
# than `limit` bytes (plus one piece of input's worth of bookkeeping).
_GUNZIP_INPUT_PIECE = 64 * 1024


class LegacyFormatError(ValueError):
    """Bytes that are not a readable original-format payload; the message says why."""


# --- weights -------------------------------------------------------------------------------


def model_bytes(weights: Mapping[str, Any]) -> int:
    """The size of a state dict at 4 bytes per element: what a room's model is expected to
    weigh, to bound what an original push may expand to."""
    return sum(4 * int(np.prod(getattr(v, "shape", ()), dtype=np.int64)) for v in weights.values())


def expansion_limit(reference: Mapping[str, Any] | None, max_message_size: int | None) -> int:
    """How many bytes an original push may gunzip to: 4x the room's model when it is known,
    and never more than the relay's message limit."""
    ceiling = max_message_size or DEFAULT_MAX_EXPANDED_BYTES
    if reference:
        return min(ceiling, EXPANSION_FACTOR * max(model_bytes(reference), 1))
    return ceiling


def encode_weights(weights: Mapping[str, Any]) -> bytes:
    """`gzip(torch.save(state dict))` with floating tensors as float16, as the original app
    sends them. Accepts torch tensors or numpy arrays."""
    torch = _torch()
    state = {}
    for name, value in weights.items():
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[name] = tensor.contiguous()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return gzip.compress(buffer.getvalue(), compresslevel=6)


def bounded_gunzip(data: bytes | bytearray | memoryview, limit: int) -> bytes:
    """Decompresses one gzip stream; LegacyFormatError as soon as the output would pass
    `limit` bytes, so memory stays within `limit` whatever the stream claims."""
    view = memoryview(data).cast("B")
    if bytes(view[:2]) != GZIP_MAGIC:
        raise LegacyFormatError("not the original weight format (no gzip header)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    position = 0
    try:
        while not inflater.eof:
            if inflater.unconsumed_tail:
                piece = inflater.unconsumed_tail
            elif position < len(view):
                piece = view[position : position + _GUNZIP_INPUT_PIECE]
                position += len(piece)
            else:
                raise LegacyFormatError("the gzip stream is truncated")
            out += inflater.decompress(piece, limit + 1 - len(out))
            if len(out) > limit:
                raise LegacyFormatError(
                    f"it expands to more than {limit} bytes, more than this room's model can "
                    "take (a compressed bomb, or another model)"
                )
    except zlib.error as exc:
        raise LegacyFormatError(f"the gzip stream is corrupt ({exc})") from None
    if inflater.unused_data or position < len(view):
        raise LegacyFormatError("bytes follow the gzip stream")
    return bytes(out)


def decode_weights(data: bytes | bytearray | memoryview, limit: int) -> dict:
    """An original push or global model as a dict of float32 (floats) torch tensors.

    Only `torch.load(weights_only=True)` reads the pickle: it builds tensors and plain
    containers and refuses every other global, so no code from the sender runs. Anything
    else (a bomb, a pickle naming functions, a non-dict) raises LegacyFormatError."""
    raw = bounded_gunzip(data, limit)
    torch = _torch()
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted loader raises several kinds; all mean "refused"
        raise LegacyFormatError(
            f"PyTorch's restricted loader refused it: {_loader_reason(exc)}"
        ) from None
    if not isinstance(state, Mapping) or not state:
        raise LegacyFormatError(f"it holds a {type(state).__name__}, not a state dict")
    weights = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise LegacyFormatError(f"entry {name!r} is not a named tensor")
        weights[name] = tensor.float() if tensor.is_floating_point() else tensor
    return weights


def _loader_reason(exc: Exception) -> str:
    """The line of torch.load's error that says what it refused (its message also advises
    loading with weights_only=False, which must never be shown to a user as a fix)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported" in line:  # "Unsupported global: GLOBAL exec was not allowed..."
            return line[line.index("Unsupported") :].split(". ")[0].rstrip(".")
    return lines[0] if lines else type(exc).__name__


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the app
        raise LegacyFormatError("reading the original format needs PyTorch") from None
    return torch


# --- crops ---------------------------------------------------------------------------------


def check_png(data: bytes, what: str, max_pixels: int = MAX_CROP_PIXELS) -> None:
    """LegacyFormatError unless `data` is a PNG that Pillow reads, of at most `max_pixels`."""
    from PIL import Image

    if not data.startswith(PNG_MAGIC):
        raise LegacyFormatError(f"the {what} is not a PNG")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise LegacyFormatError(
                    f"the {what} is {width}x{height} pixels, more than {max_pixels}"
                )
            image.verify()
    except LegacyFormatError:
        raise
    except Exception as exc:  # Pillow's errors on hostile input vary (OSError, SyntaxError...)
        raise LegacyFormatError(f"the {what} is not a readable PNG ({exc})") from None
