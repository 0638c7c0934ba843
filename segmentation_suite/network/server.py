"""AggregationServer: the host side of a LAN session (no relay on the internet).

The WebSocket server is the relay binary in LAN mode (relay_server --lan-host-token-file; see
docs/protocol.md, "LAN mode"): C, the same code that serves relay rooms. The server starts it
on the port the user chose and connects to it over loopback as the session's host, proving
it with a random token that only this process knows. Members say `hello`; the relay lets them
talk only to the host. The host answers each with `welcome`, keeps every member's user list up
to date (`user_list`), acknowledges pushes (`weights_ack`), aggregates rounds exactly as the
room creator does in relay mode (host.AggregationRound) and broadcasts the global model.

The app's own member (the person hosting also trains) is a HostClient connected to the same
port, like any other member.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from typing import Any

from . import defaults
from .client import SyncClient
from .protocol import (
    DEFAULT_PORT,
    Feature,
    Message,
    create_room_message,
    create_user_list_message,
    create_weights_ack_message,
    create_welcome_message,
)
from .qt import Signal
from .room_session import MemberRole, RoomSession
from .session import get_local_ip
from .session_actions import Deliver, SendGlobalModel, SendJson

log = logging.getLogger(__name__)

HUB_NAME = "LAN host"


class LanHub(MemberRole):
    """The role of the server's own connection to its relay: the session's host, a member
    that never trains. It claims the session with the host token, welcomes each member,
    keeps everyone's user list current and acknowledges pushes; the session calls it at
    those moments and sends what it returns."""

    def __init__(self, server: AggregationServer, host_token: str):
        self._server = server
        self._host_token = host_token
        self._relay_info: Any = None

    def opening_message(self, session: RoomSession) -> Message:
        # Protocol 2 (framed binaries); no resume: the session ends with the hub's process.
        features = (Feature.FRAME_HEADER.value,)
        message = create_room_message(session.user_id, HUB_NAME, features=features)
        message.payload["host_token"] = self._host_token
        return message

    @staticmethod
    def members(session: RoomSession) -> list[dict]:
        """Who is in the session: every member but the hub."""
        return [u for u in session.users if u.get("user_id") != session.user_id]

    def room_created(self, session: RoomSession, payload: dict) -> list:
        self._relay_info = payload.get("relay")
        return []

    def member_joined(self, session: RoomSession, user_id: str, name: str) -> list:
        members = self.members(session)
        welcome = create_welcome_message(
            session.routing_code or "", members, self._server.architecture or None
        )
        welcome.payload["host_id"] = session.user_id
        if self._relay_info is not None:
            welcome.payload["relay"] = self._relay_info
        return [
            SendJson(welcome, [user_id]),
            SendJson(create_user_list_message(members)),
            Deliver(self._server.user_connected.emit, (name,)),
        ]

    def member_left(self, session: RoomSession, user_id: str, name: str) -> list:
        return [
            SendJson(create_user_list_message(self.members(session))),
            Deliver(self._server.user_disconnected.emit, (name,)),
        ]

    def push_taken(self, session: RoomSession, sender: str, received: bool) -> list:
        actions: list = [SendJson(create_weights_ack_message(sender, received), [sender])]
        if received:
            actions.append(Deliver(self._server.weights_received.emit, (session.name_of(sender),)))
        return actions

    def round_complete(self, session: RoomSession, weights: dict) -> list:
        return [Deliver(self._server.aggregation_complete.emit, (weights,))]


class AggregationServer:
    """Hosts a LAN session on this machine; see the module docstring."""

    user_connected = Signal(str)
    user_disconnected = Signal(str)
    weights_received = Signal(str)
    aggregation_complete = Signal(dict)
    error = Signal(str)
    server_started = Signal(str)
    server_stopped = Signal()

    def __init__(
        self,
        min_contributors: int = defaults.MIN_CONTRIBUTORS,
        aggregation_timeout: float = defaults.AGGREGATION_TIMEOUT,
    ):
        self.min_contributors = min_contributors
        self.aggregation_timeout = aggregation_timeout
        self.architecture = ""
        self.port = 0
        self._relay = None
        self._hub: SyncClient | None = None  # the server's connection, in the LanHub role

    @property
    def is_running(self) -> bool:
        return self._hub is not None and self._hub.is_connected

    @property
    def client_count(self) -> int:
        if self._hub is None:
            return 0
        return sum(1 for u in self._hub.users if u.get("user_id") != self._hub.user_id)

    @property
    def host_client(self) -> SyncClient | None:
        """The session host's own connection (the app and the CLI send their plan and
        starting model through it: training/session_plan.py)."""
        return self._hub

    @property
    def global_weights(self) -> dict | None:
        return self._hub.global_weights if self._hub is not None else None

    def start(self, port: int = DEFAULT_PORT, architecture: str = "") -> str | None:
        """Serves a LAN session on `port` (all interfaces); returns "IP:port" for members to
        type, or None after reporting why through `error` (port in use, relay missing)."""
        if self._relay is not None:
            self._report("The LAN session is already running: stop() it first")
            return None
        self.architecture = architecture
        problem = _port_problem(port)
        if problem:
            self._report(problem)
            return None
        token = secrets.token_urlsafe(32)
        try:
            self._relay = _start_lan_relay(port, token)
        except (FileNotFoundError, RuntimeError) as exc:
            self._report(f"Cannot start the LAN session on port {port}: {exc}")
            return None
        self.port = self._relay.port
        hub = SyncClient(
            aggregation_timeout=self.aggregation_timeout,
            min_contributors=self.min_contributors,
            reconnect_attempts=0,
            role=LanHub(self, token),
        )
        hub.error.connect(self._report)
        self._hub = hub
        hub.connect_direct("127.0.0.1", self.port, HUB_NAME)
        if not _wait_until(lambda: hub.is_connected, 10):
            self.stop()
            self._report(f"Cannot start the LAN session on port {port}: the host did not connect")
            return None
        address = f"{get_local_ip()}:{self.port}"
        log.info("LAN session serving on %s", address)
        self.server_started.emit(address)
        return address

    def stop(self) -> None:
        """Ends the session: members are disconnected (1001) and the port is freed."""
        hub, relay = self._hub, self._relay
        self._hub = self._relay = None
        if hub is not None:
            hub.disconnect()
        if relay is not None:
            relay.stop()
            self.server_stopped.emit()

    def set_global_weights(self, weights: dict) -> None:
        """The model members get on request_model (and broadcast_global_model) until a round
        closes; e.g. the host's starting weights."""
        if self._hub is None:
            self._report("Cannot set the global model: the LAN session is not running")
            return
        self._hub.apply_to_session(lambda session: session.set_global_weights(weights))

    def broadcast_global_model(self) -> None:
        """Sends the current global model to every member."""
        hub = self._hub
        if hub is None or hub.global_weights is None:
            self._report("No global model to send yet")
            return
        count = hub.global_contributors or 0
        send = SendGlobalModel(hub.global_weights, hub.aggregation_round, count)
        hub.apply_to_session(lambda session: [send])

    def trigger_aggregation(self) -> bool:
        """Closes the current round now with the pushes it has; False if nobody pushed."""
        return self._hub is not None and self._hub.trigger_aggregation()

    def _report(self, text: str) -> None:
        log.error("%s", text)
        self.error.emit(text)

    def __del__(self) -> None:
        relay = getattr(self, "_relay", None)
        if relay is not None:
            with contextlib.suppress(Exception):
                relay.stop()


def _port_problem(port: int) -> str | None:
    """Why the session cannot listen on `port` (all interfaces), in words; None if it can."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        return f"Cannot start the LAN session: the port must be 0 to 65535, not {port!r}"
    if port == 0:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            return f"Cannot start the LAN session: port {port} is in use ({exc.strerror})"
    return None


def _start_lan_relay(port: int, token: str):
    """relay_server in LAN mode on every interface. The token goes in the environment, which
    only this user can read (/proc/PID/environ), never on the command line."""
    from ..relay_process import RelayProcess

    relay = RelayProcess(
        "--log-level",
        "warn",
        host="0.0.0.0",
        port=port,
        env={**os.environ, "RELAY_LAN_HOST_TOKEN": token},
    )
    relay.start()
    relay.host = "127.0.0.1"
    return relay


def _wait_until(condition, timeout: float) -> bool:
    """Polls `condition`; not a signal wait, so that start() works on a Qt GUI thread too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False
