"""The Training page's data: a folder with one corrupt file trains on the rest and names the
file (or, if asked, refuses the folder); loaded images are previewed with their masks."""

from __future__ import annotations

import numpy as np
import pytest
from app_windows import TIMEOUT_MS, click, create_room, open_window
from PIL import Image

from segmentation_suite.training.data import synthetic_dataset

pytest.importorskip("torch", reason="training needs torch (the train extra)")


def folder_with_a_corrupt_file(folder):
    folder.mkdir()
    data = synthetic_dataset(4, size=32, seed=3, style=0)
    for i in range(4):
        Image.fromarray((data.images[i, 0] * 255).astype(np.uint8)).save(folder / f"c{i}.png")
        Image.fromarray((data.masks[i, 0] * 255).astype(np.uint8)).save(folder / f"c{i}_mask.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    Image.fromarray((data.masks[0, 0] * 255).astype(np.uint8)).save(folder / "broken_mask.png")
    return folder


def test_a_corrupt_file_is_named_and_training_uses_the_rest(qtbot, relay, tmp_path):
    window = open_window(qtbot, "Lab", relay().url)
    create_room(qtbot, window)
    window.show_page(1)
    page = window.training_page
    panel = page.data_panel
    page.rounds_spin.setValue(1)
    panel.set_folder(str(folder_with_a_corrupt_file(tmp_path / "cells")))
    qtbot.waitUntil(lambda: page.data is not None, timeout=TIMEOUT_MS)

    assert len(page.data) == 4
    assert panel.skipped_label.isVisible() and "broken.png" in panel.skipped_label.text()
    assert any("Left out broken.png" in line for line in page.event_log.lines)
    assert len(panel.previews) == 4 and not panel.previews[0].pixmap().isNull()

    click(qtbot, page.start_button)
    qtbot.waitUntil(lambda: len(page.plot.global_dice_points) == 1, timeout=60_000)
    assert page.error_label.message == ""

    # Asked to refuse such a folder: it is refused, naming the file; the data loaded before
    # stays.
    qtbot.waitUntil(lambda: not page.is_training, timeout=TIMEOUT_MS)
    panel.strict_check.setChecked(True)
    qtbot.waitUntil(lambda: bool(page.error_label.message), timeout=TIMEOUT_MS)
    assert "broken.png" in page.error_label.message and "Data not loaded" in page.error_label.text()
    assert len(page.data) == 4
