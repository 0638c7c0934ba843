"""The fuzz_cpace seed corpus (tests/vectors/fuzz/fuzz_cpace, from
csrc/fuzz/make_cpace_seeds.py) still reaches the accepting paths of the harness: the share is
answered by a host, the sealed transfers open under the harness's key, the wrapped key unwraps.
A seed that went stale would leave the fuzzer exploring only the refusals."""

from __future__ import annotations

from pathlib import Path

from segmentation_suite.network import _relayclient as rc

SEEDS = Path(__file__).resolve().parents[1] / "vectors/fuzz/fuzz_cpace"
FUZZ_KEY = bytes([0x42]) * 32


def seed(name: str) -> bytes:
    return (SEEDS / name).read_bytes()


def test_share_seed_is_answered_by_a_host() -> None:
    data = seed("share_a.bin")
    assert data[0] % 3 == 0
    host = rc.CPaceSession("responder", b"4HRT", "K7QX2M", "alice", "host", b"fuzz")
    assert len(host.receive(data[1:])) == 2 + 32 + 64 + 1 + 4


def test_sealed_seeds_open_under_the_harness_key() -> None:
    for name, length in (("sealed_small.bin", 280), ("sealed_empty.bin", 0)):
        data = bytearray(seed(name))
        assert data[0] % 3 == 1
        offset, size = rc.open_in_place(FUZZ_KEY, "K7QX2M", "alice", 7, 1, 0, memoryview(data)[1:])
        assert size == length
        assert bytes(data[1 + offset : 1 + offset + size]) == b"weights" * (length // 7)


def test_group_key_seed_unwraps() -> None:
    data = seed("group_key.bin")
    assert data[0] % 3 == 2
    key, _ = rc.group_key_unwrap(FUZZ_KEY, "K7QX2M", "host", "alice", 0, data[1:])
    assert key == bytes(32)
