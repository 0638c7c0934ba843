"""Writes the fuzz_decode seed corpus: a few small valid weight messages.

Run from the repository root after building the extension:
    python csrc/fuzz/make_seeds.py
Files go to tests/vectors/fuzz/fuzz_decode/ (each well under 4 KB; the tests check that
every seed still decodes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segmentation_suite.network.codec import serialize_weights

EVERY_DTYPE = [
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    "float16", "float32", "float64",
]  # fmt: skip
SEED_DIR = Path(__file__).resolve().parents[2] / "tests/vectors/fuzz/fuzz_decode"


def delta_reference() -> dict[str, np.ndarray]:
    # two dimensions: topk sends tensors of one dimension or none as q8
    return {
        "w": np.linspace(-1, 1, 300, dtype=np.float32).reshape(3, 100),
        "d": np.linspace(0, 3, 40).reshape(5, 8),
        "n": np.array(5, np.int64),
    }


def delta_update() -> dict[str, np.ndarray]:
    reference = delta_reference()
    return {
        "w": reference["w"] + np.cos(np.arange(300, dtype=np.float32)).reshape(3, 100) * 0.01,
        "d": reference["d"] * 1.5,
        "n": np.array(6, np.int64),
    }


def seeds() -> dict[str, bytes]:
    halves = np.array([0x7C01, 0xFC00, 0x0001, 0x03FF, 0x7BFF, 0x8000], np.uint16)
    return {
        "empty.msgpack": serialize_weights({}),
        "one_float16.msgpack": serialize_weights(
            {"w": np.linspace(-2, 2, 9, dtype=np.float32)}, epoch=1, loss=0.5
        ),
        "every_dtype.msgpack": serialize_weights(
            {name: np.arange(3).astype(name) for name in EVERY_DTYPE},
            wire_dtype="float32",
            num_samples=12,
            architecture="unet",
        ),
        "bfloat16_and_shapes.msgpack": serialize_weights(
            {
                "scalar": np.array(1.5, np.float32),
                "empty": np.zeros((0, 3), np.float32),
                "matrix": np.arange(12, dtype=np.float64).reshape(3, 4),
                "count": np.array(7, np.int64),
            },
            wire_dtype="bfloat16",
            metadata={"note": "seed", "list": [1, -2, 3.5, None, True, b"\x00"], "m": {"k": {}}},
        ),
        "nan_payloads.msgpack": serialize_weights(
            {"h": halves.view(np.float16).astype(np.float32)}
        ),
        # version 2: deltas against a reference (the harness rebuilds them against zeros)
        "q8_delta.msgpack": serialize_weights(
            delta_update(), compression="q8-delta", reference=delta_reference()
        ),
        "topk_delta.msgpack": serialize_weights(
            delta_update(), compression="topk", reference=delta_reference(), topk_fraction=0.05
        ),
    }


def main() -> None:
    SEED_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (SEED_DIR / name).write_bytes(bytes(data))
        print(f"{SEED_DIR / name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
