"""`segmentation-suite train`: local training with a line per epoch and the final Dice."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="training needs torch (the train extra)")

EPOCH_LINE = re.compile(
    r"^epoch (\d+)/(\d+): loss ([0-9.]+), (held-out|validation) Dice ([0-9.]+)$"
)


def test_synthetic_training_reports_each_epoch_and_saves_the_model(cli, tmp_path):
    saved = tmp_path / "model.safetensors"
    process = cli("train", "--synthetic", "--samples", "8", "--epochs", "2", "--save", str(saved))
    assert process.wait(120) == 0, process.stdout + process.stderr
    epochs = [EPOCH_LINE.match(line) for line in process.stdout.splitlines()]
    epochs = [m for m in epochs if m]
    assert [(m.group(1), m.group(2)) for m in epochs] == [("1", "2"), ("2", "2")], process.stdout
    final = re.search(r"^Held-out Dice after 2 epochs: ([0-9.]+)$", process.stdout, re.M)
    assert final and final.group(1) == epochs[-1].group(5), process.stdout

    assert f"Saved the model to {saved}" in process.stdout
    from segmentation_suite.training.model_file import load_model
    from segmentation_suite.training.unet import ARCHITECTURE, build_unet

    model = load_model(saved)
    assert model.architecture == ARCHITECTURE
    assert model.training["epochs"] == 2 and model.training["data"] == "synthetic"
    assert model.training["samples"] == 8 and model.training["images"] == 8
    weights = model.weights
    expected = build_unet().state_dict()
    assert sorted(weights) == sorted(expected)
    assert all(weights[k].shape == expected[k].shape for k in expected)


def test_folder_training_keeps_images_aside_for_validation(cli, tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    for i in range(6):
        cy, cx = rng.uniform(8, 24, size=2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        image = np.where(mask, 200, 40) + rng.integers(0, 20, mask.shape)
        Image.fromarray(image.astype(np.uint8)).save(tmp_path / f"cell_{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"cell_{i}_mask.png")
    process = cli("train", "--data", str(tmp_path), "--epochs", "1", "--validation", "0.34")
    assert process.wait(120) == 0, process.stdout + process.stderr
    assert f"4 images from {tmp_path} for training, 2 kept aside" in process.stdout
    match = re.search(r"^Validation Dice after 1 epoch: ([0-9.]+)$", process.stdout, re.M)
    assert match and 0 <= float(match.group(1)) <= 1, process.stdout


def _cell_folder(folder, count, shape=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for i in range(count):
        cy, cx = rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        image = np.where(mask, 200, 40) + rng.integers(0, 20, mask.shape)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"cell_{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"cell_{i}_mask.png")


def test_a_corrupt_file_is_named_and_training_goes_on_with_the_rest(cli, tmp_path):
    """Must-show 4: one corrupt file in the folder; the others train, the file is named."""
    _cell_folder(tmp_path, 5)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "broken_mask.png")
    process = cli("train", "--data", str(tmp_path), "--epochs", "1", "--no-checkpoints")
    assert process.wait(120) == 0, process.stdout + process.stderr
    assert re.search(
        r"^warning: skipped broken\.png: Cannot read broken\.png", process.stderr, re.M
    )
    assert "warning: 1 unusable file left out" in process.stderr
    assert f"4 images from {tmp_path} for training, 1 kept aside" in process.stdout
    assert re.search(r"^Validation Dice after 1 epoch: [0-9.]+$", process.stdout, re.M)

    strict = cli("train", "--data", str(tmp_path), "--epochs", "1", "--strict-data")
    assert strict.wait(120) == 1, strict.stdout + strict.stderr
    assert "error: Cannot read broken.png" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_stacks_and_images_of_different_sizes_train_split_by_image(cli, tmp_path):
    _cell_folder(tmp_path, 3, (32, 32))
    big = tmp_path / "big"
    big.mkdir()
    _cell_folder(big, 2, (48, 40), seed=1)
    for source in big.iterdir():
        source.rename(tmp_path / f"big_{source.name}")
    # A 2-page 16-bit stack (two of the 32x32 images) with its 2-page mask.
    pages = [np.asarray(Image.open(tmp_path / f"cell_{i}.png")) for i in (0, 1)]
    masks = [np.asarray(Image.open(tmp_path / f"cell_{i}_mask.png")) for i in (0, 1)]
    stack = [Image.fromarray(p.astype(np.uint16) * 250) for p in pages]
    stack[0].save(tmp_path / "stack.tif", save_all=True, append_images=stack[1:])
    mask_stack = [Image.fromarray(m) for m in masks]
    mask_stack[0].save(tmp_path / "stack_mask.tif", save_all=True, append_images=mask_stack[1:])
    process = cli(
        "train", "--data", str(tmp_path), "--epochs", "1", "--no-checkpoints", "--validation", "0.2"
    )
    assert process.wait(120) == 0, process.stdout + process.stderr
    # 32x32 crops: a 32x32 image or page is its own crop (3 + 2 pages), and
    # ceil(2*48*40/1024) = 4 per 48x40 image (8).
    assert "13 samples from 6 images" in process.stdout, process.stdout
    # One whole image kept aside (round(0.2 * 6) = 1): all its pages or crops with it.
    match = re.search(
        rf"^(\d+) samples from {re.escape(str(tmp_path))} for training, (\d+) kept",
        process.stdout,
        re.M,
    )
    assert match and (int(match.group(1)), int(match.group(2))) in ((12, 1), (11, 2), (9, 4)), (
        process.stdout
    )
