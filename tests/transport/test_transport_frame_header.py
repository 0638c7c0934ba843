"""The product's frame-header parser (protocol/frame_header.c, through the extension's
`transport.parse_frame_header`) against the spec: the shared vectors in
tests/vectors/protocol.json and headers built by the tests' own `struct` oracle
(tests/helpers/frame_header.py), never by the code under test. Every way a header off the
network can be cut short or malformed is refused with a ValueError; nothing crashes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import frame_header as oracle
from helpers.vectors import PROTOCOL
from segmentation_suite.network import transport
from segmentation_suite.network.protocol import FrameKind

HEADER_VECTORS = PROTOCOL["frame_header"]
SLOW_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_kinds_of_the_extension_and_of_protocol_py_match_the_vectors():
    extension = {
        name.removeprefix("FRAME_KIND_").lower(): getattr(transport, name)
        for name in dir(transport)
        if name.startswith("FRAME_KIND_")
    }
    assert extension == HEADER_VECTORS["kinds"]
    assert {k.name.lower(): k.value for k in FrameKind} == HEADER_VECTORS["kinds"]
    assert oracle.MAGIC.hex() == HEADER_VECTORS["magic_hex"]
    assert oracle.FIXED.size == HEADER_VECTORS["fixed_size"]


@pytest.mark.parametrize("example", HEADER_VECTORS["examples"], ids=lambda e: e["comment"])
def test_vector_examples_parse_to_their_fields(example):
    expected = bytes.fromhex(example["hex"])
    fields = {k: example[k] for k in ("kind", "transfer_id", "chunk_index", "chunk_count")}
    built = oracle.build(
        example["sender"], example["recipients"], total_size=example["total_size"], **fields
    )
    assert built == expected  # the oracle agrees with the vectors
    header = transport.parse_frame_header(expected + b"payload bytes")
    assert header == (
        *fields.values(),
        example["total_size"],
        example["sender"],
        tuple(example["recipients"]),
        len(expected),
    )


user_ids = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 128)


@SLOW_MACHINE
@given(
    kind=st.sampled_from([k.value for k in FrameKind]),
    transfer_id=st.integers(0, 2**64 - 1),
    chunk=st.integers(1, 2**32 - 1).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n))),
    total_size=st.integers(0, 2**64 - 1),
    sender=user_ids,
    recipients=st.lists(user_ids, max_size=10),
    payload=st.binary(max_size=50),
)
def test_any_valid_header_parses_to_what_was_built(
    kind, transfer_id, chunk, total_size, sender, recipients, payload
):
    index, count = chunk
    built = oracle.build(
        sender,
        recipients,
        kind=kind,
        transfer_id=transfer_id,
        chunk_index=index,
        chunk_count=count,
        total_size=total_size,
    )
    header = transport.parse_frame_header(built + payload)
    assert header == (
        kind,
        transfer_id,
        index,
        count,
        total_size,
        sender,
        tuple(recipients),
        len(built),
    )
    assert (built + payload)[header.header_size :] == payload


def _vector_bytes(index: int = 1) -> bytearray:
    return bytearray.fromhex(HEADER_VECTORS["examples"][index]["hex"])


def test_payloads_without_the_magic_are_v1():
    assert transport.parse_frame_header(b"\x1f\x8b\x08\x00gzip data") is None
    assert transport.parse_frame_header(b"SSBG" + bytes(40)) is None
    # A whole message shorter than the magic cannot start with it, even if it starts like it.
    assert transport.parse_frame_header(b"") is None
    assert transport.parse_frame_header(b"SSB") is None


def test_every_truncated_header_is_refused():
    data = bytes(_vector_bytes())
    for cut in range(4, len(data)):
        with pytest.raises(ValueError, match="truncated"):
            transport.parse_frame_header(data[:cut])


@pytest.mark.parametrize(
    ("offset", "value", "complaint"),
    [
        (4, 2, "version"),
        (5, 0, "kind"),
        (5, 6, "kind"),
        (16, 3, "chunk index"),  # index 3 of 3 chunks
        (32, 0, "sender length"),
        (34, 1, "reserved"),
        (36 + 3, 0, "recipient length"),
        (36 + 3, 5, "recipient runs past"),
        (33, 0, "does not match"),  # recipient count 0, but the size counts one
        (33, 2, "recipient list runs past"),
    ],
)
def test_malformed_headers_are_refused(offset, value, complaint):
    data = _vector_bytes()
    data[offset] = value
    with pytest.raises(ValueError, match=f"malformed frame header: .*{complaint}"):
        transport.parse_frame_header(data)


def test_header_size_fields_out_of_range_are_refused():
    for size in (35, 4097, 0xFFFF):
        data = _vector_bytes() + bytes(5000)
        data[6:8] = size.to_bytes(2, "little")
        with pytest.raises(ValueError, match="header size out of range"):
            transport.parse_frame_header(data)
    data = _vector_bytes()
    data[20:24] = (0).to_bytes(4, "little")  # chunk count 0
    with pytest.raises(ValueError, match="chunk"):
        transport.parse_frame_header(data)
    data = _vector_bytes()
    data[36] = 0xFF  # a sender byte that is not UTF-8
    with pytest.raises(ValueError, match="utf-8"):
        transport.parse_frame_header(data)


@settings(SLOW_MACHINE, max_examples=500)
@given(st.binary(min_size=0, max_size=120))
def test_random_bytes_after_the_magic_never_crash(tail):
    data = oracle.MAGIC + tail
    try:
        header = transport.parse_frame_header(data)
    except ValueError:
        return
    # Whatever parses is canonical: the oracle builds the same bytes from its fields.
    rebuilt = oracle.build(
        header.sender,
        list(header.recipients),
        kind=header.kind,
        transfer_id=header.transfer_id,
        chunk_index=header.chunk_index,
        chunk_count=header.chunk_count,
        total_size=header.total_size,
    )
    assert rebuilt == data[: header.header_size]
