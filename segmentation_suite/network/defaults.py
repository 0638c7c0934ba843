"""The session's defaults, in one place: SyncClient, HostClient, AggregationServer and the
host's rounds take them from here (docs/network-api.md lists them)."""

#: A round closes this many seconds after its first push, if enough members pushed by then.
AGGREGATION_TIMEOUT = 60.0

#: The fewest pushes a round closes on when it times out.
MIN_CONTRIBUTORS = 1

#: How long opening a connection (TCP, TLS, WebSocket handshake) may take.
CONNECT_TIMEOUT = 10.0

#: A WebSocket ping every this many seconds keeps NATs and proxies from dropping an idle
#: connection; None turns pings off.
PING_INTERVAL = 30.0

#: A connection whose ping is not answered in this many seconds is taken for lost.
PING_TIMEOUT = 30.0

#: How many new connections are tried after a drop (and refusals retried) before giving up.
RECONNECT_ATTEMPTS = 10

#: Exponential backoff with full jitter: retry n waits uniform(0, min(max, base * 2**n)).
RECONNECT_BASE_DELAY = 0.5
RECONNECT_MAX_DELAY = 30.0
