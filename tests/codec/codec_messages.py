"""Builders for weight messages written with msgpack-python (an encoder independent of ours),
used to hand the decoder valid, odd and malformed input."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import msgpack

FORMAT_NAME = "segmentation-suite-weights"


def tensor_entry(dtype: str, shape: list, data: bytes, wire: str | None = None) -> dict:
    return {"dtype": dtype, "wire": wire or dtype, "shape": shape, "data": data}


def message(
    tensors: dict[str, Any] | None = None,
    *,
    version: Any = 1,
    kind: str = "numpy",
    metadata: Any = None,
    format_name: Any = FORMAT_NAME,
) -> bytes:
    """A message as a sender other than ours could write it (no alignment padding)."""
    return msgpack.packb(
        {
            "format": format_name,
            "version": version,
            "kind": kind,
            "metadata": metadata if metadata is not None else {"epoch": 1},
            "tensors": tensors if tensors is not None else {},
        },
        use_bin_type=True,
    )


def raw_map(pairs: Iterable[tuple[Any, Any]]) -> bytes:
    """A msgpack map written pair by pair, so it can hold duplicate keys."""
    pairs = list(pairs)
    body = b"".join(
        (k if isinstance(k, bytes) else msgpack.packb(k, use_bin_type=True))
        + (v if isinstance(v, bytes) else msgpack.packb(v, use_bin_type=True))
        for k, v in pairs
    )
    return b"\xdf" + struct.pack(">I", len(pairs)) + body


def raw_message(tensors_map: bytes, metadata: bytes | None = None) -> bytes:
    """A message whose 'tensors' value is given as raw msgpack bytes."""
    meta = metadata if metadata is not None else msgpack.packb({})
    return raw_map(
        [
            ("format", FORMAT_NAME),
            ("version", 1),
            ("kind", "numpy"),
            ("metadata", meta),
            ("tensors", tensors_map),
        ]
    )


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)
