"""The user's display name: asked once on first start, remembered in the user config
directory next to relay_config.txt (`display_name.txt`)."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path

from ..network import relay_config

NAME_FILE = "display_name.txt"
MAX_NAME_LENGTH = 64


def default_name() -> str:
    """`user@host`, as a first suggestion: two people both logged in as root still differ."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        user = "researcher"
    host = socket.gethostname().split(".")[0]
    return f"{user}@{host}" if host else user


def name_path() -> Path:
    return relay_config.user_config_path().parent / NAME_FILE


def saved_name() -> str | None:
    """The remembered name, or None before the first start (or if unreadable)."""
    try:
        name = name_path().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name[:MAX_NAME_LENGTH] or None


def save_name(name: str) -> Path:
    """Remembers `name` (stripped); OSError if the config directory is not writable."""
    path = name_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name.strip()[:MAX_NAME_LENGTH] + "\n", encoding="utf-8")
    return path
