"""The code of a private room (docs/security.md, "Codes"): the relay's 6-character routing code
plus a secret part of at least 4 characters from the same alphabet, shown as ``K7QX2M-4HRT``
and accepted with or without the dash, in any case. This is the one place that splits a code.

Only `RoomCode.routing` may ever go to the relay; `RoomCode.secret` is the CPace password.
`repr()` hides the secret, so logging a RoomCode by mistake does not leak it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .protocol import ROOM_CODE_ALPHABET, ROOM_CODE_LENGTH

SECRET_MIN_LENGTH = 4  # 4 x log2(32) = 20 bits, one online guess per attempt (docs/security.md)
SECRET_MAX_LENGTH = 16
SEPARATOR = "-"


class InvalidRoomCode(ValueError):
    """The text is not a room code; the message says why without repeating the secret part."""


@dataclass(frozen=True)
class RoomCode:
    routing: str
    secret: str | None = field(default=None, repr=False)

    @property
    def private(self) -> bool:
        return self.secret is not None

    def __str__(self) -> str:
        """The full code as people see and type it; never send this to the relay."""
        return f"{self.routing}{SEPARATOR}{self.secret}" if self.secret else self.routing

    def __repr__(self) -> str:
        hidden = ", secret=<hidden>" if self.secret else ""
        return f"RoomCode(routing={self.routing!r}{hidden})"

    def secret_bytes(self) -> bytes:
        """The CPace password (PRS): the secret part, upper case, ASCII."""
        if self.secret is None:
            raise ValueError("an open room's code has no secret part")
        return self.secret.encode("ascii")


def new_secret(length: int = SECRET_MIN_LENGTH) -> str:
    """A fresh secret part from the operating system's CSPRNG."""
    if not SECRET_MIN_LENGTH <= length <= SECRET_MAX_LENGTH:
        raise ValueError(f"a secret part has {SECRET_MIN_LENGTH} to {SECRET_MAX_LENGTH} characters")
    return "".join(secrets.choice(ROOM_CODE_ALPHABET) for _ in range(length))


def parse_room_code(text: str) -> RoomCode:
    """Splits what a person typed into routing code and secret part (None for an open room).

    Accepts any case, surrounding spaces and one dash (or space) between the parts.
    """
    compact = text.strip().upper()
    for separator in (SEPARATOR, " "):
        if compact.count(separator) > 1 or (
            separator in compact and compact.index(separator) != ROOM_CODE_LENGTH
        ):
            raise InvalidRoomCode(
                f"a room code is {ROOM_CODE_LENGTH} characters, optionally followed by a dash "
                f"and the secret part of at least {SECRET_MIN_LENGTH} characters"
            )
        compact = compact.replace(separator, "")
    positions = [str(i + 1) for i, c in enumerate(compact) if c not in ROOM_CODE_ALPHABET]
    if positions:
        raise InvalidRoomCode(
            f"character {', '.join(positions)} of the code is not one of {ROOM_CODE_ALPHABET} "
            f"(codes have no I, O, 0 or 1)"
        )
    if len(compact) < ROOM_CODE_LENGTH:
        raise InvalidRoomCode(
            f"the code has {len(compact)} characters; the routing part alone has {ROOM_CODE_LENGTH}"
        )
    routing, secret = compact[:ROOM_CODE_LENGTH], compact[ROOM_CODE_LENGTH:]
    if not secret:
        return RoomCode(routing)
    if len(secret) < SECRET_MIN_LENGTH:
        raise InvalidRoomCode(
            f"the secret part after {routing} has {len(secret)} characters; it needs at "
            f"least {SECRET_MIN_LENGTH}"
        )
    if len(secret) > SECRET_MAX_LENGTH:
        raise InvalidRoomCode(f"the secret part has more than {SECRET_MAX_LENGTH} characters")
    return RoomCode(routing, secret)
