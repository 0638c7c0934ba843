"""The app's one session: a SyncClient (relay room or LAN member), a HostClient plus an
AggregationServer (LAN host), forwarded to the pages as Qt signals.

A fresh client is made for each Create or Join, so a failed attempt (wrong code, relay down)
leaves nothing half-open behind, and emissions of an abandoned client are ignored. The
client's psygnal callbacks already run on the GUI thread (network/qt.py).
"""

from __future__ import annotations

import logging
import threading

from qtpy.QtCore import QObject, Signal

from ..network import AggregationServer, HostClient, SyncClient
from ..network.session import looks_like_session_code, parse_lan_address
from .validators import is_complete_room_code

log = logging.getLogger(__name__)

IDLE, CONNECTING, CONNECTED = "idle", "connecting", "connected"


class SessionController(QObject):
    state_changed = Signal(str)  # IDLE, CONNECTING or CONNECTED
    session_ready = Signal(str)  # the room code, or the LAN address members type in
    participants_changed = Signal(list)  # [{user_id, display_name}, ...]
    status_changed = Signal(str)
    error_occurred = Signal(str)
    contribution_received = Signal(str, dict)  # host only: (user id, {epoch, loss, num_samples})
    round_completed = Signal(int, list)  # host only: (round, contributor user ids)

    def __init__(self, client_factory=SyncClient, host_client_factory=HostClient):
        super().__init__()
        self._client_factory = client_factory
        self._host_client_factory = host_client_factory
        self.client: SyncClient | None = None
        self.server: AggregationServer | None = None
        self.state = IDLE
        self.mode = "relay"
        self.session_label = ""  # room code or LAN address, once known

    # --- starting a session -------------------------------------------------------------

    def create_relay_session(self, name: str, relay_url: str | None) -> None:
        client = self._new_client(self._client_factory, "relay")
        client.create_relay_room(name, relay_url or None)

    def join_relay_session(self, code: str, name: str, relay_url: str | None) -> None:
        client = self._new_client(self._client_factory, "relay")
        client.connect_relay(code, name, relay_url or None)

    def create_lan_session(self, name: str, port: int) -> None:
        """Starts an AggregationServer on `port` (on a thread: starting it waits for its
        relay process), then joins it as a member with a HostClient."""
        self._drop_session()
        server = AggregationServer()
        self.server = server
        self._set_state(CONNECTING)
        self.status_changed.emit(f"Starting the LAN session on port {port}…")

        def join_own_server(address: str) -> None:
            if server is not self.server:
                server.stop()  # the user left (or started over) while it was starting
                return
            if self.client is not None:
                return
            self.session_label = address
            client = self._new_client(self._host_client_factory, "lan", keep_server=True)
            client.connect_to_local_server(server.port or port, name)

        server.error.connect(lambda text: self._server_error(server, text))
        server.server_started.connect(join_own_server)
        threading.Thread(
            target=server.start, args=(port,), name="start LAN session", daemon=True
        ).start()

    def join_lan_session(self, address: str, name: str) -> None:
        if looks_like_session_code(address) and is_complete_room_code(address):
            self.error_occurred.emit(
                f"Address {address.strip()!r} looks like a room code, not a LAN address: "
                "switch the mode to Relay to join a room"
            )
            return
        try:
            host, port = parse_lan_address(address)
        except ValueError as exc:
            self.error_occurred.emit(f"LAN address not usable: {exc}")
            return
        client = self._new_client(self._client_factory, "lan")
        self.session_label = f"{host}:{port}"
        client.connect_direct(host, port, name)

    def leave(self) -> None:
        """Says goodbye to the room (SyncClient.disconnect) and stops a LAN server."""
        self._drop_session()
        self._set_state(IDLE)

    # --- what the pages read --------------------------------------------------------------

    @property
    def participants(self) -> list[dict]:
        return self.client.users if self.client is not None else []

    @property
    def is_host(self) -> bool:
        return self.client is not None and self.client.is_host

    def name_of(self, user_id: str) -> str:
        for user in self.participants:
            if user.get("user_id") == user_id:
                return user.get("display_name") or user_id
        return user_id

    # --- internals ----------------------------------------------------------------------

    def _new_client(self, factory, mode: str, keep_server: bool = False) -> SyncClient:
        self._drop_session(keep_server=keep_server)
        client = factory()
        self.client, self.mode = client, mode
        self._set_state(CONNECTING)

        def mine(handler):
            # Emissions of a client the user has since abandoned are ignored.
            return lambda *args: handler(*args) if client is self.client else None

        client.room_created.connect(mine(self._on_room))
        client.room_joined.connect(mine(self._on_room))
        client.connected.connect(mine(self._on_connected))
        client.disconnected.connect(mine(self._on_disconnected))
        client.user_list_updated.connect(mine(self.participants_changed.emit))
        client.sync_status.connect(mine(self.status_changed.emit))
        client.error.connect(mine(self._on_error))
        client.weights_received.connect(mine(self._on_weights_received))
        client.round_complete.connect(mine(self._on_round_complete))
        return client

    def _drop_session(self, keep_server: bool = False) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.disconnect()
        if not keep_server:
            server, self.server = self.server, None
            if server is not None:
                server.stop()
            self.session_label = ""
        self.participants_changed.emit([])

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

    def _on_room(self, code: str) -> None:
        self.session_label = code
        self.session_ready.emit(code)

    def _on_connected(self) -> None:
        self._set_state(CONNECTED)
        client = self.client
        if client is not None:
            role = "the host" if client.is_host else "a member"
            self.status_changed.emit(f"Connected to {client.connection_info} as {role}")
        if self.mode == "lan" and self.session_label:
            self.session_ready.emit(self.session_label)

    def _on_disconnected(self) -> None:
        self._set_state(IDLE)
        self.status_changed.emit("Disconnected")

    def _on_error(self, text: str) -> None:
        self.error_occurred.emit(text)
        client = self.client
        if self.state == CONNECTING and client is not None and not client.is_connected:
            # Creating or joining failed: the page is usable again for the next attempt.
            self._set_state(IDLE)

    def _server_error(self, server: AggregationServer, text: str) -> None:
        if server is not self.server:
            return
        self.error_occurred.emit(text)
        if self.client is None:
            self.server = None
            self._set_state(IDLE)

    def _on_weights_received(self, user_id: str, info: dict) -> None:
        self.contribution_received.emit(user_id, dict(info))

    def _on_round_complete(self, round_number: int, contributors: list) -> None:
        self.round_completed.emit(round_number, list(contributors))
