"""The Session page's "Accept weights from the original app" box, driven by clicks against a
real relay: off by default; when ticked, the session's client reads the original format."""

from __future__ import annotations

from app_windows import create_room, join_room, open_window, wait_for_members
from qtpy.QtCore import QPoint, Qt


def tick(qtbot, box) -> None:
    """A click on the box itself (the row is wider than the box and its words)."""
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton, pos=QPoint(8, box.height() // 2))


def test_the_box_is_off_by_default_and_reaches_the_sessions_client(qtbot, relay):
    url = relay().url
    host = open_window(qtbot, "Host", url)
    guest = open_window(qtbot, "Guest", url)
    box = guest.setup_page.legacy_weights_check
    assert not box.isChecked() and "pickle" in box.toolTip()
    assert "could run code on this" in guest.setup_page.legacy_weights_note.text()

    code = create_room(qtbot, host)
    assert host.session.client.accept_legacy_weights is False
    tick(qtbot, box)
    join_room(qtbot, guest, code)
    wait_for_members(qtbot, [host, guest], ["Guest", "Host"])
    assert guest.session.client.accept_legacy_weights is True
    tick(qtbot, box)  # untick during the session: from now on, refused
    assert guest.session.client.accept_legacy_weights is False
