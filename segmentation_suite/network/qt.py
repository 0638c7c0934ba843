"""Signals that call back on the GUI thread inside a Qt application, and directly without one.

The client emits its signals from its own threads (dispatcher, sender, timers). The original
app's callbacks touch widgets, which Qt allows only on the GUI thread, so inside a Qt
application a callback connected without an explicit `thread=` runs on the GUI thread:

* psygnal does the queueing: the callback is connected with `thread=<GUI thread>`, so an
  emission from another thread puts it on psygnal's queue for that thread
  (`Signal.connect(..., thread=...)`, `psygnal.emit_queued`);
* Qt does the waking: after such an emission a queued Qt signal tells an object living on the
  GUI thread to drain that queue, so nothing polls and an idle app stays idle.

Without Qt (no binding imported, or no QApplication yet when `connect` is called) a callback
runs on the emitting thread, as plain psygnal does. Passing `thread=` (None included) keeps
psygnal's own meaning. No Qt binding is imported unless the application imported one first.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import psygnal
from psygnal import EmitLoopError, SignalInstance

log = logging.getLogger(__name__)

_QT_BINDINGS = ("PySide6", "PyQt6", "PySide2", "PyQt5")
_UNSET: Any = object()

_lock = threading.Lock()
_waker: Any = None  # the GUI thread's _Waker, made on first use (again for a new QApplication)
_waker_app: Any = None  # the QApplication it belongs to
_gui_thread: threading.Thread | None = None


def _application() -> Any:
    """The running QCoreApplication (QApplication), or None; never imports a binding."""
    if not any(name in sys.modules for name in _QT_BINDINGS):
        return None
    try:
        from qtpy.QtCore import QCoreApplication
    except Exception:  # qtpy missing, or a binding that fails to load: behave as without Qt
        return None
    return QCoreApplication.instance()


def gui_thread() -> threading.Thread | None:
    """The Python thread running the Qt application's event loop, or None without one.

    A callback connected on the GUI thread belongs to it; connected elsewhere while a
    QApplication exists, it belongs to the main thread (where Qt wants its GUI)."""
    app = _application()
    if app is None:
        return None
    from qtpy.QtCore import QThread

    if QThread.currentThread() == app.thread():
        return threading.current_thread()
    return threading.main_thread()


def _ensure_waker(thread: threading.Thread) -> None:
    """Creates the GUI thread's waker, once per QApplication, on the application's thread."""
    global _waker, _waker_app, _gui_thread
    with _lock:
        app = _application()
        if app is None or (_waker is not None and _waker_app is app):
            return
        from qtpy.QtCore import QObject, Signal

        class _Waker(QObject):
            """Lives on the GUI thread; `wake` emitted from any thread reaches `drain` there
            through Qt's queued connection."""

            wake = Signal()

            def drain(self) -> None:
                # emit_queued stops at a callback that raises; log it and carry on.
                while True:
                    try:
                        psygnal.emit_queued(_gui_thread)
                        return
                    except EmitLoopError:
                        log.exception("a signal callback raised on the GUI thread")

        waker = _Waker()
        if waker.thread() != app.thread():
            waker.moveToThread(app.thread())
        waker.wake.connect(waker.drain)
        _gui_thread = thread
        _waker, _waker_app = waker, app


def _wake_gui_thread() -> None:
    """After an emission off the GUI thread: have the GUI thread run what psygnal queued."""
    global _waker
    waker = _waker
    if waker is None or threading.current_thread() is _gui_thread:
        return
    if _application() is not _waker_app:  # that QApplication is gone: nothing to wake
        _waker = None
        return
    waker.wake.emit()


class GuiThreadSignalInstance(SignalInstance):
    """A psygnal SignalInstance whose callbacks run on the GUI thread inside a Qt app."""

    def connect(self, slot=None, *, thread=_UNSET, **options):
        if thread is _UNSET:
            thread = gui_thread()
            if thread is not None:
                _ensure_waker(thread)
        return super().connect(slot, thread=thread, **options)

    def emit(self, *args: Any, **options: Any) -> None:
        super().emit(*args, **options)
        _wake_gui_thread()


def Signal(*types: Any, **options: Any) -> psygnal.Signal:  # noqa: N802 (reads as a class)
    """`psygnal.Signal` whose instances are GuiThreadSignalInstance."""
    return psygnal.Signal(*types, signal_instance_class=GuiThreadSignalInstance, **options)
