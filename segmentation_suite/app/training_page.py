"""The Training page: data, the host's plan, live curves, participants, the event log.

The host runs the session: it sets the plan (rounds, epochs per round, learning rate, data
kind) and presses Start; the plan goes to every member (SessionController.send_plan), whose
page shows it and starts the same rounds unless the member unticked "Follow the host's plan".
Someone who joins while the plan runs gets it with the round under way, asks for the current
global model and trains from that round on. Rounds carry the session's numbers everywhere
(status line, table, plots, log): the host's next aggregation round starts a plan.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..training import session_plan
from ..training.settings import TRAINING_DEFAULTS
from . import session_controller as states
from .data_panel import DataPanel
from .participants import ParticipantTable
from .plots import MetricsPlot
from .session_controller import SessionController
from .widgets import ErrorLabel, EventLog, heading
from .workers import DataChoice, DataLoader, TrainingWorker

#: How long a late joiner waits for the global model it asked for before training anyway.
GLOBAL_MODEL_WAIT_MS = 30_000


class TrainingPage(QWidget):
    go_to_setup = Signal()
    round_finished = Signal(object)  # RoundResult, for whoever watches (tests, status bar)

    def __init__(self, session: SessionController, parent=None):
        super().__init__(parent)
        self.session = session
        self.data = None  # SegmentationData once loaded
        self.evaluation = None
        self.loaded_choice: DataChoice | None = None
        self.trainer = None  # kept across runs: Resume continues from its weights
        self.worker: TrainingWorker | None = None
        self.loader: DataLoader | None = None
        self.round_timeout = TRAINING_DEFAULTS.round_timeout
        self.plan: dict | None = None  # the plan being trained (host's or received)
        self._pending_plan: dict | None = None  # member: to start once data is loaded
        self._first_round = 1
        self._last_round = 0
        self._rounds_done = 0
        self._running = False  # set at launch, cleared by the worker's last signal
        self._loading = False
        self._waiting_for_model = None  # member joining late: the plan waiting for weights
        self._connection_error = False
        self.checkpoint_folder = None  # where the last run kept its round models
        self.starting_model = None  # host: the SavedModel a Start begins from (None: anew)
        self._starting_weights = None  # relay host: what the members hold of it, once sent

        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(heading("Training"))
        top.addStretch(1)
        self.connection_label = QLabel()
        top.addWidget(self.connection_label)
        back = QPushButton("← Session")
        back.clicked.connect(self.go_to_setup.emit)
        top.addWidget(back)
        layout.addLayout(top)

        upper = QHBoxLayout()
        self.data_panel = DataPanel()
        self.data_panel.choice_changed.connect(self._on_choice_changed)
        upper.addWidget(self.data_panel, 3)
        upper.addWidget(self._build_controls(), 2)
        layout.addLayout(upper)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setFormat("%p%")
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.error_label = ErrorLabel()
        layout.addWidget(self.error_label)

        lower = QHBoxLayout()
        self.plot = MetricsPlot()
        lower.addWidget(self.plot, 3)
        side = QVBoxLayout()
        self.participant_table = ParticipantTable(session)
        self.participant_table.setMinimumWidth(300)
        side.addWidget(self.participant_table, 1)
        side.addWidget(QLabel("Session events:"))
        self.event_log = EventLog(session)
        side.addWidget(self.event_log, 1)
        lower.addLayout(side, 1)
        layout.addLayout(lower, 1)

        session.state_changed.connect(self._on_session_state)
        session.session_ready.connect(lambda _: self._on_session_state(session.state))
        session.errors_resolved.connect(self._on_errors_resolved)
        session.plan_received.connect(self._on_plan)
        session.stop_requested.connect(self._on_host_stop)
        session.removed.connect(self._on_host_stop)
        self._on_session_state(session.state)

    def _build_controls(self) -> QGroupBox:
        box = QGroupBox("Session plan")
        form = QFormLayout(box)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 100)
        self.epochs_spin.setValue(TRAINING_DEFAULTS.epochs_per_round)
        self.epochs_spin.setToolTip("Local epochs between two weight exchanges")
        self.rounds_spin = QSpinBox()
        self.rounds_spin.setRange(1, 1000)
        self.rounds_spin.setValue(TRAINING_DEFAULTS.rounds)
        self.learning_rate_spin = QDoubleSpinBox()
        self.learning_rate_spin.setDecimals(4)
        self.learning_rate_spin.setRange(0.0001, 0.1)
        self.learning_rate_spin.setSingleStep(0.001)
        self.learning_rate_spin.setValue(TRAINING_DEFAULTS.learning_rate)
        self.data_kind_label = QLabel()
        form.addRow("Rounds:", self.rounds_spin)
        form.addRow("Epochs per round:", self.epochs_spin)
        form.addRow("Learning rate:", self.learning_rate_spin)
        form.addRow("Data:", self.data_kind_label)
        start_from = QHBoxLayout()
        self.start_from_label = QLabel("a new model")
        self.start_from_label.setWordWrap(True)
        self.start_from_button = QPushButton("Start from a model…")
        self.start_from_button.setToolTip(
            "Host: begin the session from a saved model (.safetensors) instead of a new one; "
            "every member starts round 1 from it"
        )
        self.start_from_button.clicked.connect(self._choose_starting_model)
        self.start_anew_button = QPushButton("New model")
        self.start_anew_button.setToolTip("Start from a new model again")
        self.start_anew_button.clicked.connect(lambda: self.set_starting_model(None))
        start_from.addWidget(self.start_from_label, 1)
        start_from.addWidget(self.start_from_button)
        start_from.addWidget(self.start_anew_button)
        form.addRow("Start from:", start_from)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip(
            "Host: train the plan's rounds from a new model (or the one under Start from); "
            "everyone follows"
        )
        self.stop_button = QPushButton("Stop")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Host: more rounds from the current weights")
        self.start_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop_training)
        self.resume_button.clicked.connect(self.resume_training)
        for button in (self.start_button, self.stop_button, self.resume_button):
            buttons.addWidget(button)
        form.addRow(buttons)
        self.follow_check = QCheckBox("Follow the host's plan")
        self.follow_check.setChecked(True)
        self.follow_check.setToolTip(
            "Unticked: you stay in the session without training; the host stops waiting for you"
        )
        self.follow_check.toggled.connect(self._on_follow_toggled)
        form.addRow(self.follow_check)
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        form.addRow(self.hint_label)
        return box

    # --- the host's actions -------------------------------------------------------------

    def start_training(self) -> None:
        """Host: a new model, trained for the plan's rounds by everyone who follows."""
        self._start_as_host(fresh=True)

    def resume_training(self) -> None:
        """Host: more rounds from the current weights (the rounds left after a Stop, or the
        plan's rounds again after a finished run)."""
        if self.trainer is None:
            self._start_as_host(fresh=True)
            return
        self._start_as_host(fresh=False)

    def _choose_starting_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Start from a model", "", "Segmentation Suite models (*.safetensors)"
        )
        if path:
            self.set_starting_model(path)

    def set_starting_model(self, path: str | None) -> bool:
        """Host: the saved model the next Start begins from (None: a new model). A file
        that is not a model of the architecture the plan trains is refused in words."""
        from ..training.model_file import ModelFileError, load_starting_model
        from ..training.unet import ARCHITECTURE

        if path is None:
            self.starting_model = None
            self.start_from_label.setText("a new model")
            self._update_buttons()
            return True
        try:
            saved = load_starting_model(path, ARCHITECTURE)
        except ModelFileError as exc:
            self.error_label.show_error(f"Cannot start from this model: {exc}", "Not usable")
            return False
        self.error_label.clear_error()
        self.starting_model = saved
        trained = saved.training  # what the file says of how it was trained, if anything
        if trained.get("rounds"):
            how = f" ({trained['rounds']} rounds)"
        elif trained.get("epochs"):
            how = f" ({trained['epochs']} epochs)"
        else:
            how = ""
        self.start_from_label.setText(f"{Path(path).name}{how}")
        self.start_from_label.setToolTip(str(path))
        self.session.log_event(f"Next Start begins from the model {Path(path).name}")
        self._update_buttons()
        return True

    def stop_training(self) -> None:
        if self.session.host_connection is not None:
            self.session.active_plan = None
            self.session.send_stop()
            self.session.log_event("You stopped the rounds")
        if self.worker is not None and self._running:
            self.worker.stop()
            self.status_label.setText("Stopping after the current batch…")
            self.stop_button.setEnabled(False)

    def _start_as_host(self, fresh: bool) -> None:
        self.error_label.clear_error()
        self._connection_error = False
        client = self.session.client
        if client is None or self.session.state != states.CONNECTED:
            self._not_connected()
            return
        if not self.session.sets_own_plan:
            self.error_label.show_error(
                "Only the host starts the rounds: yours start when the host presses Start",
                "Host starts",
            )
            return
        left = self._last_round - self._rounds_done - self._first_round + 1
        rounds = left if not fresh and left > 0 else self.rounds_spin.value()
        first = client.aggregation_round + 1
        starting = self.starting_model if fresh else None
        plan = session_plan.new_plan(
            first_round=first,
            rounds=rounds,
            epochs_per_round=self.epochs_spin.value(),
            learning_rate=self.learning_rate_spin.value(),
            data="folder" if self.data_panel.folder_radio.isChecked() else "synthetic",
            fresh=fresh,
            starts_from=starting.path.name if starting is not None else None,
        )
        self._starting_weights = None
        if starting is not None:
            # Sent before the plan, so that it is there when the members read the plan.
            try:
                held = self.session.publish_starting_model(starting.weights, plan)
            except ValueError as exc:
                self.error_label.show_error(f"Cannot send the starting model: {exc}", "Not sent")
                return
            self._starting_weights = held if client.is_host else None
            self.session.log_event(
                f"You sent the starting model {plan['starts_from']} to the members"
            )
        self.session.active_plan = plan
        self.session.send_plan(plan)
        self.session.log_event(f"You started {session_plan.describe(plan)}")
        self._follow(plan)

    # --- following a plan (the host's own too) --------------------------------------------

    def _on_plan(self, plan: dict) -> None:
        """Member: the host's plan arrived (at Start, or on joining while it runs)."""
        self._show_plan(plan)
        late = plan.get("late") and plan.get("current_round", 1) > plan.get("first_round", 1)
        self.session.log_event(
            f"The host started {session_plan.describe(plan)}"
            + (f"; you join at round {plan['current_round']}" if late else "")
        )
        if not self.follow_check.isChecked():
            self.status_label.setText("The host started rounds; you opted out of the plan")
            return
        if self.plan is not None and plan.get("id") == self.plan.get("id") and self._running:
            return  # the same plan again (sent once more after a reconnect)
        if self._running and self.worker is not None:
            self._pending_plan = plan  # started when the current run has stopped
            self.worker.stop()
            return
        self._follow(plan)

    def _follow(self, plan: dict) -> None:
        """Loads the data if needed, then trains the plan's rounds from the right weights."""
        if plan.get("data") == "folder" and self.data_panel.wants_folder_without_one():
            self.error_label.show_error(
                "The host's plan trains on each member's own folder: choose your folder of "
                "images and masks",
                "No folder chosen",
            )
            return
        if plan.get("data") == "synthetic" and not self.data_panel.synthetic_radio.isChecked():
            self.data_panel.synthetic_radio.setChecked(True)
        if self.data is None or self.loaded_choice != self._choice():
            self._pending_plan = plan
            self.load_data()
            return
        self._pending_plan = None
        first = session_plan.first_round_to_train(plan)
        if plan.get("fresh", True) and not plan.get("late"):
            self.trainer = None
            self.plot.clear()
            self.participant_table.clear_contributions()
        client = self.session.client
        if client is not None and client.is_host:
            # The relay room's host holds the starting model it sent (None: a new model).
            starting = self._starting_weights if plan.get("starts_from") else None
            self._launch(plan, first, initial_weights=starting)
        elif client is not None and session_plan.needs_global_model(plan, self.trainer is not None):
            self._wait_for_global_model(plan, first)
        else:
            self._launch(plan, first)

    def _wait_for_global_model(self, plan: dict, first: int) -> None:
        """Joining mid-session (or continuing without a model of one's own): the host's
        current global model, then the rounds from `first` on."""
        client = self.session.client
        if client is None:
            return
        if client.global_weights is not None and client.aggregation_round == first - 1:
            # Already here: the starting model the host sent just before its plan.
            self._launch(plan, first, initial_weights=client.global_weights)
            return
        self._waiting_for_model = plan

        def arrived(weights: dict) -> None:
            client.global_model_received.disconnect(arrived)
            self._model_timer.stop()
            if self._waiting_for_model is plan:
                self._waiting_for_model = None
                self._launch(plan, first, initial_weights=weights)

        def no_model() -> None:
            # No global model yet (or the host did not answer): train from scratch.
            if self._waiting_for_model is plan:
                if plan.get("starts_from"):
                    self.session.log_event(
                        f"The host's starting model {plan['starts_from']} did not arrive; "
                        "training from a new model"
                    )
                client.global_model_received.disconnect(arrived)
                self._waiting_for_model = None
                self._launch(plan, first)

        self._model_timer = QTimer(self)
        self._model_timer.setSingleShot(True)
        self._model_timer.timeout.connect(no_model)
        wanted = client.aggregation_round or plan.get("late") or plan.get("starts_from")
        self._model_timer.start(GLOBAL_MODEL_WAIT_MS if wanted else 0)
        client.global_model_received.connect(arrived)
        client.request_global_model()
        self.status_label.setText("Joining the session's rounds: fetching the global model…")

    def _launch(self, plan: dict, first: int, initial_weights=None) -> None:
        client = self.session.client
        if client is None or self.session.state != states.CONNECTED:
            self._not_connected()
            return
        last = int(plan.get("last_round", first))
        if last < first:
            return
        self.plan = plan
        self._first_round, self._last_round = first, last
        self._rounds_done = 0
        self.round_timeout = TRAINING_DEFAULTS.round_timeout
        self.worker = TrainingWorker(
            client,
            self.data,
            trainer=self.trainer,
            rounds=last - first + 1,
            epochs_per_round=int(plan.get("epochs_per_round", TRAINING_DEFAULTS.epochs_per_round)),
            learning_rate=float(plan.get("learning_rate", TRAINING_DEFAULTS.learning_rate)),
            evaluation=self.evaluation,
            round_timeout=self.round_timeout,
            first_round=first,
            initial_weights=initial_weights,
            checkpoint_plan=self._checkpoint_plan(plan),
            parent=self,
        )
        self.worker.trainer_ready.connect(self._on_trainer_ready)
        self.worker.event.connect(self._on_event)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        self.status_label.setText("Starting: building the model…")
        self._running = True
        self.worker.start()
        self._update_buttons()

    def _checkpoint_plan(self, plan: dict) -> dict:
        """What each kept model file records about how it was trained."""
        choice = self.loaded_choice
        recorded = {
            "command": "app",
            "rounds": int(plan.get("last_round", 1)) - int(plan.get("first_round", 1)) + 1,
            "first_round": int(plan.get("first_round", 1)),
            "epochs_per_round": int(plan.get("epochs_per_round", 1)),
            "learning_rate": float(plan.get("learning_rate", TRAINING_DEFAULTS.learning_rate)),
            "batch_size": TRAINING_DEFAULTS.batch_size,
            "data": "folder" if choice is not None and choice.folder is not None else "synthetic",
            "images": len(self.data) if self.data is not None else 0,
        }
        if choice is not None and choice.folder is None:
            recorded.update(member=choice.microscope, samples=choice.count, seed=choice.seed)
        return recorded

    def _on_host_stop(self) -> None:
        self._pending_plan = self._waiting_for_model = None
        if self.worker is not None and self._running:
            self.worker.stop()
            self.status_label.setText("The host stopped the rounds; stopping after this batch…")

    def _on_follow_toggled(self, following: bool) -> None:
        self.session.set_following(following)
        if not following:
            self._on_host_stop()
        self._update_buttons()

    def load_data(self) -> None:
        choice = self._choice()
        self.loader = DataLoader(choice, self)
        self.loader.progress.connect(self._on_load_progress)
        self.loader.loaded.connect(lambda data, ev, c=choice: self._on_loaded(c, data, ev))
        self.loader.failed.connect(self._on_load_failed)
        self.data_panel.summary_label.setText(f"Loading {choice.describe()}…")
        self._loading = True
        self._update_buttons()
        self.loader.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops a run and waits for its thread (closing the window)."""
        if self.worker is not None:
            self.worker.stop()
            self.worker.join(timeout)

    @property
    def is_training(self) -> bool:
        return self._running

    # --- running ------------------------------------------------------------------------

    def _on_trainer_ready(self, trainer) -> None:
        self.trainer = trainer

    def _on_event(self, event) -> None:
        if event.kind in ("batch", "epoch"):
            self._show_progress(event)
        if event.kind == "epoch" and event.loss is not None:
            epochs = max(1, event.epochs)
            self.plot.add_loss(event.round - 1 + event.epoch / epochs, event.loss)
            self.status_label.setText(
                f"Round {event.round}/{event.rounds}, "
                f"epoch {event.epoch}/{event.epochs}: loss {event.loss:.4f}"
            )
        elif event.kind == "upload":
            size = f"{event.bytes / 1024:.0f} kB" if event.bytes else "weights"
            self.participant_table.note_own(f"sent {size} (round {event.round})")
            self.session.log_event(f"You pushed weights for round {event.round} ({size})")
            self.status_label.setText(f"Round {event.round}/{event.rounds}: sent {size}")
        elif event.kind == "download":
            self.status_label.setText(
                f"Round {event.round}/{event.rounds}: global model received; evaluating"
            )
        elif event.kind in ("waiting", "stopped") and event.message:
            self.status_label.setText(f"Round {event.round}/{event.rounds}: {event.message}")
        elif event.kind == "round" and event.result is not None:
            self._on_round(event.result, event.rounds)

    def _on_round(self, result, last_round: int) -> None:
        self._rounds_done += 1
        number = result.round
        self.plot.add_round(
            number, result.local_dice, result.global_dice, global_loss=result.global_loss
        )
        global_text = (
            f"global model Dice {result.global_dice:.3f} from {result.contributors} members"
            if result.global_dice is not None
            else "no global model this round (kept the local weights)"
        )
        self.status_label.setText(
            f"Round {number}/{last_round} done in {result.seconds:.1f} s: "
            f"local Dice {result.local_dice:.3f}, {global_text}"
        )
        dice = f"{result.global_dice:.3f}" if result.global_dice is not None else "—"
        self.session.log_event(
            f"Round {number} done: local Dice {result.local_dice:.3f}, global Dice {dice}"
        )
        self.progress_bar.setValue(int(1000 * min(1.0, self._rounds_done / self._planned)))
        self.round_finished.emit(result)

    @property
    def _planned(self) -> int:
        return max(1, self._last_round - self._first_round + 1)

    def _show_progress(self, event) -> None:
        epochs = max(1, event.epochs)
        batches = max(1, event.batches) if event.kind == "batch" else 1
        within_epoch = event.batch / batches if event.kind == "batch" else 1.0
        epoch_fraction = (max(0, event.epoch - 1) + within_epoch) / epochs
        done = max(0, event.round - self._first_round) + min(1.0, epoch_fraction)
        self.progress_bar.setValue(int(1000 * min(1.0, done / self._planned)))

    def _on_finished(self, results) -> None:
        self._running = False
        self._report_checkpoints()
        if self.session.host_connection is not None and self.session.active_plan is self.plan:
            self.session.active_plan = None
        if self._pending_plan is not None:
            plan, self._pending_plan = self._pending_plan, None
            self._update_buttons()
            self._follow(plan)
            return
        if self._rounds_done >= self._planned:
            self.status_label.setText(f"Finished rounds {self._first_round}–{self._last_round}.")
        else:
            self.status_label.setText(
                f"Stopped after {self._rounds_done} of rounds "
                f"{self._first_round}–{self._last_round}."
            )
        self._update_buttons()

    def _report_checkpoints(self) -> None:
        worker = self.worker
        if worker is None:
            return
        if worker.checkpoint_error:
            self.session.log_event(f"Checkpoints: {worker.checkpoint_error}")
        folder = worker.checkpoints
        if folder is not None and folder.saved:
            self.checkpoint_folder = folder.path
            self.session.log_event(f"Kept {len(folder.saved)} round model(s) in {folder.path}")

    def _on_failed(self, message: str) -> None:
        self._running = False
        self.error_label.show_error(message, "Training failed")
        self._update_buttons()

    # --- data ---------------------------------------------------------------------------

    def _choice(self) -> DataChoice:
        return self.data_panel.choice(self.session.position)

    def _on_choice_changed(self) -> None:
        self._show_data_kind()
        if self.data_panel.folder_radio.isChecked() and not self.data_panel.folder_edit.text():
            return
        folder_chosen = self.data_panel.folder_radio.isChecked()
        if folder_chosen and self.loaded_choice != self._choice() and not self._loading:
            self.load_data()  # a folder is read as soon as it is chosen: errors show at once

    def _on_load_progress(self, done: int, total: int) -> None:
        self.data_panel.summary_label.setText(f"Reading images: {done} of {total}")

    def _on_loaded(self, choice: DataChoice, data, evaluation) -> None:
        self._loading = False
        self.data, self.evaluation, self.loaded_choice = data, evaluation, choice
        self.trainer = None  # a new data set needs a new model (its size may differ)
        shape = data.images.shape
        self.data_panel.summary_label.setText(
            f"{len(data)} images of {shape[-1]}×{shape[-2]} pixels from {choice.describe()}"
        )
        self.data_panel.show_loaded(data)
        for skipped in getattr(data, "skipped", []) or []:
            self.session.log_event(f"Left out {skipped}")
        self.error_label.clear_error()
        self._update_buttons()
        if self._pending_plan is not None:
            plan, self._pending_plan = self._pending_plan, None
            self._follow(plan)

    def _on_load_failed(self, message: str) -> None:
        self._loading = False
        self._pending_plan = None
        self.error_label.show_error(message, "Data not loaded")
        kept = "; still using the data loaded before" if self.data is not None else ""
        self.data_panel.summary_label.setText(f"Not loaded{kept}")
        self._update_buttons()

    # --- state --------------------------------------------------------------------------

    def _not_connected(self) -> None:
        self._connection_error = True
        self.error_label.show_error(
            "Not connected: create or join a session on the Session page first",
            "Not connected",
        )

    def _on_errors_resolved(self) -> None:
        if self._connection_error:
            self._connection_error = False
            self.error_label.clear_error()

    def _show_plan(self, plan: dict) -> None:
        rounds = int(plan.get("last_round", 1)) - int(plan.get("first_round", 1)) + 1
        self.rounds_spin.setValue(max(1, rounds))
        self.epochs_spin.setValue(int(plan.get("epochs_per_round", 1)))
        self.learning_rate_spin.setValue(float(plan.get("learning_rate", 0.003)))
        self._show_data_kind(plan.get("data"))
        self.start_from_label.setText(plan.get("starts_from") or "a new model")

    def _show_data_kind(self, kind: str | None = None) -> None:
        if kind is None:
            kind = "folder" if self.data_panel.folder_radio.isChecked() else "synthetic"
        self.data_kind_label.setText(
            "each member's own folder" if kind == "folder" else "synthetic images"
        )

    def _on_session_state(self, state: str) -> None:
        self.connection_label.setText(self.session.state_text)
        if state == states.IDLE and self.is_training:
            self._on_host_stop()
        self._update_buttons()

    def _update_buttons(self) -> None:
        connected = self.session.state == states.CONNECTED
        in_session = self.session.state != states.IDLE
        host = self.session.sets_own_plan
        member = in_session and not host
        running, loading = self._running, self._loading
        self.start_button.setEnabled(connected and host and not running and not loading)
        self.resume_button.setEnabled(connected and host and not running and bool(self.trainer))
        self.stop_button.setEnabled(running and (host or not self.follow_check.isChecked()))
        self.follow_check.setVisible(member)
        for widget in (self.rounds_spin, self.epochs_spin, self.learning_rate_spin):
            widget.setEnabled(not running and not member)
        # A member sees where the host's plan starts (the label); choosing is the host's.
        self.start_from_button.setVisible(not member)
        self.start_from_button.setEnabled(not running)
        self.start_anew_button.setVisible(self.starting_model is not None and not member)
        self.start_anew_button.setEnabled(not running)
        self.data_panel.setEnabled(not running)
        if not in_session:
            self.hint_label.setText("Create or join a session on the Session page to train.")
        elif member and not running:
            self.hint_label.setText(
                "The host sets the plan and starts the rounds; yours follow automatically."
                if self.follow_check.isChecked()
                else "You opted out: the rounds go on without you."
            )
        elif running:
            self.hint_label.setText(
                "Training; Stop ends the rounds for everyone after the current batch."
                if host
                else "Training the host's plan."
            )
        else:
            self.hint_label.setText("Set the plan and press Start: every member follows.")
        self._show_data_kind(self.plan.get("data") if member and self.plan else None)
