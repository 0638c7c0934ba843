"""Must-show 1: a host and two members with the DEFAULT settings; the host presses Start once,
everyone trains, the held-out Dice reaches 0.75 by round 5, the event logs list the joins and
the rounds, and every widget numbers the rounds alike. A fourth member joins mid-session and
trains from the round under way with the global model; the host then removes it.

Three (then four) windows in one QApplication against a real relay, driven through widgets.
"""

from __future__ import annotations

import os
import re

import pytest
from app_windows import TIMEOUT_MS, click, join_room, open_room, open_window

from segmentation_suite.app import session_controller as states
from segmentation_suite.training.settings import TRAINING_DEFAULTS

torch = pytest.importorskip("torch", reason="training needs torch (the train extra)")

from segmentation_suite.training.model_file import load_model  # noqa: E402

ROUNDS = TRAINING_DEFAULTS.rounds  # the default plan: 5 rounds
TRAINING_MS = 400_000  # a safety net on a shared 2-core machine; a run takes ~30 s


@pytest.mark.skipif(
    os.environ.get("SANITIZED_BUILD") == "1",
    reason="minutes of torch under ASan; the relay's C code is covered by the other app tests",
)
def test_host_starts_once_and_three_members_learn_with_the_defaults(qtbot, relay):
    url = relay().url
    (alice, bob, carol), code = open_room(qtbot, url, ["Alice", "Bob", "Carol"])
    windows = (alice, bob, carol)
    for window in windows:
        window.show_page(1)

    # Nothing but the host's one click: every field keeps its default.
    page = alice.training_page
    assert page.rounds_spin.value() == ROUNDS
    assert page.epochs_spin.value() == TRAINING_DEFAULTS.epochs_per_round
    assert page.learning_rate_spin.value() == pytest.approx(TRAINING_DEFAULTS.learning_rate)
    for member in (bob, carol):
        assert not member.training_page.start_button.isEnabled()  # the host starts
    click(qtbot, page.start_button)

    # Dave joins while the rounds run: he gets the plan and the global model.
    qtbot.waitUntil(lambda: len(page.plot.global_dice_points) >= 2, timeout=TRAINING_MS)
    dave = open_window(qtbot, "Dave", url)
    dave.show_page(1)
    join_room(qtbot, dave, code)

    def finished(window) -> bool:
        training = window.training_page
        rounds = [x for x, _ in training.plot.global_dice_points]
        return bool(rounds) and rounds[-1] == ROUNDS and not training.is_training

    qtbot.waitUntil(lambda: all(finished(w) for w in (*windows, dave)), timeout=TRAINING_MS)

    every_round = list(range(1, ROUNDS + 1))
    for window in (*windows, dave):  # the figures, for the record (pytest -s)
        points = window.training_page.plot.global_dice_points
        print(window.setup_page.display_name, " ".join(f"{r}:{d:.3f}" for r, d in points))
    for window in windows:
        training = window.training_page
        plot = training.plot
        name = window.setup_page.display_name
        assert training.error_label.message == "", (name, training.error_label.message)
        # One numbering in every widget: plots, status line, the log.
        assert [x for x, _ in plot.local_dice_points] == every_round, name
        assert [x for x, _ in plot.global_dice_points] == every_round, name
        assert [x for x, _ in plot.loss_points] == every_round, name  # 1 epoch per round
        assert re.search(rf"^Finished rounds 1–{ROUNDS}\.$", training.status_label.text())
        log = training.event_log.lines
        for number in every_round:
            assert any(f"Round {number} done: " in line for line in log), (name, log)
        # Learned: the shared model's held-out Dice by round 5.
        assert plot.global_dice_points[-1][1] >= 0.75, (name, plot.global_dice_points)
    # Every round's global model was kept, as a model file, in each one's session folder.
    for window in windows:
        folder = window.training_page.checkpoint_folder
        assert sorted(p.name for p in folder.iterdir()) == [
            f"round-{n:03d}.safetensors" for n in every_round
        ]
    last = [
        load_model(w.training_page.checkpoint_folder / "round-005.safetensors") for w in windows
    ]
    assert last[0].round == ROUNDS and last[0].training["epochs_per_round"] == 1
    for other in last[1:]:
        assert all(torch.equal(other.weights[k], last[0].weights[k]) for k in last[0].weights)
    # Each member's default microscope follows its place in the room.
    assert [w.training_page.loaded_choice.microscope for w in windows] == [1, 2, 3]
    # Everyone holds the same global model: the same held-out Dice.
    finals = {w.training_page.plot.global_dice_points[-1][1] for w in windows}
    assert len(finals) == 1, finals

    # The host's log: the joins, every member's pushes and every round closing.
    host_log = alice.setup_page.event_log.lines
    assert host_log == alice.training_page.event_log.lines  # one log, both pages
    for name in ("Bob", "Carol", "Dave"):
        assert any(line.endswith(f"  {name} joined") for line in host_log), host_log
    for number in every_round:
        assert any(f"Round {number} closed: averaged " in line for line in host_log), host_log
        assert any(f"Bob pushed weights for round {number}" in line for line in host_log)
    assert re.match(r"^\d\d:\d\d:\d\d  ", host_log[0])  # with times
    # The host's table says which round averaged each member's last push: round 5.
    table = alice.training_page.participant_table
    bob_id = next(u["user_id"] for u in alice.session.participants if u["display_name"] == "Bob")
    assert table.rounds[bob_id] == ROUNDS and "round 5" in table.contributions[bob_id]
    # A member's log: the others joining and every global model.
    bob_log = bob.training_page.event_log.lines
    assert any(line.endswith("  Carol joined") for line in bob_log), bob_log
    for number in every_round:
        assert any(f"Round {number}: global model received" in line for line in bob_log)

    # Dave trained the rounds left, numbered as everyone's, from the global model.
    dave_rounds = [x for x, _ in dave.training_page.plot.global_dice_points]
    assert dave_rounds[0] > 1 and dave_rounds == list(range(dave_rounds[0], ROUNDS + 1))
    assert dave.training_page.plot.global_dice_points[-1][1] in finals
    # His first local Dice is that of a model that already learned (the global one, trained
    # one more epoch), not of a fresh one.
    assert dave.training_page.plot.local_dice_points[0][1] > 0.5

    # The host removes Dave: his app leaves, says why, and the others see him go.
    setup = alice.setup_page
    row = next(
        i
        for i in range(setup.participant_list.count())
        if "Dave" in setup.participant_list.item(i).text()
    )
    setup.participant_list.setCurrentRow(row)
    click(qtbot, setup.remove_button)
    qtbot.waitUntil(lambda: dave.session.state == states.IDLE, timeout=TIMEOUT_MS)
    assert "Removed" in dave.setup_page.error_label.text()
    qtbot.waitUntil(lambda: setup.participant_list.count() == 3, timeout=TIMEOUT_MS)
    # Bob hears of it from the relay on his own connection, not when Alice does.
    qtbot.waitUntil(
        lambda: any(line.endswith("  Dave left") for line in bob.setup_page.event_log.lines),
        timeout=TIMEOUT_MS,
    )
