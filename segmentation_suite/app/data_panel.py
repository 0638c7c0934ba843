"""The Training page's data choice: a folder of images and masks, or synthetic images."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
)

from ..training.settings import MICROSCOPE_COUNT, TRAINING_DEFAULTS, microscope_for_position
from .workers import DataChoice

#: The microscope field's value meaning "from my place in the room".
AUTO_MICROSCOPE = 0
#: Thumbnails shown once data is loaded.
PREVIEW_COUNT = 8


class DataPanel(QGroupBox):
    choice_changed = Signal()

    def __init__(self, parent=None):
        super().__init__("Data", parent)
        form = QFormLayout(self)
        self.synthetic_radio = QRadioButton("Built-in synthetic images")
        self.folder_radio = QRadioButton("A folder of images and masks")
        self.synthetic_radio.setChecked(True)
        group = QButtonGroup(self)
        for radio in (self.synthetic_radio, self.folder_radio):
            group.addButton(radio)
            radio.toggled.connect(self._changed)

        form.addRow(self.synthetic_radio)
        synthetic = QHBoxLayout()
        self.microscope_spin = _spin(
            AUTO_MICROSCOPE,
            MICROSCOPE_COUNT,
            AUTO_MICROSCOPE,
            "simulated microscope, 1 to 3: each makes different images. “by place”: the "
            "host gets 1, the first to join 2, and so on, so every lab's images differ",
        )
        self.microscope_spin.setSpecialValueText("by place in room")
        self.count_spin = _spin(4, 512, TRAINING_DEFAULTS.images_per_member, "number of images")
        self.seed_spin = _spin(0, 1_000_000, 0, "random seed of the images")
        for label, spin in (
            ("microscope", self.microscope_spin),
            ("images", self.count_spin),
            ("seed", self.seed_spin),
        ):
            synthetic.addWidget(QLabel(label))
            synthetic.addWidget(spin)
            spin.valueChanged.connect(self._changed)
        synthetic.addStretch(1)
        form.addRow(synthetic)

        form.addRow(self.folder_radio)
        folder = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder with <name>.png and <name>_mask.png")
        self.folder_edit.editingFinished.connect(self._changed)
        self.browse_button = QPushButton("Choose folder…")
        self.browse_button.clicked.connect(self._browse)
        folder.addWidget(self.folder_edit, 1)
        folder.addWidget(self.browse_button)
        form.addRow(folder)
        self.layout_help = QLabel(_layout_help())
        self.layout_help.setWordWrap(True)
        self.layout_help.setStyleSheet("color: palette(mid);")
        form.addRow(self.layout_help)
        self.strict_check = QCheckBox("Refuse the folder if a file is unusable")
        self.strict_check.setToolTip(
            "Unticked: unreadable or unusable files are left out, each named below"
        )
        self.strict_check.toggled.connect(self._changed)
        form.addRow(self.strict_check)
        self.summary_label = QLabel("No data loaded yet")
        self.summary_label.setWordWrap(True)
        form.addRow(self.summary_label)
        self.skipped_label = QLabel()  # files a folder had that were left out, by name
        self.skipped_label.setWordWrap(True)
        self.skipped_label.setStyleSheet("color: #a05a00;")
        self.skipped_label.hide()
        form.addRow(self.skipped_label)
        # A few loaded images with their masks overlaid: a look before training.
        self.preview_row = QHBoxLayout()
        self.preview_row.addStretch(1)
        form.addRow(self.preview_row)
        self.synthetic_size = TRAINING_DEFAULTS.image_size  # pixels; tests make it smaller
        self._changed()

    def choice(self, position: int = 1) -> DataChoice:
        """What to load; `position` (1 = the host) picks the microscope when the field says
        "by place in room"."""
        if self.folder_radio.isChecked():
            text = self.folder_edit.text().strip()
            return DataChoice(
                folder=Path(text).expanduser() if text else None,
                size=0,
                strict=self.strict_check.isChecked(),
            )
        microscope = self.microscope_spin.value()
        return DataChoice(
            microscope=microscope_for_position(position)
            if microscope == AUTO_MICROSCOPE
            else microscope,
            count=self.count_spin.value(),
            seed=self.seed_spin.value(),
            size=self.synthetic_size,
        )

    def wants_folder_without_one(self) -> bool:
        return self.folder_radio.isChecked() and not self.folder_edit.text().strip()

    def set_folder(self, path: str) -> None:
        self.folder_radio.setChecked(True)
        self.folder_edit.setText(path)
        self._changed()

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of images and masks")
        if path:
            self.set_folder(path)

    def _changed(self, *_) -> None:
        folder = self.folder_radio.isChecked()
        for widget in (self.microscope_spin, self.count_spin, self.seed_spin):
            widget.setEnabled(not folder)
        self.folder_edit.setEnabled(folder)
        self.strict_check.setEnabled(folder)
        self.choice_changed.emit()

    def show_loaded(self, data) -> None:
        """The files left out (never silently) and thumbnails with the masks overlaid."""
        from .overlay import MASK_COLOUR, overlay, to_pixmap

        skipped = list(getattr(data, "skipped", []) or [])
        if skipped:
            listed = "; ".join(str(s) for s in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            self.skipped_label.setText(f"Left out {len(skipped)} unusable file(s): {listed}{more}")
        self.skipped_label.setVisible(bool(skipped))
        while self.preview_row.count() > 1:
            item = self.preview_row.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.previews = []
        for index in range(min(PREVIEW_COUNT, len(data))):
            thumbnail = QLabel()
            thumbnail.setPixmap(
                to_pixmap(overlay(data.images[index, 0], data.masks[index, 0], MASK_COLOUR), 56)
            )
            thumbnail.setToolTip(data.names[index])
            self.preview_row.insertWidget(index, thumbnail)
            self.previews.append(thumbnail)


def _spin(low: int, high: int, value: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _layout_help() -> str:
    try:
        from ..training import FOLDER_LAYOUT_HELP
    except ImportError:  # the training package is optional for the session page
        return ""
    return FOLDER_LAYOUT_HELP
