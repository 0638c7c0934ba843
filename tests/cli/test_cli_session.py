"""`create` and `join` in two real processes through a real relay: a round with visible
progress, then Ctrl-C on the member (it says goodbye, the host sees it leave and trains on)."""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path

from cli_process import ROUND_LINE

TRAINING = ["--synthetic", "--samples", "8", "--rounds", "1000"]


def test_create_join_train_and_leave_with_ctrl_c(relay, cli):
    server = relay()
    host = cli("create", "--name", "Alice", "--relay-url", server.url, *TRAINING)
    share = host.wait_for(r"^Share this code: (segmentation-suite join .*)$", 60).group(1)
    words = shlex.split(share)
    code = words[2]
    assert re.search(rf"room code.*\n.*\n.*{'  '.join(code)}", host.stdout), host.stdout
    # The share line is the whole command: the relay (not the installed default here), the
    # data kind and the options that differ from the defaults.
    assert words[3:] == ["--relay-url", server.url, "--synthetic", "--rounds", "1000"] + [
        "--samples",
        "8",
    ], share

    # Pasted as printed (the code typed in lower case: codes are case-insensitive).
    member = cli(*words[1:2], code.lower(), *words[3:], "--name", "Bob")
    member.wait_for(rf"^Joined room {code} with Alice, Bob$", 60)
    host.wait_for(r"^Bob joined the room$", 30)
    # a private room (the default): both sides show the same verification digits
    assert re.fullmatch(r"[A-Z2-9]{6}-[A-Z2-9]{4,}", code), code
    digits = member.wait_for(r"^Verification with the host: (\d{3} \d{3}) ", 30).group(1)
    host.wait_for(rf"^Verification with Bob: {digits} \(the same on both sides\)$", 30)
    # Each one's default microscope follows its place in the room, counted from 1.
    host.wait_for(r"^8 synthetic images from microscope 1; ", 30)
    member.wait_for(r"^8 synthetic images from microscope 2; ", 30)

    # A whole round on both sides, with its progress: the epoch, the member's two transfers
    # (size and rate), the host's averaging, and the round's row.
    member.wait_for(ROUND_LINE.format(n=1, last=1000, who="2 contributors"), 90)
    host.wait_for(ROUND_LINE.format(n=1, last=1000, who="2 contributors"), 90)
    for side in (host, member):
        side.wait_for(r"^  round 1/1000, epoch 1/1: loss [0-9.]+$", 1)
    member.wait_for(r"^  round 1: sent weights to the host, [0-9.]+ kB in [0-9.]+ s \(.*B/s\)$", 1)
    member.wait_for(r"^  round 1: received the global model, [0-9.]+ kB in [0-9.]+ s \(", 1)
    host.wait_for(r"^  round 1: averaged the round's weights after [0-9.]+ s$", 1)

    member.ctrl_c(code)

    # The host saw the goodbye and keeps training with itself as the only contributor.
    host.wait_for(r"^Bob left the room$", 30)
    after = host.line_count()
    host.wait_for(r"^round \d+/1000: .*, 1 contributor, ", 60, start=after)

    host.ctrl_c(code)


def test_ctrl_c_while_waiting_for_members_leaves_the_room(relay, cli):
    server = relay()
    host = cli("create", "--name", "Alice", "--relay-url", server.url, "--synthetic")
    code = host.wait_for(r"join ([A-Z2-9]{6}-[A-Z2-9]{4,}) ", 60).group(1)  # private by default
    host.wait_for(r"^Waiting for 1 member\(s\) to join", 10)
    host.ctrl_c(code)


def test_create_open_shares_the_six_character_code(relay, cli):
    server = relay()
    host = cli("create", "--open", "--name", "Alice", "--relay-url", server.url, "--synthetic")
    code = host.wait_for(r"^Share this code: segmentation-suite join (\S+) ", 60).group(1)
    assert re.fullmatch(r"[A-Z2-9]{6}", code), code
    host.wait_for(r"^Waiting for 1 member\(s\) to join", 10)
    host.ctrl_c()


def test_host_alone_finishes_every_round_and_saves(relay, cli, tmp_path):
    server = relay()
    saved = tmp_path / "shared.safetensors"
    host = cli(
        "create",
        "--relay-url",
        server.url,
        "--synthetic",
        "--samples",
        "8",
        "--rounds",
        "2",
        "--wait-for",
        "0",
        "--save",
        str(saved),
    )
    host.finishes_rounds(2, "1 contributor", 120)
    code = re.search(r"join ([A-Z2-9]{6}-[A-Z2-9]{4,}) ", host.stdout, re.M).group(1)
    assert re.search(rf"^Done: 2 rounds; left room {code}$", host.stdout, re.M), host.stdout
    from segmentation_suite.training.model_file import load_model

    assert load_model(saved).training["rounds"] == 2
    # Every round's global model is kept in the session folder, which the command names.
    kept = re.search(r"^Kept 2 checkpoints in (.+)$", host.stdout, re.M)
    assert kept, host.stdout
    rounds = sorted(p.name for p in Path(kept.group(1)).iterdir())
    assert rounds == ["round-001.safetensors", "round-002.safetensors"]


def test_lan_session_create_and_join_complete_a_round(cli):
    """No relay: `create --lan PORT` hosts the session on this machine, `join --lan HOST:PORT`
    joins it, and both finish their rounds with the shared model."""
    with socket.socket() as probe:  # a free port for the session
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rounds = ["--synthetic", "--samples", "8", "--rounds", "2"]
    host = cli("create", "--lan", str(port), "--name", "Alice", *rounds, "--member", "1")
    host.wait_for(rf"join --lan (\S+):{port} --synthetic --rounds 2 --samples 8$", 60)
    # The member leaves out --rounds: the host's plan reaches LAN members too.
    member = cli("join", "--lan", f"127.0.0.1:{port}", "--name", "Bob", *rounds[:3])
    member.wait_for(rf"^Joined the LAN session at 127.0.0.1:{port} with Alice, Bob$", 60)
    host.wait_for(r"^Bob joined the room$", 30)
    member.wait_for(r"^Following the host's plan: rounds 1–2, 1 epoch\(s\) each, ", 60)
    for side in (host, member):
        side.finishes_rounds(2, "2 contributors", 120)
