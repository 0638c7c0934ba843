"""Throughput of a private room's transfer encryption (csrc/chunk_cipher.c) against a memcpy of
the same buffer: seal_in_place and open_in_place on a 124.5 MB buffer (the U-Net model as
float32; half that as float16 on the wire), with and without the SHA-256 digest a signed global
model needs. Medians of --runs rounds, single thread, as the send path runs it. Usage:

    .venv/bin/python bench/bench_sealed_transfer.py [--runs 7] [--size BYTES]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from segmentation_suite.network import _relayclient as rc

UNET_FLOAT32_BYTES = 124_500_000


def median_seconds(work, runs: int, setup=None) -> float:
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()  # untimed: opening works in place, so each run needs the sealed bytes back
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=UNET_FLOAT32_BYTES)
    args = parser.parse_args()

    key = rc.group_key_generate()
    source = np.random.default_rng(0).integers(0, 255, args.size, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)  # touch every page once before timing
    buffer = bytearray(source.tobytes())
    gb = args.size / 1e9
    print(f"buffer: {args.size / 1e6:.1f} MB; runs: {args.runs} (median)")
    copy = median_seconds(lambda: np.copyto(target, source), args.runs)
    print(f"  memcpy                      {copy * 1e3:7.1f} ms  {gb / copy:6.2f} GB/s")
    names = {rc.SEALED_AES_256_GCM: "AES-256-GCM", rc.SEALED_CHACHA20_POLY1305: "ChaCha20-Poly1305"}
    for algorithm, name in names.items():
        for digest in (False, True):
            label = f"seal {name}{' + SHA-256' if digest else ''}"

            def seal(algorithm=algorithm, digest=digest):
                rc.seal_in_place(
                    key, "K7QX2M", "alice", 1, 1, 0, buffer, algorithm=algorithm, digest=digest
                )

            seconds = median_seconds(seal, args.runs)
            print(
                f"  {label:28s}{seconds * 1e3:7.1f} ms  {gb / seconds:6.2f} GB/s"
                f"  ({seconds / copy:.1f}x memcpy)"
            )
        data = bytearray(buffer)
        header, tags = rc.seal_in_place(key, "K7QX2M", "alice", 1, 1, 0, data, algorithm=algorithm)
        sealed = bytearray(header) + data + tags
        pristine = bytes(sealed)

        def restore(sealed=sealed, pristine=pristine):
            sealed[:] = pristine

        seconds = median_seconds(
            lambda sealed=sealed: rc.open_in_place(key, "K7QX2M", "alice", 1, 1, 0, sealed),
            args.runs,
            restore,
        )
        print(
            f"  {'open ' + name:28s}{seconds * 1e3:7.1f} ms  {gb / seconds:6.2f} GB/s"
            f"  ({seconds / copy:.1f}x memcpy)"
        )


if __name__ == "__main__":
    main()
