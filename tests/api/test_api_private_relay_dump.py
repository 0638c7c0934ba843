"""What the relay itself holds of a private room (issue 13, must-show 3), read from inside the
relay: a test build of it (`make -C relay_server dump`, relay_server/src/forward_dump.c) appends
every payload it sends any receiver (forwarded binaries and texts, and its own messages) to a
file. A private room's FedAvg rounds through that relay leave in the dump and in the relay's
debug log no secret part, no key (CPace wrap keys, group key, the host's signing key, raw or in
base64 or hex) and no 256-byte window of the plaintext float32/float16 weights; the same probe
finds the weights in an open room's dump (the control).
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path

import pytest
from test_api_private_rooms import TIMEOUT, create, join, model, run_rounds

from helpers.wire_probe import leaked_windows
from segmentation_suite.network.private_code import parse_room_code

ROOT = Path(__file__).resolve().parents[2]
_built: list[Path] = []


def dump_relay_binary() -> Path:
    """The dump build, made once per session (make is a no-op when it is up to date)."""
    if _built:
        return _built[0]
    named = os.environ.get("RELAY_DUMP_SERVER_BIN")
    binary = Path(named) if named else ROOT / "relay_server/build-dump/relay_server"
    if not named:
        made = subprocess.run(
            ["make", "-s", "-C", str(ROOT / "relay_server"), "dump"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if made.returncode != 0:
            pytest.fail(f"make -C relay_server dump failed:\n{made.stdout}\n{made.stderr}")
    if not binary.exists():
        pytest.skip(f"dump relay {binary} not built (make -C relay_server dump)")
    _built.append(binary)
    return binary


@pytest.fixture
def dump_relay(relay, monkeypatch, tmp_path):
    monkeypatch.setenv("RELAY_SERVER_BIN", str(dump_relay_binary()))
    dump = tmp_path / "forwarded.bin"
    server = relay("--log-level", "debug", env={"RELAY_DUMP_FORWARDED_FILE": str(dump)})
    return server, dump, f"ws://127.0.0.1:{server.port}/ws"


def test_the_relays_dump_and_log_hold_no_secret_key_or_plaintext(dump_relay, recorder) -> None:
    server, dump, url = dump_relay
    host, code = create(recorder, url)
    parsed = parse_room_code(code)
    alice = join(recorder, "alice", url, code)
    recorder.wait_for(lambda: recorder.of("alice", "room_joined"), TIMEOUT, "alice joined")
    sent = run_rounds(recorder, host, alice, rounds=2)
    room, member = host._session.private.host, alice._session.private.member
    keys = {
        "host's wrap key for alice": room._wrap_keys[alice.user_id],
        "alice's wrap key": member._wrap_key,
        "group key": room._transfers.group.key,
        "alice's group key": member._transfers.group.key,
        "host's signing key": room._sign_secret,
    }
    assert keys["group key"] == keys["alice's group key"]
    for client in (alice, host):
        client.disconnect()
    time.sleep(0.2)  # the relay's last writes (each payload is written as it is queued)

    relayed, relay_log = dump.read_bytes(), "\n".join(server.log)
    # the dump holds what the relay sent: alice's push and the global of both rounds, sealed
    # (float16 on the wire), and the key exchange's control messages
    model_bytes = sum(a.nbytes for a in model(1).values())
    assert len(relayed) > 2 * 2 * model_bytes // 2
    assert b'"pake_reply"' in relayed and b'"group_key"' in relayed
    assert leaked_windows(relayed, sent) == 0
    assert "room=" in relay_log  # the relay logged the room (by a tag), at debug level
    secrets = {
        "secret part": parsed.secret,
        "full code": str(parsed),
        "full code without the dash": str(parsed).replace("-", ""),
    }
    for what, text in secrets.items():
        assert text.encode() not in relayed, what
        assert text.lower() not in relay_log.lower(), what
    for what, key in keys.items():
        for form in (key, base64.b64encode(key), key.hex().encode()):
            assert form not in relayed, what
            assert form.decode("latin-1") not in relay_log, what


def test_control_an_open_rooms_dump_does_hold_the_weights(dump_relay, recorder) -> None:
    _, dump, url = dump_relay
    host, code = create(recorder, url, private=False)
    alice = join(recorder, "alice", url, code)
    recorder.wait_for(lambda: recorder.of("alice", "room_joined"), TIMEOUT, "alice joined")
    sent = run_rounds(recorder, host, alice, rounds=1)
    for client in (alice, host):
        client.disconnect()
    time.sleep(0.2)
    assert leaked_windows(dump.read_bytes(), sent) > 100
