"""Input checks as the user types."""

from __future__ import annotations

from ..network.private_code import SECRET_MAX_LENGTH, SEPARATOR, InvalidRoomCode, parse_room_code
from ..network.protocol import ROOM_CODE_ALPHABET, ROOM_CODE_LENGTH

#: Characters codes leave out because they are easily confused with others.
CONFUSABLE = "0 1 I O"


def clean_code(text: str) -> str:
    """What a typed or pasted code becomes: upper case, without spaces and stray dashes
    ("k7q-x2m" is K7QX2M), with the one dash of a private room's code before its secret part
    ("k7qx2m4hrt" is K7QX2M-4HRT). Anything else stays, so that the user sees it and is
    told about it."""
    code = "".join(ch for ch in text.upper() if ch not in " -\t")
    if len(code) > ROOM_CODE_LENGTH:
        code = code[:ROOM_CODE_LENGTH] + SEPARATOR + code[ROOM_CODE_LENGTH:]
    return code


def explain_code(text: str) -> str:
    """Why `text` cannot be a room code as typed so far, in plain words; "" if it may be one
    (complete or not yet)."""
    code = clean_code(text)
    wrong = []
    for ch in code:
        if ch not in ROOM_CODE_ALPHABET and ch != SEPARATOR and ch not in wrong:
            wrong.append(ch)
    if wrong:
        listed = ", ".join(f"“{ch}”" for ch in wrong)
        return (
            f"{listed} never appear{'s' if len(wrong) == 1 else ''} in a room code: codes leave "
            f"out {CONFUSABLE}, which are easily confused. Check the code you were given"
        )
    length = len(code.replace(SEPARATOR, ""))
    if length > ROOM_CODE_LENGTH + SECRET_MAX_LENGTH:
        return (
            f"Room codes have {ROOM_CODE_LENGTH} characters, and a private room's a secret "
            f"part of at most {SECRET_MAX_LENGTH} more; this has {length}"
        )
    return ""


def is_complete_room_code(text: str) -> bool:
    """An open room's 6 characters, or a private room's code with its whole secret part."""
    try:
        parse_room_code(clean_code(text))
    except InvalidRoomCode:
        return False
    return True
