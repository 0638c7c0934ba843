"""Small widgets shared by the pages."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import QLabel, QPlainTextEdit

from .messages import error_html


class ErrorLabel(QLabel):
    """A red, word-wrapped message; empty and hidden until there is something to say."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setStyleSheet("color: #b00020;")
        self.message = ""
        self.hide()

    def show_error(self, text: str, title: str | None = None) -> None:
        """`title` is the bold headline; by default it is told from the network's wording."""
        self.message = text
        self.setText(error_html(text, title))
        self.show()

    def clear_error(self) -> None:
        self.message = ""
        self.clear()
        self.hide()


def heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 1.3)
    font.setBold(True)
    label.setFont(font)
    return label


def big_code_font(base: QFont) -> QFont:
    font = QFont("monospace")
    font.setStyleHint(QFont.StyleHint.Monospace)
    font.setPointSizeF(max(base.pointSizeF(), 9.0) * 2.6)
    font.setBold(True)
    font.setLetterSpacing(QFont.SpacingType.AbsoluteSpacing, 4.0)
    return font


class EventLog(QPlainTextEdit):
    """The session's events with their times (joined, left, pushed, round closed, relay
    lost and back), newest at the bottom; every page shows the same SessionController log."""

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(2000)
        self.setPlaceholderText("Session events appear here: who joins and leaves, pushes, rounds")
        for line in session.events:
            self.appendPlainText(line)
        session.event_logged.connect(self.appendPlainText)

    @property
    def lines(self) -> list[str]:
        return self.toPlainText().splitlines()
