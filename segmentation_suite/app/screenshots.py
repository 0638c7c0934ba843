"""Screenshots of every page for the docs and CI: a host and two members train together.

    python -m segmentation_suite.app.screenshots OUTDIR [--relay-url ws://...] [--rounds N]

Starts a local relay unless --relay-url is given, opens three windows in this process (Alice
creates the room, Bob and Carol join it), and lets the host run the default plan (defaults
everywhere; --rounds changes the plan's rounds). Saves, in OUTDIR:

- setup.png: Alice's Session page once both joined (code, participants, event log);
- training.png: Alice's (the host's) Training page after the rounds;
- member_training.png: Bob's Training page after the rounds (the plan he followed);
- session_log.png: Alice's Session page after the rounds (the event log of the session);
- predict.png: Alice's Predict page: the session's model on a folder of synthetic images of
  the three microscopes (two sizes, with masks), one selected with its overlays;
- export.png: the same page after "Export for bioimage.io…" wrote a package (only when the
  `export` extra is installed).

Meant for a display such as Xvfb (QT_QPA_PLATFORM=xcb), so the pixels are those the window
system shows; prints one JSON line describing what it saved, with the held-out Dice per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..training.settings import TRAINING_DEFAULTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--relay-url", default="")
    parser.add_argument("--rounds", type=int, default=TRAINING_DEFAULTS.rounds)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)

    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    relay = None
    if not args.relay_url:
        from ..relay_process import RelayProcess

        relay = RelayProcess().start()
        args.relay_url = relay.url
    try:
        saved = _take(app, args)
    finally:
        if relay is not None:
            relay.stop()
    print(json.dumps(saved), flush=True)
    return 0


def _take(app, args) -> dict:
    from .main_window import MainWindow

    args.outdir.mkdir(parents=True, exist_ok=True)
    alice = MainWindow(name="Alice", relay_url=args.relay_url)
    members = [MainWindow(name=name, relay_url=args.relay_url) for name in ("Bob", "Carol")]
    bob = members[0]
    for window in (alice, *members):
        window.setup_page.remember_name = False  # the user's own name stays theirs
    alice.move(0, 0)
    alice.show()
    alice.raise_()
    try:
        wait = _waiter(app, args.timeout)
        alice.setup_page.create_button.click()
        # 6 characters for an open room, more for a private one (K7QX2M-4HRT).
        wait(lambda: len(alice.setup_page.code_label.text()) >= 6, "a room code")
        for member in members:
            member.setup_page.code_edit.setText(alice.setup_page.code_label.text())
            member.setup_page.join_button.click()
            count = 2 + members.index(member)
            wait(lambda c=count: alice.setup_page.participant_list.count() == c, "the members")
        saved = {"setup": _grab(app, alice, args.outdir / "setup.png", wait)}

        host = alice.training_page
        host.rounds_spin.setValue(args.rounds)
        for window in (alice, *members):
            window.show_page(1)
        host.start_button.click()  # the host's one click; the members follow

        def done(window) -> bool:
            page = window.training_page
            rounds = [x for x, _ in page.plot.global_dice_points]
            return bool(rounds) and rounds[-1] == args.rounds and not page.is_training

        wait(lambda: all(done(w) for w in (alice, *members)), "the training rounds")
        saved["dice"] = [round(d, 3) for _, d in host.plot.global_dice_points]
        saved["training"] = _grab(app, alice, args.outdir / "training.png", wait)
        alice.show_page(0)
        saved["session_log"] = _grab(app, alice, args.outdir / "session_log.png", wait)
        alice.hide()
        bob.move(0, 0)
        bob.show()
        bob.raise_()
        saved["member_training"] = _grab(app, bob, args.outdir / "member_training.png", wait)
        bob.hide()
        alice.show()
        alice.raise_()
        saved.update(_predict_and_export(app, alice, args.outdir, wait))
        return saved
    finally:
        alice.close()
        for member in members:
            member.close()


def _predict_and_export(app, window, outdir: Path, wait) -> dict:
    import importlib.util
    import tempfile

    from PIL import Image

    from ..training.data import synthetic_dataset

    page = window.predict_page
    window.show_page(2)
    with tempfile.TemporaryDirectory(prefix="screenshot-images-") as folder:
        for style in range(3):
            for size in (64, 128):
                data = synthetic_dataset(1, size=size, seed=100 + size, style=style)
                name = f"microscope{style + 1}_{size}px"
                image = (data.images[0, 0] * 255).astype("uint8")
                Image.fromarray(image).save(Path(folder) / f"{name}.png")
                mask = (data.masks[0, 0] * 255).astype("uint8")
                Image.fromarray(mask).save(Path(folder) / f"{name}_mask.png")
        page.set_folder(folder)
        page.predict_button.click()
        wait(lambda: not page.is_busy and page.predictions, "the predictions")
        page.result_list.setCurrentRow(1)  # microscope 1 at 128 px
        shots = {"predict": _grab(app, window, outdir / "predict.png", wait)}
        shots["predict_dice"] = [round(p.dice, 3) for p in page.predictions if p.dice is not None]
        if importlib.util.find_spec("bioimageio") is not None:
            page.export_to(str(Path(folder) / "shared-model.zip"))
            wait(lambda: not page.is_busy, "the export")
            shots["export"] = _grab(app, window, outdir / "export.png", wait)
        return shots


def _grab(app, window, path: Path, wait) -> dict:
    """The window's pixels as the window system shows them (falls back to Qt's rendering)."""
    handle = window.windowHandle()
    wait(lambda: handle is not None and handle.isExposed(), "the window on screen")
    window.repaint()
    _settle(app, 0.4)  # let the window system draw what Qt painted
    pixmap = window.screen().grabWindow(window.winId())
    how = "screen"
    if pixmap.isNull() or pixmap.width() < 10:
        pixmap, how = window.grab(), "widget"
    if not pixmap.save(str(path), "PNG"):
        raise RuntimeError(f"could not write {path}")
    return {"path": str(path), "width": pixmap.width(), "height": pixmap.height(), "via": how}


def _waiter(app, timeout: float):
    def wait(predicate, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            _settle(app, 0.05)

    return wait


def _settle(app, seconds: float) -> None:
    """Runs the event loop for `seconds` (signals from the network and training threads are
    delivered by it)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


if __name__ == "__main__":
    sys.exit(main())
