"""Predicting cell masks with a trained U-Net: any image size, folders, stacks, Dice.

A large image is cut into overlapping tiles; each tile's cell probabilities are blended into
the whole with weights that fall off towards the tile's edges, where a U-Net sees least
context, so no seam shows. Images are normalized as in training (normalize_image, on the
whole image) before tiling.

The library API (used by the command line and the app's Predict page):

- `Predictor(model)`: `probabilities(image)` for one 2-D image of raw values;
- `predict_folder(predictor, folder, progress=..., stop=...)` and `predict_data(...)`:
  one `Prediction` (mask, Dice or None) per image or stack page, in order, with a progress
  callback after each; `iter_predictions` yields them file by file, for folders too large to
  hold in memory;
- `write_masks(predictions, out_dir)`: one mask file per input file (see MASK_FILES).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import (
    DatasetError,
    SegmentationData,
    SkippedFile,
    binary_mask,
    find_images,
    normalize_image,
    read_pages,
)
from .settings import PREDICTION_OVERLAP as DEFAULT_OVERLAP
from .settings import PREDICTION_TILE as DEFAULT_TILE
from .trainer import dice_score

THRESHOLD = 0.5
MASK_FILES = (
    "One mask per input file, named <name>_mask.png (<name>_mask.tif for TIFF input), the "
    "size of its image, cells 255 and background 0; a multi-page TIFF gives one multi-page "
    "mask TIFF with a page per image page."
)


@dataclass
class Prediction:
    """One predicted image (or one page of a stack)."""

    name: str  # the file's stem, with "[page N]" for a page of a stack
    source: str  # the input file's stem (all pages of a stack share it)
    mask: np.ndarray  # uint8, 1 for cells, the image's height x width
    probabilities: np.ndarray  # float32 in [0, 1]
    image: np.ndarray  # the input, normalized to [0, 1] (for an overlay)
    reference: np.ndarray | None = None  # the folder's mask (0/1), if it had one
    dice: float | None = None  # against the reference
    seconds: float = 0.0
    path: Path | None = None  # the input file
    page: int | None = None  # 1-based page of a stack, None for a single image


@dataclass
class PredictionRun:
    """What predicting a folder gave: a Prediction per image or page, and the files left out."""

    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def mean_dice(self) -> float | None:
        scored = [p.dice for p in self.predictions if p.dice is not None]
        return float(np.mean(scored)) if scored else None


class Predictor:
    """A model, ready to predict any 2-D image (tiled when larger than `tile`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        threshold: float = THRESHOLD,
    ):
        if tile < 16 or not 0 <= overlap < tile // 2:
            raise ValueError(f"need tile >= 16 and 0 <= overlap < tile / 2: {tile}, {overlap}")
        self.model = model.eval()
        self.tile = tile
        self.overlap = overlap
        self.threshold = threshold

    @classmethod
    def from_file(cls, path: str | Path, **options) -> Predictor:
        """From a model file; ModelFileError (in words) if it cannot be used."""
        from .model_file import load_model

        return cls(load_model(path).build(), **options)

    @torch.no_grad()
    def probabilities(self, image: np.ndarray, *, normalized: bool = False) -> np.ndarray:
        """Cell probabilities (float32, the image's shape) for a 2-D image of raw values
        (or of values already in [0, 1] with `normalized`)."""
        values = np.asarray(image)
        if values.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {values.shape}")
        values = values.astype(np.float32) if normalized else normalize_image(values)
        height, width = values.shape
        if height <= self.tile and width <= self.tile:
            return self._run(values)
        total = np.zeros((height, width), dtype=np.float32)
        weights = np.zeros((height, width), dtype=np.float32)
        for top in _starts(height, self.tile, self.overlap):
            for left in _starts(width, self.tile, self.overlap):
                window = (slice(top, top + self.tile), slice(left, left + self.tile))
                tile = values[window]
                weight = _blend_weights(tile.shape, self.overlap)
                total[window] += self._run(tile) * weight
                weights[window] += weight
        return total / weights

    def mask(self, probabilities: np.ndarray) -> np.ndarray:
        return (probabilities > self.threshold).astype(np.uint8)

    def _run(self, values: np.ndarray) -> np.ndarray:
        logits = self.model(torch.from_numpy(np.ascontiguousarray(values))[None, None])
        return torch.sigmoid(logits)[0, 0].numpy().astype(np.float32)

    def predict(
        self,
        image: np.ndarray,
        *,
        name: str,
        reference: np.ndarray | None = None,
        normalized: bool = False,
        source: str | None = None,
        path: Path | None = None,
        page: int | None = None,
    ) -> Prediction:
        started = time.perf_counter()
        probabilities = self.probabilities(image, normalized=normalized)
        mask = self.mask(probabilities)
        dice = None
        if reference is not None:
            dice = dice_score(mask.astype(np.float32), reference.astype(np.float32))
        return Prediction(
            name=name,
            source=source or name,
            mask=mask,
            probabilities=probabilities,
            image=np.asarray(image, np.float32) if normalized else normalize_image(image),
            reference=reference,
            dice=dice,
            seconds=time.perf_counter() - started,
            path=path,
            page=page,
        )


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: steps of tile - overlap, the last tile flush with the end."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _blend_weights(shape: tuple[int, int], overlap: int) -> np.ndarray:
    """1 in a tile's middle, falling linearly to a small floor over `overlap` pixels at its
    edges (never 0: at the image's own border a tile is the only one covering a pixel)."""
    ramps = []
    for length in shape:
        distance = np.minimum(np.arange(length), np.arange(length)[::-1]) + 1
        ramps.append(np.clip(distance / (overlap + 1), 1e-3, 1.0) if overlap else np.ones(length))
    return np.outer(ramps[0], ramps[1]).astype(np.float32)


Progress = Callable[[int, int, Prediction], None]


def predict_folder(
    predictor: Predictor,
    folder: str | Path,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    strict: bool = False,
) -> PredictionRun:
    """A Prediction per image, and per page of a stack, of a folder (the training layouts;
    masks are optional and, where present, give each prediction its Dice). Unreadable files
    are left out and listed in `skipped` (DatasetError with `strict`); DatasetError for a
    folder without images. `progress(done, total, prediction)` after each image or page;
    `stop` is checked before each. Holds every image's arrays: for large folders, write as
    you go with iter_predictions."""
    run = PredictionRun()
    for predictions in iter_predictions(
        predictor, folder, progress=progress, stop=stop, strict=strict, skipped=run.skipped
    ):
        run.predictions.extend(predictions)
    return run


def iter_predictions(
    predictor: Predictor,
    folder: str | Path,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    strict: bool = False,
    skipped: list[SkippedFile] | None = None,
) -> Iterator[list[Prediction]]:
    """predict_folder one input file at a time: yields the Predictions of each file (one, or
    one per page of a stack), so that a caller can write them and let them go; files left
    out are appended to `skipped`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist"
        )
    skipped = skipped if skipped is not None else []
    files = find_images(folder, masks_required=False)
    counted = [(entry, _page_count(entry[1], folder, skipped, strict)) for entry in files]
    total = sum(count for _, count in counted)
    done = 0
    for (name, image_path, mask_path), count in counted:
        if not count:
            continue
        if stop is not None and stop.is_set():
            return
        try:
            pages = read_pages(image_path)
            references = _references(mask_path, pages, folder)
        except DatasetError as exc:
            if strict:
                raise
            culprit = getattr(exc, "path", None) or image_path
            skipped.append(SkippedFile(_relative(culprit, folder), str(exc)))
            done += count
            continue
        stacked = len(pages) > 1
        predictions = []
        for number, (page, reference) in enumerate(zip(pages, references, strict=True), 1):
            if stop is not None and stop.is_set():
                break  # a stack's pages so far are still the caller's
            prediction = predictor.predict(
                page,
                name=f"{name}[page {number}]" if stacked else name,
                reference=reference,
                source=name,
                path=image_path,
                page=number if stacked else None,
            )
            predictions.append(prediction)
            done += 1
            if progress is not None:
                progress(done, max(total, done), prediction)
        if predictions:
            yield predictions


def predict_data(
    predictor: Predictor,
    data: SegmentationData,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> PredictionRun:
    """Predictions for images already in memory (normalized, with masks): synthetic data."""
    run = PredictionRun()
    for index, name in enumerate(data.names):
        if stop is not None and stop.is_set():
            break
        prediction = predictor.predict(
            data.images[index, 0], name=name, reference=data.masks[index, 0], normalized=True
        )
        run.predictions.append(prediction)
        if progress is not None:
            progress(index + 1, len(data), prediction)
    return run


def _page_count(path: Path, folder: Path, skipped: list[SkippedFile], strict: bool) -> int:
    """How many pages the file has (0 if it cannot be opened: it is then skipped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # damage Pillow reads past; see read_pages
            with Image.open(path) as picture:
                return int(getattr(picture, "n_frames", 1))
    except Exception as exc:  # Pillow fails on damaged files with any error type
        detail = (
            str(exc) if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
        )
        error = DatasetError(f"Cannot read {path.name}: {detail}")
        if strict:
            raise error from exc
        skipped.append(SkippedFile(_relative(path, folder), str(error)))
        return 0


def _references(mask_path: Path | None, pages: list[np.ndarray], folder: Path):
    """The reference mask of each page (None where the folder has none); DatasetError (with
    `.path`) for a mask that does not match its image."""
    if mask_path is None:
        return [None] * len(pages)
    try:
        masks = read_pages(mask_path)
        if len(masks) != len(pages):
            raise DatasetError(
                f"Mask {mask_path.name} has {len(masks)} page(s), its image {len(pages)}"
            )
        references = []
        for page, mask in zip(pages, masks, strict=True):
            if mask.shape != page.shape:
                raise DatasetError(
                    f"Mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} pixels, its "
                    f"image {page.shape[1]}x{page.shape[0]}"
                )
            references.append(binary_mask(mask, mask_path.name))
        return references
    except DatasetError as exc:
        exc.path = mask_path
        raise


def write_masks(predictions: Iterable[Prediction], out_dir: str | Path) -> list[Path]:
    """Writes the masks (MASK_FILES) and returns the paths written, one per input file (or
    per synthetic image, whose input image is written beside its mask as <name>.png, since
    it exists nowhere else). OSError if the folder cannot be written; ValueError, before
    writing anything, if `out_dir` is where the inputs or their reference masks are (the
    predicted masks would overwrite the reference masks)."""
    from PIL import Image

    predictions = list(predictions)
    out = Path(out_dir)
    inputs = {p.path.parent.resolve() for p in predictions if p.path is not None}
    protected = inputs | {folder.parent / "masks" for folder in inputs}
    if out.resolve() in protected:
        raise ValueError(
            f"{out} holds the input images or their masks: predicted masks there would "
            "overwrite the reference masks; choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Prediction]] = {}
    for prediction in predictions:
        groups.setdefault(prediction.source, []).append(prediction)
    written = []
    for source, pages in groups.items():
        pictures = [Image.fromarray(p.mask * np.uint8(255)) for p in pages]
        path = pages[0].path
        tiff = path is not None and path.suffix.lower() in (".tif", ".tiff")
        target = out / f"{source}_mask{'.tif' if tiff else '.png'}"
        if len(pictures) > 1:
            pictures[0].save(
                target, save_all=True, append_images=pictures[1:], compression="tiff_deflate"
            )
        else:
            pictures[0].save(target)
        if path is None:  # synthetic: the image exists only here
            image = np.round(pages[0].image * 255).astype(np.uint8)
            Image.fromarray(image).save(out / f"{source}.png")
        written.append(target)
    return written


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)
