"""Two app windows in one QApplication against a real relay: create, join, train a round.

Everything is driven through the widgets (clicks and key presses), and what is checked is what
a user would see: the room code, the participant lists, the error line, the plot's points.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from app_windows import (
    TIMEOUT_MS,
    click,
    create_room,
    join_room,
    listed_names,
    open_window,
    use_tiny_synthetic_data,
    wait_for_members,
)
from PIL import Image
from qtpy.QtCore import Qt

from segmentation_suite.app import session_controller as states
from segmentation_suite.app.validators import is_complete_room_code


def test_create_join_and_train_one_round(qtbot, relay, tmp_path):
    url = relay().url
    alice = open_window(qtbot, "Alice", url)
    bob = open_window(qtbot, "Bob", url)

    code = create_room(qtbot, alice)
    assert alice.setup_page.copy_button.isEnabled()
    join_room(qtbot, bob, code.lower())
    assert bob.setup_page.code_edit.text() == code  # upper-cased as typed
    wait_for_members(qtbot, [alice, bob], ["Alice", "Bob"])
    assert bob.setup_page.code_label.text() == code
    assert "(host" in listed_names(alice)[0] and listed_names(alice)[0].startswith("Alice")

    # A folder with an image but no mask: the error names the file, the session stays.
    bad = tmp_path / "bad folder"
    bad.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(bad / "cell_07.png")
    bob_training = bob.training_page
    bob.show_page(1)
    bob_training.data_panel.set_folder(str(bad))
    qtbot.waitUntil(lambda: bool(bob_training.error_label.message), timeout=TIMEOUT_MS)
    assert "cell_07" in bob_training.error_label.message
    assert "Data not loaded" in bob_training.error_label.text()
    assert bob.session.state == states.CONNECTED and len(bob.session.participants) == 2

    for member, window in enumerate((alice, bob), start=1):
        use_tiny_synthetic_data(window, member)
        window.show_page(1)
    # The host sets the plan and starts; Bob's page follows it without a click.
    alice.training_page.rounds_spin.setValue(1)
    alice.training_page.epochs_spin.setValue(1)
    assert not bob.training_page.start_button.isEnabled()
    assert not bob.training_page.rounds_spin.isEnabled()  # the host's plan, shown
    click(qtbot, alice.training_page.start_button)

    def round_done(window):
        plot = window.training_page.plot
        return bool(plot.local_dice_points) and not window.training_page.is_training

    qtbot.waitUntil(lambda: round_done(alice) and round_done(bob), timeout=60_000)
    for window in (alice, bob):
        page = window.training_page
        assert page.error_label.message == ""
        assert [x for x, _ in page.plot.loss_points] == [1]
        assert [x for x, _ in page.plot.local_dice_points] == [1]
        # Both pushed, so the global model of round 1 arrived and was evaluated.
        assert [x for x, _ in page.plot.global_dice_points] == [1]
        assert all(0.0 <= dice <= 1.0 for _, dice in page.plot.global_dice_points)
        # ...and its loss on this member's images, at the round's last epoch.
        assert [x for x, _ in page.plot.global_loss_points] == [1]
        assert all(loss > 0 for _, loss in page.plot.global_loss_points)
        assert page.progress_bar.value() == page.progress_bar.maximum()
    assert alice.training_page.resume_button.isEnabled()
    assert alice.training_page.start_button.isEnabled()
    assert bob.training_page.rounds_spin.value() == 1  # the plan he followed
    # The two members ended the round with the same (global) model.
    alice_weights = alice.training_page.trainer.state_dict()
    bob_weights = bob.training_page.trainer.state_dict()
    assert all(np.array_equal(alice_weights[k], bob_weights[k]) for k in alice_weights)
    # The host saw Bob's push: his 8 images.
    contributions = alice.training_page.participant_table.contributions
    bob_id = next(u["user_id"] for u in alice.session.participants if u["display_name"] == "Bob")
    assert "8 images" in contributions[bob_id]

    bob.close()  # says goodbye: Alice sees him leave
    qtbot.waitUntil(lambda: len(listed_names(alice)) == 1, timeout=TIMEOUT_MS)
    assert listed_names(alice)[0].startswith("Alice")


def test_wrong_code_says_room_not_found_and_the_right_one_still_joins(qtbot, relay):
    url = relay().url
    host = open_window(qtbot, "Host", url)
    guest = open_window(qtbot, "Guest", url)
    code = create_room(qtbot, host)
    wrong = "ABCDEF" if code != "ABCDEF" else "ABCDEG"

    join_room(qtbot, guest, wrong.lower())
    page = guest.setup_page
    qtbot.waitUntil(lambda: bool(page.error_label.message), timeout=TIMEOUT_MS)
    assert page.error_label.isVisible()
    assert "Room not found" in page.error_label.text()
    assert wrong in page.error_label.message
    qtbot.waitUntil(lambda: page.join_button.isEnabled(), timeout=TIMEOUT_MS)
    assert page.create_button.isEnabled() and page.code_edit.isEnabled()

    # Enter joins, as the button does.
    page.code_edit.clear()
    qtbot.keyClicks(page.code_edit, code.lower())
    qtbot.keyClick(page.code_edit, Qt.Key.Key_Return)
    wait_for_members(qtbot, [host, guest], ["Host", "Guest"])
    assert not page.error_label.isVisible()


def test_full_room_is_said_plainly(qtbot, relay):
    url = relay("--max-room-members", "1").url
    host = open_window(qtbot, "Host", url)
    late = open_window(qtbot, "Late", url)
    code = create_room(qtbot, host)
    join_room(qtbot, late, code)
    page = late.setup_page
    qtbot.waitUntil(lambda: bool(page.error_label.message), timeout=TIMEOUT_MS)
    # the relay knows the routing part only, and says that
    assert "Room full" in page.error_label.text() and code[:6] in page.error_label.message
    qtbot.waitUntil(lambda: page.join_button.isEnabled(), timeout=TIMEOUT_MS)


def test_wrong_secret_parts_are_said_both_sides_and_the_host_reopens_the_room(qtbot, relay):
    url = relay().url
    host = open_window(qtbot, "Host", url)
    code = create_room(qtbot, host)
    assert "-" in code  # private by default: routing code, dash, secret part
    for attempt in range(3):
        guesser = open_window(qtbot, f"Guess{attempt}", url)
        join_room(qtbot, guesser, code[:7] + "ZZZ" + "ABC"[attempt])
        page = guesser.setup_page
        qtbot.waitUntil(lambda p=page: bool(p.error_label.message), timeout=TIMEOUT_MS)
        assert page.error_label.message.endswith("the code's secret part does not match")
        qtbot.waitUntil(lambda p=page: p.join_button.isEnabled(), timeout=TIMEOUT_MS)
    hostpage = host.setup_page
    qtbot.waitUntil(lambda: hostpage.reopen_button.isVisible(), timeout=TIMEOUT_MS)
    assert "closed to new members" in hostpage.error_label.message
    click(qtbot, hostpage.reopen_button)
    assert not hostpage.reopen_button.isVisible()
    guest = open_window(qtbot, "Guest", url)
    join_room(qtbot, guest, code.replace("-", "").lower())
    wait_for_members(qtbot, [host, guest], ["Host", "Guest"])
    qtbot.waitUntil(
        lambda: any("Verification with the host: " in line for line in guest.session.events),
        timeout=TIMEOUT_MS,
    )
    (digits,) = [
        line.split(": ", 1)[1] for line in guest.session.events if "Verification with" in line
    ]
    assert any(f"Verification with Guest: {digits}" in line for line in host.session.events)


def test_too_many_join_attempts_are_said_plainly(qtbot, relay):
    url = relay(join_rate="1").url
    window = open_window(qtbot, "Eager", url)
    page = window.setup_page
    headlines = []
    for _ in range(3):  # one attempt a minute is allowed: the second is refused
        page.error_label.clear_error()
        join_room(qtbot, window, "ABCDEF")
        qtbot.waitUntil(lambda: bool(page.error_label.message), timeout=TIMEOUT_MS)
        headlines.append(page.error_label.text())
        if "Rate limited" in headlines[-1]:
            break
        qtbot.waitUntil(lambda: page.join_button.isEnabled(), timeout=TIMEOUT_MS)
    assert "Rate limited" in headlines[-1], headlines
    assert "try again in" in page.error_label.message
    qtbot.waitUntil(lambda: page.join_button.isEnabled(), timeout=TIMEOUT_MS)


def test_stop_then_resume_continues_from_the_current_weights(qtbot, relay):
    solo = open_window(qtbot, "Solo", relay().url)
    create_room(qtbot, solo)
    page = solo.training_page
    use_tiny_synthetic_data(solo, 1)
    page.rounds_spin.setValue(3)
    solo.show_page(1)
    click(qtbot, page.start_button)
    qtbot.waitUntil(lambda: page.worker is not None, timeout=TIMEOUT_MS)
    # Stop as soon as round 1 ends, on the training thread itself (a direct connection), so
    # the run cannot race ahead into round 2 before the stop lands.
    page.worker.event.connect(
        lambda event: page.worker.stop() if event.kind == "round" else None,
        Qt.ConnectionType.DirectConnection,
    )
    qtbot.waitUntil(
        lambda: not page.is_training and bool(page.plot.local_dice_points), timeout=30_000
    )
    assert [x for x, _ in page.plot.local_dice_points] == [1]
    assert "Stopped after 1 of rounds 1–3" in page.status_label.text()
    trainer = page.trainer
    after_round_one = {k: v.clone() for k, v in trainer.state_dict().items()}

    click(qtbot, page.resume_button)
    qtbot.waitUntil(
        lambda: not page.is_training and len(page.plot.local_dice_points) == 3, timeout=30_000
    )
    assert page.trainer is trainer  # the same model went on training
    assert [x for x, _ in page.plot.local_dice_points] == [1, 2, 3]
    assert [x for x, _ in page.plot.loss_points] == [1, 2, 3]
    changed = any(
        not np.array_equal(after_round_one[k], v) for k, v in trainer.state_dict().items()
    )
    assert changed, "resuming did not train"
    assert "Finished rounds 2–3" in page.status_label.text()


def test_room_code_field_upper_cases_and_explains_characters_codes_never_contain(qtbot):
    window = open_window(qtbot, "Typist")
    page = window.setup_page
    edit, hint = page.code_edit, page.code_hint_label
    qtbot.keyClicks(edit, "k7-q 1")
    # Upper-cased, spaces and dashes dropped; the 1 stays in sight and is explained at once.
    assert edit.text() == "K7Q1"
    assert hint.isVisible() and "“1”" in hint.text() and "0 1 I O" in hint.text()
    # Enter with the 1 still there: refused, saying why (nothing silently dropped).
    qtbot.keyClick(edit, Qt.Key.Key_Return)
    assert "Room code not usable" in page.error_label.text() and "“1”" in page.error_label.message
    qtbot.keyClick(edit, Qt.Key.Key_Backspace)
    assert not hint.isVisible()
    qtbot.keyClicks(edit, "x2mo")
    # past the 6 routing characters comes a private room's secret part, after its dash
    assert edit.text() == "K7QX2M-O" and "“O”" in hint.text()
    qtbot.keyClick(edit, Qt.Key.Key_Backspace)
    assert edit.text() == "K7QX2M" and not hint.isVisible()
    qtbot.keyClicks(edit, "-4hr")
    assert edit.text() == "K7QX2M-4HR" and not hint.isVisible()
    assert not is_complete_room_code(edit.text())  # a secret part has at least 4 characters
    qtbot.keyClicks(edit, "t")
    assert edit.text() == "K7QX2M-4HRT" and is_complete_room_code(edit.text())


def test_copy_button_puts_the_code_on_the_clipboard(qtbot, relay, qapp):
    window = open_window(qtbot, "Copier", relay().url)
    code = create_room(qtbot, window)
    qapp.clipboard().setText("something else")
    click(qtbot, window.setup_page.copy_button)
    assert qapp.clipboard().text() == code


def test_no_relay_configured_is_said_plainly_and_the_page_stays_usable(qtbot):
    window = open_window(qtbot, "Nobody")
    page = window.setup_page
    assert page.relay_url_edit.text() == ""
    assert "No relay configured" in page.relay_source_label.text()
    click(qtbot, page.create_button)
    qtbot.waitUntil(lambda: bool(page.error_label.message), timeout=TIMEOUT_MS)
    assert "No relay configured" in page.error_label.text()
    qtbot.waitUntil(lambda: page.create_button.isEnabled(), timeout=TIMEOUT_MS)


def test_unreachable_relay_is_said_plainly(qtbot, relay):
    process = relay()
    url = process.url
    process.terminate()  # nothing listens on that port any more
    window = open_window(qtbot, "Lost", url)
    page = window.setup_page
    click(qtbot, page.create_button)
    qtbot.waitUntil(lambda: bool(page.error_label.message), timeout=TIMEOUT_MS)
    assert "Relay unreachable" in page.error_label.text()
    assert url.split("//")[1] in page.error_label.message
    qtbot.waitUntil(lambda: page.create_button.isEnabled(), timeout=TIMEOUT_MS)


def test_relay_url_is_saved_to_the_user_config_file(qtbot, isolated_relay_config):
    window = open_window(qtbot, "Saver")
    page = window.setup_page
    page.relay_url_edit.setText("wss://relay.example.org/ws")
    click(qtbot, page.save_url_button)
    saved = Path(isolated_relay_config.user_config_path())
    assert isolated_relay_config.read_relay_config_file(saved) == "wss://relay.example.org/ws"
    assert "user config" in page.relay_source_label.text()
    # A second window reads it back by the lookup order.
    assert open_window(qtbot, "Reader").setup_page.relay_url_edit.text() == (
        "wss://relay.example.org/ws"
    )

    page.relay_url_edit.setText("https://relay.example.org")
    click(qtbot, page.save_url_button)
    assert "Relay URL not usable" in page.error_label.text()
    assert "wss://" in page.error_label.message  # the hint for https://
    assert isolated_relay_config.read_relay_config_file(saved) == "wss://relay.example.org/ws"


def test_lan_join_field_points_out_a_room_code_typed_there(qtbot):
    window = open_window(qtbot, "Lan")
    page = window.setup_page
    page.lan_radio.setChecked(True)
    assert page.address_edit.isVisible() and not page.code_edit.isVisible()
    qtbot.keyClicks(page.address_edit, "K7QX2M")
    click(qtbot, page.join_button)
    assert "looks like a room code" in page.error_label.message
    assert window.session.state == states.IDLE and page.join_button.isEnabled()


@pytest.mark.parametrize("program", [[], ["segmentation-suite"]], ids=["options", "qt-argv"])
def test_run_opens_the_main_window_with_the_given_name_and_url(qapp, program):
    """run() takes options alone, or Qt's argv with the program's name first (as the CLI
    passes it)."""
    from qtpy.QtCore import QTimer

    from segmentation_suite.app import run
    from segmentation_suite.app.main_window import MainWindow

    seen = {}

    def look_and_close():
        windows = [w for w in qapp.topLevelWidgets() if isinstance(w, MainWindow)]
        visible = [w for w in windows if w.isVisible()]
        seen["count"] = len(visible)
        for window in visible:
            seen["name"] = window.setup_page.name_edit.text()
            seen["url"] = window.setup_page.relay_url_edit.text()
            window.close()

    QTimer.singleShot(0, look_and_close)
    code = run([*program, "--name", "Carol", "--relay-url", "ws://127.0.0.1:9/ws"])
    assert code == 0
    assert seen == {"count": 1, "name": "Carol", "url": "ws://127.0.0.1:9/ws"}


def test_lan_session_create_and_join(qtbot, tmp_path):
    """LAN mode: Create Session starts an AggregationServer here and joins it; the other
    window joins by address; both see both names."""
    with socket.socket() as probe:  # a free port for the session
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    alice = open_window(qtbot, "Alice")
    bob = open_window(qtbot, "Bob")
    for window in (alice, bob):
        window.setup_page.lan_radio.setChecked(True)
    alice.setup_page.port_spin.setValue(port)
    click(qtbot, alice.setup_page.create_button)
    qtbot.waitUntil(
        lambda: alice.setup_page.code_label.text().endswith(f":{port}"), timeout=TIMEOUT_MS
    )
    qtbot.keyClicks(bob.setup_page.address_edit, f"127.0.0.1:{port}")
    click(qtbot, bob.setup_page.join_button)
    wait_for_members(qtbot, [alice, bob], ["Alice", "Bob"])
    assert bob.session.state == states.CONNECTED and alice.session.server.is_running

    # The host's plan reaches LAN members as it reaches relay members: Alice presses Start
    # once (from a saved model, which goes out through the session's host connection too),
    # Bob's rounds follow.
    for number, window in enumerate((alice, bob), start=1):
        use_tiny_synthetic_data(window, number)
        window.show_page(1)
    page = alice.training_page
    assert page.start_button.isEnabled() and not page.follow_check.isVisible()
    assert not bob.training_page.start_button.isEnabled()
    assert bob.training_page.follow_check.isVisible()
    page.rounds_spin.setValue(1)
    page.epochs_spin.setValue(2)
    torch = pytest.importorskip("torch", reason="training needs torch (the train extra)")
    from segmentation_suite.training.model_file import save_model
    from segmentation_suite.training.unet import ARCHITECTURE, build_unet

    start = tmp_path / "lan.safetensors"
    torch.manual_seed(3)
    save_model(start, build_unet().state_dict(), architecture=ARCHITECTURE)
    assert page.set_starting_model(str(start))
    click(qtbot, page.start_button)

    def round_done(window):
        return len(window.training_page.plot.global_dice_points) == 1

    qtbot.waitUntil(lambda: round_done(alice) and round_done(bob), timeout=60_000)
    for window in (alice, bob):
        training = window.training_page
        assert training.error_label.message == ""
        assert [x for x, _ in training.plot.loss_points] == [0.5, 1]  # the plan's 2 epochs
    assert bob.training_page.epochs_spin.value() == 2  # the plan he followed, shown
    assert bob.training_page.plan["starts_from"] == "lan.safetensors"
    bob_log = bob.training_page.event_log.lines
    assert any("Received the host's starting model" in line for line in bob_log), bob_log
    assert any("starting from lan.safetensors" in line for line in bob_log), bob_log
    # Both pushes of round 1 (deltas against the starting model) were read and averaged.
    assert alice.session.server.host_client.global_contributors == 2
    # The hosting window hears of joins from its session's host connection.
    alice_log = alice.training_page.event_log.lines
    assert any(line.endswith("  Bob joined") for line in alice_log), alice_log
    assert not any(line.endswith("  Alice joined") for line in alice_log), alice_log
