"""SyncClient and HostClient: the app-facing session API, a thin driver on the transport.

A SyncClient is one member of a room on a relay (or of a LAN session, see server.py). Methods
return at once; what happens is reported through psygnal signals, emitted on the client's
dispatcher thread (never the libwebsockets thread), so no Qt is needed; inside a Qt
application callbacks run on the GUI thread instead (qt.py). The room creator is the host:
members push weights to it only, it averages a round and broadcasts one `global_model`.

What a session does — rooms, members, the host's rounds, reconnecting, private and mixed
rooms — is decided without I/O by `room_session.RoomSession`. This driver feeds it what
happens (a connection opened, a message or a whole transfer arrived, the connection closed,
a timer fired, the user called a method) and carries out the actions it returns: it owns the
connection, the dispatcher thread, the sender thread that keeps sends in order and the
timers; the bytes of what is sent are wire_sender.py's.

What goes on the wire (docs/protocol.md, docs/network-api.md):

* every binary message we send carries the frame header, so a receiver reassembles it by
  (sender, transfer id) and concurrent senders never mix (the C transport does, into one
  buffer per transfer); the weights are the data-only codec format, so a framed message is
  self-contained (epoch, loss and num_samples are inside);
* the original client's JSON announcements (`weights_push`, `chunk_start`/`chunk_end`,
  `global_model`, `training_data`) still precede the binaries, marked `"framed": true`;
* binaries without the header come from original clients: they are paired with the
  announcement that preceded them, as the original client did. Nothing is ever unpickled.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np

from . import defaults, relay_config, transport
from .codec import encoded_size
from .crop_png import encode_png
from .host import HostRounds
from .mixed_room import MixedRoomPart
from .private_code import SECRET_MIN_LENGTH, InvalidRoomCode, parse_room_code
from .protocol import (
    FrameKind,
    Message,
    RelayCapabilities,
    create_training_data_message,
    create_weights_push_message,
)
from .qt import Signal
from .reconnect import ReconnectPolicy
from .room_session import MemberRole, RoomSession
from .session import generate_user_id
from .session_actions import (
    CloseConnection,
    Deliver,
    Emit,
    Leave,
    OpenConnection,
    Report,
    ResendLastTransfer,
    SendGlobalData,
    SendGlobalModel,
    SendJson,
    StartTimer,
)
from .wire_sender import WireSender

log = logging.getLogger(__name__)


class SyncClient:
    """One member of a relay room (or of a LAN session). See docs/network-api.md."""

    connected = Signal()
    disconnected = Signal()
    global_model_received = Signal(dict)
    user_list_updated = Signal(list)
    sync_status = Signal(str)
    error = Signal(str)
    architecture_received = Signal(str)
    room_created = Signal(str)
    room_joined = Signal(str)
    model_requested = Signal(str)
    user_joined_room = Signal(str)
    training_data_received = Signal(bytes, bytes, dict)
    # Ours, beyond the original's signals.
    user_left_room = Signal(str)
    weights_received = Signal(str, dict)  # host: (user_id, metadata of the push)
    round_complete = Signal(int, list)  # host: (aggregation round, contributor ids)
    control_received = Signal(str, dict)  # (sender user id, a send_control object)
    verification_code = Signal(str, str)  # private room: (peer user id, its six digits)

    def __init__(
        self,
        *,
        aggregation_timeout: float = defaults.AGGREGATION_TIMEOUT,
        min_contributors: int = defaults.MIN_CONTRIBUTORS,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        ping_interval: float | None = defaults.PING_INTERVAL,
        ping_timeout: float = defaults.PING_TIMEOUT,
        reconnect_attempts: int = defaults.RECONNECT_ATTEMPTS,
        reconnect_base_delay: float = defaults.RECONNECT_BASE_DELAY,
        reconnect_max_delay: float = defaults.RECONNECT_MAX_DELAY,
        ca_file: str | None = None,
        headers: dict[str, str] | None = None,
        accept_legacy_weights: bool = False,
        compression: str | None = "auto",
        role: MemberRole | None = None,
    ):
        """`compression`: weights as deltas against the global model both sides hold
        (deltas.py): "auto" (q8-delta), "q8-delta", "topk", or None (always whole float16).
        `role`: the LAN server's hub role (server.py); apps leave it out."""
        self._session = RoomSession(
            generate_user_id(),
            rounds=HostRounds(timeout=aggregation_timeout, min_contributors=min_contributors),
            reconnect=ReconnectPolicy(
                reconnect_attempts, reconnect_base_delay, reconnect_max_delay
            ),
            mixed=MixedRoomPart(accept_legacy_weights),
            role=role,
            compression=compression,
        )
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.ca_file = ca_file
        self.headers = headers
        self._lock = threading.RLock()  # held while the session takes one event
        self._connection: transport.Connection | None = None
        self._dispatcher: transport.MessageDispatcher | None = None
        self._sender_thread = threading.local()  # .is_sender: True on the sender thread
        self._sender = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sync-send", initializer=self._mark_sender_thread
        )
        self._connection_lost_at = 0.0  # time.monotonic() of the last unexpected drop
        # Notified after every event the session took (entered a room, lost the connection,
        # a member came back...), for a send waiting to go again after a drop.
        self._session_changed = threading.Condition(self._lock)
        self._wire = WireSender(
            self._session,
            lambda: self._connection,
            lambda: self.is_connected,
            self._session_changed,
        )

    # --- the driver: events in, actions out -----------------------------------------------

    def _feed(self, event: Callable[..., list], *args: Any) -> None:
        """Feeds one event into the session and carries out what it asks."""
        with self._lock:
            actions = event(*args)
            # A private room's key (new, rotated, or a new connection after a drop) reaches the
            # connection, which then opens transfers as their chunks land; a no-op otherwise.
            self._session.private.sync_connection(self._connection)
            self._session_changed.notify_all()
        self._run(actions)

    def apply_to_session(self, event: Callable[[RoomSession], list]) -> None:
        """A composed part's own call into the session (the LAN server's
        `set_global_weights`, say): `event(session)` returns actions, carried out here."""
        self._feed(event, self._session)

    def _run(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Emit):
                getattr(self, action.signal).emit(*action.args)
            elif isinstance(action, SendJson):
                if action.now:
                    with contextlib.suppress(transport.ConnectionClosed):
                        self._wire.send_json(action.message, action.to)
                else:
                    self._submit(self._wire.send_json, action.message, action.to)
            elif isinstance(action, Report):
                self._report(action.text)
            elif isinstance(action, SendGlobalModel):
                self._submit(
                    self._wire.send_global_model,
                    action.weights,
                    action.aggregation_round,
                    action.contributors,
                    action.to,
                )
            elif isinstance(action, SendGlobalData):
                self._submit(
                    self._wire.send_global_data,
                    action.data,
                    action.aggregation_round,
                    action.contributors,
                    action.to,
                )
            elif isinstance(action, StartTimer):
                timer = threading.Timer(
                    action.delay, self._feed, (self._session.timer_fired, action.name, action.token)
                )
                timer.daemon = True
                timer.start()
            elif isinstance(action, OpenConnection):
                threading.Thread(target=self._open, name="sync-connect", daemon=True).start()
            elif isinstance(action, CloseConnection):
                connection = self._connection
                if connection is not None:
                    threading.Thread(target=connection.close, daemon=True).start()
            elif isinstance(action, Leave):
                # Asked on the dispatcher thread: disconnect() waits for queued sends, which
                # must not block the thread that reads the connection.
                threading.Thread(target=self.disconnect, name="sync-leave", daemon=True).start()
            elif isinstance(action, ResendLastTransfer):
                if self._wire.unconfirmed(action.transfer, self._connection_lost_at):
                    self._submit(self._wire.resend_last_transfer, action.transfer)
            elif isinstance(action, Deliver):
                action.callback(*action.args)
            else:
                raise TypeError(f"unknown session action {action!r}")

    # --- properties ---------------------------------------------------------------------

    @property
    def user_id(self) -> str:
        return self._session.user_id

    @user_id.setter
    def user_id(self, value: str) -> None:
        self._session.user_id = value

    @property
    def display_name(self) -> str:
        return self._session.display_name

    @property
    def aggregation_timeout(self) -> float:
        return self._session.rounds.timeout

    @property
    def min_contributors(self) -> int:
        return self._session.rounds.min_contributors

    @property
    def reconnect_attempts(self) -> int:
        return self._session.reconnect.attempts

    @property
    def reconnect_base_delay(self) -> float:
        return self._session.reconnect.base_delay

    @property
    def reconnect_max_delay(self) -> float:
        return self._session.reconnect.max_delay

    @property
    def accept_legacy_weights(self) -> bool:
        """Read weights in the original app's (pickle) format; mixed_room.py."""
        return self._session.mixed.accept_legacy_weights

    @accept_legacy_weights.setter
    def accept_legacy_weights(self, value: bool) -> None:
        self._session.mixed.accept_legacy_weights = bool(value)

    @property
    def is_connected(self) -> bool:
        """In a room (or LAN session) with an open connection."""
        connection = self._connection
        return self._session.in_room and connection is not None and connection.open

    @property
    def connection_info(self) -> str:
        session = self._session
        if session.mode == "relay" and session.routing_code:
            return f"room {session.routing_code} via {session.url}"
        if session.mode == "direct":
            return session.url
        return "not connected"

    @property
    def room_code(self) -> str | None:
        """The code to share: with its secret part in a private room (`K7QX2M-4HRT`). Only
        `routing_code` ever goes to the relay."""
        return self._session.shown_code

    @property
    def routing_code(self) -> str | None:
        """The relay's 6-character code of the room."""
        return self._session.routing_code

    @property
    def is_relay_mode(self) -> bool:
        return self._session.mode == "relay"

    @property
    def is_receiving_chunks(self) -> bool:
        """An original client's transfer is part-way here (framed ones are assembled in C)."""
        return self._session.receiving

    @property
    def users(self) -> list[dict]:
        """The room's members, `[{user_id, display_name}, ...]` in joining order."""
        return list(self._session.users)

    @property
    def host_id(self) -> str | None:
        """The room's host: the creator as the relay attests it (`host_id`), or with a relay
        that does not (v1), the earliest member."""
        return self._session.host_id

    @property
    def is_host(self) -> bool:
        return self._session.is_host

    @property
    def host_trains(self) -> bool:
        """Host: whether its own push belongs in every round. Set it before the first round
        when the host trains too; its first `send_weights` sets it anyway."""
        return self._session.rounds.host_trains

    @host_trains.setter
    def host_trains(self, value: bool) -> None:
        self._feed(self._session.set_host_trains, value)

    @property
    def is_reconnecting(self) -> bool:
        """The connection dropped and the client is trying to get back into the room."""
        return self._session.reconnecting

    @property
    def capabilities(self) -> RelayCapabilities | None:
        """What the relay advertised; None for a v1 relay (the original Worker)."""
        return self._session.capabilities

    @property
    def global_weights(self) -> dict | None:
        return self._session.global_weights

    @property
    def aggregation_round(self) -> int:
        return self._session.aggregation_round

    @property
    def global_contributors(self) -> int | None:
        """How many members' pushes the newest global model averages; None when unknown (say,
        from an original host, or a model set by hand before any round)."""
        return self._session.global_contributors

    @property
    def original_members(self) -> list[str]:
        """The other members taken for original-app clients: on a v1 relay, those that have
        not (yet) announced themselves with peer_hello. While there are any, transfers go in
        the original format (docs/protocol.md, "Mixed rooms")."""
        others = [u for u in self._session.member_ids() if u != self.user_id]
        return self._session.mixed.originals(others)

    # --- private rooms (private_client.py) ------------------------------------------------

    @property
    def is_private(self) -> bool:
        """The room's traffic is end-to-end encrypted (its code has a secret part)."""
        return self._session.private.is_private

    @property
    def private_ready(self) -> bool:
        """Host: always (it draws the group key); member: holds the group key."""
        return self._session.private.ready

    @property
    def verification_codes(self) -> dict[str, str]:
        """Per peer (user id), six digits both sides see when they hold the same CPace key:
        the host has one per member, a member one for the host. An optional check by voice."""
        return self._session.private.verification_codes

    @property
    def private_room_closed(self) -> bool:
        """Host: the room refuses new members after 3 failed attempts, until reopened."""
        return self._session.private.closed

    def reopen_private_room(self) -> None:
        """Host: admits new members again after the room closed on failed attempts."""
        self._feed(self._session.private.reopen)

    # --- connecting ---------------------------------------------------------------------

    def create_relay_room(
        self,
        user_name: str,
        relay_url: str | None = None,
        private: bool = True,
        secret_length: int = SECRET_MIN_LENGTH,
    ) -> None:
        """Creates a room; `room_created(full code)` follows, or `error`. Private (default):
        the code gets a secret part that only the people you give it to know, and everything
        the room exchanges is end-to-end encrypted. `private=False`: an open room, which the
        original app can join too (and whoever runs the relay can read)."""
        if self._already_connected():
            return
        # raises ValueError on a secret length out of range, before connecting
        self._session.private.will_create(private, secret_length)
        self._start_relay(user_name, relay_url, room_code=None)

    def join_relay_room(self, code: str, user_name: str, relay_url: str | None = None) -> None:
        """Joins a room by the code the host shared: `K7QX2M-4HRT` (private; with or without
        the dash, any case) or the 6 characters of an open room. `room_joined(code)` follows
        (in a private room once the key exchange succeeded), or `error` saying why not."""
        try:
            parsed = parse_room_code(code or "")
        except InvalidRoomCode as exc:
            self._report(f"Cannot join: {exc}")
            return
        if self._already_connected():
            return
        self._session.private.will_join(parsed)
        self._start_relay(user_name, relay_url, room_code=parsed.routing)

    def connect_relay(self, room_code: str, user_name: str, relay_url: str | None = None) -> None:
        """The original client's name for `join_relay_room`."""
        self.join_relay_room(room_code, user_name, relay_url)

    def connect_direct(self, host_ip: str, port: int, user_name: str) -> None:
        """Joins a LAN session hosted by an AggregationServer at host_ip:port; `connected`
        follows once the host has welcomed this member, or `error`."""
        if not isinstance(port, int) or not 0 < port < 65536:
            self._report(f"Cannot join {host_ip}:{port}: the port must be 1 to 65535")
            return
        host = f"[{host_ip}]" if ":" in host_ip else host_ip
        self._begin("direct", f"ws://{host}:{port}/ws", user_name, None)

    def disconnect(self, flush_timeout: float = 10.0) -> None:
        """Says goodbye, leaves the room and closes the connection; `disconnected` follows.
        Sends already queued (say, the global model of a round that just closed) go first,
        for up to `flush_timeout` seconds (none while reconnecting: a send waiting to go again
        after the drop then fails at once)."""
        if self.is_connected:
            self._flush_sends(flush_timeout)
        with self._lock:
            connection = self._connection
            farewell = self._session.leave()
            self._session_changed.notify_all()
        if connection is None:
            return
        if connection.open:
            self._run(farewell)
        with contextlib.suppress(transport.ConnectionClosed):
            connection.close(1000, "disconnect")
        if self._dispatcher is not None and threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(5)

    def _already_connected(self) -> bool:
        connection = self._connection
        if connection is not None and connection.open:
            self._report("Already connected: disconnect() first")
            return True
        return False

    def _mark_sender_thread(self) -> None:
        self._sender_thread.is_sender = True

    def _flush_sends(self, timeout: float) -> None:
        """Waits for the sends queued so far; never on the sender thread (a send's failure
        callback may disconnect), where that would wait for itself."""
        if getattr(self._sender_thread, "is_sender", False) or self._connection is None:
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._sender.submit(lambda: None).result(timeout)

    def _start_relay(self, user_name: str, relay_url: str | None, room_code: str | None) -> None:
        try:
            found = relay_config.find_relay_url(relay_url)
        except ValueError as exc:
            self._report(str(exc))
            return
        if found is None:
            self._report(
                "No relay configured: pass relay_url, set SEGMENTATION_SUITE_RELAY_URL, or save "
                "one with relay_config.save_user_relay_url()"
            )
            return
        self._begin("relay", _websocket_url(found.url), user_name, room_code)

    def _begin(self, mode: str, url: str, user_name: str, room_code: str | None) -> None:
        """A new session on a new connection; reported if one is open."""
        with self._lock:
            if self._connection is not None and self._connection.open:
                self._report("Already connected: disconnect() first")
                return
        self._feed(self._session.begin, mode, url, user_name, room_code)

    def _open(self) -> None:
        """OpenConnection: a new WebSocket with this client's settings and a dispatcher."""
        session = self._session
        # Naming the room lets a load balancer put its members on one relay node.
        url = session.url
        if session.mode == "relay":
            url = _with_room(url, session.routing_code)
        try:
            connection = transport.connect(
                url,
                headers=self.headers,
                ca_file=self.ca_file,
                connect_timeout=self.connect_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                reassemble_transfers=True,  # one Transfer per chunked transfer, assembled in C
            )
        except (ConnectionError, ValueError) as exc:
            self._feed(session.connection_failed, _describe_connect_failure(session.url, exc))
            return
        with self._lock:
            if session.closing:  # disconnect() while this connection was opening
                connection.close()
                return
            self._connection = connection
            self._dispatcher = transport.MessageDispatcher(
                connection,
                self._on_message,
                functools.partial(self._on_close, connection),
                name=f"sync {self.user_id}",
            )
        self._feed(session.connection_opened)

    def _on_message(self, is_binary: bool, data: Any) -> None:
        if not is_binary:
            try:
                message = Message.from_json(data)
            except ValueError as exc:
                log.warning("ignoring a malformed text message: %s", exc)
                return
            self._feed(self._session.message, message)
        elif isinstance(data, transport.Transfer):  # a framed transfer, assembled in C
            header = data.header
            if not header.recipients or self.user_id in header.recipients:
                self._feed(
                    self._session.transfer_received,
                    header.sender,
                    header.transfer_id,
                    header.kind,
                    memoryview(data),
                )
        else:  # the transport hands framed binaries over as Transfers: this is unframed
            self._feed(self._session.unframed_binary, data)

    def _on_close(self, connection: Any, code: int | None, reason: str | None) -> None:
        if connection is not self._connection:
            return  # an earlier connection's end, after a new one replaced it
        self._connection_lost_at = time.monotonic()
        self._feed(self._session.closed, code, reason)

    # --- the user's calls ---------------------------------------------------------------

    def send_weights(
        self, weights: dict, epoch: int, loss: float, num_samples: int = 1
    ) -> concurrent.futures.Future | None:
        """Pushes this member's weights to the host for the current round.

        Serialized here (the caller may keep training), sent on the client's sender thread;
        the returned Future completes when the relay took the last byte, with the serialized
        size in bytes as its result. The host's own push goes straight into its round (added
        before this returns, as float16 values, never encoded: its result is the size it would
        have had)."""
        if not self._require_connection("send weights") or self._host_missing("send weights"):
            return None
        session = self._session
        is_host = session.is_host
        fields = {"epoch": epoch, "loss": loss, "num_samples": num_samples}
        try:
            if is_host:
                size = encoded_size(weights, **fields)  # checks the weights as a push would
            else:
                data = session.member_deltas.encode_push(weights, **fields)
        except (TypeError, ValueError) as exc:
            self._report(f"Cannot send these weights: {exc}")
            return None
        if is_host:
            self._feed(session.own_push, weights, num_samples, epoch)
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_result(size)
            return future
        session.note_own_push(weights)
        announcement = create_weights_push_message(self.user_id, epoch, loss, num_samples)
        to = session.recipients()
        return self._submit(
            self._wire.send_mixed_transfer, announcement, FrameKind.WEIGHTS, data, to
        )

    def request_global_model(self) -> None:
        """Asks the host for the current global model; `global_model_received` follows."""
        if not self._require_connection("request the global model"):
            return
        if self._host_missing("request the global model"):
            return
        self._feed(self._session.request_global_model)

    def send_architecture(self, architecture: str) -> None:
        """Tells the room (and later joiners, when sent by the host) the model architecture."""
        with self._lock:
            actions = self._session.set_architecture(architecture)
        if self._require_connection("send the architecture"):
            self._run(actions)

    def send_control(self, control: dict, to: list[str] | None = None) -> None:
        """Sends a small JSON object to the room, or to the members in `to`; each receiver's
        `control_received(sender_id, control)` follows (apps agree on its meaning, e.g. a
        training plan). Carried as the `control` field of a `session_info` payload next to
        the architecture: peers that do not know the field ignore it."""
        if self._require_connection("send a control message"):
            self._feed(self._session.control_message, control, to)

    def exclude_member(self, user_id: str, excluded: bool = True) -> None:
        """Host: rounds stop waiting for this member and ignore its pushes (a member who
        opted out, or one the host removed); `excluded=False` takes it back."""
        self._feed(self._session.exclude_member, user_id, excluded)

    def publish_global_model(self, weights: dict, aggregation_round: int = 0) -> dict | None:
        """Host: sends `weights` to every member as the global model of `aggregation_round`,
        as a closed round's goes (a saved model a session starts from is round 0's; see
        training/session_plan.py). Returns what the members hold (rounded as the wire
        carries it), or None after reporting why it could not be sent."""
        with self._lock:
            published, actions = self._session.publish_global_model(weights, aggregation_round)
        self._run(actions)
        return published

    def trigger_aggregation(self) -> bool:
        """Host: closes the current round now with the pushes it has."""
        with self._lock:
            closed, actions = self._session.trigger_aggregation()
        self._run(actions)
        return closed

    def send_training_data(
        self, image_array: Any, mask_array: Any, slice_index: int = 0
    ) -> concurrent.futures.Future | None:
        """Sends one training crop (image and mask, each as a PNG) to the host."""
        if not self._require_connection("send training data"):
            return None
        if self._host_missing("send training data"):
            return None
        try:
            image_png = encode_png(image_array, "image")
            mask_png = encode_png(mask_array, "mask")
        except (TypeError, ValueError) as exc:
            self._report(f"Cannot send this training crop: {exc}")
            return None
        crop_size = int(max(np.shape(image_array)[:2]))
        header = create_training_data_message(
            self.user_id, self.display_name, crop_size, int(slice_index)
        )
        to = self._session.recipients()
        return self._submit(self._wire.send_mixed_crop, header, image_png, mask_png, to)

    def _require_connection(self, what: str) -> bool:
        if self.is_connected:
            return True
        self._report(f"Cannot {what}: not connected to a session")
        return False

    def _host_missing(self, what: str) -> bool:
        refusal = self._session.host_missing(what)
        self._run(refusal)
        return bool(refusal)

    # --- sending ------------------------------------------------------------------------

    def _submit(self, function, *args) -> concurrent.futures.Future:
        """Runs a send on the sender thread, so sends keep their order and never block the
        caller or the dispatcher. A failure is reported through `error`."""
        future = self._sender.submit(function, *args)
        future.add_done_callback(self._check_send)
        return future

    def _check_send(self, future: concurrent.futures.Future) -> None:
        exc = future.exception()
        if isinstance(exc, transport.ConnectionClosed):
            log.warning("send failed, the connection closed: %s", exc)
        elif exc is not None:
            self._report(f"Sending failed: {exc}")

    # --- helpers ------------------------------------------------------------------------

    def _name_of(self, user_id: str) -> str:
        return self._session.name_of(user_id)

    def _report(self, text: str) -> None:
        """Every failure: a logging record and the `error` signal."""
        log.error("%s", text)
        self.error.emit(text)

    def __del__(self) -> None:
        executor = getattr(self, "_sender", None)
        if executor is not None:
            executor.shutdown(wait=False)


class HostClient(SyncClient):
    """The host's own connection to its LAN AggregationServer."""

    def connect_to_local_server(self, port: int, user_name: str) -> None:
        self.connect_direct("127.0.0.1", port, user_name)


def _websocket_url(url: str) -> str:
    """The relay's WebSocket endpoint: a URL without a path gets `/ws`, as the Worker serves."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/ws")
    return urllib.parse.urlunsplit(parts)


def _with_room(url: str, room_code: str | None) -> str:
    """The URL with `?room=CODE` (docs/operations.md, "Running a cluster"); relays ignore it."""
    if not room_code:
        return url
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "room"]
    query.append(("room", room_code))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _describe_connect_failure(url: str, exc: Exception) -> str:
    text = str(exc)
    lowered = text.lower()
    tls_words = ("certificate", "tls", "ssl", "handshake", "verify")
    if url.startswith("wss://") and any(word in lowered for word in tls_words):
        return (
            f"TLS failure connecting to {url}: {text}. Check that the relay's certificate is "
            "valid for this host name and signed by a trusted authority"
        )
    return f"Cannot reach the relay at {url}: {text}. Check the address and your network"
