"""What the sans-I/O session (room_session.py) asks its driver to do.

The session never touches a socket, a thread or a clock: every event it is fed (a connection
opened, a parsed message, a whole transfer, a close, a timer, a user's call) returns a list of
these actions, which the driver (`SyncClient`) executes in order. Tests feed events and read
the actions, without sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .protocol import Message


@dataclass(frozen=True)
class SendJson:
    """Send a text message, directed to `to` (None: the room, or whoever the relay picks).
    `now`: on the calling thread, ahead of queued sends: a message that joins the room, which
    a queued send waiting for the session to come back would otherwise hold up for good."""

    message: Message
    to: list[str] | None = None
    now: bool = False


@dataclass(frozen=True)
class SendGlobalModel:
    """Host: send the global model `weights` whole (serialized by the driver) to `to`."""

    weights: dict
    aggregation_round: int
    contributors: int
    to: list[str] | None = None


@dataclass(frozen=True)
class SendGlobalData:
    """Host: send an already encoded global model (whole or a delta) to `to`."""

    data: Any
    aggregation_round: int
    contributors: int
    to: list[str] | None = None


@dataclass(frozen=True)
class Emit:
    """Emit the client's signal `signal` with `args`."""

    signal: str
    args: tuple = ()


@dataclass(frozen=True)
class Report:
    """A failure the user is told of: a logging record and the `error` signal."""

    text: str


@dataclass(frozen=True)
class Deliver:
    """Call `callback(*args)` (a composed part's own signal, say the LAN server's)."""

    callback: Callable[..., Any]
    args: tuple = ()


@dataclass(frozen=True)
class StartTimer:
    """Call the session's `timer_fired(name, token)` after `delay` seconds."""

    name: str
    delay: float
    token: int


@dataclass(frozen=True)
class OpenConnection:
    """Open a new connection to the session's URL: `connection_opened()` or
    `connection_failed(text)` follows."""


@dataclass(frozen=True)
class CloseConnection:
    """Close the current connection (in the background: the reader may be the caller)."""


@dataclass(frozen=True)
class Leave:
    """Leave the session as `disconnect()` does (in the background)."""


@dataclass(frozen=True)
class ResendLastTransfer:
    """After a resume: send the newest transfer the lost connection took whole again."""

    transfer: Any


Action = (
    SendJson
    | SendGlobalModel
    | SendGlobalData
    | Emit
    | Report
    | Deliver
    | StartTimer
    | OpenConnection
    | CloseConnection
    | Leave
    | ResendLastTransfer
)
