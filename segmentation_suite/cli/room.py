"""A SyncClient seen from the command line: entering a room, waiting, telling who comes and goes.

The client reports through signals on its own thread; this class turns them into events the
command's main thread can wait on (so Ctrl-C still works while waiting) and prints joins and
leaves as they happen.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from ..network import private_code, relay_config
from ..network.client import HostClient, SyncClient
from ..network.protocol import ROOM_CODE_ALPHABET, ROOM_CODE_LENGTH
from ..network.server import AggregationServer
from ..network.session import parse_lan_address
from ..training import session_plan
from .options import CommandError

CONNECT_TIMEOUT = 30.0


def parse_room_code(text: str) -> str:
    """The code as typed, checked: `K7QX2M-4HRT` (a private room; dash optional, any case)
    or the 6 characters of an open room. CommandError saying what is wrong if neither."""
    try:
        return str(private_code.parse_room_code(text))
    except private_code.InvalidRoomCode as exc:
        raise CommandError(
            f"That is not a room code: {exc}. Room codes are {ROOM_CODE_LENGTH} letters and "
            f"digits from {ROOM_CODE_ALPHABET} (no I, O, 0 or 1), in any case, and a private "
            "room's code adds a dash and its secret part"
        ) from None


def find_relay_url(explicit: str | None) -> relay_config.RelayURL:
    """The relay URL from --relay-url or the configuration, with where it came from;
    CommandError if there is none."""
    try:
        if explicit is not None:
            url = relay_config.validate_relay_url(explicit, origin="--relay-url")
            return relay_config.RelayURL(url, "argument")
        found = relay_config.find_relay_url()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if found is None:
        raise CommandError(
            "No relay configured: pass --relay-url wss://HOST/ws, set "
            f"{relay_config.ENV_VAR}, or put the URL in {relay_config.user_config_path()}"
        )
    return found


def parse_lan_session(text: str) -> tuple[str, int]:
    """(host, port) of a LAN session typed as HOST:PORT; CommandError naming it if not one."""
    try:
        return parse_lan_address(text)
    except ValueError as exc:
        raise CommandError(f"{text!r} is not a LAN session address (HOST:PORT): {exc}") from None


class RoomMember:
    """One SyncClient in a relay room or a LAN session, with waits the main thread can
    interrupt. A LAN host also runs the session's AggregationServer and is its HostClient."""

    def __init__(
        self,
        say: Callable[[str], None],
        *,
        aggregation_timeout: float,
        lan_host: bool = False,
        accept_legacy_weights: bool = False,
    ):
        self.say = say  # tells the user who joins and leaves
        self.aggregation_timeout = aggregation_timeout
        self.server: AggregationServer | None = None
        self.lan_address: str | None = None  # HOST:PORT in a LAN session
        client_class = HostClient if lan_host else SyncClient
        self.client = client_class(
            aggregation_timeout=aggregation_timeout, accept_legacy_weights=accept_legacy_weights
        )
        self.architecture: str | None = None
        self._entered = threading.Event()
        self._failure: str | None = None
        self._leaving = False
        self.lost = threading.Event()
        self.report_errors = True  # print errors once in the room (as warnings, on stderr)
        self.plan: dict | None = None  # the host's plan, checked (training/session_plan.py)
        self.followed_plan: dict | None = None  # the plan this member trains (None: its own)
        self.invalid_plan = ""  # why the host's last plan cannot be followed
        self.host_stopped = threading.Event()  # the host stopped the rounds
        self._changed = threading.Event()  # members, architecture, plan or global changed
        client = self.client
        client.room_created.connect(self._on_entered)
        client.room_joined.connect(self._on_entered)
        client.connected.connect(lambda: self._on_entered(""))  # LAN: after the host's welcome
        client.error.connect(self._on_error)
        client.verification_code.connect(self._on_verification)
        client.user_joined_room.connect(self._on_joined)
        client.user_left_room.connect(self._on_left)
        client.architecture_received.connect(self._on_architecture)
        client.control_received.connect(self._on_control)
        client.global_model_received.connect(lambda _weights: self._changed.set())
        client.disconnected.connect(self._on_disconnected)

    @property
    def code(self) -> str:
        return self.client.room_code or ""

    @property
    def where(self) -> str:
        """`room K7QX2M`, or `the LAN session at HOST:PORT`, for messages."""
        if self.lan_address:
            return f"the LAN session at {self.lan_address}"
        return f"room {self.code}"

    @property
    def position(self) -> int:
        """This member's place in the room, in joining order: 1 for the host (the room's
        first member), 2 for the first to join, ..."""
        ids = [u.get("user_id") for u in self.client.users]
        return ids.index(self.client.user_id) + 1 if self.client.user_id in ids else 1

    @property
    def host_connection(self):
        """Host: where the plan and the starting model go out, to every member: the relay
        room's host client, or the LAN session's own host connection."""
        if self.server is not None:
            return self.server.host_client
        return self.client

    @property
    def others(self) -> list[dict]:
        return [u for u in self.client.users if u.get("user_id") != self.client.user_id]

    def _on_verification(self, peer: str, digits: str) -> None:
        # an optional check: read it aloud; both sides see the same digits unless someone
        # in the middle ran the key exchange in their place
        other = "the host" if peer == self.client.host_id else self.client._name_of(peer)
        self.say(f"Verification with {other}: {digits} (the same on both sides)")

    # --- entering and leaving -------------------------------------------------------------

    def create(self, name: str, relay_url: str, private: bool = True) -> str:
        self.client.create_relay_room(name, relay_url=relay_url, private=private)
        return self._wait_entered(f"The relay at {relay_url}")

    def join(self, code: str, name: str, relay_url: str) -> str:
        self.client.connect_relay(code, name, relay_url=relay_url)
        return self._wait_entered(f"The relay at {relay_url}")

    def host_lan(self, name: str, port: int, architecture: str) -> str:
        """Starts a LAN session on `port` and joins it; returns the address to share."""
        server = AggregationServer(aggregation_timeout=self.aggregation_timeout)
        server.error.connect(self._on_error)
        self.server = server
        address = server.start(port, architecture=architecture)
        if address is None:
            raise CommandError(self._failure or f"Cannot start a LAN session on port {port}")
        self.lan_address = address
        self.client.connect_to_local_server(server.port, name)
        self._wait_entered(f"The LAN session on port {port}")
        return address

    def join_lan(self, host: str, port: int, name: str) -> None:
        self.lan_address = f"{host}:{port}"
        self.client.connect_direct(host, port, name)
        self._wait_entered(f"The LAN host at {host}:{port}")

    def _wait_entered(self, who: str) -> str:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not self._entered.wait(0.1):
            if self._failure is not None:
                raise CommandError(self._failure)
            if time.monotonic() > deadline:
                self.leave()
                raise CommandError(f"{who} did not answer within {CONNECT_TIMEOUT:g} s")
        return self.code

    def leave(self) -> None:
        self._leaving = True
        self.client.disconnect()
        if self.server is not None:
            self.server.stop()

    # --- waiting ----------------------------------------------------------------------------

    def wait_for_members(self, wanted: int, start_early: threading.Event) -> None:
        """Until `wanted` others are in the room, or `start_early` is set."""
        while len(self.others) < wanted and not start_early.is_set():
            self._check_connection()
            self._changed.wait(0.2)
            self._changed.clear()

    def wait_for_architecture(self) -> str:
        while self.architecture is None:
            self._check_connection()
            self._changed.wait(0.2)
            self._changed.clear()
        return self.architecture

    def wait_for_plan(self, timeout: float | None) -> dict | None:
        """The host's plan, waiting up to `timeout` seconds (None: until it comes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.plan is None and (deadline is None or time.monotonic() < deadline):
            self._check_connection()
            self._changed.wait(0.1)
            self._changed.clear()
        return self.plan

    def wait_for_global_model(self, aggregation_round: int, timeout: float) -> dict | None:
        """The host's global model of `aggregation_round` (or a later one): the one already
        here, else asked for and waited for up to `timeout` seconds; None if it did not come."""
        client = self.client
        if client.global_weights is None or client.aggregation_round < aggregation_round:
            client.request_global_model()
        deadline = time.monotonic() + timeout
        while client.global_weights is None or client.aggregation_round < aggregation_round:
            self._check_connection()
            if time.monotonic() > deadline:
                return None
            self._changed.wait(0.1)
            self._changed.clear()
        return client.global_weights

    def wait_for_others_to_leave(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.others and time.monotonic() < deadline and not self.lost.is_set():
            self._changed.wait(0.2)
            self._changed.clear()
        return not self.others

    def _check_connection(self) -> None:
        if self.lost.is_set():
            raise CommandError(f"Lost the connection to the relay ({self._failure or 'closed'})")

    # --- signal callbacks (on the client's thread) ------------------------------------------

    def _on_entered(self, code: str) -> None:
        self._entered.set()

    def _on_error(self, text: str) -> None:
        if self._entered.is_set() and self.report_errors:
            print(f"warning: {text}", file=sys.stderr, flush=True)
        self._failure = text

    def _on_joined(self, name: str) -> None:
        self.say(f"{name} joined the room")
        self._changed.set()

    def _on_left(self, name: str) -> None:
        self.say(f"{name} left the room")
        self._changed.set()

    def _on_architecture(self, architecture: str) -> None:
        self.architecture = architecture
        self._changed.set()

    def _on_control(self, sender: str, control: dict) -> None:
        if sender != self.client.host_id or self.client.is_host:
            return  # only the host runs the session
        if control.get("kind") == session_plan.STOP:
            self.say("The host stopped the rounds")
            self.host_stopped.set()
        try:
            plan = session_plan.received_plan(control)
        except session_plan.InvalidPlan as exc:
            self.invalid_plan = str(exc)
            plan = None
        if plan is not None:
            self.plan = plan
        self._changed.set()

    def _on_disconnected(self) -> None:
        if not self._leaving:
            self.lost.set()
            self._changed.set()
