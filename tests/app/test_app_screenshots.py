"""Screenshots of both pages on a real X server (Xvfb), saved where CI keeps them.

A subprocess runs segmentation_suite.app.screenshots with QT_QPA_PLATFORM=xcb on a private
Xvfb display: Alice creates a room on the test's relay, Bob joins, they train a few tiny
rounds. The PNGs land in artifacts/screenshots/ (the CI artifact) and must be real pictures:
PNG files of the window's size whose pixels vary.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmentation_suite.training.settings import TRAINING_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"

# Debian packages of the libraries the xcb platform plugin links to, for the skip message.
_DEBIAN_PACKAGES = {
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
}


def missing_xcb_libraries() -> list[str]:
    """Shared libraries the PySide6 xcb plugin needs and this system lacks (by ldd)."""
    import PySide6

    qt = Path(PySide6.__file__).parent / "Qt"
    plugin = qt / "plugins" / "platforms" / "libqxcb.so"
    if not plugin.exists() or shutil.which("ldd") is None:
        return []
    missing: set[str] = set()
    for library in (plugin, *sorted((qt / "lib").glob("libQt6XcbQpa.so*"))):
        output = subprocess.run(
            ["ldd", str(library)], capture_output=True, text=True, check=False
        ).stdout
        missing.update(re.findall(r"^\s*(\S+) => not found", output, re.MULTILINE))
    return sorted(missing)


class Xvfb:
    """An Xvfb server on a display number it picks itself (-displayfd); stopped by PID."""

    def __init__(self):
        read_end, write_end = os.pipe()
        self.process = subprocess.Popen(
            [
                "Xvfb",
                "-displayfd",
                str(write_end),
                "-screen",
                "0",
                "1280x1024x24",
                "-nolisten",
                "tcp",
            ],
            pass_fds=(write_end,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(write_end)
        number = b""
        deadline = time.monotonic() + 15
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.5)
            if ready:
                chunk = os.read(read_end, 16)
                if not chunk:
                    break
                number += chunk
        os.close(read_end)
        if not number.strip().isdigit():
            self.stop()
            raise RuntimeError(f"Xvfb did not report its display: {self.process.stderr.read()!r}")
        self.display = f":{int(number)}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()


@pytest.fixture
def xvfb_display():
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (Debian package xvfb)")
    missing = missing_xcb_libraries()
    if missing:
        packages = " ".join(_DEBIAN_PACKAGES.get(name, name) for name in missing)
        pytest.skip(
            f"the Qt xcb platform plugin cannot load: missing {', '.join(missing)} "
            f"(Debian: apt-get install {packages})"
        )
    server = Xvfb()
    yield server.display
    server.stop()


def test_screenshots_of_every_page(xvfb_display, relay):
    url = relay().url
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", DISPLAY=xvfb_display)
    env.pop("WAYLAND_DISPLAY", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segmentation_suite.app.screenshots",
            str(SCREENSHOTS),
            "--relay-url",
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    if result.returncode != 0 and "could not load the Qt platform plugin" in result.stderr:
        pytest.skip(f"the Qt xcb platform plugin does not load here: {result.stderr[-800:]}")
    assert result.returncode == 0, result.stderr[-3000:]

    # The default plan learned: the Dice curve in the picture is no flat zero line.
    saved = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(saved["dice"]) == TRAINING_DEFAULTS.rounds and max(saved["dice"]) >= 0.75, saved

    assert len(saved["predict_dice"]) == 6 and np.mean(saved["predict_dice"]) >= 0.5, saved
    names = ["setup.png", "training.png", "member_training.png", "session_log.png", "predict.png"]
    if "export" in saved:
        names.append("export.png")
    for name in names:
        path = SCREENSHOTS / name
        assert path.is_file(), f"{path} was not written"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
        with Image.open(path) as image:
            image.verify()  # a truncated or corrupt PNG raises here
        with Image.open(path) as image:
            assert image.width >= 800 and image.height >= 600, (path, image.size)
            pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        # Not blank: a window of one colour (black or unpainted) has no variance.
        assert pixels.std() > 10.0, f"{path} looks blank (pixel std {pixels.std():.1f})"
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{path} has too few colours"
    # The training pages show the plotted curves: the local model's blue is in the picture.
    from segmentation_suite.app.plots import LOCAL_COLOUR

    colour = tuple(int(LOCAL_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    for name in ("training.png", "member_training.png"):
        with Image.open(SCREENSHOTS / name) as image:
            rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
        blue = np.all(np.abs(rgb.astype(int) - colour) < 12, axis=1).sum()
        assert blue > 200, f"{name} shows no local-model curve ({blue} blue pixels)"
