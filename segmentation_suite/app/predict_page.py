"""The Predict page: a model (the session's, or a saved file), a folder of images, each image
with its predicted mask overlaid next to the reference mask where the folder has one, the
per-image Dice, and saving: the masks, the model (safetensors) and a bioimage.io package.

Prediction and export run on worker threads (workers.BackgroundTask); the library does the
work (training.predict, training.model_file, training.export).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from .overlay import MASK_COLOUR, PREDICTED_COLOUR, overlay, to_pixmap
from .training_page import TrainingPage
from .widgets import ErrorLabel, heading
from .workers import BackgroundTask

#: Side of the shown images in pixels (small images are scaled up, nearest neighbour).
VIEW_SIZE = 300


class PredictPage(QWidget):
    go_to_setup = Signal()

    def __init__(self, training_page: TrainingPage, parent=None):
        super().__init__(parent)
        self.training_page = training_page
        self.saved_model = None  # a SavedModel loaded from a file
        self.predictions: list = []
        self.skipped: list = []
        self.task: BackgroundTask | None = None

        layout = QVBoxLayout(self)
        layout.addWidget(heading("Predict"))
        upper = QHBoxLayout()
        upper.addWidget(self._build_model_box(), 1)
        upper.addWidget(self._build_folder_box(), 1)
        layout.addLayout(upper)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("Choose a model and a folder, then Predict.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.error_label = ErrorLabel()
        layout.addWidget(self.error_label)

        lower = QHBoxLayout()
        self.result_list = QListWidget()
        self.result_list.setMinimumWidth(330)  # "name  (W×H, Dice 0.000)" in full
        self.result_list.currentRowChanged.connect(self._show_prediction)
        lower.addWidget(self.result_list, 1)
        for attribute, title in (
            ("predicted_view", "Predicted mask (orange)"),
            ("reference_view", "Reference mask (green)"),
        ):
            column = QVBoxLayout()
            column.addWidget(QLabel(title))
            view = QLabel("—")
            view.setAlignment(Qt.AlignmentFlag.AlignCenter)
            view.setMinimumSize(VIEW_SIZE, VIEW_SIZE)
            view.setStyleSheet("background: #222; color: #ccc;")
            setattr(self, attribute, view)
            column.addWidget(view)
            column.addStretch(1)
            lower.addLayout(column, 2)
        layout.addLayout(lower, 1)
        self._update_buttons()

    # --- building -----------------------------------------------------------------------

    def _build_model_box(self) -> QGroupBox:
        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.session_model_radio = QRadioButton("The session's model (Training page)")
        self.file_model_radio = QRadioButton("A model file (.safetensors)")
        self.session_model_radio.setChecked(True)
        group = QButtonGroup(self)
        for radio in (self.session_model_radio, self.file_model_radio):
            group.addButton(radio)
            radio.toggled.connect(self._update_buttons)
            form.addRow(radio)
        row = QHBoxLayout()
        self.model_label = QLabel("No file chosen")
        self.model_label.setWordWrap(True)
        self.choose_model_button = QPushButton("Choose model…")
        self.choose_model_button.clicked.connect(self._browse_model)
        row.addWidget(self.model_label, 1)
        row.addWidget(self.choose_model_button)
        form.addRow(row)
        buttons = QHBoxLayout()
        self.save_model_button = QPushButton("Save model…")
        self.save_model_button.setToolTip(
            "Write the model as .safetensors, with its architecture and training plan"
        )
        self.save_model_button.clicked.connect(self._browse_save_model)
        self.export_button = QPushButton("Export for bioimage.io…")
        self.export_button.setToolTip(
            "A bioimage.io model package (.zip) for Fiji/deepImageJ, ilastik and napari"
        )
        self.export_button.clicked.connect(self._browse_export)
        buttons.addWidget(self.save_model_button)
        buttons.addWidget(self.export_button)
        form.addRow(buttons)
        return box

    def _build_folder_box(self) -> QGroupBox:
        box = QGroupBox("Images")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder of images (masks next to them are optional)")
        self.folder_edit.textChanged.connect(self._update_buttons)
        browse = QPushButton("Choose folder…")
        browse.clicked.connect(self._browse_folder)
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        form.addRow(row)
        buttons = QHBoxLayout()
        self.predict_button = QPushButton("Predict")
        self.predict_button.clicked.connect(self.predict)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.save_masks_button = QPushButton("Save masks…")
        self.save_masks_button.clicked.connect(self._browse_save_masks)
        for button in (self.predict_button, self.stop_button, self.save_masks_button):
            buttons.addWidget(button)
        form.addRow(buttons)
        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)
        form.addRow(self.summary_label)
        return box

    # --- the model ----------------------------------------------------------------------

    def current_model(self):
        """The SavedModel in use (weights copied: training may go on), or None after saying
        why in the error line."""
        if self.file_model_radio.isChecked():
            if self.saved_model is None:
                self.error_label.show_error(
                    "No model file chosen: choose a .safetensors model", "No model"
                )
            return self.saved_model
        trainer = self.training_page.trainer
        if trainer is None:
            self.error_label.show_error(
                "The session has no model yet: train on the Training page, or choose a model file",
                "No model",
            )
            return None
        from ..training.model_file import SavedModel

        plan = dict(self.training_page.plan or {}, command="app")
        return SavedModel(trainer.state_dict(), trainer.architecture, plan)

    def load_model_file(self, path: str) -> bool:
        from ..training.model_file import ModelFileError, load_model

        self.error_label.clear_error()
        try:
            self.saved_model = load_model(path)
        except ModelFileError as exc:
            self.error_label.show_error(str(exc), "Model not loaded")
            return False
        rounds = self.saved_model.training.get("rounds")
        trained = f", {rounds} rounds" if rounds else ""
        self.model_label.setText(f"{path} ({self.saved_model.architecture}{trained})")
        self.file_model_radio.setChecked(True)
        self._update_buttons()
        return True

    def save_model_to(self, path: str) -> bool:
        from ..training.model_file import save_model

        self.error_label.clear_error()
        saved = self.current_model()
        if saved is None:
            return False
        try:
            written = save_model(
                path, saved.weights, architecture=saved.architecture, training=saved.training
            )
        except OSError as exc:
            self.error_label.show_error(f"Cannot save the model to {path}: {exc}", "Not saved")
            return False
        self.status_label.setText(f"Saved the model to {written}")
        return True

    def export_to(self, path: str) -> None:
        """Writes a bioimage.io package on a worker thread; the status line says when done."""
        saved = self.current_model()
        if saved is None:
            return
        self.error_label.clear_error()

        def work(task: BackgroundTask):
            from ..training.export import export_bioimageio

            return export_bioimageio(saved, path)

        self._run(work, self._on_exported, f"Exporting a bioimage.io package to {path}…")

    def _on_exported(self, written) -> None:
        self.status_label.setText(
            f"Exported {written}: open it in Fiji (deepImageJ), ilastik or napari"
        )

    # --- predicting -------------------------------------------------------------------------

    def set_folder(self, path: str) -> None:
        self.folder_edit.setText(path)

    def predict(self) -> None:
        self.error_label.clear_error()
        folder = self.folder_edit.text().strip()
        if not folder:
            self.error_label.show_error(
                "No folder chosen: choose a folder of images", "No folder chosen"
            )
            return
        saved = self.current_model()
        if saved is None:
            return
        self.predictions, self.skipped = [], []
        self.result_list.clear()
        self._show_prediction(-1)

        def work(task: BackgroundTask):
            from ..training.predict import Predictor, iter_predictions

            predictor = Predictor(saved.build())
            skipped: list = []
            for predictions in iter_predictions(
                predictor,
                folder,
                progress=lambda done, total, prediction: task.report(done, total, prediction),
                stop=task.stop_event,
                skipped=skipped,
            ):
                del predictions  # each arrived through progress
            return skipped

        self._run(work, self._on_predicted_all, f"Predicting the images in {folder}…")

    def stop(self) -> None:
        if self.task is not None:
            self.task.stop()

    def save_masks_to(self, folder: str) -> bool:
        from ..training.predict import write_masks

        self.error_label.clear_error()
        if not self.predictions:
            self.error_label.show_error("Nothing predicted yet: press Predict first", "No masks")
            return False
        try:
            written = write_masks(self.predictions, folder)
        except (OSError, ValueError) as exc:
            self.error_label.show_error(f"Cannot write the masks to {folder}: {exc}", "Not saved")
            return False
        self.status_label.setText(f"Saved {len(written)} mask file(s) to {folder}")
        return True

    def _on_progress(self, done: int, total: int, prediction) -> None:
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(done)
        self.predictions.append(prediction)
        dice = f"Dice {prediction.dice:.3f}" if prediction.dice is not None else "no mask"
        height, width = prediction.mask.shape
        item = QListWidgetItem(f"{prediction.name}  ({width}×{height}, {dice})")
        self.result_list.addItem(item)
        if self.result_list.currentRow() < 0:
            self.result_list.setCurrentRow(0)

    def _on_predicted_all(self, skipped) -> None:
        self.skipped = list(skipped or [])
        scored = [p.dice for p in self.predictions if p.dice is not None]
        mean = f"; mean Dice {np.mean(scored):.3f} over {len(scored)}" if scored else ""
        self.status_label.setText(f"Predicted {len(self.predictions)} image(s){mean}.")
        if self.skipped:
            names = ", ".join(str(getattr(s, "path", s)) for s in self.skipped[:5])
            self.summary_label.setText(f"Left out (unreadable): {names}")
        else:
            self.summary_label.setText("")

    def _show_prediction(self, row: int) -> None:
        if not 0 <= row < len(self.predictions):
            self.predicted_view.setText("—")
            self.reference_view.setText("—")
            return
        prediction = self.predictions[row]
        image = prediction.image
        self.predicted_view.setPixmap(
            to_pixmap(overlay(image, prediction.mask, PREDICTED_COLOUR), VIEW_SIZE)
        )
        if prediction.reference is None:
            self.reference_view.setText("No reference mask for this image")
        else:
            self.reference_view.setPixmap(
                to_pixmap(overlay(image, prediction.reference, MASK_COLOUR), VIEW_SIZE)
            )

    # --- running in the background ------------------------------------------------------------

    def _run(self, work, on_done, message: str) -> None:
        self.task = BackgroundTask(work, self)
        self.task.progress.connect(self._on_progress)
        self.task.finished.connect(lambda result: self._finished(on_done, result))
        self.task.failed.connect(self._failed)
        self.status_label.setText(message)
        self.task.start()
        self._update_buttons()

    def _finished(self, on_done, result) -> None:
        self.task = None
        on_done(result)
        self._update_buttons()

    def _failed(self, message: str) -> None:
        self.task = None
        self.error_label.show_error(message)
        self.status_label.setText("")
        self._update_buttons()

    @property
    def is_busy(self) -> bool:
        return self.task is not None

    def _update_buttons(self, *_) -> None:
        busy = self.task is not None
        self.choose_model_button.setEnabled(not busy)
        self.predict_button.setEnabled(not busy and bool(self.folder_edit.text().strip()))
        self.stop_button.setEnabled(busy)
        self.save_masks_button.setEnabled(not busy and bool(self.predictions))
        for button in (self.save_model_button, self.export_button):
            button.setEnabled(not busy)

    # --- file dialogs (tests call the methods above directly) ----------------------------------

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", "", "Models (*.safetensors)")
        if path:
            self.load_model_file(path)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of images")
        if path:
            self.set_folder(path)

    def _browse_save_masks(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for the masks")
        if path:
            self.save_masks_to(path)

    def _browse_save_model(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save model", "model.safetensors", "Models (*.safetensors)"
        )
        if path:
            self.save_model_to(str(Path(path).with_suffix(".safetensors")))

    def _browse_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export for bioimage.io", "model.zip", "bioimage.io packages (*.zip)"
        )
        if path:
            self.export_to(str(Path(path).with_suffix(".zip")))
