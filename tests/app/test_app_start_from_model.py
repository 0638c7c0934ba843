"""The host's "Start from a model…": the session starts from a saved model.

The host chooses a .safetensors file (through the file dialog) and presses Start: the file's
weights go to every member as the global model of round 0, and every window's first round
starts from them (as the wire carries them: rounded to float16). A file of another
architecture, or a pickle, is refused in words and changes nothing.

Two windows in one QApplication against a real relay, driven through widgets.
"""

from __future__ import annotations

import threading

import pytest
from app_windows import click, open_room, use_tiny_synthetic_data
from qtpy.QtWidgets import QFileDialog

torch = pytest.importorskip("torch", reason="training needs torch (the train extra)")

from segmentation_suite.network.deltas import round_as_float16_wire  # noqa: E402
from segmentation_suite.training import federated  # noqa: E402
from segmentation_suite.training.model_file import load_model, save_model  # noqa: E402
from segmentation_suite.training.unet import ARCHITECTURE, architecture_name, build_unet  # noqa: E402

TRAINING_MS = 300_000  # a safety net on a shared 2-core machine


def _saved_model(path, seed: int, **architecture) -> dict:
    """A model file of freshly drawn weights; the weights written."""
    torch.manual_seed(seed)
    weights = {k: v.clone() for k, v in build_unet(**architecture).state_dict().items()}
    name = architecture_name(**architecture) if architecture else ARCHITECTURE
    save_model(path, weights, architecture=name, training={"command": "train", "epochs": 3})
    return weights


@pytest.fixture
def first_weights(monkeypatch):
    """Each run's weights as its first round begins: {user id: state dict}, recorded at
    FederatedTraining.run's start (after the app loaded whatever it starts from)."""
    recorded: dict[str, dict] = {}
    lock = threading.Lock()
    original = federated.FederatedTraining.run

    def run(self, *args, **kwargs):
        with lock:
            recorded[self.client.user_id] = {
                k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()
            }
        return original(self, *args, **kwargs)

    monkeypatch.setattr(federated.FederatedTraining, "run", run)
    return recorded


def _choose_in_dialog(monkeypatch, qtbot, window, path) -> None:
    """The host clicks "Start from a model…" and picks `path` in the file dialog."""
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    click(qtbot, window.training_page.start_from_button)


def test_every_member_starts_from_the_hosts_saved_model(
    qtbot, relay, tmp_path, monkeypatch, first_weights
):
    url = relay().url
    (alice, bob), _ = open_room(qtbot, url, ["Alice", "Bob"])
    for number, window in enumerate((alice, bob), start=1):
        window.show_page(1)
        use_tiny_synthetic_data(window, number)
    page = alice.training_page

    # Refused in words, and nothing chosen: a pickle, and a model of another architecture.
    pickle = tmp_path / "old.safetensors"
    torch.save(build_unet().state_dict(), pickle)
    _choose_in_dialog(monkeypatch, qtbot, alice, pickle)
    assert "PyTorch pickle" in page.error_label.message and page.starting_model is None
    other = tmp_path / "wide.safetensors"
    _saved_model(other, 1, base_channels=4, depth=2)
    _choose_in_dialog(monkeypatch, qtbot, alice, other)
    assert "holds a unet2d-v1:base=4:depth=2 model" in page.error_label.message
    assert ARCHITECTURE in page.error_label.message and page.starting_model is None
    assert page.start_from_label.text() == "a new model"

    path = tmp_path / "lab-model.safetensors"
    written = _saved_model(path, 1234)
    _choose_in_dialog(monkeypatch, qtbot, alice, path)
    assert page.error_label.message == ""
    assert page.start_from_label.text().startswith("lab-model.safetensors")
    assert not bob.training_page.start_from_button.isVisible()  # the host chooses
    page.rounds_spin.setValue(1)
    click(qtbot, page.start_button)

    def finished(window) -> bool:
        training = window.training_page
        return len(training.plot.global_dice_points) == 1 and not training.is_training

    qtbot.waitUntil(lambda: finished(alice) and finished(bob), timeout=TRAINING_MS)
    for window in (alice, bob):
        assert window.training_page.error_label.message == ""

    # Both first rounds began from the file's weights, as the wire carries them.
    ids = {w.setup_page.display_name: w.session.client.user_id for w in (alice, bob)}
    assert set(first_weights) == set(ids.values())
    on_the_wire = round_as_float16_wire(load_model(path).weights)
    fresh = build_unet().state_dict()
    for name, user_id in ids.items():
        started = first_weights[user_id]
        assert set(started) == set(written), name
        for key, value in started.items():
            assert torch.equal(value, torch.as_tensor(on_the_wire[key])), (name, key)
            assert torch.allclose(value, written[key], rtol=1e-3, atol=1e-4), (name, key)
        # Not a fresh model that merely looks alike: the file's values differ from one.
        assert any(not torch.allclose(started[k], fresh[k]) for k in fresh if k.endswith("weight"))

    # The plan told Bob where it starts: his page and both logs say so.
    assert bob.training_page.start_from_label.text() == "lab-model.safetensors"
    assert any("Received the host's starting model" in x for x in bob.training_page.event_log.lines)
    assert any(
        "starting from lab-model.safetensors" in x for x in bob.training_page.event_log.lines
    )
    host_log = alice.training_page.event_log.lines
    assert any("You sent the starting model lab-model.safetensors" in x for x in host_log)
    # Bob's push of round 1, a delta against the starting model, was read and averaged.
    closed = [x for x in host_log if "Round 1 closed: averaged " in x]
    assert len(closed) == 1 and "Alice" in closed[0] and "Bob" in closed[0], host_log
    # The round after it is round 1, in every widget.
    assert [x for x, _ in bob.training_page.plot.global_dice_points] == [1]
    assert [x for x, _ in alice.training_page.plot.global_dice_points] == [1]
