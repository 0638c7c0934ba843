"""The shared protocol constants in tests/vectors/protocol.json (also read by the C tests)."""

from __future__ import annotations

import json
from pathlib import Path

PROTOCOL = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "protocol.json").read_text()
)
ALPHABET = PROTOCOL["room_code_alphabet"]
CODE_LENGTH = PROTOCOL["room_code_length"]
CLOSE = PROTOCOL["close_codes"]
FEATURES = PROTOCOL["features"]


def is_room_code(code) -> bool:
    return isinstance(code, str) and len(code) == CODE_LENGTH and all(c in ALPHABET for c in code)
