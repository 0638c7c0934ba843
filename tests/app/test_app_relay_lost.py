"""Must-show 2: the relay is killed mid-session. Every page of every window (the status bar,
the Session page, the Training page) says "Reconnecting…"; once the relay is back on the same
port with the same --secret-file (so the room resumes), they all say connected again, the
event logs tell both moments, and the rounds go on."""

from __future__ import annotations

from app_windows import TIMEOUT_MS, click, open_room, use_tiny_synthetic_data

from segmentation_suite.app import session_controller as states

RECONNECT_MS = 60_000  # a safety net: reconnecting backs off with jitter


def shown_states(window) -> list[str]:
    """What each place that shows the connection says."""
    return [
        window.statusBar().currentMessage(),
        window.setup_page.status_label.text(),
        window.training_page.connection_label.text(),
    ]


def test_relay_killed_mid_session_every_page_says_reconnecting_then_connected(
    qtbot, relay, tmp_path
):
    secret = tmp_path / "relay.secret"
    first = relay("--secret-file", str(secret))
    windows, code = open_room(qtbot, first.url, ["Alice", "Bob"])
    alice, bob = windows
    for window in windows:
        use_tiny_synthetic_data(window, 0)
        window.show_page(1)
    alice.training_page.rounds_spin.setValue(1000)
    click(qtbot, alice.training_page.start_button)
    page = alice.training_page
    qtbot.waitUntil(lambda: len(page.plot.global_dice_points) >= 2, timeout=RECONNECT_MS)
    for window in windows:
        assert all(text.startswith("Connected: ") for text in shown_states(window))

    first.kill()  # a crash: no goodbye, the sockets just close

    def everywhere(window, prefix: str) -> bool:
        return all(text.startswith(prefix) for text in shown_states(window))

    qtbot.waitUntil(
        lambda: all(everywhere(w, "Reconnecting…") for w in windows), timeout=TIMEOUT_MS
    )
    assert all(w.session.state == states.RECONNECTING for w in windows)

    relay("--secret-file", str(secret), "--port", str(first.port))
    qtbot.waitUntil(
        lambda: all(everywhere(w, "Connected: ") for w in windows), timeout=RECONNECT_MS
    )
    assert alice.session.client.room_code == code and bob.session.client.room_code == code
    for window in windows:
        log = window.setup_page.event_log.lines
        lost = [i for i, line in enumerate(log) if "Lost the connection to the relay" in line]
        back = [i for i, line in enumerate(log) if "The relay connection is back" in line]
        assert lost and back and lost[0] < back[-1], log
        assert window.setup_page.error_label.message == ""

    # The rounds go on with both: a round after the outage averages two members.
    before = len(page.plot.global_dice_points)
    qtbot.waitUntil(
        lambda: len(page.plot.global_dice_points) >= before + 2, timeout=3 * RECONNECT_MS
    )
    closed = [line for line in alice.setup_page.event_log.lines if " closed: averaged " in line]
    assert closed[-1].endswith(("averaged Alice, Bob", "averaged Bob, Alice")), closed
    # One host still: Bob (who may have resumed first) never aggregated rounds of his own.
    assert not [line for line in bob.setup_page.event_log.lines if " closed: averaged " in line]
    click(qtbot, page.stop_button)
    qtbot.waitUntil(
        lambda: not page.is_training and not bob.training_page.is_training, timeout=RECONNECT_MS
    )
