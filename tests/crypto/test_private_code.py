"""Private room codes: the routing part and the secret part split in one place, typed in any
case with or without the dash; malformed codes refused in words that do not repeat the secret."""

from __future__ import annotations

import logging

import pytest

from segmentation_suite.network.private_code import (
    SECRET_MIN_LENGTH,
    InvalidRoomCode,
    RoomCode,
    new_secret,
    parse_room_code,
)
from segmentation_suite.network.protocol import ROOM_CODE_ALPHABET


@pytest.mark.parametrize(
    "typed", ["K7QX2M-4HRT", "k7qx2m-4hrt", "K7QX2M4HRT", " k7Qx2m 4hRt ", "K7QX2M-4hrt\n"]
)
def test_typed_forms_give_the_same_code(typed) -> None:
    code = parse_room_code(typed)
    assert (code.routing, code.secret) == ("K7QX2M", "4HRT")
    assert code.private
    assert str(code) == "K7QX2M-4HRT"
    assert code.secret_bytes() == b"4HRT"


def test_routing_code_alone_is_an_open_room() -> None:
    code = parse_room_code("k7qx2m")
    assert code == RoomCode("K7QX2M")
    assert not code.private
    assert str(code) == "K7QX2M"
    with pytest.raises(ValueError, match="no secret part"):
        code.secret_bytes()


def test_longer_secret_parts_are_accepted() -> None:
    assert parse_room_code("K7QX2M-4HRTZ9").secret == "4HRTZ9"


@pytest.mark.parametrize(
    ("typed", "words"),
    [
        ("K7QX2M-4HR", "needs at least 4"),
        ("K7QX2M4", "needs at least 4"),
        ("K7QX", "routing part alone has 6"),
        ("K7QX2M-4HR0", "character 10"),
        ("K7QX-2M4HRT", "optionally followed by a dash"),
        ("K7QX2M--4HRT", "optionally followed by a dash"),
        ("K7QX2M-" + "A" * 17, "more than 16"),
    ],
)
def test_malformed_codes_are_refused_without_echoing_the_secret(typed, words) -> None:
    with pytest.raises(InvalidRoomCode, match=words) as caught:
        parse_room_code(typed)
    secret = typed.upper().replace("-", "")[6:]
    if len(secret) >= 3:
        assert secret not in str(caught.value)


def test_repr_and_logs_never_show_the_secret(caplog) -> None:
    code = parse_room_code("K7QX2M-4HRT")
    assert "4HRT" not in repr(code)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("joining %r", code)
    assert "4HRT" not in caplog.text
    assert "K7QX2M" in caplog.text


def test_new_secrets_use_the_alphabet_and_vary() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert all(len(s) == SECRET_MIN_LENGTH for s in secrets)
    assert all(c in ROOM_CODE_ALPHABET for s in secrets for c in s)
    assert len(secrets) > 45  # 20 bits each: repeats among 50 are rare
    with pytest.raises(ValueError):
        new_secret(3)
