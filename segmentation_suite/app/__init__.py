"""The desktop app: a Session page (create or join a room) and a Training page (federated
U-Net training with live curves). See docs/app.md.

`run()` is what the `segmentation-suite` command runs without arguments.
"""

from __future__ import annotations

import argparse
import contextlib
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
    name = args.name or _ask_name_once()
    window = MainWindow(relay_url=args.relay_url, name=name)
    window.show()
    return app.exec()


def _ask_name_once() -> str | None:
    """On the very first start (no name remembered): ask for the display name, suggesting
    user@host, and remember it. Later starts use the remembered one."""
    from qtpy.QtWidgets import QInputDialog

    from .identity import default_name, save_name, saved_name

    remembered = saved_name()
    if remembered:
        return remembered
    name, accepted = QInputDialog.getText(
        None,
        "Segmentation Suite",
        "Your name, as the others in a session will see it:",
        text=default_name(),
    )
    name = name.strip() if accepted else ""
    if not name:
        return None  # the Session page suggests user@host; asked again next time
    with contextlib.suppress(OSError):  # not remembered: asked again next time
        save_name(name)
    return name


__all__ = ["run"]
