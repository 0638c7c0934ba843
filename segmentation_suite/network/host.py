"""The aggregating host's round logic, without I/O: who has pushed, when a round closes.

In relay mode the room creator is the host. Members push their weights to it; a round closes
when every active member has pushed, or when `timeout` seconds have passed since the round's
first push and at least `min_contributors` pushes arrived. The caller (SyncClient, or the LAN
AggregationServer) feeds pushes and membership changes in and sends the global model that
`on_complete` hands it; this module never touches the network.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .aggregator import FedAvgAggregator

log = logging.getLogger(__name__)

#: Called with (global weights, aggregation round, contributor ids) when a round closes.
RoundCallback = Callable[[dict, int, list[str]], None]


class AggregationRound:
    """Collects one round of pushes into `aggregator` and closes it at the right moment.

    Thread-safe: pushes come from the network thread, the timeout from a timer thread.
    `on_complete` runs outside the lock, on whichever thread closed the round.
    """

    def __init__(
        self,
        on_complete: RoundCallback,
        *,
        aggregator: FedAvgAggregator | None = None,
        timeout: float = 60.0,
        min_contributors: int = 1,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if min_contributors < 1:
            raise ValueError(f"min_contributors must be at least 1, not {min_contributors}")
        self.aggregator = aggregator if aggregator is not None else FedAvgAggregator()
        self.timeout = timeout
        self.min_contributors = min_contributors
        self._on_complete = on_complete
        self._lock = threading.Lock()
        self._expected: set[str] = set()
        self._timer: threading.Timer | None = None
        self._closed = False

    # --- what the host learns -----------------------------------------------------------

    def set_members(self, member_ids: Iterable[str]) -> None:
        """The members expected to push (the room minus the host). A member that left no
        longer holds the round up, so this may close it."""
        with self._lock:
            self._expected = set(member_ids)
        self.close_if_complete()

    def add(self, user_id: str, weights: dict, num_samples: float) -> None:
        """One member's push (see `take`), then the round closes if that push completed it."""
        self.take(user_id, weights, num_samples)
        self.close_if_complete()

    def take(self, user_id: str, weights: dict, num_samples: float) -> None:
        """One member's push, without closing the round it may complete: a caller that reports
        the push (SyncClient's weights_received) reports it before its round closes, then calls
        `close_if_complete`. ValueError (and nothing changes) for a second push of the same
        member in a round, or weights of another layout."""
        with self._lock:
            if self._closed:
                raise ValueError("the aggregation round object is shut down")
            self.aggregator.add_update(
                weights, contribution_weight=num_samples, contributor=user_id
            )
            if self._timer is None:
                self._timer = threading.Timer(self.timeout, self._on_timeout)
                self._timer.daemon = True
                self._timer.start()
            log.info(
                "round %d: push from %s (%d of %d expected)",
                self.aggregator.aggregation_round + 1,
                user_id,
                len(self.aggregator.contributors),
                len(self._expected),
            )

    @property
    def pending_contributors(self) -> tuple[str, ...]:
        return self.aggregator.contributors

    # --- closing --------------------------------------------------------------------------

    def close_now(self) -> bool:
        """Closes the round with what it has (trigger_aggregation); False if nobody pushed."""
        return self._close(force=True)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            self._cancel_timer()

    def close_if_complete(self) -> bool:
        """Closes the round if every expected member has pushed; True if it did."""
        return self._close(force=False)

    def _on_timeout(self) -> None:
        with self._lock:
            self._timer = None
            enough = self.aggregator.update_count >= self.min_contributors
            if not enough and self.aggregator.update_count:
                # Too few pushes for a round: wait another period rather than drop them.
                self._timer = threading.Timer(self.timeout, self._on_timeout)
                self._timer.daemon = True
                self._timer.start()
        if enough:
            log.info("round %d: closing on timeout", self.aggregator.aggregation_round + 1)
            self._close(force=True)

    def _close(self, force: bool) -> bool:
        with self._lock:
            contributors = list(self.aggregator.contributors)
            if self._closed or not self.aggregator.update_count:
                return False
            if not force and not self._expected.issubset(contributors):
                return False
            self._cancel_timer()
            global_weights = self.aggregator.aggregate(min_updates=1)
            aggregation_round = self.aggregator.aggregation_round
        if global_weights is None:
            return False
        try:
            self._on_complete(global_weights, aggregation_round, contributors)
        except Exception:
            log.exception("sending the global model of round %d failed", aggregation_round)
        return True

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def describe_contributors(contributors: list[str], names: dict[str, str]) -> str:
    """`alice, bob` for a status line, by display name when known."""
    return ", ".join(names.get(user_id, user_id) for user_id in contributors) or "nobody"


def as_num_samples(value: Any) -> float:
    """num_samples from a push: a finite number >= 0, else 1 (as the original assumed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 1.0
    return float(value) if value >= 0 and value == value and value != float("inf") else 1.0
