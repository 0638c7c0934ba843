"""Prediction: tiles that cover every pixel and blend, folders with stacks, sizes and
reference masks, Dice, the mask files, stopping, and unreadable files left out by name."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from segmentation_suite.training.data import DatasetError
from segmentation_suite.training.model_file import save_model
from segmentation_suite.training.predict import (
    Predictor,
    predict_data,
    predict_folder,
    write_masks,
)
from segmentation_suite.training.unet import ARCHITECTURE, build_unet


class Threshold(torch.nn.Module):
    """A stand-in for a perfect model on bright cells: logit = 100 * (value - 0.5). It is
    local (each output pixel depends on its input pixel only), so tiling must not change it;
    it records the input shapes it saw."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return 100 * (x - 0.5)


def test_small_images_go_in_one_piece_and_large_ones_in_overlapping_tiles():
    model = Threshold()
    predictor = Predictor(model, tile=128, overlap=32)
    image = np.random.default_rng(0).random((300, 130)).astype(np.float32)
    probabilities = predictor.probabilities(image, normalized=True)
    # rows: starts 0, 96, 172 (the last flush with the end); columns: 0, 2 (130 = 128 + 2)
    assert model.shapes == [(1, 1, 128, 128)] * 6
    expected = torch.sigmoid(100 * (torch.from_numpy(image) - 0.5)).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    model.shapes.clear()
    small = predictor.probabilities(image[:100, :77], normalized=True)
    assert model.shapes == [(1, 1, 100, 77)] and small.shape == (100, 77)


def test_overlapping_tiles_blend_without_a_seam():
    class TileMean(torch.nn.Module):
        """Each tile's output is the same everywhere: its own mean, a stand-in for a model
        whose output depends on what the tile holds (as GroupNorm's statistics do)."""

        def forward(self, x):
            return torch.logit(x.mean().clamp(0.01, 0.99)).expand_as(x)

    image = np.zeros((64, 200), dtype=np.float32)
    image[:, 100:] = 1.0  # left tiles dark, right tiles bright
    probabilities = Predictor(TileMean(), tile=64, overlap=24).probabilities(image, normalized=True)
    row = probabilities[0]
    steps = np.abs(np.diff(row))
    # Blending spreads the change over the overlaps: no jump between neighbours as large as
    # the difference between tiles, and the row rises monotonically.
    assert row[-1] - row[0] > 0.5
    assert steps.max() < 0.5 * (row[-1] - row[0])
    assert np.all(np.diff(row) >= -1e-6)


def test_bad_tiling_is_refused():
    for tile, overlap in ((8, 0), (64, 32), (64, -1)):
        with pytest.raises(ValueError):
            Predictor(Threshold(), tile=tile, overlap=overlap)


def _cells(height, width, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(4):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < 64
    return mask


def _folder(tmp_path):
    """Three sizes (8- and 16-bit), a 3-page stack, an image without a mask, a corrupt file;
    one mask deliberately wrong (inverted)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, shape, dtype, scale in (
        ("a_small", (40, 40), np.uint8, 200),
        ("b_wide", (60, 333), np.uint16, 50000),
        ("c_large", (290, 300), np.uint8, 240),
    ):
        mask = _cells(*shape, seed=len(name) + shape[1])
        Image.fromarray((mask * scale + 10).astype(dtype)).save(tmp_path / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"{name}_mask.png")
    pages = [_cells(50, 70, seed) for seed in range(3)]
    images = [Image.fromarray((m * 30000 + 100).astype(np.uint16)) for m in pages]
    images[0].save(tmp_path / "d_stack.tif", save_all=True, append_images=images[1:])
    wrong = [pages[0], ~pages[1], pages[2]]  # page 2's reference is the background
    masks = [Image.fromarray(m.astype(np.uint8) * 255) for m in wrong]
    masks[0].save(tmp_path / "d_stack_mask.tif", save_all=True, append_images=masks[1:])
    Image.fromarray((_cells(30, 30, 9) * 255).astype(np.uint8)).save(tmp_path / "e_nomask.png")
    (tmp_path / "f_broken.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    return tmp_path


def test_a_folder_gives_a_prediction_per_image_and_page_with_dice(tmp_path):
    seen = []
    run = predict_folder(
        Predictor(Threshold(), tile=128, overlap=16),
        _folder(tmp_path),
        progress=lambda done, total, p: seen.append((done, total, p.name)),
    )
    names = [p.name for p in run.predictions]
    assert names == [
        "a_small",
        "b_wide",
        "c_large",
        "d_stack[page 1]",
        "d_stack[page 2]",
        "d_stack[page 3]",
        "e_nomask",
    ]
    assert [(done, total) for done, total, _ in seen] == [(i, 7) for i in range(1, 8)]
    shapes = [p.mask.shape for p in run.predictions]
    assert shapes == [(40, 40), (60, 333), (290, 300)] + [(50, 70)] * 3 + [(30, 30)]
    dice = [p.dice for p in run.predictions]
    assert dice[:4] == [1.0, 1.0, 1.0, 1.0] and dice[5] == 1.0
    assert dice[4] == 0.0  # the inverted reference
    assert dice[6] is None  # no reference mask
    assert run.mean_dice == pytest.approx(5 / 6)
    assert [s.path for s in run.skipped] == ["f_broken.tif"]
    with pytest.raises(DatasetError, match="f_broken.tif"):
        predict_folder(Predictor(Threshold()), tmp_path, strict=True)


def test_masks_are_written_one_file_per_input_same_size_stack_as_stack(tmp_path):
    folder = _folder(tmp_path / "in")
    run = predict_folder(Predictor(Threshold()), folder)
    written = write_masks(run.predictions, tmp_path / "out")
    assert sorted(p.name for p in written) == [
        "a_small_mask.png",
        "b_wide_mask.png",
        "c_large_mask.png",
        "d_stack_mask.tif",
        "e_nomask_mask.png",
    ]
    for prediction in run.predictions:
        mask_file = tmp_path / "out" / f"{prediction.source}_mask{prediction.path.suffix}"
        with Image.open(prediction.path) as source, Image.open(mask_file) as mask:
            assert mask.size == source.size, prediction.name
    with Image.open(tmp_path / "out" / "d_stack_mask.tif") as stack:
        assert stack.n_frames == 3 and stack.size == (70, 50)
        for page in range(3):
            stack.seek(page)
            expected = run.predictions[3 + page].mask * 255
            np.testing.assert_array_equal(np.asarray(stack), expected)
    with Image.open(tmp_path / "out" / "b_wide_mask.png") as mask:
        assert mask.size == (333, 60) and set(np.unique(np.asarray(mask))) == {0, 255}


def test_stop_ends_the_run_between_images(tmp_path):
    stop = threading.Event()

    def progress(done, total, prediction):
        if done == 2:
            stop.set()

    run = predict_folder(Predictor(Threshold()), _folder(tmp_path), progress=progress, stop=stop)
    assert len(run.predictions) == 2


def test_a_saved_model_predicts_synthetic_data_as_it_was_trained(tmp_path):
    torch.manual_seed(0)
    model = build_unet()
    path = save_model(tmp_path / "m.safetensors", model.state_dict(), architecture=ARCHITECTURE)
    predictor = Predictor.from_file(path)
    from segmentation_suite.training.data import member_shard

    data = member_shard(0, 3, size=48)
    run = predict_data(predictor, data)
    model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(data.images))).numpy()[:, 0]
    for prediction, probabilities in zip(run.predictions, expected, strict=True):
        np.testing.assert_allclose(prediction.probabilities, probabilities, atol=1e-6)
        assert prediction.dice is not None
    written = write_masks(run.predictions, tmp_path / "out")
    # Synthetic images exist nowhere else: each is written beside its mask.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"synthetic-{i}.png" for i in range(3)] + [f"synthetic-{i}_mask.png" for i in range(3)]
    )
    assert len(written) == 3


def test_masks_are_never_written_over_the_input_folder_or_its_masks(tmp_path):
    folder = _folder(tmp_path / "in")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    run = predict_folder(Predictor(Threshold()), folder)
    for target in (folder, tmp_path / "in" / "." / ""):
        with pytest.raises(ValueError, match="would overwrite the reference masks"):
            write_masks(run.predictions, target)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    layout = tmp_path / "layout"
    for sub in ("images", "masks"):
        (layout / sub).mkdir(parents=True)
        Image.fromarray(_cells(20, 20, 1).astype(np.uint8) * 255).save(layout / sub / "x.png")
    run = predict_folder(Predictor(Threshold()), layout)
    with pytest.raises(ValueError, match="would overwrite"):
        write_masks(run.predictions, layout / "masks")


def test_iter_predictions_yields_file_by_file_a_stack_as_one(tmp_path):
    from segmentation_suite.training.predict import iter_predictions

    skipped = []
    batches = list(iter_predictions(Predictor(Threshold()), _folder(tmp_path), skipped=skipped))
    assert [[p.name for p in batch] for batch in batches] == [
        ["a_small"],
        ["b_wide"],
        ["c_large"],
        ["d_stack[page 1]", "d_stack[page 2]", "d_stack[page 3]"],
        ["e_nomask"],
    ]
    assert [s.path for s in skipped] == ["f_broken.tif"]
