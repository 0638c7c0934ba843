"""Weight codec benchmark on the original app's model layout (2D U-Net, 166 tensors, 31.1 M
parameters, tests/vectors/unet_deep_dice_v2_layout.json) with random float32 weights.

Compares, in one run and on the same weights, serialize and deserialize through our codec
with the original app's way (float16 + torch.save + gzip level 1, and without gzip;
torch.load(weights_only=True) back), numpy astype alone, msgpack-python over float16 bytes,
and a numpy copy of all the float32 bytes (the memory-bandwidth floor). Each number is the
median of --repeat rounds; each round runs every method once, so that load from other
processes on a shared machine hits all methods alike. Usage:

    .venv/bin/python bench/bench_codec.py [--repeat 5] [--layout PATH] [--check]

--check exits 1 if a target of issue 3 is missed: serialize <= 12 ms, deserialize <= 14 ms,
both within 2x of the floor measured in the same run, serialize >= 100x faster than
MOSS-style (deserialize's ratio is printed; by the issue's own figures it is near 22x);
or of issue 14: q8-delta encode and decode (against a reference model, including hashing
it) each within 4x of the floor. The q8-delta and topk rows encode an update of the same
weights against them; their size column is the wire size.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segmentation_suite.network import _relayclient
from segmentation_suite.network.codec import deserialize_weights, serialize_weights

DEFAULT_LAYOUT = (
    Path(__file__).resolve().parents[1] / "tests" / "vectors" / "unet_deep_dice_v2_layout.json"
)


@dataclass
class Case:
    label: str
    serialize: Callable[[], object]
    deserialize: Callable[[], object]
    size: str = ""


def time_ms(action: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - start
    del result  # freed before the next run, so every run allocates fresh memory
    return 1000 * elapsed


def interleaved_medians(cases: list[Case], repeat: int) -> list[tuple[float, float]]:
    """Runs every case once per round, so that load from other processes on a shared
    machine hits all methods alike, and returns the median (serialize, deserialize) ms."""
    samples: list[tuple[list[float], list[float]]] = [([], []) for _ in cases]
    for _ in range(repeat):
        for case, (serialize_times, deserialize_times) in zip(cases, samples, strict=True):
            serialize_times.append(time_ms(case.serialize))
            deserialize_times.append(time_ms(case.deserialize))
    return [(statistics.median(ser), statistics.median(de)) for ser, de in samples]


def random_weights(layout_path: Path) -> dict[str, np.ndarray]:
    layout = json.loads(layout_path.read_text())["layout"]
    rng = np.random.default_rng(0)
    weights = {}
    for entry in layout:
        if entry["dtype"] == "float32":
            weights[entry["name"]] = rng.standard_normal(entry["shape"], dtype=np.float32) * 0.05
        else:
            weights[entry["name"]] = np.array(rng.integers(0, 1000), dtype=entry["dtype"])
    return weights


def moss_serialize(torch, state: dict, use_gzip: bool) -> bytes:
    half = {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(half, buffer)
    return gzip.compress(buffer.getvalue(), compresslevel=1) if use_gzip else buffer.getvalue()


def moss_deserialize(torch, data: bytes, use_gzip: bool) -> dict:
    raw = gzip.decompress(data) if use_gzip else data
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


def msgpack_serialize(msgpack, weights: dict) -> bytes:
    entries = {}
    for name, array in weights.items():
        wire = array.astype(np.float16) if array.dtype == np.float32 else array
        entries[name] = {
            "dtype": str(array.dtype),
            "wire": str(wire.dtype),
            "shape": list(array.shape),
            "data": wire.tobytes(),
        }
    return msgpack.packb(entries, use_bin_type=True)


def msgpack_deserialize(msgpack, data: bytes) -> dict:
    out = {}
    for name, entry in msgpack.unpackb(data).items():
        array = np.frombuffer(entry["data"], dtype=entry["wire"]).reshape(entry["shape"])
        out[name] = array.astype(entry["dtype"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--layout", type=Path, default=DEFAULT_LAYOUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    repeat = max(args.repeat, 5)

    weights = random_weights(args.layout)
    floats = [w for w in weights.values() if w.dtype == np.float32]
    all_float32 = np.concatenate([w.ravel() for w in floats])
    total_mb = sum(w.nbytes for w in weights.values()) / 1e6
    print(
        f"model: {len(weights)} tensors, {total_mb:.1f} MB as float32; median of {repeat} runs;"
        f" fp16 kernels: {_relayclient._simd_path()}"
    )

    encoded = serialize_weights(weights)
    cases = [
        Case(
            "ours: serialize_weights / deserialize_weights",
            lambda: serialize_weights(weights),
            lambda: deserialize_weights(encoded),
            f"{len(encoded) / 1e6:.1f}",
        ),
        Case(
            "numpy copy of all float32 bytes (floor)",
            all_float32.copy,
            all_float32.copy,
            f"{all_float32.nbytes / 1e6:.1f}",
        ),
    ]
    halves = [w.astype(np.float16) for w in floats]
    cases.append(
        Case(
            "numpy astype alone (f32->f16 / f16->f32)",
            lambda: [w.astype(np.float16) for w in floats],
            lambda: [h.astype(np.float32) for h in halves],
        )
    )
    try:
        import msgpack
    except ImportError:
        print("msgpack-python not installed: skipping its row")
    else:
        packed = msgpack_serialize(msgpack, weights)
        cases.append(
            Case(
                "msgpack-python of float16 bytes",
                lambda: msgpack_serialize(msgpack, weights),
                lambda: msgpack_deserialize(msgpack, packed),
                f"{len(packed) / 1e6:.1f}",
            )
        )
    moss_index = None
    try:
        import torch
    except ImportError:
        print("torch not installed: skipping the MOSS-style rows")
    else:
        state = {k: torch.from_numpy(v) for k, v in weights.items()}
        moss_index = len(cases)
        for use_gzip in (True, False):
            data = moss_serialize(torch, state, use_gzip)
            cases.append(
                Case(
                    "MOSS-style: fp16 + torch.save" + (" + gzip -1" if use_gzip else ""),
                    lambda g=use_gzip: moss_serialize(torch, state, g),
                    lambda d=data, g=use_gzip: moss_deserialize(torch, d, g),
                    f"{len(data) / 1e6:.1f}",
                )
            )

    medians = interleaved_medians(cases, repeat)
    # The delta rows run as a group of their own, with their own floor: their output blocks
    # would otherwise take the codec's one cached block from the rows above and make those
    # pay fresh page faults (issue 3's figures are measured without them).
    rng = np.random.default_rng(1)
    update = {
        k: (
            w + rng.standard_normal(w.shape, dtype=np.float32) * 1e-3
            if w.dtype == np.float32
            else w
        )
        for k, w in weights.items()
    }
    delta_cases = [
        Case(
            "numpy copy of the float32 bytes (delta floor)",
            all_float32.copy,
            all_float32.copy,
            f"{all_float32.nbytes / 1e6:.1f}",
        )
    ]
    for compression in ("q8-delta", "topk"):
        delta = serialize_weights(update, compression=compression, reference=weights)
        delta_cases.append(
            Case(
                f"ours: {compression} against a reference",
                lambda c=compression: serialize_weights(update, compression=c, reference=weights),
                lambda d=delta: deserialize_weights(d, reference=weights),
                f"{len(delta) / 1e6:.1f}",
            )
        )
    delta_medians = interleaved_medians(delta_cases, repeat)
    delta_floor_ms, q8_ms = delta_medians[0][0], delta_medians[1]
    cases += delta_cases
    medians += delta_medians
    ours, (copy_ms, _) = medians[0], medians[1]
    moss_ms = medians[moss_index] if moss_index is not None else None
    print(
        f"\n| {'method':<48} | {'serialize ms':>12} | {'x ours':>7} | "
        f"{'deserialize ms':>14} | {'x ours':>7} | {'MB':>6} |"
    )
    print(f"|{'-' * 50}|{'-' * 14}:|{'-' * 8}:|{'-' * 16}:|{'-' * 8}:|{'-' * 7}:|")
    for case, (ser, de) in zip(cases, medians, strict=True):
        label, size = case.label, case.size
        print(
            f"| {label:<48} | {ser:>12.1f} | {ser / ours[0]:>7.1f} | {de:>14.1f} | "
            f"{de / ours[1]:>7.1f} | {size:>6} |"
        )

    checks = [
        ("serialize <= 12 ms", ours[0] <= 12.0),
        ("deserialize <= 14 ms", ours[1] <= 14.0),
        ("serialize within 2x of the floor", ours[0] <= 2 * copy_ms),
        ("deserialize within 2x of the floor", ours[1] <= 2 * copy_ms),
        (
            f"q8-delta encode within 4x of the floor ({q8_ms[0] / delta_floor_ms:.2f}x)",
            q8_ms[0] <= 4 * delta_floor_ms,
        ),
        (
            f"q8-delta decode within 4x of the floor ({q8_ms[1] / delta_floor_ms:.2f}x)",
            q8_ms[1] <= 4 * delta_floor_ms,
        ),
    ]
    if moss_ms is not None:
        checks.append(
            (
                f"serialize >= 100x MOSS-style ({moss_ms[0] / ours[0]:.0f}x)",
                moss_ms[0] >= 100 * ours[0],
            )
        )
        # Not a check: MOSS-style deserialize (312 ms in the issue) / the 14 ms target is 22x,
        # so 100x cannot hold for deserialize; the ratio is shown for the record.
        print(f"deserialize vs MOSS-style: {moss_ms[1] / ours[1]:.0f}x faster")
    print()
    for text, ok in checks:
        print(f"{'met   ' if ok else 'MISSED'} {text}")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
