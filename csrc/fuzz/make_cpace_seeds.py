"""Writes the fuzz_cpace seed corpus: real key-exchange messages, a sealed transfer and a
wrapped group key, each behind the harness's selector byte (0 key exchange, 1 sealed transfer,
2 wrapped group key), sealed with the harness's fixed key and context (fuzz_cpace.c).

Run from the repository root after building the extension:
    python csrc/fuzz/make_cpace_seeds.py
Files go to tests/vectors/fuzz/fuzz_cpace/.
"""

from __future__ import annotations

from pathlib import Path

from segmentation_suite.network import _relayclient as rc

SEED_DIR = Path(__file__).resolve().parents[2] / "tests/vectors/fuzz/fuzz_cpace"
FUZZ_KEY = bytes([0x42]) * 32


def seeds() -> dict[str, bytes]:
    member = rc.CPaceSession("initiator", b"4HRT", "K7QX2M", "alice", "host", b"fuzz")
    host = rc.CPaceSession("responder", b"4HRT", "K7QX2M", "alice", "host", b"fuzz")
    share_a = member.start()
    share_b = host.receive(share_a)
    confirm = member.receive(share_b)
    small = bytearray(rc.sealed_size(280, 64))
    rc.seal(FUZZ_KEY, "K7QX2M", "alice", 7, 1, 0, b"weights" * 40, small, segment_size=64)
    empty = bytearray(rc.sealed_size(0))
    rc.seal(FUZZ_KEY, "K7QX2M", "alice", 7, 1, 0, b"", empty)
    public, _ = rc.sign_keypair(bytes(32))
    wrapped = rc.group_key_wrap(FUZZ_KEY, "K7QX2M", "host", "alice", 0, bytes(32), public)
    return {
        "share_a.bin": b"\0" + share_a,
        "share_b.bin": b"\0" + share_b,
        "confirm_a.bin": b"\0" + confirm,
        "sealed_small.bin": b"\1" + small,
        "sealed_empty.bin": b"\1" + empty,
        "group_key.bin": b"\2" + wrapped,
    }


def main() -> None:
    SEED_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (SEED_DIR / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
