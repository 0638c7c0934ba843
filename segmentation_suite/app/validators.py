"""Input checks as the user types."""

from __future__ import annotations

from qtpy.QtGui import QValidator

from ..network.protocol import ROOM_CODE_ALPHABET, ROOM_CODE_LENGTH


class RoomCodeValidator(QValidator):
    """Upper-cases what is typed and refuses characters outside the room-code alphabet
    (which leaves out I, O, 0 and 1, easily confused), so a code can be typed in lower case
    and a wrong character never appears. Spaces and dashes, as in a pasted "k7q-x2m", are
    dropped."""

    def validate(self, text: str, pos: int):  # noqa: D401 (Qt's signature)
        before_cursor = text[:pos]
        cleaned = _clean(text)
        cursor = len(_clean(before_cursor))
        if any(ch not in ROOM_CODE_ALPHABET for ch in cleaned) or len(cleaned) > ROOM_CODE_LENGTH:
            return QValidator.State.Invalid, text, pos
        if len(cleaned) < ROOM_CODE_LENGTH:
            return QValidator.State.Intermediate, cleaned, cursor
        return QValidator.State.Acceptable, cleaned, cursor

    def fixup(self, text: str) -> str:
        return _clean(text)


def _clean(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch not in " -\t")


def is_complete_room_code(text: str) -> bool:
    code = _clean(text)
    return len(code) == ROOM_CODE_LENGTH and all(ch in ROOM_CODE_ALPHABET for ch in code)
