"""Throughput of a private room's transfer encryption (csrc/chunk_cipher.c) against a memcpy of
the same buffer, on a 124.5 MB buffer (the U-Net model as float32; half that as float16 on the
wire): sealing straight into a send buffer (the encryption is the copy), with and without the
SHA-256 digest a signed global model needs, and opening in place. Medians of --runs rounds;
sealing without a digest runs on two threads as in the send path, the rest on one; buffers are
touched before timing (as the reused send buffer and the receive buffer are). Usage:

    .venv/bin/python bench/bench_sealed_transfer.py [--runs 7] [--size BYTES]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from segmentation_suite.network import _relayclient as rc

UNET_FLOAT32_BYTES = 124_500_000
ROOM, SENDER = "K7QX2M", "alice"


def median_seconds(work, runs: int, setup=None) -> float:
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()  # untimed: opening works in place, so each run needs the sealed bytes back
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(label: str, seconds: float, size: int, copy: float) -> None:
    print(
        f"  {label:34s}{seconds * 1e3:7.1f} ms  {size / 1e9 / seconds:6.2f} GB/s"
        f"  ({seconds / copy:.1f}x memcpy)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=UNET_FLOAT32_BYTES)
    args = parser.parse_args()

    key = rc.group_key_generate()
    source = np.random.default_rng(0).integers(0, 255, args.size, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)  # touch every page once before timing
    sealed = bytearray(rc.sealed_size(args.size))
    print(f"buffer: {args.size / 1e6:.1f} MB; runs: {args.runs} (median)")
    copy = median_seconds(lambda: np.copyto(target, source), args.runs)
    report("memcpy", copy, args.size, copy)
    names = {rc.SEALED_AES_256_GCM: "AES-256-GCM", rc.SEALED_CHACHA20_POLY1305: "ChaCha20-Poly1305"}
    for algorithm, name in names.items():
        for digest in (False, True):

            def seal(algorithm=algorithm, digest=digest):
                rc.seal(
                    key, ROOM, SENDER, 1, 1, 0, source, sealed, algorithm=algorithm, digest=digest
                )

            label = f"seal {name}{' + SHA-256' if digest else ''}"
            report(label, median_seconds(seal, args.runs), args.size, copy)
        pristine = bytes(sealed)

        def restore(pristine=pristine):
            sealed[:] = pristine

        seconds = median_seconds(
            lambda: rc.open_in_place(key, ROOM, SENDER, 1, 1, 0, sealed), args.runs, restore
        )
        report(f"open {name} (in place)", seconds, args.size, copy)


if __name__ == "__main__":
    main()
