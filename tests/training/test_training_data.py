"""Synthetic microscopes and load_folder: shapes, ranges, pairing, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segmentation_suite.training import (
    FOLDER_LAYOUT_HELP,
    DatasetError,
    SegmentationData,
    held_out_set,
    load_folder,
    member_shard,
    synthetic_dataset,
)
from segmentation_suite.training.data import MICROSCOPES

# --- synthetic data ---------------------------------------------------------------------------


def test_synthetic_dataset_has_the_contract_shapes_dtypes_and_ranges():
    data = synthetic_dataset(5, size=40, seed=3, style=1)
    assert len(data) == 5
    assert data.images.shape == data.masks.shape == (5, 1, 40, 40)
    assert data.images.dtype == data.masks.dtype == np.float32
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0
    assert set(np.unique(data.masks)) <= {0.0, 1.0}
    assert data.names == [f"synthetic-{i}" for i in range(5)]
    # every image holds cells, but cells do not fill it
    fractions = data.masks.mean(axis=(1, 2, 3))
    assert np.all(fractions > 0.01) and np.all(fractions < 0.7)


def test_synthetic_dataset_is_reproducible_and_seeds_differ():
    a = synthetic_dataset(3, size=32, seed=7, style=2)
    b = synthetic_dataset(3, size=32, seed=7, style=2)
    c = synthetic_dataset(3, size=32, seed=8, style=2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.masks, c.masks)


def test_cells_are_brighter_than_their_surroundings_in_every_style():
    for style in range(len(MICROSCOPES)):
        data = synthetic_dataset(8, size=48, seed=1, style=style)
        inside = data.images[data.masks > 0].mean()
        outside = data.images[data.masks == 0].mean()
        assert inside > outside, f"style {style}"


def test_styles_differ_in_what_normalization_cannot_remove():
    """Per-image standardized, the microscopes still differ: noise, lighting, cell shape."""
    stats = []
    for style in range(len(MICROSCOPES)):
        data = synthetic_dataset(12, size=48, seed=2, style=style)
        images = data.images[:, 0]
        z = (images - images.mean(axis=(1, 2), keepdims=True)) / images.std(
            axis=(1, 2), keepdims=True
        )
        roughness = np.abs(np.diff(z, axis=-1)).mean()  # noise against contrast
        cell_fraction = data.masks.mean()
        stats.append((round(float(roughness), 2), round(float(cell_fraction), 2)))
    assert len(set(stats)) == len(stats), stats


def test_member_shards_use_their_own_microscope_and_draw():
    shards = [member_shard(m, 6, size=32) for m in range(3)]
    for m, shard in enumerate(shards):
        same_style = synthetic_dataset(6, size=32, seed=1 + m, style=m)
        np.testing.assert_array_equal(shard.images, same_style.images)
    assert not np.array_equal(shards[0].images, shards[1].images)
    assert member_shard(1, 6, size=32, seed=5).images.shape == (6, 1, 32, 32)


def test_held_out_set_mixes_every_style_and_differs_from_the_shards():
    held = held_out_set(10, size=32, styles=3)
    assert len(held) == 10
    assert held.names == [f"synthetic-{i}" for i in range(10)]
    # 4 + 3 + 3 images, in style order
    for start, count, style in ((0, 4, 0), (4, 3, 1), (7, 3, 2)):
        expected = synthetic_dataset(count, size=32, seed=10_000, style=style)
        np.testing.assert_array_equal(held.images[start : start + count], expected.images)
    shard = member_shard(0, 4, size=32)
    assert not np.array_equal(held.images[:4], shard.images)


def test_subset_and_bad_arguments():
    data = synthetic_dataset(4, size=16, seed=0)
    part = data.subset([3, 1])
    assert part.names == ["synthetic-3", "synthetic-1"]
    np.testing.assert_array_equal(part.images[0], data.images[3])
    with pytest.raises(ValueError, match="count"):
        synthetic_dataset(-1)
    with pytest.raises(ValueError, match="must both be"):
        SegmentationData(np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 5)), ["a", "b"])
    with pytest.raises(ValueError, match="names"):
        SegmentationData(np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 4)), ["a"])


# --- load_folder: good folders ----------------------------------------------------------------


def cells(height=24, width=32):
    """A mask with two rectangles of cells (bool)."""
    mask = np.zeros((height, width), dtype=bool)
    mask[3:9, 4:12] = True
    mask[14:20, 18:28] = True
    return mask


def microscope_image(mask, dtype, low, high, seed=0):
    rng = np.random.default_rng(seed)
    image = np.where(mask, high, low) + rng.integers(0, 3, size=mask.shape)
    return image.astype(dtype)


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_flat_folder_of_png_pairs_uint8_masks_0_255(tmp_path):
    for i, name in enumerate(["b", "a"]):
        mask = cells()
        save(tmp_path / f"{name}.png", microscope_image(mask, np.uint8, 20 + i, 200))
        save(tmp_path / f"{name}_mask.png", mask.astype(np.uint8) * 255)
    (tmp_path / "notes.txt").write_text("not an image")
    seen = []
    data = load_folder(tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert data.names == ["a", "b"]
    assert data.images.shape == (2, 1, 24, 32) and data.images.dtype == np.float32
    assert seen == [(1, 2), (2, 2)]
    # min/max normalization per image: each image spans exactly [0, 1]
    assert np.allclose(data.images.min(axis=(1, 2, 3)), 0.0)
    assert np.allclose(data.images.max(axis=(1, 2, 3)), 1.0)
    np.testing.assert_array_equal(data.masks[0, 0], cells().astype(np.float32))


def test_images_and_masks_subfolders_uint16_tiff_masks_0_1(tmp_path):
    mask = cells()
    image = microscope_image(mask, np.uint16, 1000, 40000)
    save(tmp_path / "images" / "cell01.tif", image)
    save(tmp_path / "masks" / "cell01.tiff", mask.astype(np.uint8))
    data = load_folder(tmp_path)
    assert data.names == ["cell01"]
    np.testing.assert_array_equal(data.masks[0, 0], mask.astype(np.float32))
    expected = (image.astype(np.float64) - image.min()) / (image.max() - image.min())
    np.testing.assert_allclose(data.images[0, 0], expected, atol=1e-6)


def test_uint16_png_and_rgb_png_are_read_as_gray(tmp_path):
    mask = cells()
    save(tmp_path / "deep.png", microscope_image(mask, np.uint16, 100, 60000))
    save(tmp_path / "deep_mask.png", mask.astype(np.uint8) * 255)
    rgb = np.stack([microscope_image(mask, np.uint8, 10, 250)] * 3, axis=-1)
    save(tmp_path / "colour.png", rgb)
    save(tmp_path / "colour_mask.tif", mask.astype(np.uint8) * 255)
    data = load_folder(tmp_path)
    assert data.names == ["colour", "deep"]
    for i in range(2):
        # cells are the bright pixels after normalization
        assert data.images[i, 0][mask].min() > 0.9
        assert data.images[i, 0][~mask].max() < 0.1


def test_a_few_antialiased_mask_pixels_are_tolerated_and_thresholded(tmp_path):
    mask = cells(40, 40).astype(np.uint8) * 255
    mask[0, :5] = 128  # 5 of 1600 pixels: anti-aliasing
    save(tmp_path / "x.png", microscope_image(mask > 0, np.uint8, 10, 200))
    save(tmp_path / "x_mask.png", mask)
    data = load_folder(tmp_path)
    assert data.masks[0, 0, 0, :5].tolist() == [1.0] * 5  # above half of 255


def test_constant_image_becomes_zeros_and_empty_mask_is_allowed(tmp_path):
    save(tmp_path / "blank.png", np.full((16, 16), 77, dtype=np.uint8))
    save(tmp_path / "blank_mask.png", np.zeros((16, 16), dtype=np.uint8))
    data = load_folder(tmp_path)
    assert data.images.max() == 0.0 and data.masks.max() == 0.0


# --- load_folder: bad folders -----------------------------------------------------------------


def good_pair(folder, name, shape=(24, 32)):
    mask = cells(*shape)
    save(folder / f"{name}.png", microscope_image(mask, np.uint8, 10, 200))
    save(folder / f"{name}_mask.png", mask.astype(np.uint8) * 255)


def test_missing_folder_and_a_file_instead_of_a_folder(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.*does not exist"):
        load_folder(tmp_path / "nowhere")
    file = tmp_path / "a.png"
    file.write_bytes(b"x")
    with pytest.raises(DatasetError, match="a.png is not a folder"):
        load_folder(file)


def test_empty_folder_explains_the_layout(tmp_path):
    with pytest.raises(DatasetError, match="No images") as caught:
        load_folder(tmp_path)
    assert FOLDER_LAYOUT_HELP in str(caught.value)


def test_image_without_mask(tmp_path):
    good_pair(tmp_path, "ok")
    save(tmp_path / "lonely.png", np.zeros((24, 32), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"lonely\.png has no mask.*lonely_mask\.png"):
        load_folder(tmp_path)


def test_mask_without_image(tmp_path):
    good_pair(tmp_path, "ok")
    save(tmp_path / "ghost_mask.png", np.zeros((24, 32), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"ghost_mask\.png has no image"):
        load_folder(tmp_path)


def test_unpaired_file_in_the_subfolder_layout(tmp_path):
    save(tmp_path / "images" / "a.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"images/a\.png has no mask.*masks/a\.png"):
        load_folder(tmp_path / "")
    (tmp_path / "masks").mkdir()
    save(tmp_path / "masks" / "b.png", np.zeros((8, 8), dtype=np.uint8))
    save(tmp_path / "masks" / "a.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"masks/b\.png has no image"):
        load_folder(tmp_path)


def test_image_and_mask_of_different_sizes_names_both(tmp_path):
    save(tmp_path / "big.png", np.zeros((30, 40), dtype=np.uint8))
    save(tmp_path / "big_mask.png", np.zeros((24, 32), dtype=np.uint8))
    with pytest.raises(DatasetError) as caught:
        load_folder(tmp_path, strict=True)
    message = str(caught.value)
    assert "big.png is 40x30" in message and "big_mask.png is 32x24" in message


def test_corrupt_and_truncated_files_are_named_when_strict(tmp_path):
    good_pair(tmp_path, "a")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    save(tmp_path / "b_mask.png", cells().astype(np.uint8))
    with pytest.raises(DatasetError, match=r"Cannot read b\.png"):
        load_folder(tmp_path, strict=True)

    other = tmp_path / "truncated"
    good_pair(other, "c")
    whole = (other / "c_mask.png").read_bytes()
    (other / "c_mask.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetError, match=r"Cannot read c_mask\.png"):
        load_folder(other, strict=True)


def test_unusable_pairs_are_skipped_and_listed_by_default(tmp_path, caplog):
    good_pair(tmp_path, "a")
    good_pair(tmp_path, "d")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    save(tmp_path / "b_mask.png", cells().astype(np.uint8))
    whole = (tmp_path / "d_mask.png").read_bytes()
    good_pair(tmp_path, "c")
    (tmp_path / "c_mask.png").write_bytes(whole[: len(whole) // 2])
    save(tmp_path / "e.png", np.zeros((16, 16), dtype=np.uint8))
    save(tmp_path / "e_mask.png", np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1)))
    with caplog.at_level("INFO"):
        data = load_folder(tmp_path)
    assert data.names == ["a", "d"]
    assert [s.path for s in data.skipped] == ["b.png", "c_mask.png", "e_mask.png"]
    assert "Cannot read b.png" in data.skipped[0].reason
    assert "not binary" in data.skipped[2].reason
    logged = caplog.text
    assert all(name in logged for name in ("b.png", "c_mask.png", "e_mask.png"))
    # A subset (the validation split) still knows what the folder had.
    assert [s.path for s in data.subset([1]).skipped] == ["b.png", "c_mask.png", "e_mask.png"]


def test_a_folder_of_nothing_but_unusable_pairs_is_refused(tmp_path):
    (tmp_path / "b.png").write_bytes(b"garbage")
    save(tmp_path / "b_mask.png", cells().astype(np.uint8))
    with pytest.raises(DatasetError, match=r"None of the 1 image/mask pairs.*b\.png"):
        load_folder(tmp_path)


def test_mask_with_many_gray_levels(tmp_path):
    save(tmp_path / "g.png", np.zeros((16, 16), dtype=np.uint8))
    gradient = np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1))
    save(tmp_path / "g_mask.png", gradient)
    with pytest.raises(DatasetError, match=r"Mask g_mask\.png is not binary: it has 16 gray"):
        load_folder(tmp_path, strict=True)


def save_stack(path, pages):
    pictures = [Image.fromarray(page) for page in pages]
    pictures[0].save(path, save_all=True, append_images=pictures[1:])


def test_each_page_of_a_stack_is_a_sample_with_its_mask_page(tmp_path):
    masks = [cells(), cells()[::-1], cells()[:, ::-1]]
    images = [
        microscope_image(m, np.uint16, 500 * (i + 1), 30000, seed=i) for i, m in enumerate(masks)
    ]
    save_stack(tmp_path / "stack.tif", images)
    save_stack(tmp_path / "stack_mask.tif", [m.astype(np.uint8) * 255 for m in masks])
    good_pair(tmp_path, "single")
    data = load_folder(tmp_path)
    assert data.names == ["single", "stack[page 1]", "stack[page 2]", "stack[page 3]"]
    assert data.sources == ["single", "stack", "stack", "stack"]
    assert data.images.shape == (4, 1, 24, 32)
    for page, mask in enumerate(masks, start=1):
        np.testing.assert_array_equal(data.masks[page, 0], mask.astype(np.float32))
        assert data.images[page, 0][mask].min() > 0.9  # 16-bit pages normalized one by one


def test_a_stack_whose_mask_has_other_page_count_is_skipped(tmp_path):
    save_stack(tmp_path / "stack.tif", [np.zeros((8, 8), dtype=np.uint8)] * 3)
    save(tmp_path / "stack_mask.tif", np.zeros((8, 8), dtype=np.uint8))
    good_pair(tmp_path, "ok")
    data = load_folder(tmp_path)
    assert data.names == ["ok"]
    assert "has 3 page(s) but its mask stack_mask.tif has 1" in data.skipped[0].reason
    with pytest.raises(DatasetError, match=r"stack\.tif has 3 page"):
        load_folder(tmp_path, strict=True)


def test_images_of_different_sizes_become_random_crops_that_keep_image_and_mask_aligned(
    tmp_path,
):
    shapes = [(24, 32), (40, 56), (30, 30)]
    for i, shape in enumerate(shapes):
        good_pair(tmp_path, f"img{i}", shape)
    data = load_folder(tmp_path, seed=3)
    side = 24  # the smallest side
    assert data.images.shape[1:] == (1, side, side)
    # About twice as many crops as tile each image (rounded up), named after their image.
    assert [data.sources.count(f"img{i}") for i in range(3)] == [3, 8, 4]
    # Each crop's mask is the crop of its image's mask: bright pixels are exactly the cells.
    for image, mask in zip(data.images[:, 0], data.masks[:, 0], strict=True):
        if 0 < mask.sum() < mask.size:
            assert image[mask > 0].min() > image[mask == 0].max()
    again = load_folder(tmp_path, seed=3)
    np.testing.assert_array_equal(again.images, data.images)
    other = load_folder(tmp_path, seed=4)
    assert not np.array_equal(other.images, data.images)


def test_crop_size_caps_the_crops_and_too_small_images_are_refused(tmp_path):
    good_pair(tmp_path, "a", (24, 32))
    assert load_folder(tmp_path, crop_size=16).images.shape[1:] == (1, 16, 16)
    good_pair(tmp_path, "tiny", (6, 40))
    with pytest.raises(DatasetError, match="6 pixels wide or high"):
        load_folder(tmp_path)


def test_truncated_stacks_are_skipped_by_name_never_crash(tmp_path):
    good_pair(tmp_path, "ok")
    pages = [microscope_image(cells(), np.uint16, 100, 30000, seed=s) for s in range(3)]
    save_stack(tmp_path / "whole.tif", pages)
    whole = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "whole.tif").unlink()
    for cut in (10, len(whole) // 3, len(whole) // 2, len(whole) - 10):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        good_pair(folder, "ok")
        (folder / "stack.tif").write_bytes(whole[:cut])
        save_stack(folder / "stack_mask.tif", [cells().astype(np.uint8) * 255] * 3)
        data = load_folder(folder)
        # A damaged stack is never half-used: either all 3 pages, or skipped with its name.
        if len(data) == 1:
            assert data.names == ["ok"]
            assert [s.path for s in data.skipped] == ["stack.tif"], data.skipped
        else:
            assert data.names == ["ok", "stack[page 1]", "stack[page 2]", "stack[page 3]"]


def test_damaged_images_of_every_kind_are_skipped_or_read_never_crash(tmp_path):
    """Byte flips and cuts in PNG, 16-bit TIFF and stack files: load_folder either reads the
    pair or skips it by name; any other exception fails the test."""
    sources = {}
    good_pair(tmp_path / "src", "p")
    sources["p.png"] = (tmp_path / "src" / "p.png").read_bytes()
    save(tmp_path / "src" / "t.tif", microscope_image(cells(), np.uint16, 100, 30000))
    sources["t.tif"] = (tmp_path / "src" / "t.tif").read_bytes()
    save_stack(tmp_path / "src" / "s.tif", [microscope_image(cells(), np.uint8, 5, 200)] * 2)
    sources["s.tif"] = (tmp_path / "src" / "s.tif").read_bytes()
    rng = np.random.default_rng(0)
    for trial in range(60):
        name, original = list(sources.items())[trial % 3]
        damaged = bytearray(original)
        if trial % 2:
            damaged = damaged[: int(rng.integers(1, len(damaged)))]
        else:
            for index in rng.integers(0, len(damaged), size=int(rng.integers(1, 6))):
                damaged[index] = int(rng.integers(0, 256))
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        good_pair(folder, "ok")
        stem, suffix = name.split(".")
        (folder / name).write_bytes(bytes(damaged))
        pages = 2 if stem == "s" else 1
        save_stack(folder / f"{stem}_mask.{suffix}", [cells().astype(np.uint8) * 255] * pages)
        data = load_folder(folder)
        assert "ok" in data.names
        assert len(data) == 1 + pages or [s.path for s in data.skipped] != [], trial
