"""The command without training: the app entry, `relay` handed to the binary, and what a
minimal install (no rich, no torch, no Qt) can still run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from segmentation_suite.relay_process import find_relay_binary


def run_main(args: list[str], env: dict, hidden: tuple[str, ...] = ()):
    """main(args) in a fresh interpreter where the `hidden` modules cannot be imported."""
    script = (
        "import sys\n"
        f"for name in {list(hidden)!r}: sys.modules[name] = None\n"
        "from segmentation_suite.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize("options", [[], ["--relay-url", "ws://127.0.0.1:9", "--name", "Alice"]])
def test_app_without_qt_says_what_to_install(env, options):
    # With or without the app's own options: they reach the app, not the command's parser.
    finished = run_main(options, env, hidden=("PySide6",))
    assert finished.returncode == 1
    assert "the app needs: pip install 'segmentation-suite[app]'" in finished.stderr


def test_relay_options_go_to_the_binary_even_without_rich_or_torch(env):
    try:
        find_relay_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    # `--version` is the relay's option, not ours; rich and torch are extras the relay does
    # not need.
    finished = run_main(["relay", "--version"], env, hidden=("rich", "torch"))
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("relay_server ")


def test_relay_command_without_binary(cli, env, tmp_path):
    missing = tmp_path / "relay_server"
    process = cli("relay", env_override=dict(env, RELAY_SERVER_BIN=str(missing)))
    assert process.wait(60) == 1
    assert str(missing) in process.stderr and "Traceback" not in process.stderr


def test_training_commands_without_torch_say_what_to_install(env):
    finished = run_main(["train", "--synthetic"], env, hidden=("torch",))
    assert finished.returncode == 1
    assert "pip install 'segmentation-suite[train]'" in finished.stderr


def test_help_lists_every_command(cli):
    process = cli("--help")
    assert process.wait(60) == 0
    for command in ("create", "join", "train", "demo", "relay"):
        assert f"    {command} " in process.stdout, process.stdout


def test_no_command_runs_the_app_with_its_options(monkeypatch):
    pytest.importorskip("PySide6", reason="the app extra is not installed")
    pytest.importorskip("qtpy", reason="the app extra is not installed")
    import types

    from segmentation_suite.cli import main

    calls = []
    app = types.ModuleType("segmentation_suite.app")
    app.run = lambda argv: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "segmentation_suite.app", app)
    monkeypatch.setattr("segmentation_suite.app", app, raising=False)
    assert main([]) == 7
    assert main(["--name", "Alice", "-platform", "offscreen"]) == 7
    assert calls == [
        ["segmentation-suite"],
        ["segmentation-suite", "--name", "Alice", "-platform", "offscreen"],
    ]


@pytest.mark.parametrize("command", [["join", "K7QX2M", "--synthetic"], ["create", "--synthetic"]])
def test_accept_legacy_weights_reaches_the_client(command):
    """Off unless asked for; when asked for, the room's SyncClient reads original weights."""
    from segmentation_suite.cli import build_parser
    from segmentation_suite.cli.room import RoomMember

    parser = build_parser()
    assert parser.parse_args(command).accept_legacy_weights is False
    args = parser.parse_args([*command, "--accept-legacy-weights"])
    assert args.accept_legacy_weights is True
    member = RoomMember(lambda text: None, aggregation_timeout=5, accept_legacy_weights=True)
    assert member.client.accept_legacy_weights is True
    default = RoomMember(lambda text: None, aggregation_timeout=5)
    assert default.client.accept_legacy_weights is False
