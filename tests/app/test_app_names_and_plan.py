"""Names (asked once, remembered, duplicates told apart) and a member opting out of the
host's plan; real relay, real windows."""

from __future__ import annotations

from app_windows import (
    TIMEOUT_MS,
    click,
    create_room,
    join_room,
    listed_names,
    open_room,
    open_window,
    use_tiny_synthetic_data,
)

from segmentation_suite.app.identity import default_name, name_path, saved_name
from segmentation_suite.app.session_controller import unique_names


def test_duplicate_names_get_a_suffix_in_joining_order():
    users = [
        {"user_id": "a", "display_name": "root"},
        {"user_id": "b", "display_name": "ada"},
        {"user_id": "c", "display_name": "root"},
        {"user_id": "d", "display_name": "root"},
    ]
    assert unique_names(users) == {"a": "root", "b": "ada", "c": "root (2)", "d": "root (3)"}


def test_two_people_called_root_are_told_apart(qtbot, relay):
    url = relay().url
    first = open_window(qtbot, "root", url)
    second = open_window(qtbot, "root", url)
    code = create_room(qtbot, first)
    join_room(qtbot, second, code)
    qtbot.waitUntil(lambda: len(listed_names(first)) == 2, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: len(listed_names(second)) == 2, timeout=TIMEOUT_MS)
    assert listed_names(first) == ["root (host, you)", "root (2)"]
    assert listed_names(second) == ["root (host)", "root (2) (you)"]
    assert any(line.endswith("  root (2) joined") for line in first.setup_page.event_log.lines)


def test_the_name_is_asked_once_and_remembered(qtbot, monkeypatch, relay):
    from qtpy.QtWidgets import QInputDialog

    from segmentation_suite.app import _ask_name_once

    assert saved_name() is None  # a fresh user config (the conftest's)
    asked = []

    def answer(parent, title, label, text=""):
        asked.append(text)
        return "Ada Lovelace", True

    monkeypatch.setattr(QInputDialog, "getText", answer)
    assert _ask_name_once() == "Ada Lovelace"
    assert asked == [default_name()] and "@" in default_name()  # user@host suggested
    assert name_path().read_text(encoding="utf-8").strip() == "Ada Lovelace"
    assert _ask_name_once() == "Ada Lovelace" and len(asked) == 1  # not asked again

    # A name changed in the field is remembered when creating or joining.
    window = open_window(qtbot, "", relay().url)
    assert window.setup_page.name_edit.text() == "Ada Lovelace"
    window.setup_page.name_edit.setText("Ada L.")
    create_room(qtbot, window)
    assert saved_name() == "Ada L."


def test_a_member_who_opts_out_is_not_waited_for(qtbot, relay):
    url = relay().url
    (alice, bob, carol), _ = open_room(qtbot, url, ["Alice", "Bob", "Carol"])
    for window in (alice, bob, carol):
        use_tiny_synthetic_data(window, 0)
        window.show_page(1)
    carol.training_page.follow_check.setChecked(False)
    qtbot.waitUntil(
        lambda: any("Carol (opted out)" in text for text in listed_names(alice)),
        timeout=TIMEOUT_MS,
    )
    alice.training_page.rounds_spin.setValue(2)
    click(qtbot, alice.training_page.start_button)

    def done(window):
        return len(window.training_page.plot.global_dice_points) == 2

    qtbot.waitUntil(lambda: done(alice) and done(bob), timeout=60_000)
    closed = [line for line in alice.setup_page.event_log.lines if " closed: averaged " in line]
    assert len(closed) == 2 and all("Carol" not in line for line in closed), closed
    assert not carol.training_page.plot.local_dice_points  # she did not train
    assert carol.training_page.rounds_spin.value() == 2  # but she sees the plan
    assert any("The host started rounds 1–2" in line for line in carol.setup_page.event_log.lines)
