"""Input checks as the user types."""

from __future__ import annotations

from ..network.protocol import ROOM_CODE_ALPHABET, ROOM_CODE_LENGTH

#: Characters codes leave out because they are easily confused with others.
CONFUSABLE = "0 1 I O"


def clean_code(text: str) -> str:
    """What a typed or pasted code becomes: upper case, without spaces and dashes ("k7q-x2m"
    is K7QX2M). Anything else stays, so that the user sees it and is told about it."""
    return "".join(ch for ch in text.upper() if ch not in " -\t")


def explain_code(text: str) -> str:
    """Why `text` cannot be a room code as typed so far, in plain words; "" if it may be one
    (complete or not yet)."""
    code = clean_code(text)
    wrong = []
    for ch in code:
        if ch not in ROOM_CODE_ALPHABET and ch not in wrong:
            wrong.append(ch)
    if wrong:
        listed = ", ".join(f"“{ch}”" for ch in wrong)
        return (
            f"{listed} never appear{'s' if len(wrong) == 1 else ''} in a room code: codes leave "
            f"out {CONFUSABLE}, which are easily confused. Check the code you were given"
        )
    if len(code) > ROOM_CODE_LENGTH:
        return f"Room codes have {ROOM_CODE_LENGTH} characters; this has {len(code)}"
    return ""


def is_complete_room_code(text: str) -> bool:
    code = clean_code(text)
    return len(code) == ROOM_CODE_LENGTH and all(ch in ROOM_CODE_ALPHABET for ch in code)
