"""Screenshots of both pages for the docs and CI: two windows share a room, train a round.

    python -m segmentation_suite.app.screenshots OUTDIR [--relay-url ws://...] [--rounds N]

Starts a local relay unless --relay-url is given, opens two windows in this process (Alice
creates the room, Bob joins it; only Alice's window is shown), trains tiny synthetic rounds,
and saves OUTDIR/setup.png (room code and both participants) and OUTDIR/training.png (after
the rounds). Meant for a display such as Xvfb (QT_QPA_PLATFORM=xcb), so the pixels are those
the window system shows; prints one JSON line describing what it saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--relay-url", default="")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round")
    parser.add_argument("--timeout", type=float, default=90.0)
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
    bob = MainWindow(name="Bob", relay_url=args.relay_url)  # never shown: a second member
    alice.move(0, 0)
    alice.show()
    alice.raise_()
    try:
        wait = _waiter(app, args.timeout)
        alice.setup_page.create_button.click()
        wait(lambda: len(alice.setup_page.code_label.text()) == 6, "a room code")
        bob.setup_page.code_edit.setText(alice.setup_page.code_label.text())
        bob.setup_page.join_button.click()
        wait(lambda: alice.setup_page.participant_list.count() == 2, "both participants")
        saved = {"setup": _grab(app, alice, args.outdir / "setup.png", wait)}

        for member, window in enumerate((alice, bob), start=1):
            panel = window.training_page.data_panel
            panel.microscope_spin.setValue(member)
            panel.count_spin.setValue(16 * member)
            panel.synthetic_size = 48
            window.training_page.rounds_spin.setValue(args.rounds)
            window.training_page.epochs_spin.setValue(args.epochs)
            window.show_page(1)
            window.training_page.start_button.click()
        wait(
            lambda: (
                len(alice.training_page.plot.local_dice_points) == args.rounds
                and not alice.training_page.is_training
                and not bob.training_page.is_training
            ),
            "the training rounds",
        )
        saved["training"] = _grab(app, alice, args.outdir / "training.png", wait)
        return saved
    finally:
        alice.close()
        bob.close()


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
