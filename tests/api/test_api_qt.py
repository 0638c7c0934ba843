"""Inside a Qt application, SyncClient callbacks run on the GUI thread (issue 4, row 7).

A real relay, a SyncClient created inside the QApplication (pytest-qt's, offscreen), and a
second member that joins: the callbacks connected the ordinary way record the QThread they run
on, which must be the GUI thread, although the client emits from its dispatcher thread (shown
by a callback connected with psygnal's `thread=None`, which runs where the emission happens).
"""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")
try:
    from qtpy.QtCore import QThread
except Exception as exc:  # qtpy missing, or no Qt binding that loads here
    pytest.skip(f"no usable Qt binding (PySide6): {exc}", allow_module_level=True)

from segmentation_suite.network import SyncClient


@pytest.fixture
def qapp(qapp_args):
    """pytest-qt's QApplication, but for this test only: once it is shut down, the SyncClients
    of later tests in this process see no Qt application and call back directly again."""
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is not None:
        pytest.skip("another test left a QApplication running; this one needs its own")
    app = QApplication(qapp_args)
    yield app
    app.shutdown()  # PySide6: destroys the application, so that instance() is None again


def test_callbacks_run_on_the_gui_thread(qapp, qtbot, relay):
    url = relay().url
    gui = qapp.thread()
    seen: dict[str, list] = {"room_created": [], "user_list_updated": [], "emitted_on": []}

    host = SyncClient()
    host.room_created.connect(
        lambda code: seen["room_created"].append((code, QThread.currentThread()))
    )
    host.user_list_updated.connect(
        lambda users: seen["user_list_updated"].append((len(users), QThread.currentThread()))
    )
    # thread=None is psygnal's own "call where emitted": the client's dispatcher thread.
    host.user_list_updated.connect(
        lambda users: seen["emitted_on"].append(threading.current_thread().name), thread=None
    )
    guest = SyncClient()
    try:
        host.create_relay_room("host", url, private=False)
        qtbot.waitUntil(lambda: bool(seen["room_created"]), timeout=10_000)
        code = seen["room_created"][0][0]
        guest.connect_relay(code.lower(), "guest", url)
        qtbot.waitUntil(lambda: any(n == 2 for n, _ in seen["user_list_updated"]), timeout=10_000)
    finally:
        guest.disconnect()
        host.disconnect()

    assert code == host.room_code and len(code) == 6
    assert all(thread == gui for _, thread in seen["room_created"])
    assert [n for n, _ in seen["user_list_updated"]][:2] == [1, 2]
    assert all(thread == gui for _, thread in seen["user_list_updated"])
    assert seen["emitted_on"] and all(name.startswith("sync ") for name in seen["emitted_on"])
    assert threading.current_thread() is threading.main_thread()


def test_without_a_qt_application_callbacks_run_where_emitted(relay):
    """After the Qt test's application is gone (or in an app without Qt), nothing is queued
    for a GUI thread: callbacks run on the client's dispatcher thread."""
    from qtpy.QtWidgets import QApplication

    assert QApplication.instance() is None
    url = relay().url
    names: list[str] = []
    done = threading.Event()
    client = SyncClient()
    client.room_created.connect(
        lambda code: (names.append(threading.current_thread().name), done.set())
    )
    try:
        client.create_relay_room("solo", url)
        assert done.wait(10), "room_created never called back"
    finally:
        client.disconnect()
    assert names and names[0].startswith("sync ")
