"""Where the relay URL comes from.

Looked up in this order; the first place that has a URL wins:

1. the `relay_url` argument of the call (for example `SyncClient.connect_relay(..., relay_url=)`),
2. the environment variable SEGMENTATION_SUITE_RELAY_URL (empty means unset),
3. the user's config file `<user config dir>/segmentation-suite/relay_config.txt`, where the
   user config dir is platformdirs' (`~/.config` on Linux, `~/Library/Application Support` on
   macOS, `%LOCALAPPDATA%` on Windows); `save_user_relay_url()` writes it,
4. `relay_config.txt` next to this module, as in the original app (git-ignored; see
   `relay_config.example.txt`).

In both files blank lines and lines starting with `#` are ignored and the first other line is
the URL. A URL that is not `ws://` or `wss://` raises ValueError saying where it came from
and what was expected; it never falls through silently to a lower place. No URL anywhere
means "no relay configured" (None), as in the original.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

log = logging.getLogger(__name__)

ENV_VAR = "SEGMENTATION_SUITE_RELAY_URL"
CONFIG_FILE_NAME = "relay_config.txt"
APP_NAME = "segmentation-suite"

# Where the compatibility file is looked for; a module attribute so tests can point it at a
# temporary directory instead of the installed package.
_PACKAGE_DIR = Path(__file__).resolve().parent

_EXAMPLE = "wss://relay.example.org/ws"


@dataclass(frozen=True)
class RelayURL:
    """A relay URL and where it was found: `source` is one of "argument", "environment",
    "user config", "package config"; `path` is the file for the last two."""

    url: str
    source: str
    path: Path | None = None

    def describe(self) -> str:
        if self.source == "environment":
            where = f"environment variable {ENV_VAR}"
        elif self.path is not None:
            where = f"{self.source} file {self.path}"
        else:
            where = self.source
        return f"{self.url} (from {where})"


def validate_relay_url(url: str, origin: str = "relay URL") -> str:
    """Returns the URL stripped of surrounding whitespace; ValueError if it is not a usable
    ws:// or wss:// URL. `origin` says where it came from, for the message."""
    if not isinstance(url, str):
        raise ValueError(
            f"{origin}: expected a ws:// or wss:// URL string, got {type(url).__name__}"
        )
    text = url.strip()
    expected = f"expected a ws:// or wss:// URL such as {_EXAMPLE}"
    if not text:
        raise ValueError(f"{origin}: empty; {expected}")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"{origin}: {text!r} contains whitespace; {expected}")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"{origin}: {text!r} is malformed ({exc}); {expected}") from None
    if parts.scheme.lower() not in ("ws", "wss"):
        hint = ""
        if parts.scheme.lower() in ("http", "https"):
            secure = "wss" if parts.scheme.lower() == "https" else "ws"
            hint = f" (for {parts.scheme}:// use {secure}://)"
        raise ValueError(f"{origin}: {text!r} is not a WebSocket URL{hint}; {expected}")
    if not parts.hostname:
        raise ValueError(f"{origin}: {text!r} has no host name; {expected}")
    if port == 0:
        raise ValueError(f"{origin}: {text!r} has port 0; {expected}")
    return text


def user_config_path() -> Path:
    """The per-user relay config file (it may not exist)."""
    return platformdirs.user_config_path(APP_NAME, appauthor=False) / CONFIG_FILE_NAME


def package_config_path() -> Path:
    """The compatibility file next to the package (it may not exist)."""
    return _PACKAGE_DIR / CONFIG_FILE_NAME


def read_relay_config_file(path: Path) -> str | None:
    """The URL in a config file, unvalidated; None if the file is missing or holds no URL."""
    try:
        # utf-8-sig: Windows editors may start the file with a byte order mark.
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise ValueError(f"relay config file {path}: not UTF-8 text ({exc})") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return None


def find_relay_url(relay_url: str | None = None) -> RelayURL | None:
    """The relay URL by the documented precedence, with its origin; None if none is set."""
    if relay_url is not None and (not isinstance(relay_url, str) or relay_url.strip()):
        return RelayURL(validate_relay_url(relay_url, "relay_url argument"), "argument")
    from_env = os.environ.get(ENV_VAR, "")
    if from_env.strip():
        return RelayURL(
            validate_relay_url(from_env, f"environment variable {ENV_VAR}"), "environment"
        )
    for source, path in (
        ("user config", user_config_path()),
        ("package config", package_config_path()),
    ):
        found = read_relay_config_file(path)
        if found is not None:
            return RelayURL(validate_relay_url(found, f"relay config file {path}"), source, path)
    return None


def get_relay_url(relay_url: str | None = None) -> str | None:
    """The relay URL to connect to, or None when no relay is configured."""
    found = find_relay_url(relay_url)
    return found.url if found else None


def describe_relay_url_source(relay_url: str | None = None) -> str:
    """One line for the UI: the URL in use and where it came from, or how to set one. Never
    raises: a bad setting is described, with the fix."""
    try:
        found = find_relay_url(relay_url)
    except ValueError as exc:
        return f"Relay URL not usable: {exc}"
    if found is not None:
        return found.describe()
    return (
        f"No relay configured: set {ENV_VAR}, or save a URL such as {_EXAMPLE} "
        f"in {user_config_path()}"
    )


def save_user_relay_url(url: str) -> Path:
    """Validates `url` and writes it as the user's relay URL; returns the file's path. The
    write is atomic, so a reader never sees half a file."""
    url = validate_relay_url(url)
    path = user_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    content = (
        "# Relay server URL for Segmentation Suite collaborative training.\n"
        f"# Written by save_user_relay_url(); {ENV_VAR} overrides it.\n"
        f"{url}\n"
    )
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".relay_config.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def clear_user_relay_url() -> bool:
    """Removes the user's relay config file; True if there was one."""
    try:
        user_config_path().unlink()
    except FileNotFoundError:
        return False
    return True


def default_relay_url() -> str | None:
    """The argument-less lookup behind DEFAULT_RELAY_URL: None (with a logged warning) instead
    of an exception when a setting is malformed, so that reading the constant never fails;
    connecting reports the error."""
    try:
        return get_relay_url()
    except (ValueError, OSError) as exc:
        log.warning("ignoring the relay URL setting: %s", exc)
        return None


def __getattr__(name: str) -> str | None:
    """DEFAULT_RELAY_URL: the relay URL of the argument-less lookup, or None when none is
    configured, as in the original client. A snapshot taken when it is first read (not at
    import: importing the package reads no file), kept for apps written for the original;
    new code calls `get_relay_url()` when it connects."""
    if name == "DEFAULT_RELAY_URL":
        value = globals()[name] = default_relay_url()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
