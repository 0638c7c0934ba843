"""The main window: the Session, Training and Predict pages in a QStackedWidget."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QButtonGroup,
    QHBoxLayout,
    QMainWindow,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from .predict_page import PredictPage
from .session_controller import SessionController
from .setup_page import SetupPage
from .training_page import TrainingPage


class MainWindow(QMainWindow):
    def __init__(self, *, relay_url: str | None = None, name: str | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Segmentation Suite")
        self.session = SessionController()
        self.setup_page = SetupPage(self.session)
        self.training_page = TrainingPage(self.session)
        if relay_url:
            self.setup_page.relay_url_edit.setText(relay_url)
        if name:
            self.setup_page.name_edit.setText(name)

        self.pages = QStackedWidget()
        self.predict_page = PredictPage(self.training_page)
        self.pages.addWidget(self.setup_page)
        self.pages.addWidget(self.training_page)
        self.pages.addWidget(self.predict_page)

        navigation = QHBoxLayout()
        self._tabs = QButtonGroup(self)
        self.setup_tab = QPushButton("1  Session")
        self.training_tab = QPushButton("2  Training")
        self.predict_tab = QPushButton("3  Predict")
        tabs = (self.setup_tab, self.training_tab, self.predict_tab)
        for index, button in enumerate(tabs):
            button.setCheckable(True)
            button.setFlat(True)
            self._tabs.addButton(button, index)
            navigation.addWidget(button)
        navigation.addStretch(1)
        self.setup_tab.setChecked(True)
        self._tabs.idClicked.connect(self.show_page)
        self.setup_page.go_to_training.connect(lambda: self.show_page(1))
        self.training_page.go_to_setup.connect(lambda: self.show_page(0))

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addLayout(navigation)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)
        # The status bar, the Session page and the Training page all show the controller's
        # state_text: one source of truth for the connection.
        self.session.state_changed.connect(self._show_connection)
        self.session.session_ready.connect(lambda _: self._show_connection(self.session.state))
        self._show_connection(self.session.state)
        self.resize(1000, 840)

    def show_page(self, index: int) -> None:
        self.pages.setCurrentIndex(index)
        self._tabs.button(index).setChecked(True)

    def _show_connection(self, state: str) -> None:
        self.statusBar().showMessage(self.session.state_text)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Closing the window stops training and says goodbye to the room."""
        self.training_page.shutdown()
        self.predict_page.stop()
        self.session.leave()
        super().closeEvent(event)
