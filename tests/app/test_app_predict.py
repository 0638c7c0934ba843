"""The Predict page: a saved model (or the session's) predicts a folder of images of several
sizes, each shown with its predicted mask next to the reference; per-image Dice; the masks,
the model and a bioimage.io package are saved. No relay needed."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from app_windows import click, open_window
from PIL import Image

torch = pytest.importorskip("torch", reason="prediction needs torch (the train extra)")

from segmentation_suite.training import Trainer, member_shard  # noqa: E402
from segmentation_suite.training.data import synthetic_dataset  # noqa: E402
from segmentation_suite.training.model_file import load_model, save_model  # noqa: E402

#: (name, height, width, with a mask): three sizes, the largest tiled (beyond 256 pixels).
IMAGES = (("small", 48, 48, True), ("wide", 64, 150, True), ("large", 300, 280, True))
WORK_MS = 120_000


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """A model that learned microscope 1's cells (a few epochs; seconds)."""
    trainer = Trainer(member_shard(0, 32, size=64))
    for _ in range(4):
        trainer.train_epoch()
    path = tmp_path_factory.mktemp("model") / "cells.safetensors"
    save_model(
        path,
        trainer.state_dict(),
        architecture=trainer.architecture,
        training={"command": "test", "epochs": 4},
    )
    return path


def image_folder(folder):
    folder.mkdir()
    for seed, (name, height, width, with_mask) in enumerate(IMAGES, start=1):
        data = synthetic_dataset(1, size=max(height, width), seed=seed, style=0)
        image, mask = data.images[0, 0][:height, :width], data.masks[0, 0][:height, :width]
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{name}.png")
        if with_mask:
            Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f"{name}_mask.png")
    # An image without a mask, and a damaged file that must be named, not silently dropped.
    extra = synthetic_dataset(1, size=40, seed=9, style=0).images[0, 0]
    Image.fromarray((extra * 255).astype(np.uint8)).save(folder / "unlabelled.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def test_predict_page_shows_overlays_and_dice_and_saves_everything(qtbot, trained_model, tmp_path):
    window = open_window(qtbot, "Predictor")
    window.show_page(2)
    page = window.predict_page

    # No model yet: said plainly.
    page.set_folder(str(image_folder(tmp_path / "images")))
    click(qtbot, page.predict_button)
    assert "no model yet" in page.error_label.message

    assert page.load_model_file(str(trained_model))
    assert "cells.safetensors" in page.model_label.text()
    click(qtbot, page.predict_button)
    qtbot.waitUntil(lambda: not page.is_busy, timeout=WORK_MS)
    assert page.error_label.message == ""

    names = [p.name for p in page.predictions]
    assert sorted(names) == sorted([n for n, *_ in IMAGES] + ["unlabelled"])
    rows = [page.result_list.item(i).text() for i in range(page.result_list.count())]
    assert len(rows) == len(names)
    for prediction in page.predictions:
        expected = {n: (h, w) for n, h, w, _ in IMAGES}.get(prediction.name, (40, 40))
        assert prediction.mask.shape == expected  # the image's own size
    dice = {p.name: p.dice for p in page.predictions}
    assert dice["unlabelled"] is None
    assert all(dice[n] is not None for n, *_ in IMAGES)
    assert np.mean([dice[n] for n, *_ in IMAGES]) >= 0.5, dice
    assert any("(48×48, Dice " in row for row in rows), rows
    assert any("unlabelled" in row and "no mask" in row for row in rows), rows
    assert "mean Dice" in page.status_label.text()
    assert "broken.png" in page.summary_label.text()  # left out, and named

    # The selected image: its prediction overlaid, its reference beside it.
    page.result_list.setCurrentRow(names.index("large"))
    assert not page.predicted_view.pixmap().isNull()
    assert not page.reference_view.pixmap().isNull()
    page.result_list.setCurrentRow(names.index("unlabelled"))
    assert page.reference_view.text() == "No reference mask for this image"

    # Never over the reference masks: the input folder is refused, in words.
    assert not page.save_masks_to(str(tmp_path / "images"))
    assert "overwrite the reference masks" in page.error_label.message
    out = tmp_path / "predicted"
    assert page.save_masks_to(str(out))
    with Image.open(out / "large_mask.png") as mask:
        assert mask.size == (280, 300)
    assert len(list(out.glob("*_mask.png"))) == len(names)

    saved = tmp_path / "copy.safetensors"
    assert page.save_model_to(str(saved))
    copy = load_model(saved)
    original = load_model(trained_model)
    assert all(torch.equal(copy.weights[k], original.weights[k]) for k in original.weights)

    pytest.importorskip("bioimageio.spec", reason="export needs the export extra")
    package = tmp_path / "cells.zip"
    page.export_to(str(package))
    qtbot.waitUntil(lambda: not page.is_busy, timeout=WORK_MS)
    assert page.error_label.message == "", page.error_label.message
    assert "Exported" in page.status_label.text()
    with zipfile.ZipFile(package) as archive:
        assert "rdf.yaml" in archive.namelist()


def test_the_session_model_is_predicted_with_after_training(qtbot, tmp_path):
    """Without a file: the Training page's model (here trained without a session)."""
    window = open_window(qtbot, "Solo")
    page = window.predict_page
    window.training_page.trainer = Trainer(member_shard(0, 8, size=32))
    page.set_folder(str(image_folder(tmp_path / "images")))
    assert page.session_model_radio.isChecked()
    click(qtbot, page.predict_button)
    qtbot.waitUntil(lambda: not page.is_busy, timeout=WORK_MS)
    assert len(page.predictions) == len(IMAGES) + 1
    assert page.error_label.message == ""
