"""Plain-words headlines for the network layer's error texts.

The SyncClient's `error` signal already carries a readable sentence ("Room K7QX2M not found:
check the code, ..."); the app puts a short headline in front of it, so a user sees at a
glance what kind of problem it is and the full sentence says what to do.
"""

from __future__ import annotations

import html

# (headline, words that identify the client's message); the first match wins.
_HEADLINES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Removed", ("removed you",)),
    ("No relay configured", ("no relay configured",)),
    ("Relay unreachable", ("cannot reach the relay",)),
    ("Secure connection failed", ("tls failure",)),
    ("Wrong mode", ("serves a lan session",)),
    ("LAN session failed", ("lan session", "lan host")),
    ("Room not found", ("not found",)),
    ("Room full", ("is full",)),
    ("Rate limited", ("too many join attempts",)),
    ("Relay busy", ("as many rooms as it allows",)),
    ("Relay URL not usable", ("ws:// or wss://", "relay config file", "relay url")),
    ("Wrong field", ("looks like a room code",)),
    ("LAN address not usable", ("lan address not usable",)),
    ("Connection lost", ("could not reconnect",)),
    ("Not connected", ("not connected",)),
    ("No room code", ("no room code",)),
    ("Unreadable model", ("unreadable",)),
    ("Already connected", ("already connected",)),
)


def headline(text: str) -> str:
    """A few words naming the kind of problem in `text`, or "Error"."""
    lowered = text.lower()
    for title, words in _HEADLINES:
        if any(word in lowered for word in words):
            return title
    return "Error"


def error_html(text: str, title: str | None = None) -> str:
    """Rich text for an error label: the headline in bold, then the full message."""
    return f"<b>{html.escape(title or headline(text))}.</b> {html.escape(text)}"
