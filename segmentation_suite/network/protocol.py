"""The wire protocol in Python: message types, the JSON message, constants, frame kinds.

This is the Python half of the one protocol definition (docs/protocol.md); the C half is
protocol/ at the top of the repository (frame header, constants), which the relay and the
`_relayclient` extension both compile. Both halves are checked against the shared vectors in
tests/vectors/protocol.json. Binary frame headers are written and read in C only: the extension
frames what it sends and parses what it receives (`transport.parse_frame_header`).

Nothing here does I/O, at import or later: the relay URL lookup is relay_config.py's, the
transport and the weight codec live elsewhere.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, IntEnum
from typing import Any

# --- constants shared with the relay (tests/vectors/protocol.json; in C protocol/) ---------

#: Room codes: 6 characters without the look-alikes I, O, 0 and 1.
ROOM_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
ROOM_CODE_LENGTH = 6

#: Protocol generation that the extensions of docs/protocol.md part 2 belong to.
PROTOCOL_VERSION = 2

#: Binary messages are split into chunks of at most this size. The original Worker limits a
#: WebSocket message to 32 MiB; the original client chunked at 16 MiB, and so do we, unless the
#: relay advertises another `chunk_size`.
MAX_CHUNK_SIZE = 16 * 1024 * 1024
CHUNK_SIZE = MAX_CHUNK_SIZE  # the original app's name for it

#: The relay's default limit on a text message (`--max-text-size`); larger JSON is refused.
MAX_TEXT_SIZE = 1024 * 1024

#: JSON nested deeper than this is refused: real messages are at most 4 levels deep, and a
#: hostile peer must not be able to make a receiver recurse without bound.
MAX_JSON_DEPTH = 32

#: Port of a direct (LAN) session's AggregationServer, as in the original.
DEFAULT_PORT = 8765

#: How long the relay keeps a disconnected member that asked for `resume` (seconds).
RESUME_GRACE_SECONDS = 30


def __getattr__(name: str) -> Any:
    """`DEFAULT_RELAY_URL`, the original client's name, is relay_config's: it reads the
    environment and config files, so it is looked up when first asked for, not at import."""
    if name == "DEFAULT_RELAY_URL":
        from . import relay_config

        return relay_config.DEFAULT_RELAY_URL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MessageType(Enum):
    """Every `type` a text message can carry (docs/protocol.md, PROTOCOL.md section 2)."""

    # Direct (LAN) mode: client <-> AggregationServer, no relay.
    HELLO = "hello"
    WELCOME = "welcome"
    GOODBYE = "goodbye"
    USER_LIST = "user_list"
    WEIGHTS_ACK = "weights_ack"
    TRAINING_DATA_ACK = "training_data_ack"

    # Carried between members (through the relay or directly).
    WEIGHTS_PUSH = "weights_push"
    GLOBAL_MODEL = "global_model"
    REQUEST_MODEL = "request_model"
    CHUNK_START = "chunk_start"
    CHUNK_END = "chunk_end"
    SESSION_INFO = "session_info"
    TRAINING_DATA = "training_data"
    SNAPSHOT_MODEL = "snapshot_model"  # sent by later versions of the original app
    PEER_HELLO = "peer_hello"  # ours: "I speak protocol 2" on a relay that does not attest it
    # Ours, private rooms: the key exchange, directed between host and member (private_room.py)
    PAKE_INIT = "pake_init"
    PAKE_REPLY = "pake_reply"
    PAKE_CONFIRM = "pake_confirm"
    PAKE_FAILED = "pake_failed"
    PAKE_REFUSED = "pake_refused"
    GROUP_KEY = "group_key"
    ERROR = "error"

    # Relay control: client -> relay.
    CREATE_ROOM = "create_room"
    JOIN_ROOM = "join_room"
    LEAVE_ROOM = "leave_room"
    RESUME = "resume"  # extension `resume`

    # Relay control: relay -> client.
    ROOM_CREATED = "room_created"
    ROOM_JOINED = "room_joined"
    USER_JOINED = "user_joined"
    USER_LEFT = "user_left"


class ErrorCode(str, Enum):
    """The machine-readable `code` of an `error` message from the relay."""

    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    INVALID_FIELD = "INVALID_FIELD"
    ROOM_NOT_FOUND = "ROOM_NOT_FOUND"
    ROOM_FULL = "ROOM_FULL"
    TOO_MANY_ROOMS = "TOO_MANY_ROOMS"
    RATE_LIMITED = "RATE_LIMITED"
    INVALID_RESUME_TOKEN = "INVALID_RESUME_TOKEN"
    BAD_FRAME_HEADER = "BAD_FRAME_HEADER"
    # LAN mode (a relay serving one AggregationServer's session)
    LAN_SESSION = "LAN_SESSION"
    LAN_HOST_TAKEN = "LAN_HOST_TAKEN"
    NO_HOST = "NO_HOST"
    USER_ID_TAKEN = "USER_ID_TAKEN"  # another live member of the room holds this user_id


class CloseCode(IntEnum):
    """WebSocket close codes the relay uses, and what each means for the client."""

    NORMAL = 1000
    GOING_AWAY = 1001  # relay shutting down, or idle past --idle-timeout
    INVALID_UTF8 = 1007
    MESSAGE_TOO_BIG = 1009
    SLOW_RECEIVER = 4008  # fell too far behind; the client may reconnect and resume


class Feature(str, Enum):
    """Extensions a relay can advertise in `relay.features` (docs/protocol.md part 2)."""

    FRAME_HEADER = "frame_header"
    DIRECTED = "directed"
    RESUME = "resume"
    FLOW_CONTROL = "flow_control"
    HOST_ID = "host_id"  # membership messages name the room's creator as `host_id`
    MEMBER_FEATURES = "member_features"  # user-list entries carry each member's features


#: What our client announces in create_room/join_room/resume/hello: protocol 2 (framed
#: binaries) and resume. A member that does not announce `frame_header` is an original client.
CLIENT_FEATURES = (Feature.FRAME_HEADER.value, Feature.RESUME.value)


class FrameKind(IntEnum):
    """What the payload of a framed binary message is (the header's `kind` byte; the
    extension's FRAME_KIND_* constants are the same numbers, from protocol/frame_header.h)."""

    WEIGHTS = 1
    GLOBAL_MODEL = 2
    TRAINING_IMAGE = 3
    TRAINING_MASK = 4
    OTHER = 5


# --- the JSON message ----------------------------------------------------------------------

# Top-level fields with a meaning of their own; anything else is kept in Message.extra.
_KNOWN_TOP_LEVEL = {"type", "payload", "timestamp", "sender_id", "sender_name", "to"}

# JSON kinds, as named in error messages.
_STR = "string"
_INT = "integer"
_NUMBER = "number"
_BOOL = "boolean"
_LIST = "list"
_OBJECT = "object"

# Required and optional payload fields per type, checked on both send and receive. Only what
# a receiver relies on is listed; extra payload fields always pass, so newer peers interoperate.
# Fields the original Worker may leave out (it relays whatever a client sent) are optional.
_PAYLOAD_SCHEMA: dict[MessageType, tuple[dict[str, str], dict[str, str]]] = {
    MessageType.HELLO: ({"user_id": _STR}, {"display_name": _STR}),
    MessageType.WELCOME: ({"session_id": _STR, "user_list": _LIST}, {"architecture": _STR}),
    MessageType.GOODBYE: ({"user_id": _STR}, {"reason": _STR}),
    MessageType.USER_LIST: ({"users": _LIST}, {}),
    MessageType.WEIGHTS_ACK: ({"user_id": _STR, "received": _BOOL}, {}),
    MessageType.TRAINING_DATA_ACK: ({}, {"user_id": _STR, "received": _BOOL, "message": _STR}),
    MessageType.WEIGHTS_PUSH: (
        {"user_id": _STR, "epoch": _INT, "loss": _NUMBER, "num_samples": _NUMBER},
        {},
    ),
    MessageType.GLOBAL_MODEL: ({"aggregation_round": _INT, "contributor_count": _INT}, {}),
    MessageType.REQUEST_MODEL: ({"user_id": _STR}, {}),
    MessageType.CHUNK_START: (
        {"transfer_id": _STR, "total_chunks": _INT, "total_size": _INT, "original_type": _STR},
        {
            "epoch": _INT,
            "loss": _NUMBER,
            "num_samples": _NUMBER,
            "user_id": _STR,
            "display_name": _STR,
        },
    ),
    MessageType.CHUNK_END: ({"transfer_id": _STR}, {}),
    MessageType.SESSION_INFO: ({"architecture": _STR}, {}),
    MessageType.TRAINING_DATA: (
        {"user_id": _STR},
        {
            "display_name": _STR,
            "crop_size": _INT,
            "slice_index": _INT,
            "chunk_index": _INT,
            "total_chunks": _INT,
            "timestamp": _NUMBER,
        },
    ),
    MessageType.SNAPSHOT_MODEL: ({}, {"snapshot_id": _INT, "user_id": _STR}),
    MessageType.PEER_HELLO: (
        {"user_id": _STR, "protocol": _INT},
        {"features": _LIST, "host": _BOOL},
    ),
    **{
        kind: ({"v": _INT}, {"cpace": _STR, "reason": _STR, "epoch": _INT, "wrapped": _STR})
        for kind in (
            MessageType.PAKE_INIT,
            MessageType.PAKE_REPLY,
            MessageType.PAKE_CONFIRM,
            MessageType.PAKE_FAILED,
            MessageType.PAKE_REFUSED,
            MessageType.GROUP_KEY,
        )
    },
    MessageType.ERROR: ({"error": _STR}, {"details": _STR, "code": _STR, "field": _STR}),
    MessageType.CREATE_ROOM: ({"user_id": _STR}, {"display_name": _STR, "features": _LIST}),
    MessageType.JOIN_ROOM: (
        {"room_code": _STR, "user_id": _STR},
        {"display_name": _STR, "features": _LIST},
    ),
    MessageType.LEAVE_ROOM: ({}, {}),
    MessageType.RESUME: (
        {"room_code": _STR, "user_id": _STR, "resume_token": _STR},
        {"display_name": _STR},
    ),
    MessageType.ROOM_CREATED: (
        {"room_code": _STR},
        {"relay": _OBJECT, "resume_token": _STR},
    ),
    MessageType.ROOM_JOINED: (
        {"room_code": _STR},
        {"users": _LIST, "relay": _OBJECT, "resume_token": _STR, "resumed": _BOOL},
    ),
    MessageType.USER_JOINED: (
        {"user_id": _STR},
        {"display_name": _STR, "users": _LIST, "resumed": _BOOL},
    ),
    MessageType.USER_LEFT: ({"user_id": _STR}, {"display_name": _STR, "users": _LIST}),
}


def _kind_of(value: Any) -> str:
    """The JSON kind of a Python value, for error messages and schema checks."""
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int):
        return _INT
    if isinstance(value, float):
        return _NUMBER
    if isinstance(value, str):
        return _STR
    if isinstance(value, (list, tuple)):
        return _LIST
    if isinstance(value, dict):
        return _OBJECT
    if value is None:
        return "null"
    return type(value).__name__


def _matches(value: Any, expected: str) -> bool:
    kind = _kind_of(value)
    return kind == expected or (expected == _NUMBER and kind == _INT)


def _check_json_tree(value: Any) -> None:
    """Refuses what JSON cannot carry faithfully: non-JSON types, NaN/infinity, non-string
    keys, and nesting deeper than MAX_JSON_DEPTH. Errors name the path, like `payload.loss`.
    Iterative, so a hostile depth cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        where = path or "message"
        if isinstance(item, (dict, list, tuple)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise ValueError(f"{where}: object key {key!r} is not a string")
                    stack.append((child, f"{path}.{key}" if path else key, depth + 1))
            else:
                stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                raise ValueError(f"{where}: {item} is not a finite number; JSON cannot carry it")
        elif not (item is None or isinstance(item, (str, int, bool))):
            raise ValueError(
                f"{where}: a {type(item).__name__} is not a JSON value "
                "(convert it to str, int, float, bool, list or dict)"
            )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@dataclass
class Message:
    """One text message: `{"type": ..., "payload": {...}, "timestamp": ..., ...}`.

    `sender_id`/`sender_name` are set by the relay on forwarded messages; `to` names the
    recipients of a directed message (extension `directed`); `extra` keeps any other top-level
    field so that a message passes through unchanged. `timestamp` defaults to now (ISO 8601),
    as in the original.
    """

    type: MessageType
    payload: dict = field(default_factory=dict)
    timestamp: str = ""
    sender_id: str | None = None
    sender_name: str | None = None
    to: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.type, str):
            self.type = _parse_type(self.type)
        elif not isinstance(self.type, MessageType):
            raise ValueError(f"type: expected a MessageType or string, got {_kind_of(self.type)}")
        if not self.timestamp:
            self.timestamp = datetime.now().isoformat()
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first field that does not fit the protocol."""
        if not isinstance(self.payload, dict):
            raise ValueError(f"payload: expected an object, got {_kind_of(self.payload)}")
        for name in ("timestamp", "sender_id", "sender_name"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}: expected a string, got {_kind_of(value)}")
        if self.to is not None:
            if not isinstance(self.to, list):
                raise ValueError(f"to: expected a list of user ids, got {_kind_of(self.to)}")
            for i, user_id in enumerate(self.to):
                if not isinstance(user_id, str):
                    raise ValueError(f"to[{i}]: expected a string, got {_kind_of(user_id)}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra: expected a dict, got {_kind_of(self.extra)}")
        clashing = _KNOWN_TOP_LEVEL.intersection(self.extra)
        if clashing:
            raise ValueError(f"extra: {sorted(clashing)[0]!r} is a field of Message itself")
        required, optional = _PAYLOAD_SCHEMA[self.type]
        for name, expected in required.items():
            if name not in self.payload:
                raise ValueError(f"payload.{name}: missing (required in {self.type.value})")
            if not _matches(self.payload[name], expected):
                got = _kind_of(self.payload[name])
                raise ValueError(f"payload.{name}: expected a {expected}, got {got}")
        for name, expected in optional.items():
            if name in self.payload and not _matches(self.payload[name], expected):
                got = _kind_of(self.payload[name])
                raise ValueError(f"payload.{name}: expected a {expected}, got {got}")

    def to_dict(self) -> dict:
        """The message as the JSON object that goes on the wire."""
        obj: dict[str, Any] = {"type": self.type.value, "payload": self.payload}
        obj["timestamp"] = self.timestamp
        if self.sender_id is not None:
            obj["sender_id"] = self.sender_id
        if self.sender_name is not None:
            obj["sender_name"] = self.sender_name
        if self.to is not None:
            obj["to"] = self.to
        obj.update(self.extra)
        return obj

    def to_json(self, max_size: int = MAX_TEXT_SIZE) -> str:
        """Serializes to compact JSON; ValueError if a field cannot be sent or the text would be
        larger than `max_size` bytes (a relay closes the connection over its text limit)."""
        self.validate()
        obj = self.to_dict()
        _check_json_tree(obj)
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ValueError(f"message: a string holds an unpaired surrogate ({exc})") from None
        if size > max_size:
            raise ValueError(f"message: {size} bytes of JSON, more than the limit of {max_size}")
        return text

    @classmethod
    def from_dict(cls, obj: Any) -> Message:
        """Builds a Message from a parsed JSON object; ValueError naming the bad field."""
        if not isinstance(obj, dict):
            raise ValueError(f"message: expected a JSON object, got {_kind_of(obj)}")
        _check_json_tree(obj)
        if "type" not in obj:
            raise ValueError("type: missing")
        if not isinstance(obj["type"], str):
            raise ValueError(f"type: expected a string, got {_kind_of(obj['type'])}")
        payload = obj.get("payload", {})
        if not isinstance(payload, dict):
            raise ValueError(f"payload: expected an object, got {_kind_of(payload)}")
        to = obj.get("to")
        if to is not None and not isinstance(to, list):
            raise ValueError(f"to: expected a list of user ids, got {_kind_of(to)}")
        timestamp = obj.get("timestamp", "")
        if not isinstance(timestamp, str):
            raise ValueError(f"timestamp: expected a string, got {_kind_of(timestamp)}")
        return cls(
            type=_parse_type(obj["type"]),
            payload=payload,
            timestamp=timestamp,
            sender_id=obj.get("sender_id"),
            sender_name=obj.get("sender_name"),
            to=to,
            extra={k: v for k, v in obj.items() if k not in _KNOWN_TOP_LEVEL},
        )

    @classmethod
    def from_json(cls, data: str | bytes | bytearray, max_size: int = MAX_TEXT_SIZE) -> Message:
        """Parses one text message. Raises ValueError (naming the field where there is one) for
        text over `max_size` bytes, bad UTF-8, invalid JSON, NaN/Infinity, nesting deeper than
        MAX_JSON_DEPTH, a non-object, an unknown type or a payload that misses the schema."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) > max_size:
                raise ValueError(f"message: {len(data)} bytes, more than the limit of {max_size}")
            try:
                data = bytes(data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"message: not valid UTF-8 ({exc})") from None
        elif isinstance(data, str):
            # Cheap bound first (a character is at least one byte), exact count only if needed.
            if len(data) > max_size or len(data.encode("utf-8", "surrogatepass")) > max_size:
                raise ValueError(f"message: more than the limit of {max_size} bytes")
        else:
            raise ValueError(f"message: expected str or bytes, got {type(data).__name__}")
        try:
            obj = json.loads(data, parse_constant=_refuse_constant)
        except RecursionError:
            raise ValueError(f"message: nested deeper than {MAX_JSON_DEPTH} levels") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"message: not valid JSON ({exc})") from None
        return cls.from_dict(obj)


def _parse_type(value: str) -> MessageType:
    try:
        return MessageType(value)
    except ValueError:
        raise ValueError(f"type: unknown message type {value!r}") from None


# --- message constructors (names as in the original app) -----------------------------------


def _identity_payload(user_id: str, display_name: str, features: Iterable[str]) -> dict[str, Any]:
    """Who a member is, as `hello`, `create_room`, `join_room` and `resume` all say it."""
    return {"user_id": user_id, "display_name": display_name, "features": list(features)}


def create_hello_message(
    user_id: str, display_name: str, features: Iterable[str] = CLIENT_FEATURES
) -> Message:
    return Message(MessageType.HELLO, _identity_payload(user_id, display_name, features))


def create_welcome_message(
    session_id: str, user_list: list, architecture: str | None = None
) -> Message:
    payload: dict[str, Any] = {"session_id": session_id, "user_list": user_list}
    if architecture:
        payload["architecture"] = architecture
    return Message(MessageType.WELCOME, payload)


def create_weights_push_message(
    user_id: str, epoch: int, loss: float, num_samples: float
) -> Message:
    # Coerced so that numpy and torch scalars from a training loop serialize.
    payload = {
        "user_id": user_id,
        "epoch": int(epoch),
        "loss": float(loss),
        "num_samples": _plain_number(num_samples),
    }
    return Message(MessageType.WEIGHTS_PUSH, payload)


def create_weights_ack_message(user_id: str, received: bool) -> Message:
    return Message(MessageType.WEIGHTS_ACK, {"user_id": user_id, "received": bool(received)})


def create_global_model_message(aggregation_round: int, contributor_count: int) -> Message:
    payload = {
        "aggregation_round": int(aggregation_round),
        "contributor_count": int(contributor_count),
    }
    return Message(MessageType.GLOBAL_MODEL, payload)


def create_user_list_message(users: list) -> Message:
    return Message(MessageType.USER_LIST, {"users": users})


def create_goodbye_message(user_id: str, reason: str = "disconnect") -> Message:
    return Message(MessageType.GOODBYE, {"user_id": user_id, "reason": reason})


def create_error_message(error: str, details: str | None = None) -> Message:
    return Message(MessageType.ERROR, {"error": error, "details": details or ""})


def create_request_model_message(user_id: str) -> Message:
    return Message(MessageType.REQUEST_MODEL, {"user_id": user_id})


def create_session_info_message(architecture: str) -> Message:
    return Message(MessageType.SESSION_INFO, {"architecture": architecture})


def create_chunk_start_message(
    transfer_id: str, total_chunks: int, total_size: int, original_type: str, **metadata: Any
) -> Message:
    """`metadata` carries the fields of the message being chunked (epoch, loss, num_samples,
    user_id, display_name), which the original client puts in `chunk_start`."""
    payload = {
        "transfer_id": transfer_id,
        "total_chunks": int(total_chunks),
        "total_size": int(total_size),
        "original_type": original_type,
        **metadata,
    }
    return Message(MessageType.CHUNK_START, payload)


def create_chunk_end_message(transfer_id: str) -> Message:
    return Message(MessageType.CHUNK_END, {"transfer_id": transfer_id})


def create_training_data_message(
    user_id: str,
    display_name: str,
    crop_size: int,
    slice_index: int,
    chunk_index: int = 0,
    total_chunks: int = 1,
    timestamp_ms: int | None = None,
) -> Message:
    """Header of a training crop; the PNG image and the PNG mask follow as two binary frames."""
    if timestamp_ms is None:
        timestamp_ms = int(datetime.now().timestamp() * 1000)
    payload = {
        "user_id": user_id,
        "display_name": display_name,
        "crop_size": int(crop_size),
        "slice_index": int(slice_index),
        "chunk_index": int(chunk_index),
        "total_chunks": int(total_chunks),
        "timestamp": int(timestamp_ms),
    }
    return Message(MessageType.TRAINING_DATA, payload)


def create_training_data_ack_message(user_id: str, received: bool, message: str = "") -> Message:
    payload = {"user_id": user_id, "received": bool(received), "message": message}
    return Message(MessageType.TRAINING_DATA_ACK, payload)


def create_peer_hello_message(user_id: str, host: bool) -> Message:
    """Ours, on a relay that does not list members' features: tells the room this member
    speaks protocol 2, and (`host`) that it created the room. Original clients ignore it."""
    payload = {
        "user_id": user_id,
        "protocol": PROTOCOL_VERSION,
        "features": list(CLIENT_FEATURES),
        "host": bool(host),
    }
    return Message(MessageType.PEER_HELLO, payload)


def create_snapshot_model_message(snapshot_id: int, user_id: str) -> Message:
    payload = {"snapshot_id": int(snapshot_id), "user_id": user_id}
    return Message(MessageType.SNAPSHOT_MODEL, payload)


def create_room_message(
    user_id: str, display_name: str, features: Iterable[str] = CLIENT_FEATURES
) -> Message:
    """`create_room`; the features are harmless against a v1 relay, which ignores them."""
    return Message(MessageType.CREATE_ROOM, _identity_payload(user_id, display_name, features))


def _entry_payload(
    room_code: str, user_id: str, display_name: str, features: Iterable[str]
) -> dict[str, Any]:
    """What `join_room` and `resume` both carry. People type room codes, so surrounding spaces
    and lower case are forgiven here, once."""
    return {
        "room_code": room_code.strip().upper(),
        **_identity_payload(user_id, display_name, features),
    }


def join_room_message(
    room_code: str,
    user_id: str,
    display_name: str,
    features: Iterable[str] = CLIENT_FEATURES,
) -> Message:
    payload = _entry_payload(room_code, user_id, display_name, features)
    return Message(MessageType.JOIN_ROOM, payload)


def leave_room_message() -> Message:
    return Message(MessageType.LEAVE_ROOM, {})


def resume_message(
    room_code: str,
    user_id: str,
    display_name: str,
    resume_token: str,
    features: Iterable[str] = CLIENT_FEATURES,
) -> Message:
    payload = _entry_payload(room_code, user_id, display_name, features)
    payload["resume_token"] = resume_token
    return Message(MessageType.RESUME, payload)


def _plain_number(value: Any) -> int | float:
    """Integers stay integers (the original sends num_samples as int); other numbers become
    float. numpy and torch scalars are converted, so they serialize."""
    if isinstance(value, bool):
        raise ValueError("num_samples: expected a number, got boolean")
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


# --- chunking (as in the original, without copies) ----------------------------------------


def needs_chunking(data: bytes | bytearray | memoryview, chunk_size: int = MAX_CHUNK_SIZE) -> bool:
    return len(data) > chunk_size


def chunk_data(
    data: bytes | bytearray | memoryview, chunk_size: int = MAX_CHUNK_SIZE
) -> list[memoryview]:
    """Splits `data` into views of at most `chunk_size` bytes (no bytes are copied)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be at least 1, got {chunk_size}")
    view = memoryview(data).cast("B")
    return [view[i : i + chunk_size] for i in range(0, len(view), chunk_size)]


# --- what the relay advertises ------------------------------------------------------------


@dataclass(frozen=True)
class RelayCapabilities:
    """The `relay` object of `room_created`/`room_joined`. A relay that sends none (the
    original Worker) is v1: `parse_relay_capabilities` returns None and no extension is used."""

    version: str
    protocol: int
    features: frozenset[str]
    limits: dict

    def supports(self, feature: Feature | str) -> bool:
        name = feature.value if isinstance(feature, Feature) else feature
        return name in self.features

    @property
    def chunk_size(self) -> int:
        value = self.limits.get("chunk_size")
        return value if _kind_of(value) == _INT and value > 0 else MAX_CHUNK_SIZE


def parse_relay_capabilities(payload: dict) -> RelayCapabilities | None:
    """Reads `payload["relay"]`; None for a v1 relay; ValueError naming a malformed field."""
    relay = payload.get("relay")
    if relay is None:
        return None
    if not isinstance(relay, dict):
        raise ValueError(f"payload.relay: expected an object, got {_kind_of(relay)}")
    version = relay.get("version", "")
    protocol = relay.get("protocol", 1)
    features = relay.get("features", [])
    limits = relay.get("limits", {})
    if not isinstance(version, str):
        raise ValueError(f"payload.relay.version: expected a string, got {_kind_of(version)}")
    if _kind_of(protocol) != _INT:
        raise ValueError(f"payload.relay.protocol: expected an integer, got {_kind_of(protocol)}")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ValueError("payload.relay.features: expected a list of strings")
    if not isinstance(limits, dict):
        raise ValueError(f"payload.relay.limits: expected an object, got {_kind_of(limits)}")
    return RelayCapabilities(version, protocol, frozenset(features), dict(limits))
