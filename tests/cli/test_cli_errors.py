"""Bad input to the command line: plain words on stderr and exit 1 (argparse's errors: 2),
against a real relay where a relay is involved, and never a traceback."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

from segmentation_suite.network import relay_config


def finish(process, timeout: float = 60) -> tuple[int, str, str]:
    code = process.wait(timeout)
    assert "Traceback" not in process.stderr, process.stderr
    return code, process.stdout, process.stderr


def closed_port_url() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


def test_unknown_room_code(relay, cli):
    server = relay()
    code, _, stderr = finish(cli("join", "K7QX2M", "--relay-url", server.url, "--synthetic"))
    assert code == 1
    assert "Room K7QX2M not found" in stderr


@pytest.mark.parametrize(
    "typed, problem",
    [
        ("K7QX2", "the code has 5 characters; the routing part alone has 6"),
        ("k7qx2mm", "the secret part after K7QX2M has 1 characters; it needs at least 4"),
        ("K7QX1M", "character 5 of the code is not one of"),
        ("KOQX2M-4HRT", "character 2 of the code is not one of"),
        ("K7-X2M", "a room code is 6 characters, optionally followed by a dash"),
    ],
)
def test_malformed_code_is_refused_before_connecting(cli, typed, problem):
    # Nothing listens at the relay URL: a connection attempt would say "Cannot reach".
    code, _, stderr = finish(cli("join", typed, "--relay-url", closed_port_url(), "--synthetic"))
    assert code == 1
    assert f"not a room code: {problem}" in stderr
    assert "Cannot reach" not in stderr


def test_a_short_secret_part_is_refused_without_echoing_it(cli):
    code, stdout, stderr = finish(
        cli("join", "K7QX2M-ZQW", "--relay-url", closed_port_url(), "--synthetic")
    )
    assert code == 1 and "has 3 characters; it needs at least 4" in stderr
    assert "ZQW" not in stderr + stdout


@pytest.mark.parametrize("command", [["create"], ["join", "K7QX2M"]])
def test_no_relay_configured(cli, command):
    if relay_config.package_config_path().exists():
        pytest.skip(f"{relay_config.package_config_path()} configures a relay in this checkout")
    code, _, stderr = finish(cli(*command, "--synthetic"))
    assert code == 1
    assert "No relay configured" in stderr
    assert "--relay-url" in stderr and relay_config.ENV_VAR in stderr


def test_unreachable_relay(cli):
    url = closed_port_url()
    code, _, stderr = finish(cli("create", "--relay-url", url, "--synthetic"))
    assert code == 1
    assert f"Cannot reach the relay at {url}/ws" in stderr


def test_malformed_relay_url_names_the_option(cli):
    url = "https://relay.example.org"
    code, _, stderr = finish(cli("create", "--relay-url", url, "--synthetic"))
    assert code == 1
    assert "--relay-url" in stderr and "wss://" in stderr


def test_room_full(relay, cli):
    server = relay("--max-room-members", "1")
    host = cli("create", "--relay-url", server.url, "--synthetic", "--wait-for", "1")
    room = host.wait_for(r"join ([A-Z2-9]{6}-[A-Z2-9]{4,}) ", 60).group(1)
    code, _, stderr = finish(cli("join", room, "--relay-url", server.url, "--synthetic"))
    assert code == 1
    assert f"Room {room[:6]} is full" in stderr  # the relay knows the routing part only
    host.ctrl_c()


def test_rate_limited(relay, cli):
    server = relay(join_rate="1")
    first, _, _ = finish(cli("join", "K7QX2M", "--relay-url", server.url, "--synthetic"))
    assert first == 1
    code, _, stderr = finish(cli("join", "K7QX2M", "--relay-url", server.url, "--synthetic"))
    assert code == 1
    assert "Too many join attempts" in stderr and "try again in" in stderr


def write_pair(folder, name: str, size=(16, 16), mask: bool = True) -> None:
    image = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    Image.fromarray(image).save(folder / f"{name}.png")
    if mask:
        Image.fromarray((image > 128).astype(np.uint8) * 255).save(folder / f"{name}_mask.png")


@pytest.mark.parametrize("command", [["train"], ["join", "K7QX2M"], ["create"]])
def test_image_without_mask_is_named(tmp_path, cli, command):
    folder = tmp_path / "data"
    folder.mkdir()
    write_pair(folder, "cell_01")
    write_pair(folder, "cell_02", mask=False)
    # The data is read before connecting, so the unreachable relay is never tried.
    code, _, stderr = finish(
        cli(*command, "--data", str(folder), "--relay-url", closed_port_url())
        if command != ["train"]
        else cli(*command, "--data", str(folder))
    )
    assert code == 1
    assert "cell_02.png" in stderr
    assert "Cannot reach" not in stderr


def test_mask_of_another_size_is_named(tmp_path, cli):
    folder = tmp_path / "data"
    folder.mkdir()
    write_pair(folder, "a")
    write_pair(folder, "b", mask=False)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "b_mask.png")
    # By default the pair is left out with a warning naming it, and training goes on.
    code, _, stderr = finish(cli("train", "--data", str(folder), "--epochs", "1"))
    assert code == 0, stderr
    assert "warning: skipped b_mask.png:" in stderr and "16x16" in stderr and "8x8" in stderr
    # --strict-data refuses the folder instead.
    code, _, stderr = finish(cli("train", "--data", str(folder), "--strict-data"))
    assert code == 1
    assert "error: Image b.png" in stderr and "b_mask.png" in stderr and "8x8" in stderr


def test_missing_folder_is_named(tmp_path, cli):
    missing = tmp_path / "nowhere"
    code, _, stderr = finish(cli("train", "--data", str(missing)))
    assert code == 1
    assert str(missing) in stderr


@pytest.mark.parametrize(
    "args, option",
    [
        (["train", "--synthetic", "--epochs", "0"], "--epochs"),
        (["create", "--synthetic", "--rounds", "many"], "--rounds"),
        (["create", "--synthetic", "--wait-for", "-1"], "--wait-for"),
        (["join", "K7QX2M", "--synthetic", "--round-timeout", "0"], "--round-timeout"),
        (["train", "--data", "x", "--validation", "1.5"], "--validation"),
        (["train", "--data", "x", "--synthetic"], "--synthetic"),
        (["join", "K7QX2M"], "--data"),
        (["join"], "CODE"),
        (["demo", "--colleagues", "5"], "--colleagues"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_option_values_are_argparse_errors(cli, args, option):
    code, _, stderr = finish(cli(*args), timeout=30)
    assert code == 2
    assert option in stderr and "error:" in stderr
