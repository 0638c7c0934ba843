"""The README's first command: `segmentation-suite demo` runs a relay and simulated colleagues.

Runs the real command in a subprocess (its own relay process, one process per colleague, each
with its own simulated microscope) and reads what it prints: progress while it runs, a row
per round, and the final table, where the shared model's held-out Dice must beat every
colleague's local-only Dice. The run is seeded, so it holds every time and two runs print the
same table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

# Final table rows: colleague, local-only Dice, shared Dice.
ROW = re.compile(r"^\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s*$")
ROUND = re.compile(r"^\s+round (\d+)/(\d+)((?:\s+[0-9.]+)+)\s*$")


def run_demo(*options: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "segmentation_suite", "demo", *options],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def final_table(stdout: str) -> dict[int, tuple[float, float]]:
    rows = [ROW.match(line) for line in stdout.splitlines()]
    return {int(m.group(1)): (float(m.group(2)), float(m.group(3))) for m in rows if m}


def test_shared_model_beats_every_local_model():
    finished = run_demo()
    assert finished.returncode == 0, finished.stdout + finished.stderr
    dice = final_table(finished.stdout)
    assert sorted(dice) == [1, 2, 3], finished.stdout
    for colleague, (local_only, shared) in dice.items():
        assert shared > local_only, f"colleague {colleague}: {local_only} vs {shared}"

    # Progress while it ran: the room, every join, then one row per round with each
    # colleague's loss and the shared model's Dice.
    assert re.search(r"colleague 1 created room ([A-Z2-9]{6})", finished.stdout)
    for colleague in (2, 3):
        assert re.search(rf"colleague {colleague} joined room [A-Z2-9]{{6}}", finished.stdout)
    rounds = [ROUND.match(line) for line in finished.stdout.splitlines()]
    rounds = [m for m in rounds if m]
    total = int(rounds[0].group(2))
    assert [int(m.group(1)) for m in rounds] == list(range(1, total + 1)), finished.stdout
    assert all(len(m.group(3).split()) == 3 + 1 for m in rounds), finished.stdout
    assert "the shared model beats every local-only model" in finished.stdout


@pytest.mark.skipif(
    os.environ.get("SANITIZED_BUILD") == "1",
    reason="reproducibility is not about memory safety: the normal stage runs it",
)
def test_demo_is_reproducible():
    first, second = run_demo("--rounds", "1"), run_demo("--rounds", "1")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr

    def printed_numbers(stdout: str) -> list[str]:
        return [line for line in stdout.splitlines() if ROW.match(line) or ROUND.match(line)]

    assert len(final_table(first.stdout)) == 3, first.stdout
    assert printed_numbers(first.stdout) == printed_numbers(second.stdout)


def test_two_colleagues_quietly():
    finished = run_demo("--colleagues", "2", "--rounds", "1", "--quiet")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert sorted(final_table(finished.stdout)) == [1, 2], finished.stdout
    assert "joined room" not in finished.stdout
    assert not any(ROUND.match(line) for line in finished.stdout.splitlines())


def test_bad_option_is_refused_clearly():
    finished = run_demo("--colleagues", "many")
    assert finished.returncode == 2
    assert "--colleagues" in finished.stderr and "invalid int value" in finished.stderr
