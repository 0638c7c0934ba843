"""The app's one session: a SyncClient (relay room or LAN member), a HostClient plus an
AggregationServer (LAN host), forwarded to the pages as Qt signals.

It is the one source of truth the pages show: the connection state (`state`, `state_text`,
told by `state_changed`), the names of the people in the room (`names`, duplicates with a
suffix), the event log (`events`, told by `event_logged`) and the host's plan
(`plan_received`). The state is read from the client itself (a short timer compares it), so
a relay that goes away shows as "Reconnecting…" on every page at once.

A fresh client is made for each Create or Join, so a failed attempt (wrong code, relay down)
leaves nothing half-open behind, and emissions of an abandoned client are ignored. The
client's psygnal callbacks already run on the GUI thread (network/qt.py).
"""

from __future__ import annotations

import logging
import threading
import time

from qtpy.QtCore import QObject, QTimer, Signal

from ..network import AggregationServer, HostClient, SyncClient
from ..network.session import looks_like_session_code, parse_lan_address
from ..training import session_plan
from ..training.session_plan import OPT_IN, OPT_OUT, PLAN, REMOVED, STOP
from .validators import is_complete_room_code

log = logging.getLogger(__name__)

IDLE, CONNECTING, CONNECTED, RECONNECTING = "idle", "connecting", "connected", "reconnecting"
#: How often the state is compared with the client's (milliseconds).
STATE_POLL_MS = 250

# The control messages (the host's plan and its stop, a member's opting out or back in, the
# host removing a member) have their home in training/session_plan.py, shared with the CLI.
__all__ = ["OPT_IN", "OPT_OUT", "PLAN", "REMOVED", "STOP", "SessionController", "unique_names"]


def unique_names(users: list[dict]) -> dict[str, str]:
    """user id -> display name, in joining order; a name already taken gets " (2)", " (3)"
    (two people who both are "root" stay apart)."""
    names: dict[str, str] = {}
    seen: dict[str, int] = {}
    for user in users:
        user_id = user.get("user_id", "")
        name = user.get("display_name") or user_id
        seen[name] = seen.get(name, 0) + 1
        names[user_id] = name if seen[name] == 1 else f"{name} ({seen[name]})"
    return names


class SessionController(QObject):
    state_changed = Signal(str)  # IDLE, CONNECTING, CONNECTED or RECONNECTING
    session_ready = Signal(str)  # the room code, or the LAN address members type in
    participants_changed = Signal(list)  # [{user_id, display_name}, ...]
    status_changed = Signal(str)
    error_occurred = Signal(str)
    errors_resolved = Signal()  # connected (again): earlier connection errors are over
    event_logged = Signal(str)  # "12:03:05  Bob joined"
    contribution_received = Signal(str, dict)  # host only: (user id, {epoch, loss, num_samples})
    round_completed = Signal(int, list)  # host only: (round, contributor ids)
    plan_received = Signal(dict)  # member: the host's plan (see TrainingPage)
    stop_requested = Signal()  # member: the host stopped the rounds
    removed = Signal()  # member: the host removed us from the session

    def __init__(self, client_factory=SyncClient, host_client_factory=HostClient):
        super().__init__()
        self._client_factory = client_factory
        self._host_client_factory = host_client_factory
        self.client: SyncClient | None = None
        self.server: AggregationServer | None = None
        self.state = IDLE
        self.mode = "relay"
        self.session_label = ""  # room code or LAN address, once known
        self.events: list[str] = []
        self.names: dict[str, str] = {}  # user id -> unique display name (current and past)
        self.opted_out: set[str] = set()  # host: members who do not follow the plan
        self.active_plan: dict | None = None  # host: the plan being run (sent to late joiners)
        self.plan_seen = False  # member: the host sent a plan (an original host never does)
        self._timer = QTimer(self)
        self._timer.setInterval(STATE_POLL_MS)
        self._timer.timeout.connect(self._check_state)
        self._timer.start()

    # --- starting a session -------------------------------------------------------------

    def create_relay_session(self, name: str, relay_url: str | None, private: bool = True) -> None:
        """A private room (the default: end-to-end encrypted, code K7QX2M-4HRT) or, with
        private=False, an open one the original app can join."""
        client = self._new_client(self._client_factory, "relay")
        client.create_relay_room(name, relay_url or None, private=private)

    def join_relay_session(self, code: str, name: str, relay_url: str | None) -> None:
        client = self._new_client(self._client_factory, "relay")
        client.join_relay_room(code, name, relay_url or None)

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
            self._listen_as_lan_host(server)
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
        was_in = self.state != IDLE
        self._drop_session()
        self._set_state(IDLE)
        if was_in:
            self.log_event("You left the session")

    # --- what the pages read --------------------------------------------------------------

    @property
    def participants(self) -> list[dict]:
        return self.client.users if self.client is not None else []

    @property
    def is_host(self) -> bool:
        return self.client is not None and self.client.is_host

    @property
    def host_connection(self):
        """Where the host's plan, stop and starting model go out: the relay room's host
        client, or (hosting a LAN session) the session's own host connection, whose messages
        reach every member (members of a LAN session talk to that connection only). None
        when this window is not the host."""
        if self.server is not None and self.mode == "lan":
            return self.server.host_client
        return self.client if self.is_host else None

    @property
    def sets_own_plan(self) -> bool:
        """Whether this window starts rounds itself: the host (of a relay room or a LAN
        session), and a member of the original app's LAN session, whose host sends no plan
        (each member presses Start, with the same plan). Ours is told by its welcome, which
        names the relay it runs on (the client's capabilities)."""
        if self.state == IDLE or self.client is None:
            return False
        if self.host_connection is not None:
            return True
        original_lan_host = getattr(self.client, "capabilities", None) is None
        return self.mode == "lan" and original_lan_host and not self.plan_seen

    @property
    def position(self) -> int:
        """Our place in the room in joining order: 1 for the host, 2 for the first to join."""
        client = self.client
        ids = [u.get("user_id") for u in self.participants]
        if client is None or client.user_id not in ids:
            return 1
        return ids.index(client.user_id) + 1

    @property
    def state_text(self) -> str:
        """The one sentence every page and the status bar show for the connection."""
        client = self.client
        if self.state == CONNECTED and client is not None:
            role = "host" if client.is_host else "member"
            return f"Connected: {client.connection_info} ({role})"
        if self.state == RECONNECTING:
            return "Reconnecting… (the connection to the relay was lost)"
        if self.state == CONNECTING:
            return "Connecting…"
        return "Not connected"

    def name_of(self, user_id: str) -> str:
        return self.names.get(user_id, user_id)

    def log_event(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')}  {text}"
        self.events.append(line)
        self.event_logged.emit(line)

    # --- the host runs the session ----------------------------------------------------------

    def send_plan(self, plan: dict, to: list[str] | None = None) -> None:
        """Host: tells the room (or the members in `to`) the plan it starts; `active_plan`
        is sent again to whoever joins while it runs."""
        host = self.host_connection
        if host is not None:
            host.send_control(session_plan.plan_control(plan), to)

    def publish_starting_model(self, weights: dict, plan: dict) -> dict:
        """Host: the saved model `plan` starts from, to every member as the global model of
        the round before its first; returns what they hold (ValueError if it did not go)."""
        host = self.host_connection
        if host is None:
            raise ValueError("only the host sends a starting model")
        return session_plan.publish_starting_model(host, weights, plan)

    def send_stop(self) -> None:
        host = self.host_connection
        if host is not None:
            host.send_control({"kind": STOP})

    def remove_member(self, user_id: str) -> None:
        """Host: the member is told to leave (our app obeys) and, whatever it does, its
        pushes are no longer awaited or averaged."""
        client, host = self.client, self.host_connection
        if client is None or host is None or user_id in (client.user_id, host.user_id):
            return
        host.exclude_member(user_id)
        host.send_control({"kind": REMOVED}, [user_id])
        self.log_event(f"You removed {self.name_of(user_id)} from the session")

    def set_following(self, following: bool) -> None:
        """Member: whether it trains the host's plan; the host stops waiting for it if not."""
        client = self.client
        if client is None or client.is_host or client.host_id is None:
            return
        client.send_control({"kind": OPT_IN if following else OPT_OUT}, [client.host_id])
        self.log_event("You follow the host's plan" if following else "You opted out of the plan")

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
        client.user_list_updated.connect(mine(self._on_users))
        client.user_joined_room.connect(mine(self._on_user_joined))
        client.user_left_room.connect(mine(self._on_user_left))
        client.sync_status.connect(mine(self._on_sync_status))
        client.error.connect(mine(self._on_error))
        client.weights_received.connect(mine(self._on_weights_received))
        client.round_complete.connect(mine(self._on_round_complete))
        client.global_model_received.connect(mine(self._on_global_model))
        client.control_received.connect(mine(self._on_control))
        client.verification_code.connect(mine(self._on_verification))
        return client

    def _listen_as_lan_host(self, server: AggregationServer) -> None:
        """Hosting a LAN session: the members' opt-outs reach the session's host connection,
        and late joiners appear there (a LAN member hears of nobody joining)."""
        host = server.host_client
        if host is None:
            return

        def mine(handler):
            return lambda *args: handler(*args) if server is self.server else None

        host.control_received.connect(
            mine(lambda sender, control: self._host_control(host, sender, control))
        )
        host.user_joined_room.connect(mine(lambda name: self._send_plan_to_newcomer(host, name)))

    def _drop_session(self, keep_server: bool = False) -> None:
        client, self.client = self.client, None
        self.active_plan = None
        self.plan_seen = False
        self.opted_out.clear()
        if client is not None:
            client.disconnect()
        if not keep_server:
            server, self.server = self.server, None
            if server is not None:
                server.stop()
            self.session_label = ""
        self.participants_changed.emit([])

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        if state == RECONNECTING:
            self.log_event("Lost the connection to the relay; reconnecting")
        elif state == CONNECTED and previous == RECONNECTING:
            self.log_event("The relay connection is back")
        if state == CONNECTED:
            self.errors_resolved.emit()
        self.state_changed.emit(state)

    def _check_state(self) -> None:
        """The client knows whether it is in the room: follow it (CONNECTED <-> RECONNECTING);
        connecting and leaving are told by its signals."""
        client = self.client
        if client is None or self.state not in (CONNECTED, RECONNECTING):
            return
        if client.is_connected:
            self._set_state(CONNECTED)
        elif getattr(client, "is_reconnecting", False):
            self._set_state(RECONNECTING)

    def _on_room(self, code: str) -> None:
        self.session_label = code
        self.session_ready.emit(code)

    def _on_connected(self) -> None:
        client = self.client
        first = self.state == CONNECTING
        self._set_state(CONNECTED)
        if client is not None:
            role = "the host" if client.is_host else "a member"
            self.status_changed.emit(f"Connected to {client.connection_info} as {role}")
            if first:
                where = f"room {client.room_code}" if client.room_code else self.session_label
                verb = "created" if client.is_host and client.room_code else "joined"
                self.log_event(f"You {verb} {where}")
        if self.mode == "lan" and self.session_label:
            self.session_ready.emit(self.session_label)

    def _on_disconnected(self) -> None:
        self._set_state(IDLE)
        self.status_changed.emit("Disconnected")

    def _on_users(self, users: list) -> None:
        self.names.update(unique_names(users))
        self.participants_changed.emit(users)

    def _on_user_joined(self, display_name: str) -> None:
        users = self.participants
        self.names.update(unique_names(users))
        joined = [u for u in users if (u.get("display_name") or u.get("user_id")) == display_name]
        user_id = joined[-1].get("user_id", "") if joined else ""
        self.log_event(f"{self.names.get(user_id, display_name)} joined")
        if self.is_host:
            self._send_plan_to_newcomer(self.client, display_name)

    def _send_plan_to_newcomer(self, host, display_name: str) -> None:
        """A late joiner follows the plan from the round under way, with the global model."""
        joined = [
            u for u in host.users if (u.get("display_name") or u.get("user_id")) == display_name
        ]
        user_id = joined[-1].get("user_id", "") if joined else ""
        client = self.client
        if not user_id or client is None or user_id == client.user_id:
            return
        if self.mode == "lan":  # the relay tells only the LAN session's host of joins
            self.log_event(f"{display_name} joined")
        if self.active_plan is None:
            return
        current = min(client.aggregation_round + 1, self.active_plan["last_round"])
        current = max(current, self.active_plan["first_round"])
        self.send_plan(dict(self.active_plan, late=True, current_round=current), [user_id])

    def _on_user_left(self, display_name: str) -> None:
        present = {u.get("user_id") for u in self.participants}
        gone = [
            uid
            for uid, name in self.names.items()
            if uid not in present and name.split(" (")[0] == display_name
        ]
        self.log_event(f"{self.names.get(gone[-1], display_name) if gone else display_name} left")

    def _host_control(self, host, sender: str, control: dict) -> None:
        """Host: a member opts out of the plan or back in."""
        kind = control.get("kind")
        if kind not in (OPT_OUT, OPT_IN) or not sender or sender == host.user_id:
            return
        out = kind == OPT_OUT
        (self.opted_out.add if out else self.opted_out.discard)(sender)
        host.exclude_member(sender, out)
        self.participants_changed.emit(self.participants)  # "(opted out)" shows
        self.log_event(
            f"{self.name_of(sender)} "
            + ("opted out of the plan" if out else "follows the plan again")
        )

    def _on_verification(self, peer: str, digits: str) -> None:
        # Private room: an optional check by voice; both sides see the same six digits.
        client = self.client
        other = "the host" if client is not None and peer == client.host_id else None
        self.log_event(f"Verification with {other or self.name_of(peer)}: {digits}")

    def _on_sync_status(self, text: str) -> None:
        self.status_changed.emit(text)
        if text.startswith("The host left"):
            self.log_event(text)
        self._check_state()

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
        if self.client is not None and user_id != self.client.user_id:
            number = info.get("epoch")
            which = f" for round {number}" if isinstance(number, int) else ""
            self.log_event(f"{self.name_of(user_id)} pushed weights{which}")

    def _on_round_complete(self, round_number: int, contributors: list) -> None:
        if not contributors:  # a round closes with pushes: this is a starting model
            return  # (session_plan.publish_starting_model; the Training page logs it)
        self.round_completed.emit(round_number, list(contributors))
        who = ", ".join(self.name_of(uid) for uid in contributors) or "nobody"
        self.log_event(f"Round {round_number} closed: averaged {who}")

    def _on_global_model(self, weights: dict) -> None:
        client = self.client
        if client is None or client.is_host:
            return
        if client.aggregation_round != 0:
            self.log_event(f"Round {client.aggregation_round}: global model received")
        elif self.server is None:  # a LAN host logged sending it
            self.log_event("Received the host's starting model")

    def _on_control(self, sender: str, control: dict) -> None:
        client = self.client
        if client is None:
            return
        kind = control.get("kind")
        if client.is_host:
            self._host_control(client, sender, control)
            return
        if sender != client.host_id:
            return  # only the host runs the session
        if kind == PLAN:
            if self.server is not None:
                return  # hosting a LAN session: our own plan, back from its host connection
            try:
                plan = session_plan.received_plan(control)
            except session_plan.InvalidPlan as exc:
                self.log_event(f"The host's plan cannot be followed: {exc}")
                return
            self.plan_seen = True
            self.plan_received.emit(plan)
        elif kind == STOP:
            self.log_event("The host stopped the rounds")
            self.stop_requested.emit()
        elif kind == REMOVED:
            self.log_event("The host removed you from the session")
            self.removed.emit()
            self.leave()
            self.error_occurred.emit(
                "The host removed you from the session: ask the host before joining again"
            )
