"""Opening app windows in tests and driving them like a user would."""

from __future__ import annotations

from qtpy.QtCore import Qt

from segmentation_suite.app.main_window import MainWindow
from segmentation_suite.network.private_code import InvalidRoomCode, parse_room_code

TIMEOUT_MS = 15_000


def open_window(qtbot, name: str, relay_url: str = "") -> MainWindow:
    window = MainWindow(name=name, relay_url=relay_url)
    qtbot.addWidget(window)  # closed at teardown: closeEvent says goodbye to the room
    window.show()
    return window


def click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()!r} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def create_room(qtbot, window: MainWindow) -> str:
    page = window.setup_page
    click(qtbot, page.create_button)
    qtbot.waitUntil(lambda: _is_room_code(page.code_label.text()), timeout=TIMEOUT_MS)
    return page.code_label.text()


def join_room(qtbot, window: MainWindow, typed: str) -> None:
    page = window.setup_page
    page.code_edit.clear()
    qtbot.keyClicks(page.code_edit, typed)
    click(qtbot, page.join_button)


def listed_names(window: MainWindow) -> list[str]:
    widget = window.setup_page.participant_list
    return [widget.item(row).text() for row in range(widget.count())]


def wait_for_members(qtbot, windows, names) -> None:
    def everyone_listed():
        return all(
            all(any(text.startswith(name) for text in listed_names(w)) for name in names)
            and len(listed_names(w)) == len(names)
            for w in windows
        )

    qtbot.waitUntil(everyone_listed, timeout=TIMEOUT_MS)


def open_room(qtbot, relay_url: str, names: list[str]) -> tuple[list[MainWindow], str]:
    """A window for each name: the first creates a room, the others join it one by one (each
    listed in every window before the next joins). Returns the windows and the room code."""
    windows = [open_window(qtbot, name, relay_url) for name in names]
    code = create_room(qtbot, windows[0])
    for count in range(2, len(windows) + 1):
        join_room(qtbot, windows[count - 1], code)
        wait_for_members(qtbot, windows[:count], names[:count])
    return windows, code


def use_tiny_synthetic_data(window: MainWindow, member: int, count: int = 8) -> None:
    panel = window.training_page.data_panel
    panel.synthetic_radio.setChecked(True)
    panel.synthetic_size = 32
    panel.microscope_spin.setValue(member)
    panel.count_spin.setValue(count)


def _is_room_code(text: str) -> bool:
    """A private room's full code (the default) or an open room's 6 characters."""
    try:
        parse_room_code(text)
    except InvalidRoomCode:
        return False
    return text == text.strip().upper()
