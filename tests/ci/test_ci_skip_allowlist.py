"""The CI runner's skip policy (scripts/run_tests.py): a skip fails CI unless its reason is on
the allow-list for that stage. Checked on a junit file written here by hand, in the format
pytest writes (`<skipped type="pytest.skip" message="REASON">`), and on one pytest writes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_runner():
    spec = importlib.util.spec_from_file_location("run_tests", ROOT / "scripts" / "run_tests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


runner = load_runner()

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="0" skipped="4" tests="5">
<testcase classname="tests.codec.test_codec_roundtrip" name="test_cuda"><skipped
  type="pytest.skip" message="no CUDA device on this machine">x.py:1: no CUDA</skipped></testcase>
<testcase classname="tests.demo.test_demo" name="test_demo_is_reproducible"><skipped
  type="pytest.skip"
  message="reproducibility is not about memory safety: the normal stage runs it">d</skipped>
</testcase>
<testcase classname="tests.relay.test_cli" name="test_help"><skipped type="pytest.skip"
  message="relay binary /x/relay_server not built (make -C relay_server)">c</skipped></testcase>
<testcase classname="tests.relay.test_systemd_unit" name="test_verify"><skipped
  type="pytest.skip" message="systemd-analyze is not installed (Debian package systemd)">s
</skipped></testcase>
<testcase classname="tests.api.test_api_rooms" name="test_join"/>
</testsuite></testsuites>
"""


def test_only_allowed_reasons_pass_and_the_sanitizer_ones_only_in_that_stage(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    skips = runner.read_skips(junit)
    assert len(skips) == 4
    assert ("tests.relay.test_cli::test_help", skips[2][1]) == skips[2]

    offending = [test for test, _ in runner.disallowed_skips(skips, "sanitize")]
    assert offending == [
        "tests.relay.test_cli::test_help",
        "tests.relay.test_systemd_unit::test_verify",
    ]

    # The same demo skip in the normal stage means the demo test did not run at all.
    offending = [test for test, _ in runner.disallowed_skips(skips, "pytest")]
    assert offending == [
        "tests.demo.test_demo::test_demo_is_reproducible",
        "tests.relay.test_cli::test_help",
        "tests.relay.test_systemd_unit::test_verify",
    ]


def test_a_missing_junit_file_has_no_skips(tmp_path):
    assert runner.read_skips(tmp_path / "absent.xml") == []


def test_the_stage_counts_an_unlisted_skip_as_a_failure(tmp_path, monkeypatch):
    """A real pytest run (a two-test file, one skipped for an unlisted reason) through the
    runner's pytest stage: the skip becomes a failure and is named."""
    tests = tmp_path / "test_sample.py"
    tests.write_text(
        "import pytest\n"
        "def test_runs():\n    assert True\n"
        "def test_guarded():\n    pytest.skip('Xvfb is not installed')\n"
    )
    monkeypatch.setattr(runner, "BUILD", tmp_path / "build")
    monkeypatch.setattr(runner, "ARTIFACTS", tmp_path / "artifacts")
    (tmp_path / "build").mkdir()

    def run_here(cmd, **kwargs):
        cmd = [sys.executable, "-m", "pytest", str(tests), "-p", "no:cacheprovider", *cmd[2:]]
        return subprocess.call(cmd, cwd=tmp_path, env=kwargs.get("env"))

    monkeypatch.setattr(runner, "run", run_here)
    tally = runner.Tally()
    runner.pytest_stage(tally, "pytest", {"PATH": "/usr/bin:/bin"}, [])
    assert (tally.passed, tally.failed, tally.skipped) == (1, 1, 0)
