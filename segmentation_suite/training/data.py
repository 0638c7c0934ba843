"""Training data: image/mask pairs from a folder, and synthetic microscopes for the demo.

Everything here is numpy: a `SegmentationData` holds float32 arrays of shape (N, 1, H, W),
images in [0, 1] and masks 0.0 / 1.0, ready for torch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff")
MASK_SUFFIX = "_mask"

FOLDER_LAYOUT_HELP = (
    "Put each image next to its mask, named <name>.png and <name>_mask.png (.tif or .tiff "
    "work too), or put the images in an images/ subfolder and the masks in a masks/ subfolder "
    "with the same names. Images are grayscale (8- or 16-bit; colour is converted to gray), "
    "of any size; a multi-page TIFF is a stack of samples, its mask a TIFF with as many pages. "
    "A mask has the size of its image, with background 0 and cells any one other value "
    "(1 or 255)."
)


class DatasetError(ValueError):
    """Unusable training data; the message names the offending file and what is wrong."""


@dataclass(frozen=True)
class SkippedFile:
    """A file load_folder left out, and why (in words)."""

    path: str  # relative to the folder
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class SegmentationData:
    """Images (float32 in [0, 1]) and binary masks (float32 0/1), both (N, 1, H, W).

    `sources` names the image each sample came from (a page of a stack, a crop of a larger
    image), so that a validation split keeps all of one image on one side; `skipped` lists
    the files a folder had that could not be used."""

    images: np.ndarray
    masks: np.ndarray
    names: list[str]
    sources: list[str] | None = None  # None: each sample is its own source (its name)
    skipped: list[SkippedFile] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.shape != self.masks.shape or self.images.ndim != 4:
            raise ValueError(
                f"images {self.images.shape} and masks {self.masks.shape} must both be (N, 1, H, W)"
            )
        if len(self.names) != len(self.images):
            raise ValueError(f"{len(self.names)} names for {len(self.images)} images")
        if self.sources is None:
            self.sources = list(self.names)
        if len(self.sources) != len(self.images):
            raise ValueError(f"{len(self.sources)} sources for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int] | np.ndarray) -> SegmentationData:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return SegmentationData(
            images=self.images[indices],
            masks=self.masks[indices],
            names=[self.names[i] for i in indices],
            sources=[self.sources[i] for i in indices],
            skipped=list(self.skipped),
        )

    @staticmethod
    def concatenate(parts: Sequence[SegmentationData]) -> SegmentationData:
        return SegmentationData(
            images=np.concatenate([p.images for p in parts]),
            masks=np.concatenate([p.masks for p in parts]),
            names=[name for p in parts for name in p.names],
            sources=[source for p in parts for source in p.sources],
            skipped=[skipped for p in parts for skipped in p.skipped],
        )


# --- synthetic microscopes --------------------------------------------------------------------


@dataclass(frozen=True)
class Microscope:
    """How one simulated microscope renders cells. Intensities are in [0, 1] before noise."""

    background: float  # background level
    cells: float  # cell interior level (below background: dark cells on a bright field)
    noise: float  # Gaussian noise sigma
    radius: tuple[float, float]  # cell semi-axis range, as a fraction of the image size
    elongation: tuple[float, float]  # ratio of the long to the short axis
    cell_count: tuple[int, int]  # cells per image (inclusive range)
    blur: float = 0.0  # Gaussian blur sigma in pixels
    illumination: float = 0.0  # strength of an uneven-illumination gradient across the field
    rim: float = 0.0  # added along the inside of the cell edge (a membrane stain)
    halo: float = 0.0  # added just outside the cell edge (phase-contrast halo)


#: The three colleagues' microscopes of the demo. The U-Net normalizes each image (GroupNorm),
#: so plain brightness and contrast would not tell them apart; they differ in what it cannot
#: shrug off: uneven lighting, hollow-looking (membrane-stained) cells, heavy noise and blur,
#: cell size and shape. A model trained on one microscope alone misreads the others' images,
#: while all three are consistent (cells are brighter than their surroundings), so one model
#: can learn them all.
MICROSCOPES = (
    # fluorescence with uneven lighting: small round cells, the field brighter on one side
    Microscope(0.15, 0.55, 0.05, (0.05, 0.08), (1.0, 1.4), (4, 8), illumination=0.35),
    # membrane stain: large cells, bright outline, interior barely above the background
    Microscope(0.15, 0.20, 0.03, (0.10, 0.15), (1.1, 1.5), (2, 4), blur=0.6, rim=0.5),
    # noisy widefield camera: long, blurred cells
    Microscope(0.25, 0.50, 0.15, (0.07, 0.10), (2.0, 3.0), (3, 5), blur=1.0),
)


def synthetic_dataset(
    count: int, *, size: int = 64, seed: int = 0, style: int = 0
) -> SegmentationData:
    """`count` images of cells from microscope `style` (modulo the number of microscopes),
    with their masks. Reproducible: the same arguments give the same arrays."""
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, not {size}")
    microscope = MICROSCOPES[style % len(MICROSCOPES)]
    rng = np.random.default_rng([seed, style])
    images = np.empty((count, 1, size, size), dtype=np.float32)
    masks = np.empty((count, 1, size, size), dtype=np.float32)
    for i in range(count):
        images[i, 0], masks[i, 0] = _render(microscope, size, rng)
    return SegmentationData(images, masks, [f"synthetic-{i}" for i in range(count)])


def member_shard(member: int, count: int, *, seed: int = 0, size: int = 64) -> SegmentationData:
    """One simulated colleague's images: its own microscope (`member` picks the style) and its
    own random draw."""
    return synthetic_dataset(count, size=size, seed=seed + 1 + member, style=member)


def held_out_set(
    count: int, *, seed: int = 10_000, size: int = 64, styles: int = 3
) -> SegmentationData:
    """Images from every one of the first `styles` microscopes, about equally many each: the
    set on which a shared model beats models trained on one microscope only."""
    if styles < 1:
        raise ValueError(f"styles must be >= 1, not {styles}")
    counts = [count // styles + (1 if s < count % styles else 0) for s in range(styles)]
    parts = [synthetic_dataset(n, size=size, seed=seed, style=s) for s, n in enumerate(counts) if n]
    if not parts:
        return synthetic_dataset(0, size=size, seed=seed)
    data = SegmentationData.concatenate(parts)
    data.names = [f"synthetic-{i}" for i in range(len(data))]
    data.sources = list(data.names)
    return data


def _render(microscope: Microscope, size: int, rng: np.random.Generator):
    """One image and its mask: ellipses with interior, rim and halo, lighting, blur, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.zeros((size, size), dtype=bool)
    fill = np.zeros((size, size), dtype=np.float32)  # 1 inside cells, with a little variation
    rim = np.zeros((size, size), dtype=np.float32)
    halo = np.zeros((size, size), dtype=np.float32)
    for _ in range(rng.integers(microscope.cell_count[0], microscope.cell_count[1] + 1)):
        short = rng.uniform(*microscope.radius) * size
        long = short * rng.uniform(*microscope.elongation)
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(short, size - short, size=2)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        radius = np.sqrt((u / long) ** 2 + (v / short) ** 2)  # 1 on the cell's edge
        inside = radius <= 1.0
        band = 1.5 / short  # about 1.5 pixels wide
        mask |= inside
        fill = np.maximum(fill, inside * rng.uniform(0.8, 1.0))
        rim = np.maximum(rim, inside & (radius > 1.0 - band))
        halo = np.maximum(halo, (radius > 1.0) & (radius <= 1.0 + band))
    gradient_angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(gradient_angle) * xx + np.sin(gradient_angle) * yy) / size
    image = microscope.background + microscope.illumination * (ramp - ramp.mean())
    image = image + fill * (microscope.cells - microscope.background)
    image = image + microscope.rim * rim + microscope.halo * halo * ~mask
    if microscope.blur > 0:
        image = gaussian_blur(image, microscope.blur)
    image = image + rng.normal(0.0, microscope.noise, size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask.astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (numpy only)."""
    radius = max(1, int(round(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.asarray(image, dtype=np.float32)
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], "edge")
        length = out.shape[axis]
        out = sum(
            w * np.take(padded, np.arange(k, k + length), axis=axis) for k, w in enumerate(kernel)
        ).astype(np.float32)
    return out


# --- folders of PNG / TIFF pairs --------------------------------------------------------------

#: Largest side of the square crops that training takes from images of different sizes.
DEFAULT_CROP_SIZE = 128
#: How many crops per image, as a multiple of what tiles it once: overlapping random crops see
#: each cell at several positions.
CROP_COVERAGE = 2


def load_folder(
    path: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    strict: bool = False,
    crop_size: int | None = None,
    seed: int = 0,
) -> SegmentationData:
    """Image/mask pairs from a folder (layouts in FOLDER_LAYOUT_HELP), sorted by name.

    Each page of a multi-page TIFF is a sample of its own (its mask: a TIFF with as many
    pages). Each image is scaled to [0, 1] by its own minimum and maximum (normalize_image),
    so 8- and 16-bit images and different exposures look alike to the model. A mask's
    foreground is every pixel above its minimum value.

    When the images differ in size (or `crop_size` is given), the samples are square crops of
    `crop_size` pixels (default: the smallest side, at most DEFAULT_CROP_SIZE) at random
    positions drawn from `seed`, about CROP_COVERAGE times as many as tile each image; a
    sample's `sources` entry names the image it came from.

    A pair that cannot be used (a file Pillow cannot read, a mask of another size or page
    count, a mask that is not binary) is left out and listed in `skipped` (for the caller to
    show: never silently) or, with `strict`, raises DatasetError. Layout mistakes (an image
    without its mask, no images at all) always raise DatasetError naming the file.
    `progress(done, total)` is called after each pair.
    """
    folder = Path(path)
    if not folder.exists():
        raise DatasetError(f"Folder {folder} does not exist")
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder. {FOLDER_LAYOUT_HELP}")
    pairs = find_images(folder, masks_required=True)
    # (name, source, normalized image, 0/1 mask)
    samples: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    skipped: list[SkippedFile] = []
    for done, (name, image_path, mask_path) in enumerate(pairs, start=1):
        try:
            samples.extend(_read_pair(name, image_path, mask_path, folder))
        except DatasetError as exc:
            if strict:
                raise
            culprit = getattr(exc, "path", None) or image_path
            skipped.append(SkippedFile(_rel(culprit, folder), str(exc)))
            # INFO: the caller shows `skipped` as it sees fit (the CLI, as warnings).
            log.info("skipped %s: %s", _rel(culprit, folder), exc)
        if progress is not None:
            progress(done, len(pairs))
    if not samples:
        raise DatasetError(
            f"None of the {len(pairs)} image/mask pairs in {folder} can be used: "
            + "; ".join(str(s) for s in skipped)
        )
    sizes = {image.shape for _, _, image, _ in samples}
    if crop_size is not None or len(sizes) > 1:
        samples = _random_crops(samples, crop_size, seed)
    log.info("loaded %d samples from %s (%d skipped)", len(samples), folder, len(skipped))
    return SegmentationData(
        images=np.stack([image for _, _, image, _ in samples])[:, None].astype(np.float32),
        masks=np.stack([mask for _, _, _, mask in samples])[:, None].astype(np.float32),
        names=[name for name, _, _, _ in samples],
        sources=[source for _, source, _, _ in samples],
        skipped=skipped,
    )


def _read_pair(name: str, image_path: Path, mask_path: Path, folder: Path):
    """(name, source, normalized image, 0/1 mask) for every page of one pair; DatasetError (with the
    culprit's path in `.path`) if the pair is unusable."""
    image_pages = _named(read_pages, image_path)
    mask_pages = _named(read_pages, mask_path)
    image_name, mask_name = _rel(image_path, folder), _rel(mask_path, folder)
    if len(image_pages) != len(mask_pages):
        raise _error(
            f"Image {image_name} has {len(image_pages)} page(s) but its mask {mask_name} has "
            f"{len(mask_pages)}: a stack's mask is a stack of as many pages",
            mask_path,
        )
    stacked = len(image_pages) > 1
    result = []
    for page, (image, mask) in enumerate(zip(image_pages, mask_pages, strict=True), start=1):
        where = f" (page {page})" if stacked else ""
        if image.shape != mask.shape:
            raise _error(
                f"Image {image_name}{where} is {_size(image)} but its mask {mask_name} is "
                f"{_size(mask)}: they must be the same size",
                mask_path,
            )
        binary = _named(binary_mask, mask_path, mask, mask_name + where)
        label = f"{name}[page {page}]" if stacked else name
        # Normalized whole, before any crop: as prediction sees the image.
        result.append((label, name, normalize_image(image), binary))
    return result


def _named(function, path: Path, *args):
    """Calls function(*args or path), marking a DatasetError with the file it is about."""
    try:
        return function(*(args or (path,)))
    except DatasetError as exc:
        exc.path = path
        raise


def _error(message: str, path: Path) -> DatasetError:
    error = DatasetError(message)
    error.path = path
    return error


def _random_crops(samples, crop_size: int | None, seed: int):
    """Square crops of every sample at seeded random positions (see load_folder)."""
    smallest = min(min(image.shape) for _, _, image, _ in samples)
    side = min(crop_size or DEFAULT_CROP_SIZE, smallest)
    if side < 8:
        raise DatasetError(
            f"The smallest image is {smallest} pixels wide or high; crops of at least 8 pixels "
            "are needed to train on images of different sizes"
        )
    rng = np.random.default_rng([seed, side])
    crops = []
    for name, source, image, mask in samples:
        height, width = image.shape
        count = max(1, int(np.ceil(CROP_COVERAGE * height * width / side**2)))
        if (height, width) == (side, side):
            count = 1  # every crop would be the whole image
        for index in range(count):
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            window = (slice(top, top + side), slice(left, left + side))
            label = name if count == 1 else f"{name}[crop {index + 1}]"
            crops.append((label, source, image[window], mask[window]))
    return crops


def normalize_image(image: np.ndarray) -> np.ndarray:
    """Scales an image to [0, 1] by its own minimum and maximum; a constant image gives 0."""
    values = np.asarray(image, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def find_images(folder: Path, *, masks_required: bool) -> list[tuple[str, Path, Path | None]]:
    """(name, image, mask or None) for every image, sorted by name; DatasetError for a
    folder without images, a mask without its image, or (with `masks_required`) an image
    without its mask."""
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    subfolders = images_dir.is_dir() or masks_dir.is_dir()
    if subfolders:
        # One of the two subfolders alone still means this layout: its files are unpaired.
        images = _image_files(images_dir) if images_dir.is_dir() else {}
        masks = _image_files(masks_dir) if masks_dir.is_dir() else {}
        where = f"{images_dir} and {masks_dir}"
    else:
        files = _image_files(folder)
        images = {stem: p for stem, p in files.items() if not stem.endswith(MASK_SUFFIX)}
        masks = {
            stem[: -len(MASK_SUFFIX)]: p for stem, p in files.items() if stem.endswith(MASK_SUFFIX)
        }
        where = str(folder)
    if not images and not masks:
        raise DatasetError(f"No images (.png, .tif, .tiff) in {where}. {FOLDER_LAYOUT_HELP}")
    for stem, image_path in sorted(images.items()):
        if masks_required and stem not in masks:
            expected = f"masks/{stem}.png" if subfolders else f"{stem}{MASK_SUFFIX}.png"
            raise DatasetError(
                f"Image {_rel(image_path, folder)} has no mask (expected {expected}, or .tif)"
            )
    for stem, mask_path in sorted(masks.items()):
        if stem not in images:
            expected = f"images/{stem}.png" if subfolders else f"{stem}.png"
            raise DatasetError(
                f"Mask {_rel(mask_path, folder)} has no image (expected {expected}, or .tif)"
            )
    return [(stem, images[stem], masks.get(stem)) for stem in sorted(images)]


def _image_files(folder: Path) -> dict[str, Path]:
    """stem -> path of the PNG/TIFF files directly in `folder` (hidden files skipped)."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if entry.stem in found:
            raise DatasetError(
                f"{found[entry.stem].name} and {entry.name} in {folder} have the same name; "
                "keep one"
            )
        found[entry.stem] = entry
    return found


def read_pages(path: Path) -> list[np.ndarray]:
    """The file's pages as 2-D arrays of its values (one for a PNG or single-page TIFF, one
    per page of a stack; colour converted to gray, 8/16-bit and float kept as they are);
    DatasetError naming the file if Pillow cannot read it."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    path = Path(path)
    pages = []
    try:
        # Pillow warns about damage it can read past; what it cannot read raises below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as picture:
                for frame in ImageSequence.Iterator(picture):
                    frame.load()
                    if frame.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                        frame = frame.convert("L")
                    pages.append(np.array(frame))
    except UnidentifiedImageError as exc:
        raise DatasetError(f"Cannot read {path.name}: {exc}") from exc
    except Exception as exc:  # Pillow's decoders fail on damaged files with any error type
        raise DatasetError(f"Cannot read {path.name}: {type(exc).__name__}: {exc}") from exc
    for number, values in enumerate(pages, start=1):
        if values.ndim != 2 or values.size == 0:
            where = f" (page {number})" if len(pages) > 1 else ""
            raise DatasetError(f"{path.name}{where} is not a 2-D image (shape {values.shape})")
    return [v.astype(np.uint8) if v.dtype == np.bool_ else v for v in pages]


def binary_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """0/1 from a mask whose pixels (at least 99% of them) sit at its minimum or maximum:
    a few anti-aliased edge pixels are tolerated, gray images and label images are not."""
    low, high = mask.min(), mask.max()
    at_extremes = np.count_nonzero((mask == low) | (mask == high))
    if at_extremes < 0.99 * mask.size:
        levels = len(np.unique(mask))
        raise DatasetError(
            f"Mask {name} is not binary: it has {levels} gray levels. Save masks with "
            "background 0 and cells 255 (or 1); a label image needs label > 0 as cells"
        )
    if high == low:
        # One value: all background, unless it is a foreground-only value (e.g. all 255).
        return np.full(mask.shape, 1.0 if low > 0 else 0.0, dtype=np.float32)
    middle = (float(low) + float(high)) / 2
    return (mask > middle).astype(np.float32)


def _rel(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _size(array: np.ndarray) -> str:
    return _size_of(array.shape)


def _size_of(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]} pixels"
