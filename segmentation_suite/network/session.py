"""Session state: who is in the room, our identity, the LAN address; ids and room codes.

Plain data and small helpers, no I/O beyond reading the routing table for `get_local_ip`.
Room codes and user ids come from `secrets` (the operating system's CSPRNG): a room code is
all that keeps strangers out of a room, so it must not be predictable.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import string
import threading
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from .protocol import DEFAULT_PORT, ROOM_CODE_ALPHABET, ROOM_CODE_LENGTH

USER_ID_ALPHABET = string.ascii_lowercase + string.digits
USER_ID_LENGTH = 12

# connect() on a UDP socket sends nothing: it only asks the kernel which local address would
# route there. A private address (RFC 1918) keeps even that question inside the machine, and
# the default route answers it with the LAN interface's address.
_ROUTE_PROBE = "10.254.254.254"


def generate_session_id(length: int = ROOM_CODE_LENGTH) -> str:
    """A room code: `length` characters of ROOM_CODE_ALPHABET (no I, O, 0, 1)."""
    if length < 1:
        raise ValueError(f"length: must be at least 1, got {length}")
    return "".join(secrets.choice(ROOM_CODE_ALPHABET) for _ in range(length))


def generate_user_id() -> str:
    """A user id: 12 characters of a-z and 0-9 (about 62 bits), as in the original."""
    return "".join(secrets.choice(USER_ID_ALPHABET) for _ in range(USER_ID_LENGTH))


def get_local_ip(route_probe: str = _ROUTE_PROBE) -> str:
    """The IPv4 address other machines on the LAN can reach this one at, or "127.0.0.1" when
    there is no route (offline). No packet is sent."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((route_probe, 9))  # port 9 (discard); nothing is sent anyway
            address = probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return "127.0.0.1"
    if parsed.is_unspecified or parsed.is_loopback:
        return "127.0.0.1"
    return address


def parse_lan_address(text: str) -> tuple[str, int]:
    """A host address typed by a user, as (host, port). Tolerates surrounding spaces, a scheme
    (ws://, http://...), a trailing path, a missing port (DEFAULT_PORT) and bracketed IPv6
    (`[::1]:8765`). ValueError for an empty or malformed address."""
    raw = (text or "").strip()
    if "://" in raw:
        raw = raw.split("://", 1)[1]
    raw = raw.split("/", 1)[0].strip()
    if not raw:
        raise ValueError("address: empty; expected a host such as 192.168.1.5:8765")
    try:
        parts = urlsplit("ws://" + raw)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"address: {text!r} has an invalid port ({exc})") from None
    host = (parts.hostname or "").strip()
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"address: invalid host in {text!r}")
    return host, port or DEFAULT_PORT


def looks_like_session_code(text: str) -> bool:
    """True if text typed into the host-address field looks like a room code instead (six
    upper-case letters or digits, no dots or colons), to point the user to the right field."""
    token = (text or "").strip()
    if "://" in token:
        token = token.split("://", 1)[1]
    token = token.split("/", 1)[0].strip()
    return (
        len(token) == ROOM_CODE_LENGTH
        and token.isascii()
        and token.isalnum()
        and token == token.upper()
        and token.lower() != "localhost"
    )


@dataclass
class UserInfo:
    """A member of a session, and what the host knows of its contributions."""

    user_id: str
    display_name: str
    connected_at: datetime = field(default_factory=datetime.now)
    last_sync: datetime | None = None
    contribution_count: int = 0
    last_epoch: int = 0
    last_loss: float = 0.0

    def to_dict(self) -> dict:
        return {
            "user_id": self.user_id,
            "display_name": self.display_name,
            "connected_at": self.connected_at.isoformat(),
            "last_sync": self.last_sync.isoformat() if self.last_sync else None,
            "contribution_count": self.contribution_count,
            "last_epoch": self.last_epoch,
            "last_loss": self.last_loss,
        }

    @classmethod
    def from_dict(cls, data: dict) -> UserInfo:
        """From a `users`/`user_list` entry. Only user_id is required (the relay sends user_id
        and display_name only); ValueError naming a field of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError(f"user: expected an object, got {type(data).__name__}")
        user_id = data.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id: expected a non-empty string")
        display_name = data.get("display_name") or user_id
        if not isinstance(display_name, str):
            raise ValueError("display_name: expected a string")
        return cls(
            user_id=user_id,
            display_name=display_name,
            connected_at=_parse_time(data, "connected_at") or datetime.now(),
            last_sync=_parse_time(data, "last_sync"),
            contribution_count=_parse_number(data, "contribution_count", int, 0),
            last_epoch=_parse_number(data, "last_epoch", int, 0),
            last_loss=_parse_number(data, "last_loss", float, 0.0),
        )


def _parse_time(data: dict, name: str) -> datetime | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected an ISO 8601 string")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not an ISO 8601 time") from None


def _parse_number(data: dict, name: str, kind: type, default: int | float) -> int | float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"{name}: expected an integer")
    return kind(value)


@dataclass
class MultiUserSession:
    """A collaborative training session: its code, the host's address and the members."""

    session_id: str = field(default_factory=generate_session_id)
    host_ip: str = field(default_factory=get_local_ip)
    port: int = DEFAULT_PORT
    is_host: bool = False
    connected_users: list[UserInfo] = field(default_factory=list)
    created_at: datetime = field(default_factory=datetime.now)
    aggregation_round: int = 0
    architecture: str = ""

    @property
    def connection_string(self) -> str:
        """What a member types to join a direct session: "host:port"."""
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.port}"

    @property
    def websocket_url(self) -> str:
        return f"ws://{self.connection_string}"

    @property
    def user_count(self) -> int:
        return len(self.connected_users)

    def add_user(self, user: UserInfo) -> None:
        """Adds a member, replacing one with the same user_id (a reconnect)."""
        self.connected_users = [u for u in self.connected_users if u.user_id != user.user_id]
        self.connected_users.append(user)

    def remove_user(self, user_id: str) -> UserInfo | None:
        for i, user in enumerate(self.connected_users):
            if user.user_id == user_id:
                return self.connected_users.pop(i)
        return None

    def get_user(self, user_id: str) -> UserInfo | None:
        return next((u for u in self.connected_users if u.user_id == user_id), None)

    def update_user_sync(self, user_id: str, epoch: int, loss: float) -> None:
        """Records that a member contributed weights."""
        user = self.get_user(user_id)
        if user is not None:
            user.last_sync = datetime.now()
            user.contribution_count += 1
            user.last_epoch = epoch
            user.last_loss = loss

    def get_user_list(self) -> list[dict]:
        return [user.to_dict() for user in self.connected_users]

    def to_dict(self) -> dict:
        return {
            "session_id": self.session_id,
            "host_ip": self.host_ip,
            "port": self.port,
            "is_host": self.is_host,
            "connected_users": self.get_user_list(),
            "created_at": self.created_at.isoformat(),
            "aggregation_round": self.aggregation_round,
            "architecture": self.architecture,
        }


class SessionManager:
    """The current session and our own identity in it (one per process, see
    get_session_manager)."""

    def __init__(self) -> None:
        self.current_session: MultiUserSession | None = None
        self.user_info: UserInfo | None = None

    def create_session(self, display_name: str, port: int = DEFAULT_PORT) -> MultiUserSession:
        """Starts a session as its host, with ourselves as the first member."""
        self.user_info = UserInfo(user_id=generate_user_id(), display_name=display_name)
        self.current_session = MultiUserSession(port=port, is_host=True)
        self.current_session.add_user(self.user_info)
        return self.current_session

    def join_session(self, host_ip: str, port: int, display_name: str) -> MultiUserSession:
        """Joins a host's session; the host adds us to its member list."""
        self.user_info = UserInfo(user_id=generate_user_id(), display_name=display_name)
        self.current_session = MultiUserSession(host_ip=host_ip, port=port, is_host=False)
        return self.current_session

    def leave_session(self) -> None:
        self.current_session = None
        self.user_info = None

    @property
    def is_connected(self) -> bool:
        return self.current_session is not None

    @property
    def is_host(self) -> bool:
        return self.current_session is not None and self.current_session.is_host


_session_manager: SessionManager | None = None
_session_manager_lock = threading.Lock()


def get_session_manager() -> SessionManager:
    """The process-wide SessionManager, created on first use."""
    global _session_manager
    with _session_manager_lock:
        if _session_manager is None:
            _session_manager = SessionManager()
        return _session_manager
