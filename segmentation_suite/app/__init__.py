"""The desktop app: a Session page (create or join a room) and a Training page (federated
U-Net training with live curves). See docs/app.md.

`run()` is what the `segmentation-suite` command runs without arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys


def run(argv: list[str] | None = None) -> int:
    """Opens the main window and runs the Qt event loop; returns its exit code.

    `argv` holds the options (default: sys.argv[1:]); it may also start with the program's
    name, as Qt's argv does. Options the app does not know (Qt's, such as -platform) go to
    QApplication."""
    words = sys.argv[1:] if argv is None else list(argv)
    program = sys.argv[0] if sys.argv else "segmentation-suite"
    if words and not words[0].startswith("-"):
        program, words = words[0], words[1:]
    parser = argparse.ArgumentParser(
        prog="segmentation-suite", description="Train segmentation models together (desktop app)."
    )
    parser.add_argument("--relay-url", help="relay URL to show in the Session page")
    parser.add_argument("--name", help="your display name in the session")
    args, qt_options = parser.parse_known_args(words)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from qtpy.QtWidgets import QApplication
    except Exception as exc:  # qtpy without a binding raises its own error type
        print(f"The app needs Qt: pip install 'segmentation-suite[app]' ({exc})", file=sys.stderr)
        return 1
    from .main_window import MainWindow

    app = QApplication.instance() or QApplication([program, *qt_options])
    app.setApplicationName("Segmentation Suite")
    window = MainWindow(relay_url=args.relay_url, name=args.name)
    window.show()
    return app.exec()


__all__ = ["run"]
