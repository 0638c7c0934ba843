"""`segmentation-suite predict`: a model saved by `train --save` predicts a folder of images
of different sizes and a 3-page TIFF stack (must-show 3, first half), and bad input fails
in words."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="prediction needs torch (the train extra)")

from segmentation_suite.training.data import synthetic_dataset  # noqa: E402

TINY_TRAINING = ("--synthetic", "--samples", "32", "--epochs", "3", "--no-checkpoints")
#: (name, height, width, dtype): three sizes, the largest beyond one 256-pixel tile.
IMAGES = (("small", 48, 48, np.uint8), ("wide", 64, 150, np.uint16), ("large", 300, 420, np.uint8))
PER_IMAGE = re.compile(r"^(.+?): (\d+)x(\d+), Dice ([0-9.]+), [0-9.]+ s$", re.M)


def microscopy_folder(folder):
    """Images of microscope 0 (the one the model trains on) at three sizes, 8 and 16 bit,
    and a 3-page 16-bit stack, each with its mask."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, height, width, dtype) in enumerate(IMAGES, start=1):
        data = synthetic_dataset(1, size=max(height, width), seed=seed, style=0)
        image, mask = data.images[0, 0][:height, :width], data.masks[0, 0][:height, :width]
        scale = np.iinfo(dtype).max
        Image.fromarray((image * scale).astype(dtype)).save(folder / f"{name}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f"{name}_mask.png")
    stack = synthetic_dataset(3, size=64, seed=7, style=0)
    pages = [Image.fromarray((p[0] * 65535).astype(np.uint16)) for p in stack.images]
    pages[0].save(folder / "stack.tif", save_all=True, append_images=pages[1:])
    masks = [Image.fromarray((m[0] * 255).astype(np.uint8)) for m in stack.masks]
    masks[0].save(folder / "stack_mask.tif", save_all=True, append_images=masks[1:])
    return folder


def train_tiny_model(cli, path):
    process = cli("train", *TINY_TRAINING, "--save", str(path))
    assert process.wait(180) == 0, process.stdout + process.stderr
    return path


def test_train_save_then_predict_a_folder_of_sizes_and_a_stack(cli, tmp_path):
    model = train_tiny_model(cli, tmp_path / "m.safetensors")
    folder = microscopy_folder(tmp_path / "images")
    out = tmp_path / "out"
    process = cli("predict", str(model), "--data", str(folder), "--out", str(out))
    assert process.wait(120) == 0, process.stdout + process.stderr

    lines = {m.group(1): m for m in PER_IMAGE.finditer(process.stdout)}
    pages = [f"stack[page {n}]" for n in (1, 2, 3)]
    assert sorted(lines) == sorted([name for name, *_ in IMAGES] + pages), process.stdout
    for name, height, width, _ in IMAGES:
        assert (int(lines[name].group(2)), int(lines[name].group(3))) == (width, height)
    mean = re.search(r"^Mean Dice over 6 images with masks: ([0-9.]+)$", process.stdout, re.M)
    assert mean, process.stdout
    dice = [float(m.group(4)) for m in lines.values()]
    assert float(mean.group(1)) == pytest.approx(np.mean(dice), abs=2e-3)
    assert float(mean.group(1)) >= 0.5, process.stdout  # it learned microscope 0's cells
    assert f"Wrote 4 mask files (6 images) to {out}" in process.stdout

    # One mask per image, the image's size; the stack's mask is a stack of 3 pages.
    assert sorted(p.name for p in out.iterdir()) == [
        "large_mask.png",
        "small_mask.png",
        "stack_mask.tif",
        "wide_mask.png",
    ]
    for name, height, width, _ in IMAGES:
        with Image.open(out / f"{name}_mask.png") as mask:
            assert mask.size == (width, height)
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
    with Image.open(out / "stack_mask.tif") as mask:
        assert mask.n_frames == 3 and mask.size == (64, 64)

    # Synthetic images: predicted, and written with their masks.
    synthetic_out = tmp_path / "synthetic"
    process = cli(
        "predict", str(model), "--synthetic", "--samples", "3", "--out", str(synthetic_out)
    )
    assert process.wait(120) == 0, process.stdout + process.stderr
    assert "Mean Dice over 3 images with masks:" in process.stdout
    assert len(list(synthetic_out.glob("synthetic-*_mask.png"))) == 3


def test_predict_refuses_bad_input_in_words(cli, tmp_path):
    pickle = tmp_path / "old.safetensors"
    torch.save({"w": torch.ones(1)}, pickle)
    folder = microscopy_folder(tmp_path / "images")
    cases = [
        (("predict", str(pickle), "--data", str(folder), "--out", "o"), "PyTorch pickle"),
        (
            ("predict", str(tmp_path / "none.safetensors"), "--synthetic", "--out", "o"),
            "does not exist",
        ),
    ]
    for args, message in cases:
        process = cli(*args)
        assert process.wait(60) == 1, process.stdout + process.stderr
        assert message in process.stderr and "Traceback" not in process.stderr

    model = train_tiny_model(cli, tmp_path / "m.safetensors")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for args, message in [
        (("--data", str(tmp_path / "nowhere"), "--out", "o"), "nowhere does not exist"),
        (("--synthetic", "--out", "o", "--tile", "64", "--overlap", "32"), "overlap"),
        (("--data", str(folder), "--out", str(folder)), "would overwrite the reference masks"),
    ]:
        process = cli("predict", str(model), *args)
        assert process.wait(60) == 1, process.stdout + process.stderr
        assert message in process.stderr and "Traceback" not in process.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # argparse's own errors: exit 2.
    for args in (("--synthetic",), ("--out", "o"), ("--data", "x", "--synthetic", "--out", "o")):
        process = cli("predict", str(model), *args)
        assert process.wait(60) == 2, process.stdout + process.stderr
