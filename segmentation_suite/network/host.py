"""The aggregating host's rounds, without I/O: who has pushed, when a round closes.

In relay mode the room creator is the host (in a LAN session, the server's hub). Members push
their weights to it only; a round closes when every expected member has pushed, or when
`timeout` seconds have passed since the round's first push and at least `min_contributors`
pushes arrived. The session (room_session.py) feeds pushes, membership changes and timer
events in; each returns a `RoundStep`: the closed round's global model to send, and the timer
to start. No thread, no clock, no network here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import defaults
from .aggregator import FedAvgAggregator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundResult:
    """A closed round: the averaged weights, its number and whose pushes it holds."""

    weights: dict
    aggregation_round: int
    contributors: list[str]


@dataclass(frozen=True)
class RoundStep:
    """What a round event asks for: a closed round, and a timer (token, seconds) to start."""

    result: RoundResult | None = None
    timer: tuple[int, float] | None = None


class AggregationRound:
    """Collects one round of pushes into `aggregator` and says when to close it. Not
    thread-safe: the session serializes every call."""

    def __init__(
        self,
        *,
        aggregator: FedAvgAggregator | None = None,
        timeout: float = defaults.AGGREGATION_TIMEOUT,
        min_contributors: int = defaults.MIN_CONTRIBUTORS,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if min_contributors < 1:
            raise ValueError(f"min_contributors must be at least 1, not {min_contributors}")
        self.aggregator = aggregator if aggregator is not None else FedAvgAggregator()
        self.timeout = timeout
        self.min_contributors = min_contributors
        self._expected: set[str] = set()
        self._timer_token = 0  # the running timer's; 0 while none runs
        self._timers_started = 0
        self._closed = False

    # --- what the host learns -----------------------------------------------------------

    def set_members(self, member_ids: Iterable[str]) -> RoundStep:
        """The members expected to push. A member that left no longer holds the round up,
        so this may close it."""
        self._expected = set(member_ids)
        return RoundStep(result=self._close(force=False))

    def add(
        self, user_id: str, weights: dict, num_samples: float, *, float16_values: bool = False
    ) -> RoundStep:
        """One member's push; ValueError (and nothing changes) for a second push of the same
        member in a round, weights of another layout, or after `shutdown`; TypeError for
        entries that are not tensors. `float16_values`: weights that did not cross the wire
        (the host's own), counted as the wire would have delivered them."""
        if self._closed:
            raise ValueError("the aggregation round object is shut down")
        self.aggregator.add_update(
            weights,
            contribution_weight=num_samples,
            contributor=user_id,
            float16_values=float16_values,
        )
        timer = self._start_timer() if not self._timer_token else None
        log.info(
            "round %d: push from %s (%d of %d expected)",
            self.aggregator.aggregation_round + 1,
            user_id,
            len(self.aggregator.contributors),
            len(self._expected),
        )
        return RoundStep(result=self._close(force=False), timer=timer)

    @property
    def pending_contributors(self) -> tuple[str, ...]:
        return self.aggregator.contributors

    # --- closing --------------------------------------------------------------------------

    def close_now(self) -> RoundStep:
        """Closes the round with what it has (trigger_aggregation); no result if nobody pushed."""
        return RoundStep(result=self._close(force=True))

    def timer_fired(self, token: int) -> RoundStep:
        """The round's timeout. Too few pushes for a round: wait another period rather than
        drop them. A timer of a round already closed is ignored."""
        if self._closed or token != self._timer_token:
            return RoundStep()
        self._timer_token = 0
        count = self.aggregator.update_count
        if count >= self.min_contributors:
            log.info("round %d: closing on timeout", self.aggregator.aggregation_round + 1)
            return RoundStep(result=self._close(force=True))
        return RoundStep(timer=self._start_timer() if count else None)

    def shutdown(self) -> None:
        self._closed = True
        self._timer_token = 0

    def _start_timer(self) -> tuple[int, float]:
        self._timers_started += 1
        self._timer_token = self._timers_started
        return self._timer_token, self.timeout

    def _close(self, force: bool) -> RoundResult | None:
        contributors = list(self.aggregator.contributors)
        if self._closed or not self.aggregator.update_count:
            return None
        if not force and not self._expected.issubset(contributors):
            return None
        self._timer_token = 0
        global_weights = self.aggregator.aggregate(min_updates=1)
        if global_weights is None:
            return None
        return RoundResult(global_weights, self.aggregator.aggregation_round, contributors)


class HostRounds:
    """The host's part of a session: its rounds, who they wait for, whose pushes they take."""

    def __init__(
        self,
        *,
        timeout: float = defaults.AGGREGATION_TIMEOUT,
        min_contributors: int = defaults.MIN_CONTRIBUTORS,
    ):
        self.timeout = timeout
        self.min_contributors = min_contributors
        self.excluded: set[str] = set()  # members whose pushes rounds neither await nor take
        self.host_trains = False  # the host's own push belongs in every round
        self._round: AggregationRound | None = None

    @property
    def started(self) -> bool:
        return self._round is not None

    def expected(self, present: list[str], away: Iterable[str], host_id: str) -> list[str]:
        """Whose pushes a round waits for: the members present and those away (not back yet
        after a relay restart), but the host itself only once it trains (else a round could
        close on the members' pushes just before the host's), and never an excluded one."""
        wanted = [
            u for u in present if (u != host_id or self.host_trains) and u not in self.excluded
        ]
        return wanted + sorted(set(away).difference(present, self.excluded))

    def update_members(self, member_ids: list[str]) -> RoundStep:
        if self._round is None:
            return RoundStep()
        return self._round.set_members(member_ids)

    def add(
        self,
        sender: str,
        weights: dict,
        num_samples: float,
        members: list[str],
        *,
        float16_values: bool = False,
    ) -> RoundStep:
        """A push into the current round (made on the first push, waiting for `members`)."""
        if self._round is None:
            self._round = AggregationRound(
                timeout=self.timeout, min_contributors=self.min_contributors
            )
            self._round.set_members(members)
        return self._round.add(sender, weights, num_samples, float16_values=float16_values)

    def close_now(self) -> RoundStep:
        return self._round.close_now() if self._round is not None else RoundStep()

    def timer_fired(self, token: int) -> RoundStep:
        return self._round.timer_fired(token) if self._round is not None else RoundStep()

    def shutdown(self) -> None:
        if self._round is not None:
            self._round.shutdown()


def describe_contributors(contributors: list[str], names: dict[str, str]) -> str:
    """`alice, bob` for a status line, by display name when known."""
    return ", ".join(names.get(user_id, user_id) for user_id in contributors) or "nobody"


def as_num_samples(value: Any) -> float:
    """num_samples from a push: a finite number >= 0, else 1 (as the original assumed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 1.0
    return float(value) if value >= 0 and value == value and value != float("inf") else 1.0
