"""The README's first command: `segmentation-suite demo` runs a relay and simulated colleagues.

Runs the real command in a subprocess (its own relay process, one process per colleague) and
reads the table it prints: the shared model's held-out Dice must beat every colleague's
local-only Dice, and the run is seeded, so this holds every time.
"""

from __future__ import annotations

import re
import subprocess
import sys

ROW = re.compile(r"^\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s*$")


def run_demo(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segmentation_suite", "demo", *options],
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_shared_model_beats_every_local_model():
    finished = run_demo()
    assert finished.returncode == 0, finished.stdout + finished.stderr
    rows = [ROW.match(line) for line in finished.stdout.splitlines()]
    dice = {int(m.group(1)): (float(m.group(2)), float(m.group(3))) for m in rows if m}
    assert sorted(dice) == [1, 2, 3], finished.stdout
    for colleague, (local_only, shared) in dice.items():
        assert shared > local_only, f"colleague {colleague}: {local_only} vs {shared}"
    rounds = re.findall(r"round\s+(\d+)/(\d+)", finished.stdout)
    assert [int(r) for r, _ in rounds] == list(range(1, 9)), finished.stdout


def test_demo_is_reproducible():
    first, second = run_demo("--rounds", "2"), run_demo("--rounds", "2")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    table = [line for line in first.stdout.splitlines() if ROW.match(line)]
    assert table and table == [line for line in second.stdout.splitlines() if ROW.match(line)]


def test_bad_option_is_refused_clearly():
    finished = run_demo("--colleagues", "many")
    assert finished.returncode == 2
    assert "--colleagues" in finished.stderr and "invalid int value" in finished.stderr
