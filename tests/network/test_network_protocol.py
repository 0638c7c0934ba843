"""segmentation_suite.network.protocol: the JSON message and the shared constants, checked
against docs/protocol.md and tests/vectors/protocol.json. (The frame header is C's:
tests/transport/test_transport_frame_header.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segmentation_suite.network import protocol
from segmentation_suite.network.protocol import (
    CloseCode,
    ErrorCode,
    Feature,
    FrameKind,
    Message,
    MessageType,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests/vectors/protocol.json").read_text())
HEADER_VECTORS = VECTORS["frame_header"]

SLOW_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every message type the specs name (docs/protocol.md part 1 and 2, PROTOCOL.md section 2),
# with the payload fields they list as sent. Written from the specs, not from the module.
SPEC_MESSAGES = {
    "create_room": {"user_id": "u1", "display_name": "Ann"},
    "join_room": {"room_code": "K7QX2M", "user_id": "u1", "display_name": "Ann"},
    "leave_room": {},
    "resume": {
        "room_code": "K7QX2M",
        "user_id": "u1",
        "display_name": "Ann",
        "resume_token": "ab" * 32,
    },
    "room_created": {"room_code": "K7QX2M"},
    "room_joined": {"room_code": "K7QX2M", "users": [{"user_id": "u1", "display_name": "Ann"}]},
    "user_joined": {"user_id": "u2", "display_name": "Bo", "users": []},
    "user_left": {"user_id": "u2", "display_name": "Bo", "users": []},
    "error": {"error": "Room not found", "code": "ROOM_NOT_FOUND"},
    "weights_push": {"user_id": "u1", "epoch": 3, "loss": 0.25, "num_samples": 10},
    "global_model": {"aggregation_round": 2, "contributor_count": 4},
    "peer_hello": {"user_id": "u1", "protocol": 2, "features": ["frame_header"], "host": True},
    "chunk_start": {
        "transfer_id": "t-1",
        "total_chunks": 3,
        "total_size": 40_000_000,
        "original_type": "weights_push",
        "epoch": 1,
        "loss": 0.5,
        "num_samples": 7,
        "user_id": "u1",
        "display_name": "Ann",
    },
    "chunk_end": {"transfer_id": "t-1"},
    "request_model": {"user_id": "u1"},
    "session_info": {"architecture": "unet"},
    "training_data": {
        "user_id": "u1",
        "display_name": "Ann",
        "crop_size": 256,
        "slice_index": 4,
        "chunk_index": 0,
        "total_chunks": 1,
        "timestamp": 1700000000000,
    },
    "goodbye": {"user_id": "u1", "reason": "disconnect"},
    "hello": {"user_id": "u1", "display_name": "Ann"},
    "welcome": {"session_id": "K7QX2M", "user_list": [], "architecture": "unet"},
    "user_list": {"users": []},
    "weights_ack": {"user_id": "u1", "received": True},
    "training_data_ack": {"user_id": "u1", "received": True, "message": ""},
}


# --- constants -----------------------------------------------------------------------------


def test_every_message_type_of_the_specs_is_known():
    known = {t.value for t in MessageType}
    assert set(SPEC_MESSAGES) <= known
    # every "`name` `{fields}`" of docs/protocol.md is a message type (and in the table above)
    spec_text = (ROOT / "docs/protocol.md").read_text()
    named = set(re.findall(r"`([a-z_]+)`\s+`\{", spec_text))
    assert {"create_room", "resume", "user_left"} <= named
    assert named <= known
    assert named <= set(SPEC_MESSAGES)


def test_constants_match_the_shared_vectors():
    assert VECTORS["room_code_alphabet"] == protocol.ROOM_CODE_ALPHABET
    assert VECTORS["room_code_length"] == protocol.ROOM_CODE_LENGTH
    assert [c.value for c in ErrorCode] == VECTORS["error_codes"]
    assert {c.name.lower(): c.value for c in CloseCode} == VECTORS["close_codes"]
    assert [f.value for f in Feature] == VECTORS["features"]
    assert {k.name.lower(): k.value for k in FrameKind} == HEADER_VECTORS["kinds"]
    assert VECTORS["protocol_version"] == protocol.PROTOCOL_VERSION
    assert VECTORS["chunk_size"] == protocol.MAX_CHUNK_SIZE == protocol.CHUNK_SIZE
    # The frame-header layout is C's alone now (protocol/frame_header.h).
    assert not [name for name in dir(protocol) if name.startswith("FRAME_")]
    assert not hasattr(protocol, "pack_frame_header")
    assert not hasattr(protocol, "unpack_frame_header")


def _python(code: str, env: dict) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_importing_the_package_reads_no_config_file_nor_the_url_variable(tmp_path):
    (tmp_path / "segmentation-suite").mkdir()
    config = tmp_path / "segmentation-suite" / "relay_config.txt"
    config.write_text("wss://from-the-file.test/ws\n")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    env.pop("SEGMENTATION_SUITE_RELAY_URL", None)
    # Every file opened while importing, and the variable set only after the import: the
    # constants reflect the time they are first read, not the import.
    code = (
        "import os, sys\n"
        "opened = []\n"
        "sys.addaudithook(lambda e, a: opened.append(str(a[0])) if e == 'open' else None)\n"
        "import segmentation_suite.network as network\n"
        "from segmentation_suite.network import protocol\n"
        "sys.addaudithook(lambda e, a: None)\n"
        "print([p for p in opened if p.endswith('relay_config.txt')])\n"
        "os.environ['SEGMENTATION_SUITE_RELAY_URL'] = 'wss://set-after-import.test/ws'\n"
        "print(protocol.DEFAULT_RELAY_URL, network.DEFAULT_RELAY_URL)\n"
        "os.environ['SEGMENTATION_SUITE_RELAY_URL'] = 'wss://changed-again.test/ws'\n"
        "print(protocol.DEFAULT_RELAY_URL)\n"  # a snapshot: the first reading stays
    )
    opened, first, again = _python(code, env).splitlines()
    assert opened == "[]"
    assert first == "wss://set-after-import.test/ws wss://set-after-import.test/ws"
    assert again == "wss://set-after-import.test/ws"
    # Without the variable, the user's file is what the constant reports.
    code = "from segmentation_suite.network.protocol import DEFAULT_RELAY_URL as U; print(U)"
    assert _python(code, env) == "wss://from-the-file.test/ws"


def test_default_relay_url_never_breaks_the_import(tmp_path):
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    code = "from segmentation_suite.network import DEFAULT_RELAY_URL as U; print(U)"
    env["SEGMENTATION_SUITE_RELAY_URL"] = "wss://relay.test/ws"
    assert _python(code, env) == "wss://relay.test/ws"
    env["SEGMENTATION_SUITE_RELAY_URL"] = "https://relay.test/ws"
    assert _python(code, env) == "None"  # malformed: a logged warning, no exception


# --- Message: round trips ------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
extra_top_level = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(
        lambda k: k not in {"type", "payload", "timestamp", "sender_id", "sender_name", "to"}
    ),
    json_value,
    max_size=3,
)


@SLOW_MACHINE
@given(
    name=st.sampled_from(sorted(SPEC_MESSAGES)),
    extra_payload=st.dictionaries(st.text(min_size=1, max_size=10), json_value, max_size=4),
    extra=extra_top_level,
    sender=st.none() | st.text(min_size=1, max_size=20),
    to=st.none() | st.lists(st.text(min_size=1, max_size=10), max_size=3),
)
def test_message_round_trips_with_every_field(name, extra_payload, extra, sender, to):
    payload = {**extra_payload, **SPEC_MESSAGES[name]}
    obj = {"type": name, "payload": payload, "timestamp": "2024-05-01T12:00:00", **extra}
    if sender is not None:
        obj["sender_id"] = sender
        obj["sender_name"] = sender.upper()
    if to is not None:
        obj["to"] = to
    message = Message.from_json(json.dumps(obj))
    assert message.type.value == name
    assert message.payload == payload
    assert message.sender_id == sender
    assert json.loads(message.to_json()) == obj  # extra top-level fields survive
    assert Message.from_json(message.to_json()) == message


def test_timestamp_defaults_to_now_and_forwarded_fields_are_kept():
    raw = {
        "type": "weights_push",
        "payload": SPEC_MESSAGES["weights_push"],
        "sender_id": "u9",
        "sender_name": "Zed",
        "to": ["host"],
        "trace": {"hop": 1},
    }
    message = Message.from_json(json.dumps(raw).encode())
    assert message.to == ["host"] and message.extra == {"trace": {"hop": 1}}
    assert message.timestamp  # filled in, as in the original
    out = json.loads(message.to_json())
    assert {k: out[k] for k in raw} == raw


def test_payload_may_be_absent_for_leave_room():
    assert Message.from_json('{"type":"leave_room"}').payload == {}


def test_constructors_build_valid_messages_from_numpy_scalars():
    np = pytest.importorskip("numpy")
    message = protocol.create_weights_push_message("u1", np.int64(4), np.float32(0.5), np.int32(9))
    decoded = json.loads(message.to_json())["payload"]
    assert decoded == {"user_id": "u1", "epoch": 4, "loss": 0.5, "num_samples": 9}
    join = protocol.join_room_message(" k7qx2m ", "u1", "Ann")
    assert join.payload["room_code"] == "K7QX2M"
    assert "resume" in join.payload["features"]


# --- Message: malformed input --------------------------------------------------------------


def _error(data) -> str:
    with pytest.raises(ValueError) as info:
        Message.from_json(data)
    return str(info.value)


def test_every_truncation_of_a_message_is_refused():
    text = protocol.create_weights_push_message("u1", 1, 0.5, 3).to_json()
    for cut in range(len(text)):
        assert _error(text[:cut])


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"payload": {}}, "type"),
        ({"type": 5, "payload": {}}, "type"),
        ({"type": "no_such_type", "payload": {}}, "type"),
        ({"type": "leave_room", "payload": []}, "payload"),
        ({"type": "leave_room", "payload": "x"}, "payload"),
        ({"type": "leave_room", "payload": {}, "timestamp": 5}, "timestamp"),
        ({"type": "leave_room", "payload": {}, "sender_id": 5}, "sender_id"),
        ({"type": "leave_room", "payload": {}, "to": "host"}, "to"),
        ({"type": "leave_room", "payload": {}, "to": ["a", 1]}, "to[1]"),
        ({"type": "join_room", "payload": {"user_id": "u"}}, "payload.room_code"),
        ({"type": "join_room", "payload": {"room_code": 7, "user_id": "u"}}, "payload.room_code"),
        (
            {
                "type": "weights_push",
                "payload": {"user_id": "u", "epoch": 1.5, "loss": 0, "num_samples": 1},
            },
            "payload.epoch",
        ),
        (
            {
                "type": "weights_push",
                "payload": {"user_id": "u", "epoch": 1, "loss": "low", "num_samples": 1},
            },
            "payload.loss",
        ),
        (
            {
                "type": "weights_push",
                "payload": {"user_id": "u", "epoch": True, "loss": 0, "num_samples": 1},
            },
            "payload.epoch",
        ),
        ({"type": "weights_ack", "payload": {"user_id": "u", "received": 1}}, "payload.received"),
        ({"type": "room_joined", "payload": {"room_code": "X", "relay": []}}, "payload.relay"),
    ],
)
def test_wrong_types_name_the_field(obj, field):
    message = _error(json.dumps(obj))
    assert message.startswith(field + ":"), message


@pytest.mark.parametrize("text", ["[1, 2]", '"hello"', "3", "null", "true"])
def test_non_objects_are_refused(text):
    assert "expected a JSON object" in _error(text)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(constant):
    text = '{"type":"weights_push","payload":{"user_id":"u","epoch":1,"loss":%s,"num_samples":1}}'
    assert constant in _error(text % constant)


def test_oversized_text_is_refused_before_parsing():
    filler = "x" * protocol.MAX_TEXT_SIZE
    text = json.dumps({"type": "error", "payload": {"error": filler}})
    assert "limit" in _error(text)
    assert "limit" in _error(text.encode())
    # multi-byte characters count as bytes, not characters
    accents = "é" * (protocol.MAX_TEXT_SIZE // 2 + 10)
    wide = json.dumps({"type": "error", "payload": {"error": accents}}, ensure_ascii=False)
    assert len(wide) < protocol.MAX_TEXT_SIZE < len(wide.encode())
    assert "limit" in _error(wide)
    assert "limit" in _error(wide.encode())


@pytest.mark.parametrize("depth", [protocol.MAX_JSON_DEPTH + 1, 5000, 200_000])
def test_hostile_nesting_depth_is_refused(depth):
    nested = "[" * depth + "]" * depth
    text = '{"type":"error","payload":{"error":"x","details":"y","deep":' + nested + "}}"
    assert "nested deeper" in _error(text)


def test_bad_utf8_and_non_text_are_refused():
    assert "UTF-8" in _error(b'{"type":"leave_room","payload":{"x":"\xff"}}')
    assert "expected str or bytes" in _error(12)


@settings(SLOW_MACHINE, max_examples=300)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_input_gives_a_message_or_a_value_error(data):
    try:
        message = Message.from_json(data)
    except ValueError:
        return
    assert isinstance(message.type, MessageType)


def test_to_json_refuses_what_json_cannot_carry():
    np = pytest.importorskip("numpy")
    push = protocol.create_weights_push_message("u1", 1, 0.5, 3)
    push.payload["loss"] = float("nan")
    with pytest.raises(ValueError, match=r"^payload\.loss: nan"):
        push.to_json()
    push.payload["loss"] = 0.5
    push.payload["extra"] = np.float32(1.0)
    with pytest.raises(ValueError, match=r"^payload\.extra: a float32"):
        push.to_json()
    big = protocol.create_error_message("x" * protocol.MAX_TEXT_SIZE)
    with pytest.raises(ValueError, match="more than the limit"):
        big.to_json()
    with pytest.raises(ValueError, match="^payload.room_code: missing"):
        Message(MessageType.JOIN_ROOM, {"user_id": "u"})


# --- relay capabilities -------------------------------------------------------------------


def test_relay_capabilities_from_the_spec_example():
    spec = (ROOT / "docs/protocol.md").read_text()
    example = spec.split('"relay": ', 1)[1].split("```", 1)[0]
    relay = json.loads(example)
    caps = protocol.parse_relay_capabilities({"room_code": "K7QX2M", "relay": relay})
    assert caps is not None and caps.protocol == 2
    assert all(caps.supports(f) for f in Feature)
    assert caps.chunk_size == relay["limits"]["chunk_size"]
    assert protocol.parse_relay_capabilities({"room_code": "K7QX2M"}) is None  # v1 Worker
    with pytest.raises(ValueError, match="payload.relay.features"):
        protocol.parse_relay_capabilities({"relay": {"features": "directed"}})


# --- chunking ------------------------------------------------------------------------------


@given(size=st.integers(0, 5000), chunk=st.integers(1, 700))
def test_chunks_cover_the_data_without_copies(size, chunk):
    data = os.urandom(size)
    chunks = protocol.chunk_data(data, chunk)
    assert b"".join(chunks) == data
    assert all(1 <= len(c) <= chunk for c in chunks)
    assert all(c.obj is data for c in chunks)  # views, not copies
    assert protocol.needs_chunking(data, chunk) == (len(chunks) > 1)
