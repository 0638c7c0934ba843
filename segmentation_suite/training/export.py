"""Exporting a model file as a bioimage.io model package (a zip that Fiji/deepImageJ,
ilastik and napari users open).

The package holds `rdf.yaml` (bioimage.io model spec 0.5), the weights twice, as a PyTorch
state dict (with this program's `unet.py` as the architecture source) and as TorchScript
(traced), a test input and its expected output (.npy), a cover image (PNG) and a README.

What the rdf says matches how this program predicts (predict.py): one gray channel,
normalized per image by its minimum and maximum (scale_range with the 0th and 100th
percentile), the U-Net's logits turned into cell probabilities by a sigmoid. Spatial sizes
are multiples of 2**depth (the traced TorchScript does not pad).

Needs the `export` extra (bioimageio.spec); nothing here goes on the network.
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import unet
from .data import member_shard, normalize_image
from .model_file import SavedModel

EXPORT_MISSING = "exporting needs bioimageio.spec: pip install 'segmentation-suite[export]'"
#: The size of the test input, a multiple of 2**depth for every depth this program builds.
TEST_SIZE = 256
#: bioimage.io's scale_range divides by (max - min + eps); the test output uses the same.
SCALE_RANGE_EPS = 1e-6
DEFAULT_LICENSE = "CC-BY-4.0"
DEFAULT_AUTHOR = "Segmentation Suite user"
TAGS = (
    "segmentation",
    "semantic-segmentation",
    "cells",
    "2d",
    "unet",
    "pytorch",
    "fluorescence-light-microscopy",
    "federated-learning",
    "segmentation-suite",
)


class ExportError(RuntimeError):
    """The package could not be made; the message says why."""


@dataclass
class ExportOptions:
    name: str = "Segmentation Suite U-Net (cells)"
    authors: Sequence[str] = (DEFAULT_AUTHOR,)
    license: str = DEFAULT_LICENSE
    description: str = (
        "A small 2-D U-Net that segments cells in gray microscopy images, trained with "
        "Segmentation Suite (possibly by several labs together, by federated averaging)."
    )


def export_bioimageio(
    saved: SavedModel, output: str | Path, options: ExportOptions | None = None
) -> Path:
    """Writes the package to `output` (a .zip) and returns its path. ExportError if
    bioimageio.spec is missing or finds the description invalid; OSError if the file cannot
    be written."""
    try:
        from bioimageio.spec import ValidationContext, build_description, save_bioimageio_package
        from bioimageio.spec.model.v0_5 import ModelDescr
    except ImportError:
        raise ExportError(EXPORT_MISSING) from None
    options = options or ExportOptions()
    model = saved.build()
    depth = unet.parse_architecture(saved.architecture)["depth"]
    with tempfile.TemporaryDirectory(prefix="bioimageio-") as folder:
        root = Path(folder)
        test_input, test_output = _test_tensors(model)
        np.save(root / "test_input.npy", test_input)
        np.save(root / "test_output.npy", test_output)
        _sample(test_input, root / "sample_input.tif")
        _sample(test_output, root / "sample_output.tif")
        torch.save(model.state_dict(), root / "weights.pt")
        _torchscript(model).save(str(root / "weights_torchscript.pt"))
        (root / "unet.py").write_text(inspect.getsource(unet), encoding="utf-8")
        _cover(test_input[0, 0], test_output[0, 0], root / "cover.png")
        (root / "README.md").write_text(_readme(saved, options), encoding="utf-8")
        content = _rdf(saved, options, depth, ModelDescr.implemented_format_version)
        with ValidationContext(root=root, perform_io_checks=True):
            description = build_description(content)
        if not isinstance(description, ModelDescr):
            summary = description.validation_summary.format()
            raise ExportError(f"the bioimage.io description is invalid:\n{summary}")
        target = Path(output)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_bioimageio_package(description, output_path=target, local_files_only=True)
    return target


def _test_tensors(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic image in 16-bit range (raw, as a microscope gives it) and the model's
    output for it, computed as bioimage.io's pipeline will: scale_range, model, sigmoid."""
    image = member_shard(0, 1, size=TEST_SIZE).images[0, 0]
    raw = np.round(image * 60000 + 500).astype(np.float32)[None, None]
    low, high = float(raw.min()), float(raw.max())
    scaled = (raw - low) / (high - low + SCALE_RANGE_EPS)
    with torch.no_grad():
        output = torch.sigmoid(model(torch.from_numpy(scaled.astype(np.float32)))).numpy()
    return raw, output.astype(np.float32)


def _sample(tensor: np.ndarray, path: Path) -> None:
    """A test tensor as an image file (32-bit float TIFF) for viewers."""
    from PIL import Image

    Image.fromarray(tensor[0, 0].astype(np.float32), mode="F").save(path)


def _torchscript(model: torch.nn.Module):
    """Traced at the test size: sizes that are multiples of 2**depth (as the rdf demands)
    need no padding, the one shape-dependent branch of the U-Net."""
    example = torch.zeros(1, 1, TEST_SIZE, TEST_SIZE)
    with torch.no_grad(), warnings.catch_warnings():
        # The warning is about that branch; the rdf's size step keeps inputs off it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(model, example, check_trace=False)


def _cover(image: np.ndarray, probabilities: np.ndarray, path: Path) -> None:
    """The image beside it with the predicted cells in green: 2:1, as bioimage.io likes."""
    from PIL import Image

    gray = np.round(normalize_image(image) * 255).astype(np.uint8)
    left = np.stack([gray] * 3, axis=-1)
    right = left.copy()
    cells = probabilities > 0.5
    right[cells] = (0.5 * right[cells] + [0, 127, 0]).astype(np.uint8)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def _axes(depth: int, reference: str | None = None) -> list[dict]:
    multiple = 2**depth
    channel = "cell" if reference else "gray"
    axes: list[dict] = [{"type": "batch"}, {"type": "channel", "channel_names": [channel]}]
    for axis in ("y", "x"):
        if reference is None:
            size = {"min": max(16, multiple), "step": multiple}
        else:
            size = {"tensor_id": reference, "axis_id": axis}
        axes.append({"type": "space", "id": axis, "size": size})
    return axes


def _rdf(saved: SavedModel, options: ExportOptions, depth: int, format_version: str) -> dict:
    kwargs = unet.parse_architecture(saved.architecture)
    return {
        "format_version": format_version,
        "type": "model",
        "name": options.name,
        "description": options.description,
        "authors": _authors(options),
        "cite": [
            {
                "text": "Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for "
                "Biomedical Image Segmentation (MICCAI 2015)",
                "doi": "10.1007/978-3-319-24574-4_28",
            }
        ],
        "license": options.license,
        "tags": list(TAGS),
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "inputs": [
            {
                "id": "raw",
                "description": "a gray microscopy image (any value range, e.g. 8 or 16 bit)",
                "axes": _axes(depth),
                "test_tensor": {"source": "test_input.npy"},
                "sample_tensor": {"source": "sample_input.tif"},
                "data": {"type": "float32"},
                "preprocessing": [
                    {
                        "id": "scale_range",
                        "kwargs": {
                            "axes": ["y", "x"],
                            "min_percentile": 0.0,
                            "max_percentile": 100.0,
                            "eps": SCALE_RANGE_EPS,
                        },
                    }
                ],
            }
        ],
        "outputs": [
            {
                "id": "probability",
                "description": "probability that a pixel belongs to a cell (above 0.5: cell)",
                "axes": _axes(depth, reference="raw"),
                "test_tensor": {"source": "test_output.npy"},
                "sample_tensor": {"source": "sample_output.tif"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "postprocessing": [{"id": "sigmoid"}],
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "architecture": {"source": "unet.py", "callable": "UNet", "kwargs": kwargs},
                "pytorch_version": torch.__version__.split("+")[0],
            },
            "torchscript": {
                "source": "weights_torchscript.pt",
                "pytorch_version": torch.__version__.split("+")[0],
                "parent": "pytorch_state_dict",
            },
        },
        "config": {
            "segmentation_suite": {
                "architecture": saved.architecture,
                "training": saved.training,
                "normalization": saved.metadata.get("normalization", ""),
            }
        },
    }


def _authors(options: ExportOptions) -> list[dict]:
    """Names only: bioimage.io's validator checks a `github_user` online (api.github.com),
    and export and its checks stay offline; a maintainer is added when uploading."""
    return [{"name": name} for name in options.authors or (DEFAULT_AUTHOR,)]


def check_package(path: str | Path, *, run_test: bool = False) -> tuple[str, str]:
    """(status, report) of bioimage.io's own checks of a package, offline: the format with
    every file opened and its checksum compared (bioimageio.spec), and with `run_test` the
    test input run through each weights format and compared with the test output
    (bioimageio.core). Status: "passed", "valid-format" (passed with warnings, or format
    only) or "failed"."""
    try:
        from bioimageio.spec import load_description
    except ImportError:
        raise ExportError(EXPORT_MISSING) from None
    description = load_description(str(path), perform_io_checks=True)
    summary = description.validation_summary
    if run_test and summary.status != "failed":
        try:
            from bioimageio.core import test_model
        except ImportError:
            raise ExportError(
                "testing needs bioimageio.core: pip install 'segmentation-suite[export]'"
            ) from None
        summary = test_model(str(path))
    return summary.status, summary.format()


def _readme(saved: SavedModel, options: ExportOptions) -> str:
    plan = "\n".join(f"- {key}: {value}" for key, value in sorted(saved.training.items()))
    return f"""# {options.name}

{options.description}

Architecture: `{saved.architecture}` (a 2-D U-Net with GroupNorm, one gray channel in, cell
probabilities out). Trained with Segmentation Suite; the training plan:

{plan or "- (not recorded)"}

## Input

One gray image, any value range: each image is scaled to [0, 1] by its own minimum and
maximum before the network sees it (`scale_range`, 0th to 100th percentile). Height and width
must be multiples of the size step in rdf.yaml; larger images are best predicted in
overlapping tiles.

## Output

The probability of each pixel belonging to a cell; threshold at 0.5 for a mask.

## Validation

The package's test input (a synthetic image) and its expected output were produced by
Segmentation Suite; `bioimageio test` reproduces them. Segmentation Suite's
`segmentation-suite predict MODEL --data FOLDER --out DIR` reports the Dice score of the
masks against a folder's reference masks: measure it on images from your own microscope
before relying on the model.
"""
