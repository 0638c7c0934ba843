"""AggregationServer: the host side of a LAN session (no relay).

Not built yet: the issue requires the LAN WebSocket server to be C, and reusing the relay
binary needs a relay change first (members of a LAN session cannot learn the room code; see
docs/network-api.md, "LAN mode"). Until then `start()` reports that through `error` and
returns None, so an app falls back to a relay room instead of failing obscurely.
"""

from __future__ import annotations

import logging

from .protocol import DEFAULT_PORT
from .qt import Signal

log = logging.getLogger(__name__)

LAN_UNAVAILABLE = "LAN mode is not available in this version; create a relay room instead"


class AggregationServer:
    """The original app's LAN host; see the module docstring for its state."""

    user_connected = Signal(str)
    user_disconnected = Signal(str)
    weights_received = Signal(str)
    aggregation_complete = Signal(dict)
    error = Signal(str)
    server_started = Signal(str)
    server_stopped = Signal()

    def __init__(self, min_contributors: int = 1, aggregation_timeout: float = 60.0):
        self.min_contributors = min_contributors
        self.aggregation_timeout = aggregation_timeout

    @property
    def is_running(self) -> bool:
        return False

    @property
    def client_count(self) -> int:
        return 0

    def start(self, port: int = DEFAULT_PORT, architecture: str = "") -> str | None:
        log.error("%s", LAN_UNAVAILABLE)
        self.error.emit(LAN_UNAVAILABLE)
        return None

    def stop(self) -> None:
        """Nothing runs, so nothing to stop."""
