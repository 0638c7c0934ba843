"""The reconnect policy: how long to wait before each try, and how many tries (no I/O).

The session (room_session.py) asks it; the driver runs the timers it schedules. The random
source is a parameter so that tests can fix it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import defaults
from .protocol import ErrorCode

#: Refusals of a resume or re-join while reconnecting that mean "not now", not "never": the
#: room may come back when its host re-opens it, a stale connection may still hold our id.
REJOIN_REFUSALS = frozenset(
    {
        ErrorCode.INVALID_RESUME_TOKEN.value,
        ErrorCode.ROOM_NOT_FOUND.value,
        ErrorCode.USER_ID_TAKEN.value,
        ErrorCode.RATE_LIMITED.value,
    }
)


@dataclass
class ReconnectPolicy:
    """Exponential backoff with full jitter over at most `attempts` tries."""

    attempts: int = defaults.RECONNECT_ATTEMPTS
    base_delay: float = defaults.RECONNECT_BASE_DELAY
    max_delay: float = defaults.RECONNECT_MAX_DELAY
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt` (0 for the first)."""
        return self.rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))

    def refusal_delay(self, tries: int, code: str, retry_after: object = None) -> float:
        """The wait before re-joining after the `tries`-th refusal: the backoff, and at least
        what a rate limit asked for."""
        wait = self.delay(tries - 1)
        if code == ErrorCode.RATE_LIMITED.value and isinstance(retry_after, (int, float)):
            wait = max(wait, float(retry_after))
        return wait
