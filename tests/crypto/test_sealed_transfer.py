"""Sealed transfers, the group-key wrap and Ed25519 through the Python binding: published
vectors (GCM specification, RFC 8439, RFC 8032 in tests/vectors/private_room_primitives.json)
through the same AEAD code the segments use, and every kind of tampering refused with a clear
error and no plaintext left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segmentation_suite.network import _relayclient as rc

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "private_room_primitives.json").read_text()
)
ALGORITHMS = {
    "aes_256_gcm": rc.SEALED_AES_256_GCM,
    "chacha20_poly1305": rc.SEALED_CHACHA20_POLY1305,
}


@pytest.mark.parametrize(
    ("suite", "case"),
    [(suite, case) for suite in ALGORITHMS for case in VECTORS[suite]["cases"]],
    ids=lambda value: value if isinstance(value, str) else value["name"],
)
def test_published_aead_vectors(suite, case) -> None:
    key, nonce, ad = (bytes.fromhex(case[name]) for name in ("key", "nonce", "ad"))
    data = bytearray.fromhex(case["plaintext"])
    tag = bytearray(16)
    rc._aead_raw(ALGORITHMS[suite], True, key, nonce, ad, data, tag)
    assert data.hex() == case["ciphertext"]
    assert tag.hex() == case["tag"]
    rc._aead_raw(ALGORITHMS[suite], False, key, nonce, ad, data, tag)
    assert data.hex() == case["plaintext"]
    data = bytearray.fromhex(case["ciphertext"])
    tag[0] ^= 1
    with pytest.raises(ValueError, match="authentication failed"):
        rc._aead_raw(ALGORITHMS[suite], False, key, nonce, ad, data, tag)


@pytest.mark.parametrize("case", VECTORS["ed25519"]["cases"], ids=lambda c: c["name"])
def test_ed25519_rfc8032_vectors(case) -> None:
    public, secret = rc.sign_keypair(bytes.fromhex(case["secret"]))
    assert public.hex() == case["public"]
    message = bytes.fromhex(case["message"])
    signature = rc.sign_detached(secret, message)
    assert signature.hex() == case["signature"]
    rc.sign_verify(public, message, signature)
    with pytest.raises(ValueError, match="not signed by the room's host"):
        rc.sign_verify(public, message + b"x", signature)


ROOM, SENDER, TRANSFER, KIND, EPOCH = "K7QX2M", "alice", 41, 1, 3
SEGMENT = 65536


def seal(payload: bytes, key: bytes, **options) -> bytearray:
    segment = options.get("segment_size", rc.SEALED_DEFAULT_SEGMENT_SIZE)
    sealed = bytearray(rc.sealed_size(len(payload), segment))
    rc.seal(key, ROOM, SENDER, TRANSFER, KIND, EPOCH, payload, sealed, **options)
    return sealed


def open_(sealed: bytearray, key: bytes, **context) -> bytes:
    args = {"room": ROOM, "sender": SENDER, "transfer_id": TRANSFER, "kind": KIND, "epoch": EPOCH}
    args.update(context)
    offset, length = rc.open_in_place(key, sealed=sealed, **args)
    return bytes(sealed[offset : offset + length])


def data_region(sealed: bytearray, length: int) -> bytes:
    """Where the plaintext lands once opened (from byte 64 on)."""
    return bytes(sealed[64 : 64 + length])


@pytest.fixture
def model_bytes() -> bytes:
    return np.random.default_rng(1).standard_normal(300_000).astype(np.float32).tobytes()


@pytest.mark.parametrize("algorithm", list(ALGORITHMS.values()))
def test_round_trip_and_ciphertext_hides_the_payload(model_bytes, algorithm) -> None:
    key = rc.group_key_generate()
    sealed = seal(model_bytes, key, algorithm=algorithm, segment_size=SEGMENT)
    segments = -(-len(model_bytes) // SEGMENT)
    # header and padding (64 bytes), then each segment followed by its tag
    assert len(sealed) == 64 + len(model_bytes) + 16 * segments
    # no 256-byte window of the plaintext survives in the ciphertext
    windows = {model_bytes[i : i + 256] for i in range(0, len(model_bytes) - 256, 4096)}
    assert not any(window in sealed for window in windows)
    info = rc.sealed_header(sealed)
    assert info["algorithm"] == algorithm
    assert info["epoch"] == EPOCH
    assert info["plaintext_len"] == len(model_bytes)
    assert info["segment_count"] == segments
    assert open_(sealed, key) == model_bytes


def test_sealing_is_never_in_place(model_bytes) -> None:
    key = rc.group_key_generate()
    sealed = bytearray(rc.sealed_size(len(model_bytes)))
    sealed[64 : 64 + len(model_bytes)] = model_bytes
    region = memoryview(sealed)[64 : 64 + len(model_bytes)]
    with pytest.raises(ValueError, match="overlaps"):  # the tags go between the segments
        rc.seal(key, ROOM, SENDER, TRANSFER, KIND, EPOCH, region, sealed)
    with pytest.raises(ValueError, match="overlaps"):
        rc.seal(
            key,
            ROOM,
            SENDER,
            TRANSFER,
            KIND,
            EPOCH,
            memoryview(sealed)[8:][: len(model_bytes)],
            sealed,
        )


def test_streamed_opening_checks_segments_as_they_arrive(model_bytes) -> None:
    key = rc.group_key_generate()
    sealed = seal(model_bytes, key, segment_size=SEGMENT)
    opener = rc.SealedOpener(key, ROOM, SENDER, TRANSFER, KIND, EPOCH, len(sealed))
    received = bytearray(len(sealed))
    assert opener.offset is None
    done, position, piece = False, 0, 100_003
    while position < len(sealed):
        end = min(position + piece, len(sealed))
        received[position:end] = sealed[position:end]
        position = end
        done = opener.feed(received, position)
        if position < len(sealed) // 2:
            assert not done
    assert done and opener.finish() is None
    start = opener.offset
    assert bytes(received[start : start + opener.length]) == model_bytes
    # a flipped bit in the middle is found when its segment completes, and wipes everything
    broken = bytearray(sealed)
    broken[len(broken) // 2] ^= 1
    opener = rc.SealedOpener(key, ROOM, SENDER, TRANSFER, KIND, EPOCH, len(sealed))
    opener.feed(broken, len(broken) // 3)
    with pytest.raises(ValueError, match="failed authentication"):
        opener.feed(broken, len(broken))
    assert not any(broken[start:])
    with pytest.raises(ValueError, match="already failed"):
        opener.feed(broken, len(broken))


def test_default_algorithm_follows_the_cpu(model_bytes) -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    sealed = seal(model_bytes, rc.group_key_generate())
    if " aes " in flags and " pclmulqdq " in flags:
        assert rc.sealed_header(sealed)["algorithm"] == rc.SEALED_AES_256_GCM
    assert rc.sealed_header(sealed)["algorithm"] == rc.SEALED_PREFERRED_ALGORITHM


def test_two_seals_of_the_same_payload_differ(model_bytes) -> None:
    key = rc.group_key_generate()
    assert seal(model_bytes, key) != seal(model_bytes, key)  # fresh salt, fresh transfer key


TAMPERING = {
    "flipped ciphertext bit": (lambda s: s.__setitem__(len(s) - 5000, s[len(s) - 5000] ^ 1), {}),
    "flipped tag bit": (lambda s: s.__setitem__(64 + SEGMENT + 2, s[64 + SEGMENT + 2] ^ 0x10), {}),
    "chunk from another room": (None, {"room": "ZZZZZZ"}),
    "replayed as another transfer": (None, {"transfer_id": TRANSFER + 1}),
    "claimed by another sender": (None, {"sender": "mallory"}),
    "weights relabelled as a global model": (None, {"kind": 2}),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampering_is_refused_and_nothing_is_left(model_bytes, name) -> None:
    key = rc.group_key_generate()
    sealed = seal(model_bytes, key, segment_size=SEGMENT)
    mangle, context = TAMPERING[name]
    if mangle:
        mangle(sealed)
    with pytest.raises(ValueError, match="failed authentication"):
        open_(sealed, key, **context)
    # wiped: no unauthenticated plaintext to use
    assert data_region(sealed, len(model_bytes)) == bytes(len(model_bytes))


def test_reordered_segments_are_refused(model_bytes) -> None:
    key = rc.group_key_generate()
    sealed = seal(model_bytes, key, segment_size=SEGMENT)
    block = SEGMENT + 16  # a segment and its tag
    first = slice(64, 64 + block)
    second = slice(64 + block, 64 + 2 * block)
    sealed[first], sealed[second] = sealed[second], sealed[first]
    with pytest.raises(ValueError, match="failed authentication"):
        open_(sealed, key)


def test_truncation_and_extension_are_refused(model_bytes) -> None:
    key = rc.group_key_generate()
    sealed = seal(model_bytes, key, segment_size=SEGMENT)
    for broken in (sealed[:-16], sealed[:-1], sealed + b"\0", sealed[:40], sealed[:39]):
        with pytest.raises(ValueError, match="truncated|does not match|shorter"):
            open_(bytearray(broken), key)


def test_other_epoch_and_other_key_are_refused(model_bytes) -> None:
    key = rc.group_key_generate()
    with pytest.raises(ValueError, match="epoch"):
        open_(seal(model_bytes, key), key, epoch=EPOCH + 1)
    with pytest.raises(ValueError, match="failed authentication"):
        open_(seal(model_bytes, key), rc.group_key_generate())


def test_plaintext_where_a_sealed_transfer_is_due(model_bytes) -> None:
    with pytest.raises(ValueError, match="plaintext in a private room"):
        rc.sealed_header(model_bytes)


def test_digest_is_the_same_on_both_sides_and_signs(model_bytes) -> None:
    key = rc.group_key_generate()
    public, secret = rc.sign_keypair()
    sealed = bytearray(rc.sealed_size(len(model_bytes)))
    digest = rc.seal(key, ROOM, SENDER, TRANSFER, 2, EPOCH, model_bytes, sealed, digest=True)
    signature = rc.sign_detached(secret, digest)
    _, _, received_digest = rc.open_in_place(
        key, ROOM, SENDER, TRANSFER, 2, EPOCH, sealed, digest=True
    )
    assert received_digest == digest
    rc.sign_verify(public, received_digest, signature)
    # a member that holds the group key re-seals a forged model: its digest does not verify
    forged = bytearray(len(sealed))
    forged_digest = rc.seal(
        key, ROOM, SENDER, TRANSFER, 2, EPOCH, model_bytes[::-1], forged, digest=True
    )
    with pytest.raises(ValueError, match="not signed by the room's host"):
        rc.sign_verify(public, forged_digest, signature)


def test_group_key_wrap_binds_room_member_and_epoch() -> None:
    wrap_key, key = rc.group_key_generate(), rc.group_key_generate()
    public, _ = rc.sign_keypair()
    wrapped = rc.group_key_wrap(wrap_key, ROOM, "host", "alice", 5, key, public)
    assert len(wrapped) == 104
    assert rc.group_key_unwrap(wrap_key, ROOM, "host", "alice", 5, wrapped) == (key, public)
    for room, member, epoch in (("ZZZZZZ", "alice", 5), (ROOM, "bob", 5), (ROOM, "alice", 6)):
        with pytest.raises(ValueError, match="failed authentication"):
            rc.group_key_unwrap(wrap_key, room, "host", member, epoch, wrapped)
    with pytest.raises(ValueError, match="104 bytes"):
        rc.group_key_unwrap(wrap_key, ROOM, "host", "alice", 5, wrapped[:-1])


def test_bad_arguments() -> None:
    out = bytearray(rc.sealed_size(10))
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        rc.seal(bytes(31), ROOM, SENDER, 1, 1, 0, bytes(10), out)
    with pytest.raises(TypeError):
        rc.seal(bytes(32), ROOM, SENDER, 1, 1, 0, bytes(10), bytes(len(out)))
    with pytest.raises(ValueError, match="algorithm"):
        rc.seal(bytes(32), ROOM, SENDER, 1, 1, 0, bytes(10), out, algorithm=9)
    with pytest.raises(ValueError, match="segment_size"):
        rc.seal(bytes(32), ROOM, SENDER, 1, 1, 0, bytes(10), out, segment_size=0)
    with pytest.raises(ValueError, match="sealed_size"):
        rc.seal(bytes(32), ROOM, SENDER, 1, 1, 0, bytes(10), out[:-1])
    with pytest.raises(ValueError, match="whole receive buffer"):
        rc.SealedOpener(bytes(32), ROOM, SENDER, 1, 1, 0, len(out)).feed(bytearray(5), 5)


def test_pieces_are_decrypted_straight_into_the_buffer(model_bytes) -> None:
    key = rc.group_key_generate()
    sealed = seal(model_bytes, key, segment_size=SEGMENT)
    for piece in (1000, SEGMENT, 3 * SEGMENT + 17, len(sealed)):
        opener = rc.SealedOpener(key, ROOM, SENDER, TRANSFER, KIND, EPOCH, len(sealed))
        received = bytearray(len(sealed))
        done = False
        for start in range(0, len(sealed), piece):
            done = opener.feed_from(received, sealed[start : start + piece])
        assert done and opener.finish() is None
        assert bytes(received[opener.offset : opener.offset + opener.length]) == model_bytes
    opener = rc.SealedOpener(key, ROOM, SENDER, TRANSFER, KIND, EPOCH, len(sealed))
    with pytest.raises(ValueError, match="more bytes"):
        opener.feed_from(bytearray(len(sealed)), sealed + b"x")
