"""Background work for the Training page: loading data and running federated rounds.

Each runs on a plain Python thread and reports through Qt signals of a QObject living on the
GUI thread; Qt queues a signal emitted from another thread, so the slots run on the GUI
thread and may touch widgets. torch is imported on the worker thread, so the window never
freezes while it loads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from qtpy.QtCore import QObject, Signal

from ..training.settings import TRAINING_DEFAULTS

log = logging.getLogger(__name__)


def _emit(signal, *args) -> None:
    """Emits from the worker thread; the window may have been closed (and the receiving
    QObject deleted) meanwhile, which is no error."""
    try:
        signal.emit(*args)
    except RuntimeError as exc:
        log.debug("not reported, the window is gone: %s", exc)


@dataclass
class DataChoice:
    """What the user picked: a folder, or the built-in synthetic images of one member."""

    folder: Path | None = None
    microscope: int = 1  # synthetic: which simulated microscope, counted from 1
    count: int = TRAINING_DEFAULTS.images_per_member
    seed: int = 0
    size: int = TRAINING_DEFAULTS.image_size
    strict: bool = False  # folder: refuse it when a file is unusable (else leave it out)

    def describe(self) -> str:
        if self.folder is not None:
            return f"folder {self.folder}"
        return f"synthetic microscope {self.microscope}, seed {self.seed}"


class DataLoader(QObject):
    """Loads a DataChoice; `loaded(data, evaluation)` or `failed(message)` follows."""

    progress = Signal(int, int)
    loaded = Signal(object, object)  # SegmentationData, evaluation set (or None)
    failed = Signal(str)

    def __init__(self, choice: DataChoice, parent=None):
        super().__init__(parent)
        self.choice = choice
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="load data", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        from .. import training

        choice = self.choice
        try:
            if choice.folder is not None:
                data = training.load_folder(
                    choice.folder,
                    progress=lambda done, total: _emit(self.progress, done, total),
                    strict=choice.strict,
                )
                evaluation = None
            else:
                data = training.member_shard(
                    choice.microscope - 1, choice.count, seed=choice.seed, size=choice.size
                )
                # Every microscope's images: where the shared model beats a local one.
                evaluation = training.held_out_set(
                    TRAINING_DEFAULTS.held_out_images,
                    seed=choice.seed + 10_000,
                    size=choice.size,
                )
        except training.DatasetError as exc:
            _emit(self.failed, str(exc))
            return
        except Exception as exc:  # an unexpected failure must not leave the page waiting
            log.exception("loading %s failed", choice.describe())
            _emit(self.failed, f"Could not load {choice.describe()}: {exc}")
            return
        _emit(self.loaded, data, evaluation)


class TrainingWorker(QObject):
    """Runs FederatedTraining(client, trainer, ...).run() on its own thread.

    Pass `trainer=None` to build a new U-Net for `data`; pass the previous run's trainer to
    continue from its current weights (Resume). `event(TrainingEvent)` reports progress;
    `finished(results)` or `failed(message)` ends the run."""

    event = Signal(object)
    trainer_ready = Signal(object)
    finished = Signal(object)
    failed = Signal(str)

    def __init__(
        self,
        client,
        data,
        *,
        trainer=None,
        rounds: int = TRAINING_DEFAULTS.rounds,
        epochs_per_round: int = TRAINING_DEFAULTS.epochs_per_round,
        learning_rate: float = TRAINING_DEFAULTS.learning_rate,
        evaluation=None,
        round_timeout: float = TRAINING_DEFAULTS.round_timeout,
        seed: int = 0,
        first_round: int = 1,
        initial_weights=None,
        checkpoint_plan: dict | None = None,
        parent=None,
    ):
        super().__init__(parent)
        self.client = client
        self.data = data
        self.trainer = trainer
        self.rounds = rounds
        self.epochs_per_round = epochs_per_round
        self.evaluation = evaluation
        self.round_timeout = round_timeout
        self.learning_rate = learning_rate
        self.seed = seed
        self.first_round = first_round
        self.initial_weights = initial_weights  # a global model to start from (joining late)
        # Each round's global model is kept in a new session folder (made at the first
        # save), recording this plan; None keeps none.
        self.checkpoint_plan = checkpoint_plan
        self.checkpoints = None  # the CheckpointFolder once made
        self.checkpoint_error: str | None = None
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="federated training", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends the run after the current batch."""
        self.stop_event.set()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.is_running()

    def _run(self) -> None:
        try:
            from .. import training

            if self.trainer is None:
                self.trainer = training.Trainer(
                    self.data, seed=self.seed, learning_rate=self.learning_rate
                )
            if self.initial_weights is not None:
                self.trainer.load_state_dict(self.initial_weights)
            if getattr(self.client, "is_host", False):
                # Which model the room trains: members of the command line start on it.
                self.client.send_architecture(self.trainer.architecture)
            _emit(self.trainer_ready, self.trainer)
            federated = training.FederatedTraining(
                self.client,
                self.trainer,
                rounds=self.rounds,
                epochs_per_round=self.epochs_per_round,
                round_timeout=self.round_timeout,
                evaluation=self.evaluation,
                first_round=self.first_round,
            )
            results = federated.run(self._on_event, self.stop_event)
        except Exception as exc:
            log.exception("training failed")
            _emit(self.failed, f"Training stopped by an error: {exc}")
            return
        _emit(self.finished, results)

    def _on_event(self, event) -> None:
        """On the training thread, between rounds: the model is the global one just loaded,
        and nothing trains it while it is saved."""
        result = event.result if event.kind == "round" else None
        if result is not None and result.global_dice is not None:
            self._keep_checkpoint(result.round)
        _emit(self.event, event)

    def _keep_checkpoint(self, round_number: int) -> None:
        if self.checkpoint_plan is None or self.checkpoint_error is not None:
            return
        from ..training.model_file import CheckpointFolder

        try:
            if self.checkpoints is None:
                self.checkpoints = CheckpointFolder.new(
                    "app",
                    architecture=self.trainer.architecture,
                    training=self.checkpoint_plan,
                )
            self.checkpoints.save(round_number, self.trainer.state_dict())
        except OSError as exc:  # a convenience: training goes on without
            self.checkpoint_error = f"cannot keep checkpoints ({exc.strerror or exc})"
            log.warning("%s", self.checkpoint_error)


class BackgroundTask(QObject):
    """Runs `work(task)` on its own thread (prediction, export). `work` may call
    `task.report(...)` (arriving as `progress(done, total, item)` on the GUI thread) and
    should look at `task.stop_event`; `finished(result)` or `failed(message)` ends it."""

    progress = Signal(int, int, object)
    finished = Signal(object)
    failed = Signal(str)

    def __init__(self, work, parent=None):
        super().__init__(parent)
        self.work = work
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="background task", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def report(self, done: int, total: int, item=None) -> None:
        _emit(self.progress, done, total, item)

    def _run(self) -> None:
        from ..training import DatasetError

        try:
            result = self.work(self)
        except (DatasetError, OSError) as exc:
            _emit(self.failed, str(exc))
            return
        except Exception as exc:  # ModelFileError, ExportError and the unexpected alike
            log.exception("a background task failed")
            _emit(self.failed, str(exc) or type(exc).__name__)
            return
        _emit(self.finished, result)
