"""Fixtures for the command-line tests: the CLI as real subprocesses, killed at teardown."""

from __future__ import annotations

import pytest
from cli_process import CliProcess, cli_env


@pytest.fixture
def env(tmp_path):
    return cli_env(tmp_path / "config")


@pytest.fixture
def cli(env):
    """Factory: cli(*args, env=None) -> CliProcess (started; killed at teardown if running)."""
    started: list[CliProcess] = []

    def start(*args: str, env_override: dict | None = None) -> CliProcess:
        process = CliProcess(list(args), env_override or env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
