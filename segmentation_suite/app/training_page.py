"""The Training page: data, rounds, live curves, participants, Start / Stop / Resume."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
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

from . import session_controller as states
from .data_panel import DataPanel
from .participants import ParticipantTable
from .plots import MetricsPlot
from .session_controller import SessionController
from .widgets import ErrorLabel, heading
from .workers import DataChoice, DataLoader, TrainingWorker


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
        self.round_timeout = 120.0
        self._start_after_loading = False
        self._planned_rounds = 0
        self._rounds_done = 0
        self._epochs_done = 0
        self._round_offset = 0
        self._running = False  # set at launch, cleared by the worker's last signal
        self._loading = False

        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(heading("Training"))
        top.addStretch(1)
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
        self.participant_table = ParticipantTable(session)
        self.participant_table.setMinimumWidth(300)
        lower.addWidget(self.participant_table, 1)
        layout.addLayout(lower, 1)

        session.state_changed.connect(self._on_session_state)
        self._update_buttons()

    def _build_controls(self) -> QGroupBox:
        box = QGroupBox("Rounds")
        form = QFormLayout(box)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 100)
        self.epochs_spin.setValue(1)
        self.epochs_spin.setToolTip("Local epochs between two weight exchanges")
        self.rounds_spin = QSpinBox()
        self.rounds_spin.setRange(1, 1000)
        self.rounds_spin.setValue(5)
        form.addRow("Epochs per round:", self.epochs_spin)
        form.addRow("Rounds:", self.rounds_spin)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Train a new model from scratch")
        self.stop_button = QPushButton("Stop")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue from the current weights")
        self.start_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop_training)
        self.resume_button.clicked.connect(self.resume_training)
        for button in (self.start_button, self.stop_button, self.resume_button):
            buttons.addWidget(button)
        form.addRow(buttons)
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        form.addRow(self.hint_label)
        return box

    # --- actions ------------------------------------------------------------------------

    def start_training(self) -> None:
        """A new model, trained for the chosen rounds; loads the data first if needed."""
        self.error_label.clear_error()
        if self.data_panel.wants_folder_without_one():
            self.error_label.show_error(
                "No folder chosen: choose a folder of images and masks", "No folder chosen"
            )
            return
        if self.data is None or self.loaded_choice != self.data_panel.choice():
            self._start_after_loading = True
            self.load_data()
            return
        self.trainer = None
        self.plot.clear()
        self.participant_table.clear_contributions()
        self._planned_rounds = self.rounds_spin.value()
        self._rounds_done = self._epochs_done = 0
        self._launch(self._planned_rounds)

    def resume_training(self) -> None:
        """Continues from the current weights: the rounds left, or another set of rounds."""
        self.error_label.clear_error()
        if self.trainer is None or self.data is None:
            self.start_training()
            return
        left = self._planned_rounds - self._rounds_done
        if left <= 0:
            left = self.rounds_spin.value()
            self._planned_rounds += left
        self._launch(left)

    def stop_training(self) -> None:
        if self.worker is not None and self._running:
            self.worker.stop()
            self.status_label.setText("Stopping after the current batch…")
            self.stop_button.setEnabled(False)

    def load_data(self) -> None:
        choice = self.data_panel.choice()
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

    def _launch(self, rounds: int) -> None:
        client = self.session.client
        if client is None or self.session.state != states.CONNECTED:
            self.error_label.show_error(
                "Not connected: create or join a session on the Session page first",
                "Not connected",
            )
            return
        self._round_offset = self._rounds_done
        self.worker = TrainingWorker(
            client,
            self.data,
            trainer=self.trainer,
            rounds=rounds,
            epochs_per_round=self.epochs_spin.value(),
            evaluation=self.evaluation,
            round_timeout=self.round_timeout,
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

    def _on_trainer_ready(self, trainer) -> None:
        self.trainer = trainer

    def _on_event(self, event) -> None:
        if event.kind in ("batch", "epoch"):
            self._show_progress(event)
        if event.kind == "epoch" and event.loss is not None:
            self._epochs_done += 1
            self.plot.add_loss(self._epochs_done, event.loss)
            self.status_label.setText(
                f"Round {self._round_offset + event.round}/{self._planned_rounds}, "
                f"epoch {event.epoch}/{event.epochs}: loss {event.loss:.4f}"
            )
        elif event.kind == "upload":
            size = f"{event.bytes / 1024:.0f} kB" if event.bytes else "weights"
            number = self._round_offset + event.round
            self.participant_table.note_own(f"sent {size} (round {number})")
            self.status_label.setText(event.message or f"Sent {size} to the host")
        elif event.kind == "download":
            self.status_label.setText(
                f"Global model of round {self._round_offset + event.round} received; evaluating"
            )
        elif event.kind in ("waiting", "stopped") and event.message:
            self.status_label.setText(event.message)
        elif event.kind == "round" and event.result is not None:
            self._on_round(event.result)

    def _on_round(self, result) -> None:
        self._rounds_done += 1
        number = self._round_offset + result.round
        self.plot.add_round(
            number,
            result.local_dice,
            result.global_dice,
            global_loss=result.global_loss,
            epoch=self._epochs_done,
        )
        global_text = (
            f"global model Dice {result.global_dice:.3f} from {result.contributors} members"
            if result.global_dice is not None
            else "no global model this round (kept the local weights)"
        )
        self.status_label.setText(
            f"Round {number}/{self._planned_rounds} done in {result.seconds:.1f} s: "
            f"local Dice {result.local_dice:.3f}, {global_text}"
        )
        self.progress_bar.setValue(
            int(1000 * min(1.0, self._rounds_done / max(1, self._planned_rounds)))
        )
        self.round_finished.emit(result)

    def _show_progress(self, event) -> None:
        epochs = max(1, event.epochs)
        batches = max(1, event.batches) if event.kind == "batch" else 1
        within_epoch = event.batch / batches if event.kind == "batch" else 1.0
        epoch_fraction = (max(0, event.epoch - 1) + within_epoch) / epochs
        done = self._round_offset + max(0, event.round - 1) + min(1.0, epoch_fraction)
        self.progress_bar.setValue(int(1000 * min(1.0, done / max(1, self._planned_rounds))))

    def _on_finished(self, results) -> None:
        self._running = False
        if self._rounds_done >= self._planned_rounds:
            self.status_label.setText(
                f"Finished {self._planned_rounds} rounds. Resume trains "
                f"{self.rounds_spin.value()} more from the current weights."
            )
        else:
            self.status_label.setText(
                f"Stopped after {self._rounds_done} of {self._planned_rounds} rounds; "
                "Resume continues from the current weights."
            )
        self._update_buttons()

    def _on_failed(self, message: str) -> None:
        self._running = False
        self.error_label.show_error(message, "Training failed")
        self._update_buttons()

    # --- data ---------------------------------------------------------------------------

    def _on_choice_changed(self) -> None:
        if self.data_panel.folder_radio.isChecked() and not self.data_panel.folder_edit.text():
            return
        folder_chosen = self.data_panel.folder_radio.isChecked()
        if folder_chosen and self.loaded_choice != self.data_panel.choice() and not self._loading:
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
        self.error_label.clear_error()
        self._update_buttons()
        if self._start_after_loading:
            self._start_after_loading = False
            self.start_training()

    def _on_load_failed(self, message: str) -> None:
        self._loading = False
        self._start_after_loading = False
        self.error_label.show_error(message, "Data not loaded")
        kept = "; still using the data loaded before" if self.data is not None else ""
        self.data_panel.summary_label.setText(f"Not loaded{kept}")
        self._update_buttons()

    # --- state --------------------------------------------------------------------------

    def _on_session_state(self, state: str) -> None:
        if state == states.IDLE and self.is_training:
            self.stop_training()
        self._update_buttons()

    def _update_buttons(self) -> None:
        connected = self.session.state == states.CONNECTED
        running, loading = self._running, self._loading
        self.start_button.setEnabled(connected and not running and not loading)
        self.resume_button.setEnabled(connected and not running and self.trainer is not None)
        self.stop_button.setEnabled(running)
        for widget in (self.data_panel, self.epochs_spin, self.rounds_spin):
            widget.setEnabled(not running)
        if not connected:
            self.hint_label.setText("Create or join a session on the Session page to train.")
        elif running:
            self.hint_label.setText("Training; Stop ends after the current batch.")
        else:
            self.hint_label.setText("")
