"""--save, --init and the session folder of checkpoints, through the real command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training needs torch (the train extra)")

from segmentation_suite.training.model_file import load_model  # noqa: E402

TINY = ("--synthetic", "--samples", "8", "--epochs", "2")


def _kept_folder(stdout: str) -> Path:
    match = re.search(r"^Kept (\d+) checkpoints? in (.+)$", stdout, re.M)
    assert match, stdout
    return Path(match.group(2))


def test_every_epoch_is_kept_in_a_session_folder_under_the_data_dir(cli, env, tmp_path):
    process = cli("train", *TINY)
    assert process.wait(120) == 0, process.stdout + process.stderr
    folder = _kept_folder(process.stdout)
    # The default: the user's data folder (XDG_DATA_HOME in the test's environment).
    assert folder.parent == Path(env["XDG_DATA_HOME"]) / "segmentation-suite" / "sessions"
    assert re.fullmatch(r"\d{8}-\d{6}-train", folder.name)
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch-001.safetensors",
        "epoch-002.safetensors",
    ]
    assert load_model(folder / "epoch-002.safetensors").round == 2


def test_checkpoints_go_where_asked_or_nowhere(cli, tmp_path):
    process = cli("train", *TINY, "--checkpoints", str(tmp_path / "mine"))
    assert process.wait(120) == 0, process.stdout + process.stderr
    assert _kept_folder(process.stdout).parent == tmp_path / "mine"
    process = cli("train", *TINY, "--no-checkpoints")
    assert process.wait(120) == 0, process.stdout + process.stderr
    assert "checkpoint" not in process.stdout


def test_init_starts_from_a_saved_model(cli, tmp_path):
    first = tmp_path / "first.safetensors"
    process = cli("train", *TINY, "--save", str(first), "--no-checkpoints")
    assert process.wait(120) == 0, process.stdout + process.stderr
    # Zero epochs is not allowed, so compare against a fresh start: one epoch from the saved
    # model must differ from one epoch from scratch with the same seed.
    again = tmp_path / "again.safetensors"
    fresh = tmp_path / "fresh.safetensors"
    one = ("train", "--synthetic", "--samples", "8", "--epochs", "1", "--no-checkpoints")
    process = cli(*one, "--init", str(first), "--save", str(again))
    assert process.wait(120) == 0, process.stdout + process.stderr
    process = cli(*one, "--save", str(fresh))
    assert process.wait(120) == 0, process.stdout + process.stderr
    started, resumed, scratch = (load_model(p) for p in (first, again, fresh))
    assert resumed.training["init"] == str(first)
    key = "head.weight"
    assert not torch.equal(resumed.weights[key], scratch.weights[key])
    # One epoch moves the weights only a little from where they started.
    moved_from_first = (resumed.weights[key] - started.weights[key]).abs().mean()
    moved_from_fresh = (resumed.weights[key] - scratch.weights[key]).abs().mean()
    assert moved_from_first < moved_from_fresh


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "truncated"),
        (b"PK\x03\x04 a zip", "PyTorch pickle"),
        (b"\x80\x02}q\x00.", "PyTorch pickle"),
    ],
)
def test_init_with_a_bad_file_fails_in_words(cli, tmp_path, content, message):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    process = cli("train", *TINY, "--init", str(bad))
    assert process.wait(60) == 1, process.stdout + process.stderr
    assert f"error: {bad}" in process.stderr and message in process.stderr
    assert "Traceback" not in process.stderr


def test_save_to_an_unwritable_place_fails_in_words(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    process = cli("train", *TINY, "--no-checkpoints", "--save", str(blocker / "m.safetensors"))
    assert process.wait(120) == 1, process.stdout + process.stderr
    assert "Cannot save the model to" in process.stderr and "Traceback" not in process.stderr
