"""segmentation_suite.network.session: room codes and user ids (format, CSPRNG), the LAN
address, address parsing, and the session/user bookkeeping."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import secrets
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from segmentation_suite.network import session
from segmentation_suite.network.session import (
    MultiUserSession,
    SessionManager,
    UserInfo,
    generate_session_id,
    generate_user_id,
    get_local_ip,
    get_session_manager,
    looks_like_session_code,
    parse_lan_address,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "tests/vectors/protocol.json").read_text()
)
ALPHABET = VECTORS["room_code_alphabet"]


# --- ids -----------------------------------------------------------------------------------


def test_room_codes_use_the_spec_alphabet_evenly():
    codes = [generate_session_id() for _ in range(2000)]
    assert all(len(c) == VECTORS["room_code_length"] for c in codes)
    counts = Counter("".join(codes))
    assert set(counts) == set(ALPHABET)  # all 32 characters occur, and nothing else
    expected = 2000 * 6 / 32
    assert all(0.5 * expected < n < 1.5 * expected for n in counts.values())
    assert len(set(codes)) > 1990  # 32^6 codes: repeats in 2000 draws are rare
    assert not set("IO01") & set(counts)


def test_room_codes_and_user_ids_come_from_secrets_not_random(monkeypatch):
    random.seed(1)
    first = generate_session_id(), generate_user_id()
    random.seed(1)
    second = generate_session_id(), generate_user_id()
    assert first != second  # seeding `random` does not make them reproducible
    monkeypatch.setattr(secrets, "choice", lambda seq: seq[0])
    assert generate_session_id() == ALPHABET[0] * 6
    assert generate_user_id() == "a" * 12


def test_user_ids_are_twelve_lowercase_letters_or_digits():
    ids = {generate_user_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(re.fullmatch(r"[a-z0-9]{12}", i) for i in ids)


def test_session_id_length_must_be_positive():
    assert len(generate_session_id(8)) == 8
    with pytest.raises(ValueError, match="length"):
        generate_session_id(0)


# --- the LAN address -----------------------------------------------------------------------


def test_local_ip_is_an_ipv4_address():
    address = ipaddress.ip_address(get_local_ip())
    assert address.version == 4 and not address.is_unspecified


def test_local_ip_falls_back_to_loopback():
    assert get_local_ip(route_probe="256.0.0.1") == "127.0.0.1"  # not an address: no route
    assert get_local_ip(route_probe="127.0.0.2") == "127.0.0.1"  # routed over loopback


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.168.1.5", ("192.168.1.5", 8765)),
        ("  192.168.1.5:9000  ", ("192.168.1.5", 9000)),
        ("ws://host.lan:8000/ws/", ("host.lan", 8000)),
        ("http://10.0.0.2", ("10.0.0.2", 8765)),
        ("[::1]:8765", ("::1", 8765)),
        ("[fe80::1]", ("fe80::1", 8765)),
    ],
)
def test_lan_addresses_are_parsed(text, expected):
    assert parse_lan_address(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "ws://", "host:port", "host:70000", "/path"])
def test_bad_lan_addresses_are_refused(text):
    with pytest.raises(ValueError, match="address"):
        parse_lan_address(text)


@pytest.mark.parametrize(
    ("text", "is_code"),
    [("K7QX2M", True), (" K7QX2M ", True), ("k7qx2m", False), ("10.0.0.1", False),
     ("host:8765", False), ("K7QX2", False), ("HOST01", True), ("local1", False)],
)  # fmt: skip
def test_room_codes_typed_as_addresses_are_recognised(text, is_code):
    assert looks_like_session_code(text) is is_code


# --- users and sessions --------------------------------------------------------------------


def test_user_info_round_trips_through_json():
    user = UserInfo("u1", "Ann", last_sync=datetime(2024, 5, 1, 12), contribution_count=3,
                    last_epoch=7, last_loss=0.25)  # fmt: skip
    assert UserInfo.from_dict(json.loads(json.dumps(user.to_dict()))) == user


def test_user_info_from_a_relay_users_entry():
    user = UserInfo.from_dict({"user_id": "u2", "display_name": "Bo"})
    assert (user.user_id, user.display_name, user.contribution_count) == ("u2", "Bo", 0)
    assert UserInfo.from_dict({"user_id": "u3"}).display_name == "u3"  # the Worker may omit it


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "user"),
        ({"display_name": "x"}, "user_id"),
        ({"user_id": 5}, "user_id"),
        ({"user_id": "u", "display_name": 5}, "display_name"),
        ({"user_id": "u", "last_sync": "yesterday"}, "last_sync"),
        ({"user_id": "u", "contribution_count": "3"}, "contribution_count"),
        ({"user_id": "u", "last_epoch": 1.5}, "last_epoch"),
    ],
)
def test_user_info_names_the_bad_field(data, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        UserInfo.from_dict(data)


def test_session_membership():
    room = MultiUserSession(session_id="K7QX2M", host_ip="192.168.1.5")
    room.add_user(UserInfo("u1", "Ann"))
    room.add_user(UserInfo("u2", "Bo"))
    room.add_user(UserInfo("u1", "Ann again"))  # a reconnect replaces, never duplicates
    assert [u.display_name for u in room.connected_users] == ["Bo", "Ann again"]
    room.update_user_sync("u2", epoch=4, loss=0.5)
    bo = room.get_user("u2")
    assert (bo.contribution_count, bo.last_epoch, bo.last_loss) == (1, 4, 0.5)
    assert bo.last_sync is not None
    assert room.remove_user("u2") is bo and room.remove_user("u2") is None
    assert room.user_count == 1
    assert room.connection_string == "192.168.1.5:8765"
    assert room.websocket_url == "ws://192.168.1.5:8765"
    assert MultiUserSession(host_ip="fe80::1", port=9).websocket_url == "ws://[fe80::1]:9"
    assert room.to_dict()["connected_users"][0]["user_id"] == "u1"


def test_default_session_has_a_room_code():
    assert re.fullmatch(f"[{ALPHABET}]{{6}}", MultiUserSession().session_id)


def test_session_manager_host_and_member():
    manager = SessionManager()
    hosted = manager.create_session("Ann", port=9000)
    assert manager.is_connected and manager.is_host and hosted.port == 9000
    assert hosted.connected_users == [manager.user_info]
    joined = manager.join_session("10.0.0.2", 8765, "Bo")
    assert not manager.is_host and joined.host_ip == "10.0.0.2" and joined.user_count == 0
    assert manager.user_info.display_name == "Bo"
    manager.leave_session()
    assert not manager.is_connected and manager.user_info is None


def test_session_manager_is_one_per_process():
    seen = []
    threads = [
        threading.Thread(target=lambda: seen.append(get_session_manager())) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in seen}) == 1 and seen[0] is get_session_manager()
    assert isinstance(session.get_session_manager(), SessionManager)
