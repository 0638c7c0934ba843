"""Federated rounds for one member over a connected SyncClient.

Each round: train `epochs_per_round` epochs on the member's own images, push the weights to
the room's host (`send_weights`), wait for the global model (`global_model_received`), load
it and evaluate. The host member trains and pushes too; its push goes straight into its own
round and its global model arrives when the round closes. Network trouble never raises: a
round whose global model does not come keeps the local weights and says so in an event.

Run `run()` on a worker thread, never a GUI thread: it blocks while training and waiting.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import SegmentationData
from .settings import TRAINING_DEFAULTS
from .trainer import Trainer

log = logging.getLogger(__name__)

#: How often a wait wakes up to look at `stop`.
_POLL_SECONDS = 0.1


@dataclass
class RoundResult:
    """One finished round, as seen by one member."""

    round: int
    local_loss: float  # mean training loss of the round's last epoch
    local_dice: float  # Dice on the evaluation data before loading the global model
    global_dice: float | None  # Dice after loading it; None if it did not arrive
    contributors: int  # members averaged into the global model (0 if none arrived)
    seconds: float
    global_loss: float | None = None  # the global model's loss on this member's own images


@dataclass
class TrainingEvent:
    """What a UI displays; `kind` says which fields mean something."""

    kind: str  # "epoch" | "batch" | "upload" | "download" | "round" | "waiting" | "stopped"
    round: int  # the session's round number
    rounds: int  # the number of the run's last round ("round 3/5")
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    bytes: int = 0
    seconds: float = 0.0
    loss: float | None = None
    result: RoundResult | None = None
    message: str = ""


class _GlobalModelInbox:
    """Collects what the client's signals say while a run is on: the newest global model,
    the host's contributor counts, error messages. Callbacks run on the emitting thread."""

    def __init__(self, client: Any):
        self.client = client
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        self._weights: dict | None = None
        self._contributors: int | None = None
        self._errors: list[str] = []
        self._connections = [
            (client.global_model_received, self._on_global_model),
            (client.error, self._on_error),
        ]
        if hasattr(client, "round_complete"):
            self._connections.append((client.round_complete, self._on_round_complete))

    def __enter__(self) -> _GlobalModelInbox:
        for signal, callback in self._connections:
            # thread=None: call back on the emitting thread, even inside a Qt application,
            # since the GUI thread may be the one waiting.
            signal.connect(callback, thread=None)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signal, callback in self._connections:
            signal.disconnect(callback)

    def _on_global_model(self, weights: dict) -> None:
        with self._lock:
            self._weights = weights
        self.arrived.set()

    def _on_round_complete(self, aggregation_round: int, contributors: list) -> None:
        with self._lock:
            self._contributors = len(contributors)

    def _on_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    def clear(self) -> None:
        """Forget earlier global models: call before pushing, so that the next one is ours."""
        with self._lock:
            self._weights = None
            self._contributors = None
            self.arrived.clear()

    def take(self) -> tuple[dict | None, int | None]:
        """The global model that arrived and its contributor count; forgets them, so that
        `arrived` next means a newer model."""
        with self._lock:
            taken = self._weights, self._contributors
            self._weights = self._contributors = None
            self.arrived.clear()
            return taken

    def errors(self) -> list[str]:
        with self._lock:
            errors, self._errors = self._errors, []
            return errors


class FederatedTraining:
    """One member's rounds over a connected SyncClient (relay room or LAN session): train
    `epochs_per_round` epochs, push weights to the host (client.send_weights), wait for the
    global model (client.global_model_received), load it, evaluate, repeat. The host member
    (client.is_host) trains and pushes too; its push goes into its own round.

    `evaluation` is what local_dice and global_dice are measured on (default: the member's
    own training images). The global model is loaded rounded to float16, as the wire carries
    it to the other members, so that every member holds exactly the same model."""

    def __init__(
        self,
        client: Any,
        trainer: Trainer,
        *,
        rounds: int = TRAINING_DEFAULTS.rounds,
        epochs_per_round: int = TRAINING_DEFAULTS.epochs_per_round,
        round_timeout: float = TRAINING_DEFAULTS.round_timeout,
        evaluation: SegmentationData | None = None,
        match_wire_precision: bool = True,
        first_round: int = 1,
    ):
        if rounds < 1 or epochs_per_round < 1:
            raise ValueError(
                f"rounds and epochs_per_round must be >= 1: {rounds}, {epochs_per_round}"
            )
        if first_round < 1:
            raise ValueError(f"first_round must be >= 1, not {first_round}")
        if round_timeout <= 0:
            raise ValueError(f"round_timeout must be positive, not {round_timeout}")
        self.client = client
        self.trainer = trainer
        self.rounds = rounds
        self.epochs_per_round = epochs_per_round
        self.round_timeout = round_timeout
        self.evaluation = evaluation if evaluation is not None else trainer.data
        self.match_wire_precision = match_wire_precision
        # The session's round numbers: a run started after earlier rounds (a Resume, a member
        # joining mid-session) counts on from them, so every widget shows one numbering.
        self.first_round = first_round
        self.last_round = first_round + rounds - 1

    def run(
        self,
        on_event: Callable[[TrainingEvent], None] | None = None,
        stop: threading.Event | None = None,
    ) -> list[RoundResult]:
        """All rounds, or until `stop` is set (checked before every batch and while
        waiting); returns the finished rounds."""
        stop = stop if stop is not None else threading.Event()
        emit = _safe_emitter(on_event)
        results: list[RoundResult] = []
        with _GlobalModelInbox(self.client) as inbox, _host_trains(self.client):
            for round_number in range(self.first_round, self.last_round + 1):
                result = self._round(round_number, inbox, emit, stop)
                if result is None:
                    emit(
                        TrainingEvent(
                            "stopped", round_number, self.last_round, message="Training stopped"
                        )
                    )
                    break
                results.append(result)
                emit(
                    TrainingEvent(
                        "round",
                        round_number,
                        self.last_round,
                        result=result,
                        seconds=result.seconds,
                        loss=result.local_loss,
                    )
                )
        return results

    def _round(self, round_number: int, inbox, emit, stop) -> RoundResult | None:
        started = time.perf_counter()
        loss = self._train(round_number, emit, stop)
        if loss is None:
            return None
        local_dice = self.trainer.evaluate(self.evaluation)
        weights = self.trainer.state_dict()
        if inbox.arrived.is_set() and getattr(self.client, "is_host", False):
            # The round closed on the members' pushes alone while the host trained.
            emit(
                self._waiting(
                    round_number,
                    "The room's round closed before the host's weights were in; they go into "
                    "the next round",
                )
            )
        self._wait_while_reconnecting(round_number, emit, stop)
        inbox.clear()
        pushed = self._push(round_number, weights, loss, emit)
        global_weights, contributors = None, None
        if pushed is not None:
            global_weights, contributors = self._wait(round_number, inbox, emit, stop, pushed)
        if stop.is_set() and global_weights is None:
            return None
        global_dice = global_loss = None
        if global_weights is not None:
            try:
                self.trainer.load_global(self._as_received(global_weights))
            except ValueError as exc:
                emit(
                    self._waiting(
                        round_number,
                        f"The global model does not fit: {exc}; keeping the local weights",
                    )
                )
            else:
                global_dice = self.trainer.evaluate(self.evaluation)
                global_loss = self.trainer.loss_on(self.trainer.data)
        if global_weights is None or global_dice is None:
            contributors = 0
        elif contributors is None:
            # A member reads the count from the model; an original host does not send it, and
            # everyone in the room is then the likely answer.
            known = getattr(self.client, "global_contributors", None)
            contributors = known or max(1, len(getattr(self.client, "users", []) or []))
        return RoundResult(
            round=round_number,
            local_loss=loss,
            local_dice=local_dice,
            global_dice=global_dice,
            contributors=contributors,
            seconds=time.perf_counter() - started,
            global_loss=global_loss,
        )

    def _train(self, round_number: int, emit, stop) -> float | None:
        """The round's epochs; the last epoch's mean loss, or None if stopped."""
        loss = float("nan")
        for epoch in range(1, self.epochs_per_round + 1):
            if stop.is_set():
                return None
            epoch_started = time.perf_counter()

            def progress(batch: int, batches: int, epoch: int = epoch) -> None:
                emit(
                    TrainingEvent(
                        "batch",
                        round_number,
                        self.last_round,
                        epoch=epoch,
                        epochs=self.epochs_per_round,
                        batch=batch,
                        batches=batches,
                    )
                )

            loss = self.trainer.train_epoch(progress=progress, stop=stop)
            if stop.is_set():
                return None
            emit(
                TrainingEvent(
                    "epoch",
                    round_number,
                    self.last_round,
                    epoch=epoch,
                    epochs=self.epochs_per_round,
                    loss=loss,
                    seconds=time.perf_counter() - epoch_started,
                )
            )
        return loss

    def _wait_while_reconnecting(self, round_number: int, emit, stop) -> None:
        """A push made while the relay is away, or while the room's host is (after a relay
        restart members are often back before the host), would be lost or refused: wait for
        both to be back (up to round_timeout; the push then says what happened)."""
        if not self._push_would_fail():
            return
        reason = (
            "Reconnecting to the relay…"
            if getattr(self.client, "is_reconnecting", False)
            else "Waiting for the host to be back in the room…"
        )
        emit(self._waiting(round_number, reason))
        deadline = time.perf_counter() + self.round_timeout
        while self._push_would_fail() and not stop.is_set():
            if time.perf_counter() >= deadline:
                return
            time.sleep(_POLL_SECONDS)

    def _push_would_fail(self) -> bool:
        if getattr(self.client, "is_reconnecting", False):
            return True
        in_room = getattr(self.client, "is_connected", False)
        return in_room and getattr(self.client, "host_id", "") is None

    def _push(self, round_number: int, weights: dict, loss: float, emit) -> int | None:
        """Sends the weights; their size on the wire, or None if they did not go."""
        started = time.perf_counter()
        future = self.client.send_weights(
            weights, epoch=round_number, loss=loss, num_samples=self.trainer.num_samples
        )
        if future is None:
            emit(
                self._waiting(
                    round_number,
                    "Could not send the weights (not connected); keeping the local weights",
                )
            )
            return None
        try:
            size = future.result(self.round_timeout)
        except Exception as exc:  # a send failure of any kind: keep training locally
            emit(
                self._waiting(
                    round_number, f"Sending the weights failed: {exc}; keeping the local weights"
                )
            )
            return None
        emit(
            TrainingEvent(
                "upload",
                round_number,
                self.last_round,
                bytes=size,
                seconds=time.perf_counter() - started,
                loss=loss,
            )
        )
        return size

    def _wait(self, round_number: int, inbox, emit, stop, size: int):
        """The global model and its contributor count, or (None, None) on timeout or stop."""
        who = "the other members" if getattr(self.client, "is_host", False) else "the host"
        emit(self._waiting(round_number, f"Waiting for {who} (round {round_number})"))
        started = time.perf_counter()
        deadline = started + self.round_timeout
        while not inbox.arrived.wait(_POLL_SECONDS):
            for message in inbox.errors():
                emit(self._waiting(round_number, message))
            if stop.is_set():
                return None, None
            if time.perf_counter() >= deadline:
                emit(
                    self._waiting(
                        round_number,
                        f"No global model after {self.round_timeout:g} "
                        "s; keeping the local weights",
                    )
                )
                return None, None
        weights, contributors = inbox.take()
        emit(
            TrainingEvent(
                "download",
                round_number,
                self.last_round,
                bytes=size,
                seconds=time.perf_counter() - started,
            )
        )
        return weights, contributors

    def _as_received(self, weights: dict) -> dict:
        if not self.match_wire_precision:
            return weights
        rounded = {}
        for key, value in weights.items():
            array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
            if array.dtype in (np.float32, np.float64):
                array = array.astype(np.float16).astype(array.dtype)
            rounded[key] = array
        return rounded

    def _waiting(self, round_number: int, message: str) -> TrainingEvent:
        log.info("round %d: %s", round_number, message)
        return TrainingEvent("waiting", round_number, self.last_round, message=message)


@contextlib.contextmanager
def _host_trains(client: Any):
    """Tells a client that supports it (`host_trains`) that its host's own push belongs in
    every round: without it a round closes on the other members' pushes alone."""
    previous = getattr(client, "host_trains", None)
    if previous is None:
        yield
        return
    client.host_trains = True
    try:
        yield
    finally:
        client.host_trains = previous


def _safe_emitter(on_event: Callable[[TrainingEvent], None] | None):
    """Calls on_event; a callback that raises is logged, and training goes on."""

    def emit(event: TrainingEvent) -> None:
        if on_event is None:
            return
        try:
            on_event(event)
        except Exception:
            log.exception("a training event callback raised (%s)", event.kind)

    return emit
