"""The self-describing binary frame header (docs/protocol.md), built independently of the
project's own implementations so that the relay is tested against the spec, not against itself.
tests/relay/test_extensions.py checks this builder against tests/vectors/protocol.json."""

from __future__ import annotations

import struct

MAGIC = b"SSBF"
VERSION = 1
FIXED = struct.Struct("<4sBBHQIIQBBH")  # magic .. reserved: 36 bytes


def build(
    sender: str,
    recipients: list[str] | tuple[str, ...] = (),
    *,
    kind: int = 5,
    transfer_id: int = 1,
    chunk_index: int = 0,
    chunk_count: int = 1,
    total_size: int = 0,
    version: int = VERSION,
    header_size: int | None = None,
) -> bytes:
    """A header; `version` and `header_size` can be set wrong on purpose for bad-input tests."""
    sender_bytes = sender.encode()
    tail = sender_bytes + b"".join(bytes([len(r.encode())]) + r.encode() for r in recipients)
    size = FIXED.size + len(tail) if header_size is None else header_size
    fixed = FIXED.pack(
        MAGIC,
        version,
        kind,
        size,
        transfer_id,
        chunk_index,
        chunk_count,
        total_size,
        len(sender_bytes),
        len(recipients),
        0,
    )
    return fixed + tail
