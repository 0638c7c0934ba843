"""The relay binary's command line, from outside: --help documents every option with its
environment variable, a bad value stops the relay with status 2 and one line naming the option,
environment variables are honoured (a flag winning over them), and the access token never
appears in what the binary prints."""

from __future__ import annotations

import http.client
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.relay_process import ROOT, SANITIZER_REPORT, SLOWDOWN, relay_binary

pytestmark = pytest.mark.skipif(
    not relay_binary().exists(),
    reason=f"relay binary {relay_binary()} not built (make -C relay_server; or RELAY_SERVER_BIN)",
)

# Every option and the environment variable that sets it, as issue 2 and config.h document them.
OPTIONS = [
    ("--listen", "RELAY_LISTEN"),
    ("--port", "RELAY_PORT"),
    ("--port", "PORT"),
    ("--tls-cert", "RELAY_TLS_CERT"),
    ("--tls-key", "RELAY_TLS_KEY"),
    ("--token-file", "RELAY_TOKEN_FILE"),
    ("--secret-file", "RELAY_SECRET_FILE"),
    ("--max-message-size", "RELAY_MAX_MESSAGE_SIZE"),
    ("--max-text-size", "RELAY_MAX_TEXT_SIZE"),
    ("--max-room-members", "RELAY_MAX_ROOM_MEMBERS"),
    ("--max-rooms", "RELAY_MAX_ROOMS"),
    ("--max-connections", "RELAY_MAX_CONNECTIONS"),
    ("--join-rate", "RELAY_JOIN_RATE"),
    ("--ping-interval", "RELAY_PING_INTERVAL"),
    ("--idle-timeout", "RELAY_IDLE_TIMEOUT"),
    ("--handshake-timeout", "RELAY_HANDSHAKE_TIMEOUT"),
    ("--resume-grace", "RELAY_RESUME_GRACE"),
    ("--receiver-buffer", "RELAY_RECEIVER_BUFFER"),
    ("--flow-control", "RELAY_FLOW_CONTROL"),
    ("--slow-receiver-timeout", "RELAY_SLOW_RECEIVER_TIMEOUT"),
    ("--log-format", "RELAY_LOG_FORMAT"),
    ("--log-level", "RELAY_LOG_LEVEL"),
    ("--enable-echo", "RELAY_ENABLE_ECHO"),
]
LISTENING = re.compile(r"listening on (\S+):(\d+)")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any relay setting, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("RELAY_") and name != "PORT"
    }
    env.update(extra)
    return env


def run_relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs the binary for a command that must end by itself (help, version, bad input)."""
    return subprocess.run(
        [str(relay_binary()), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=10 * SLOWDOWN,
    )


class StartedRelay:
    """A relay started with exactly the given arguments and environment (the `relay` fixture
    always passes --port and --listen, which would hide the environment variables under test).
    Output goes to files, so the relay never blocks on a pipe nobody reads."""

    def __init__(self, directory: Path, args: list[str], env: dict[str, str]):
        directory.mkdir()
        self.stdout_path = directory / "stdout.txt"
        self.stderr_path = directory / "stderr.txt"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [str(relay_binary()), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
            )

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def wait_listening(self, timeout: float = 10.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout * SLOWDOWN
        while time.monotonic() < deadline:
            match = LISTENING.search(self.stdout_path.read_text(errors="replace"))
            if match:
                return match.group(1), int(match.group(2))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(
            f"relay did not print 'listening on HOST:PORT' (exit {self.process.returncode}):\n"
            + self.output()
        )

    def stop(self) -> int | None:
        """SIGTERM to this relay only; returns its exit status (None if it had to be killed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5 * SLOWDOWN)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                return None
        return self.process.returncode


@pytest.fixture
def start_relay(tmp_path):
    started: list[StartedRelay] = []

    def start(*args: str, env: dict[str, str]) -> StartedRelay:
        relay = StartedRelay(tmp_path / f"relay{len(started)}", list(args), env)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()
        reports = [line for line in relay.output().splitlines() if SANITIZER_REPORT.search(line)]
        assert not reports, "sanitizer reports:\n" + relay.output()


def health_status(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


# --- help and version ---------------------------------------------------------------------


def test_help_lists_every_option_with_its_environment_variable():
    result = run_relay("--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    for option, variable in OPTIONS:
        together = [
            line
            for line in lines
            if re.search(rf"(^|\s){re.escape(option)}(\s|$)", line)
            and re.search(rf"\b{variable}\b", line)
        ]
        assert together, f"no --help line shows {option} with {variable}:\n{result.stdout}"
    # The token itself can only come from the environment or a file, never from argv.
    assert "RELAY_TOKEN" in result.stdout
    assert not re.search(r"--token(\s|=|$)", result.stdout, re.MULTILINE)
    assert "--version" in result.stdout


def test_short_help_matches_long_help():
    assert run_relay("-h").stdout == run_relay("--help").stdout


def test_version_prints_the_version_from_version_h():
    header = (ROOT / "relay_server" / "src" / "version.h").read_text()
    version = re.search(r'#define RELAY_VERSION "([^"]+)"', header).group(1)
    result = run_relay("--version")
    assert result.returncode == 0
    assert result.stdout == f"relay_server {version}\n"


# --- bad input --------------------------------------------------------------------------

BAD_INPUTS = [
    # (arguments, environment, what the single stderr line must name)
    (["--port", "abc"], {}, "--port"),
    (["--port", "70000"], {}, "--port"),
    (["--port", "-1"], {}, "--port"),
    (["--port"], {}, "--port"),
    (["--max-message-size", "12Q"], {}, "--max-message-size"),
    (["--max-message-size", "99999999999G"], {}, "--max-message-size"),
    (["--receiver-buffer", "-4M"], {}, "--receiver-buffer"),
    (["--max-room-members", "0"], {}, "--max-room-members"),
    (["--idle-timeout", "soon"], {}, "--idle-timeout"),
    (["--log-format", "xml"], {}, "--log-format"),
    (["--log-level", "loud"], {}, "--log-level"),
    (["--flow-control", "maybe"], {}, "--flow-control"),
    (["--listen", "not-an-address"], {}, "--listen"),
    (
        ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
        {},
        "--tls-cert",
    ),
    (["--token-file", "/nonexistent/token"], {}, "--token-file"),
    (["--enable-echo=yes"], {}, "--enable-echo"),
    (["--bogus"], {}, "--bogus"),
    (["--token", "abc"], {}, "--token"),
    (["8787"], {}, "8787"),
    ([], {"RELAY_PORT": "abc"}, "RELAY_PORT"),
    ([], {"PORT": "http"}, "PORT"),
    ([], {"RELAY_MAX_MESSAGE_SIZE": "1T"}, "RELAY_MAX_MESSAGE_SIZE"),
    ([], {"RELAY_LOG_FORMAT": "xml"}, "RELAY_LOG_FORMAT"),
    ([], {"RELAY_ENABLE_ECHO": "perhaps"}, "RELAY_ENABLE_ECHO"),
    ([], {"RELAY_TOKEN": ""}, "RELAY_TOKEN"),
]


@pytest.mark.parametrize(
    ("args", "env", "named"), BAD_INPUTS, ids=[" ".join(a) or str(e) for a, e, _ in BAD_INPUTS]
)
def test_bad_input_exits_2_with_one_line_naming_the_option(args, env, named):
    result = run_relay(*args, env=clean_env(**env))
    assert result.returncode == 2, result
    assert result.stdout == "", "a relay that refuses to start prints nothing on stdout"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert named in lines[0]


def test_tls_certificate_without_key_is_refused(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    for args, named in (
        (["--tls-cert", str(cert)], "--tls-key"),
        (["--tls-key", str(cert)], "--tls-cert"),
    ):
        result = run_relay(*args)
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert named in lines[0]


@pytest.mark.parametrize("contents", ["", "\n", "two words\n"])
def test_bad_token_file_is_refused_without_showing_it(tmp_path, contents):
    path = tmp_path / "token"
    path.write_text(contents)
    result = run_relay("--token-file", str(path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "--token-file" in lines[0]
    assert "words" not in result.stderr


# --- environment variables --------------------------------------------------------------


def test_relay_port_from_the_environment(start_relay):
    relay = start_relay("--listen", "127.0.0.1", env=clean_env(RELAY_PORT="0"))
    host, port = relay.wait_listening()
    assert host == "127.0.0.1"
    assert port > 0
    assert health_status(port) == 200
    assert relay.stop() == 0


def test_port_from_the_environment(start_relay):
    relay = start_relay("--listen", "127.0.0.1", env=clean_env(PORT="0"))
    _, port = relay.wait_listening()
    assert health_status(port) == 200


def test_relay_port_wins_over_port(start_relay):
    """PORT is not even parsed when RELAY_PORT is set: PORT=http would be refused alone."""
    relay = start_relay("--listen", "127.0.0.1", env=clean_env(RELAY_PORT="0", PORT="http"))
    _, port = relay.wait_listening()
    assert health_status(port) == 200


def test_listen_address_from_the_environment(start_relay):
    relay = start_relay(env=clean_env(RELAY_LISTEN="127.0.0.1", RELAY_PORT="0"))
    host, port = relay.wait_listening()
    assert host == "127.0.0.1"
    assert health_status(port) == 200


def test_flag_wins_over_the_environment(start_relay):
    relay = start_relay(
        "--port", "0", "--listen", "127.0.0.1", env=clean_env(RELAY_PORT="abc", RELAY_LISTEN="::")
    )
    host, port = relay.wait_listening()
    assert host == "127.0.0.1"
    assert health_status(port) == 200


def test_log_format_from_the_environment(start_relay):
    relay = start_relay(
        "--listen", "127.0.0.1", env=clean_env(RELAY_PORT="0", RELAY_LOG_FORMAT="json")
    )
    _, port = relay.wait_listening()
    health_status(port)
    assert relay.stop() == 0
    log_lines = [line for line in relay.stderr_path.read_text().splitlines() if line.strip()]
    assert log_lines, "the relay logged nothing"
    assert all(line.startswith("{") and line.endswith("}") for line in log_lines), log_lines


# --- the access token -------------------------------------------------------------------


def test_help_and_errors_never_show_the_token(tmp_path):
    token = "tok-" + secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    for args, env in (
        (["--help"], {"RELAY_TOKEN": token}),
        (["--help", "--token-file", str(token_file)], {}),
        (["--port", "abc"], {"RELAY_TOKEN": token}),
        (["--port", "abc", "--token-file", str(token_file)], {}),
        ([], {"RELAY_TOKEN": token, "RELAY_TOKEN_FILE": str(token_file)}),
    ):
        result = run_relay(*args, env=clean_env(**env))
        assert token not in result.stdout + result.stderr, (args, env)
    result = run_relay(env=clean_env(RELAY_TOKEN=token + " with a space"))
    assert result.returncode == 2
    assert "RELAY_TOKEN" in result.stderr
    assert token not in result.stderr


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_startup_never_logs_the_token(start_relay, tmp_path, log_format):
    token = "tok-" + secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    args = ["--listen", "127.0.0.1", "--log-level", "debug", "--log-format", log_format]
    args += ["--token-file", str(token_file)]
    relay = start_relay(*args, env=clean_env(RELAY_PORT="0"))
    _, port = relay.wait_listening()
    assert health_status(port) == 200
    assert relay.stop() == 0
    assert relay.output().strip(), "nothing was logged at debug level"
    assert token not in relay.output()
