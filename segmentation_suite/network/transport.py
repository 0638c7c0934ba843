"""WebSocket transport: the policy around the C extension's connections (docs/transport.md).

The C extension (`_relayclient.connect`) does the mechanism: one libwebsockets thread per
process, zero-copy sends with the GIL released, received messages queued for `recv()`. This
module adds what is policy rather than mechanism:

* which proxy a URL goes through (`http_proxy` / `https_proxy` / `no_proxy`, like urllib);
* which WebSocket engine runs a connection (`default_engine`, the one place it is chosen);
* delivering received messages to callbacks on a dispatcher thread, for callers that prefer
  callbacks to a blocking `recv()`.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence

from . import defaults
from ._relayclient import (
    DEFAULT_CHUNK_SIZE,
    FRAME_KIND_GLOBAL_MODEL,
    FRAME_KIND_OTHER,
    FRAME_KIND_TRAINING_IMAGE,
    FRAME_KIND_TRAINING_MASK,
    FRAME_KIND_WEIGHTS,
    Connection,
    ConnectionClosed,
    FrameHeader,
    Transfer,
    _set_lws_log_mask,
    chunk_count,
    parse_frame_header,
)
from ._relayclient import connect as _connect

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FRAME_KIND_GLOBAL_MODEL",
    "FRAME_KIND_OTHER",
    "FRAME_KIND_TRAINING_IMAGE",
    "FRAME_KIND_TRAINING_MASK",
    "FRAME_KIND_WEIGHTS",
    "Connection",
    "ConnectionClosed",
    "FrameHeader",
    "ENGINES",
    "MessageDispatcher",
    "Transfer",
    "chunk_count",
    "connect",
    "default_engine",
    "parse_frame_header",
    "proxy_for",
]

log = logging.getLogger(__name__)

# libwebsockets' own log on stderr, for debugging: an lws log-level bitmask (e.g. 7 for errors,
# warnings and notices); silent by default. The C side reads no environment.
_set_lws_log_mask(int(os.environ.get("SEGMENTATION_SUITE_LWS_LOG", "0") or 0))

Headers = Mapping[str, str] | Sequence[tuple[str, str]] | None
Message = str | memoryview | Transfer


def proxy_for(url: str) -> str | None:
    """The HTTP CONNECT proxy (as ``[user:password@]host:port``) the environment names for
    `url`, or None to connect directly.

    ws:// uses ``http_proxy``, wss:// uses ``https_proxy`` (upper-case names too), and a host
    matched by ``no_proxy`` goes direct. Only plain-HTTP proxies are supported: the tunnel to
    the proxy itself is not encrypted (what is inside it is, for wss://).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"url must start with ws:// or wss://, got {url!r}")
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("https" if parts.scheme == "wss" else "http")
    if not proxy or (parts.hostname and urllib.request.proxy_bypass_environment(parts.hostname)):
        return None
    proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if proxy_parts.scheme != "http":
        raise ValueError(
            f"proxy {proxy!r}: only http:// proxies (HTTP CONNECT) are supported, "
            f"not {proxy_parts.scheme}://"
        )
    if not proxy_parts.hostname:
        raise ValueError(f"proxy {proxy!r} names no host")
    host = proxy_parts.hostname
    if ":" in host:
        host = f"[{host}]"
    credentials = ""
    if proxy_parts.username is not None:
        credentials = urllib.parse.unquote(proxy_parts.username)
        if proxy_parts.password is not None:
            credentials += ":" + urllib.parse.unquote(proxy_parts.password)
        credentials += "@"
    return f"{credentials}{host}:{proxy_parts.port or 80}"


# The WebSocket engines of the C extension (docs/transport.md): "raw" is our own RFC 6455 client
# over a raw socket, "lws" is libwebsockets' ws client.
ENGINES = ("raw", "lws")


def default_engine(url: str, proxy: str | None) -> str:
    """The engine a connection to `url` (through `proxy`, or directly) uses unless told.

    "raw" (our own WebSocket client, doing TLS itself through OpenSSL memory BIOs) is many
    times faster than lws 4.1's ws client, which parses and masks byte by byte. lws keeps what
    raw cannot do: HTTP CONNECT proxies (lws does CONNECT for its http/ws roles only).
    """
    if proxy:
        return "lws"
    return "raw"


def connect(
    url: str,
    *,
    engine: str | None = None,
    headers: Headers = None,
    proxy: str | bool | None = None,
    ca_file: str | None = None,
    server_hostname: str | None = None,
    connect_timeout: float | None = defaults.CONNECT_TIMEOUT,
    ping_interval: float | None = defaults.PING_INTERVAL,
    ping_timeout: float = defaults.PING_TIMEOUT,
    max_message_size: int = 256 * 1024 * 1024,
    receive_queue_size: int = 64 * 1024 * 1024,
    reassemble_transfers: bool = False,
) -> Connection:
    """Opens a WebSocket connection; see `_relayclient.connect` for the options.

    `proxy`: None (the default) takes it from the environment (`proxy_for`), False connects
    directly, a string ``host:port`` names the proxy. `engine`: one of `ENGINES`, or None for
    `default_engine`.
    """
    if proxy is None:
        proxy = proxy_for(url)
    elif proxy is False or proxy is True:
        if proxy:
            raise ValueError("proxy=True is meaningless: pass None, False or 'host:port'")
        proxy = None
    return _connect(
        url,
        engine=engine or default_engine(url, proxy),
        headers=headers,
        proxy=proxy,
        ca_file=ca_file,
        server_hostname=server_hostname,
        connect_timeout=connect_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        max_message_size=max_message_size,
        receive_queue_size=receive_queue_size,
        reassemble_transfers=reassemble_transfers,
    )


class MessageDispatcher:
    """Calls `on_message(is_binary, data)` for every message `connection` receives, then
    `on_close(code, reason)` once, all on one daemon thread of its own (never on the
    libwebsockets thread, and never holding up the network).

    An exception in a callback is logged and the dispatching goes on. The thread ends when the
    connection closes; `stop()` ends it earlier (the connection stays open).
    """

    def __init__(
        self,
        connection: Connection,
        on_message: Callable[[bool, Message], None],
        on_close: Callable[[int | None, str | None], None] | None = None,
        *,
        name: str | None = None,
    ):
        self.connection = connection
        self._on_message = on_message
        self._on_close = on_close
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=name or f"dispatch {connection.url}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                # A short timeout only so that stop() is noticed; messages wake it at once.
                is_binary, data = self.connection.recv(timeout=0.5)
            except TimeoutError:
                continue
            except ConnectionClosed:
                break
            try:
                self._on_message(is_binary, data)
            except Exception:
                log.exception("on_message callback failed")
        if self._on_close is not None and not self._stopping.is_set():
            try:
                self._on_close(self.connection.close_code, self.connection.close_reason)
            except Exception:
                log.exception("on_close callback failed")

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()
