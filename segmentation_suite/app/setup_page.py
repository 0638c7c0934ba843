"""The Setup page: who you are, where the relay is, and creating or joining a session."""

from __future__ import annotations

import contextlib

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QApplication,
    QButtonGroup,
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..network import relay_config
from ..network.protocol import DEFAULT_PORT
from . import session_controller as states
from .identity import MAX_NAME_LENGTH, default_name, save_name, saved_name
from .session_controller import SessionController
from .validators import clean_code, explain_code, is_complete_room_code
from .widgets import ErrorLabel, EventLog, big_code_font, heading


class SetupPage(QWidget):
    go_to_training = Signal()

    def __init__(self, session: SessionController, parent=None):
        super().__init__(parent)
        self.session = session
        self.remember_name = True  # False for windows that are not the user's (screenshots)
        layout = QVBoxLayout(self)
        layout.addWidget(heading("Session"))
        layout.addWidget(self._build_identity())
        layout.addWidget(self._build_connection())
        layout.addWidget(self._build_actions())
        layout.addWidget(self._build_room())
        self.status_label = QLabel(session.state_text)  # the connection: SessionController's
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.note_label = QLabel()  # what a button just did (copied, saved)
        self.note_label.setStyleSheet("color: palette(mid);")
        layout.addWidget(self.note_label)
        self.error_label = ErrorLabel()
        layout.addWidget(self.error_label)
        layout.addWidget(QLabel("Session events:"))
        self.event_log = EventLog(session)
        self.event_log.setMinimumHeight(50)  # grows with the window (stretch)
        layout.addWidget(self.event_log, 1)

        session.state_changed.connect(self._on_state)
        session.session_ready.connect(self._show_session)
        session.participants_changed.connect(self._show_participants)
        session.error_occurred.connect(self.error_label.show_error)
        session.error_occurred.connect(lambda *_: self._update_reopen_button())
        session.errors_resolved.connect(self.error_label.clear_error)
        self._on_mode()
        self._on_state(session.state)

    # --- building -----------------------------------------------------------------------

    def _build_identity(self) -> QGroupBox:
        box = QGroupBox("You")
        form = QFormLayout(box)
        self.name_edit = QLineEdit(saved_name() or default_name())
        self.name_edit.setMaxLength(MAX_NAME_LENGTH)
        self.name_edit.setToolTip("How the others see you; remembered for next time")
        form.addRow("Display name:", self.name_edit)
        return box

    def _build_connection(self) -> QGroupBox:
        box = QGroupBox("Connection")
        form = QFormLayout(box)
        modes = QHBoxLayout()
        self.relay_radio = QRadioButton("Relay (over the internet)")
        self.lan_radio = QRadioButton("LAN (same network)")
        self.relay_radio.setChecked(True)
        self._mode_group = QButtonGroup(self)
        for radio in (self.relay_radio, self.lan_radio):
            self._mode_group.addButton(radio)
            modes.addWidget(radio)
            radio.toggled.connect(self._on_mode)
        modes.addStretch(1)
        form.addRow("Mode:", modes)

        self.relay_url_edit = QLineEdit()
        self.relay_url_edit.setPlaceholderText("wss://relay.example.org/ws")
        self.save_url_button = QPushButton("Save as default")
        self.save_url_button.setToolTip("Write this URL to your user config file")
        self.save_url_button.clicked.connect(self._save_relay_url)
        url_row = QHBoxLayout()
        url_row.addWidget(self.relay_url_edit, 1)
        url_row.addWidget(self.save_url_button)
        self.relay_row_label = QLabel("Relay URL:")
        form.addRow(self.relay_row_label, url_row)
        self.relay_source_label = QLabel()
        self.relay_source_label.setWordWrap(True)
        self.relay_source_label.setStyleSheet("color: palette(mid);")
        form.addRow("", self.relay_source_label)
        self._load_relay_url()

        self.port_spin = QSpinBox()
        self.port_spin.setRange(1024, 65535)
        self.port_spin.setValue(DEFAULT_PORT)
        self.port_row_label = QLabel("LAN port:")
        form.addRow(self.port_row_label, self.port_spin)

        self.legacy_weights_check = QCheckBox("Accept weights from the original app")
        # One line: the page's wrapped lines take more height than its layout reserves.
        why = (
            "The original app's weights are a Python pickle, which could run code on this "
            "computer: tick only for colleagues you trust"
        )
        self.legacy_weights_check.setToolTip(why)
        self.legacy_weights_check.toggled.connect(self._apply_legacy_weights_choice)
        form.addRow("", self.legacy_weights_check)
        self.legacy_weights_note = QLabel(why)
        self.legacy_weights_note.setWordWrap(True)
        self.legacy_weights_note.setStyleSheet("color: palette(mid);")
        form.addRow("", self.legacy_weights_note)
        return box

    def _apply_legacy_weights_choice(self, *_) -> None:
        """The session's client (made afresh for each Create or Join) reads weights from the
        original app only while this box is ticked."""
        client = self.session.client
        if client is not None:
            client.accept_legacy_weights = self.legacy_weights_check.isChecked()

    def _build_actions(self) -> QGroupBox:
        box = QGroupBox("Create or join")
        outer = QVBoxLayout(box)
        row = QHBoxLayout()
        outer.addLayout(row)
        self.create_button = QPushButton("Create Session")
        self.create_button.clicked.connect(self._create)
        row.addWidget(self.create_button)
        self.open_room_check = QCheckBox("Open room")
        self.open_room_check.setToolTip(
            "A 6-character code the original app can join too; whoever runs the relay can "
            "read the models. Unticked (default): a private room, end-to-end encrypted, whose "
            "code (K7QX2M-4HRT) has a secret part the relay never sees"
        )
        row.addWidget(self.open_room_check)
        row.addSpacing(24)
        self.code_edit = QLineEdit()
        self.code_edit.setPlaceholderText("room code, e.g. K7QX2M-4HRT")
        self.code_edit.textEdited.connect(self._on_code_typed)
        # No QValidator: with one, Enter does nothing until the code is complete.
        self.code_edit.returnPressed.connect(self._join)
        self.address_edit = QLineEdit()
        self.address_edit.setPlaceholderText("host:port, e.g. 192.168.1.5:8765")
        self.address_edit.returnPressed.connect(self._join)
        row.addWidget(self.code_edit, 1)
        row.addWidget(self.address_edit, 1)
        self.join_button = QPushButton("Join Session")
        self.join_button.clicked.connect(self._join)
        row.addWidget(self.join_button)
        self.code_hint_label = QLabel()  # what is wrong with the code as typed
        self.code_hint_label.setWordWrap(True)
        self.code_hint_label.setStyleSheet("color: #b00020;")
        self.code_hint_label.hide()
        outer.addWidget(self.code_hint_label)
        return box

    def _build_room(self) -> QGroupBox:
        box = QGroupBox("Your session")
        layout = QVBoxLayout(box)
        code_row = QHBoxLayout()
        self.code_label = QLabel("—")
        self.code_label.setFont(big_code_font(self.font()))
        self.code_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.code_hint = QLabel("Create or join a session; its code appears here.")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setEnabled(False)
        self.copy_button.clicked.connect(self._copy_code)
        code_row.addWidget(self.code_label)
        code_row.addWidget(self.copy_button)
        code_row.addStretch(1)
        layout.addLayout(code_row)
        layout.addWidget(self.code_hint)
        layout.addWidget(QLabel("In the room:"))
        self.participant_list = QListWidget()
        self.participant_list.setMinimumHeight(80)  # four names without scrolling
        self.participant_list.setMaximumHeight(140)
        layout.addWidget(self.participant_list)
        buttons = QHBoxLayout()
        self.leave_button = QPushButton("Leave session")
        self.leave_button.clicked.connect(self.session.leave)
        self.remove_button = QPushButton("Remove from session")
        self.remove_button.setToolTip(
            "Host: the selected member is asked to leave, and its weights are no longer used"
        )
        self.remove_button.clicked.connect(self._remove_selected)
        self.participant_list.itemSelectionChanged.connect(self._update_remove_button)
        self.training_button = QPushButton("Go to training →")
        self.training_button.clicked.connect(self.go_to_training.emit)
        buttons.addWidget(self.leave_button)
        buttons.addWidget(self.remove_button)
        self.reopen_button = QPushButton("Reopen room")
        self.reopen_button.setToolTip(
            "Host of a private room: after 3 attempts to join with a wrong secret part the room "
            "admits nobody new; this admits newcomers again"
        )
        self.reopen_button.clicked.connect(self._reopen_room)
        self.reopen_button.hide()
        buttons.addWidget(self.reopen_button)
        buttons.addStretch(1)
        buttons.addWidget(self.training_button)
        layout.addLayout(buttons)
        return box

    # --- reading what the user typed ----------------------------------------------------

    @property
    def display_name(self) -> str:
        return self.name_edit.text().strip() or default_name()

    @property
    def is_lan(self) -> bool:
        return self.lan_radio.isChecked()

    def _load_relay_url(self) -> None:
        """Fills the URL field by the network API's lookup order and says where it came from."""
        try:
            found = relay_config.find_relay_url()
        except ValueError:
            found = None  # the source label below says what is wrong with the setting
        if found is not None and not self.relay_url_edit.text():
            self.relay_url_edit.setText(found.url)
        self._describe_relay_url()
        self.relay_url_edit.textChanged.connect(self._describe_relay_url)

    def _describe_relay_url(self, *_) -> None:
        """Where the URL in the field comes from: the lookup order, or typed here."""
        typed = self.relay_url_edit.text().strip()
        try:
            found = relay_config.find_relay_url()
        except ValueError:
            found = None
        if not typed or (found is not None and typed == found.url):
            self.relay_source_label.setText(relay_config.describe_relay_url_source())
            return
        self.relay_source_label.setText(
            "Typed here, used for this session; “Save as default” writes it to "
            f"{relay_config.user_config_path()}"
        )

    # --- actions ------------------------------------------------------------------------

    def _relay_url(self) -> str | None:
        """The typed URL, checked here so that a mistake is named as the field ("Relay URL:
        ..."); None (after showing the error) if it is not usable; "" for the lookup order."""
        typed = self.relay_url_edit.text().strip()
        if not typed:
            return ""
        try:
            return relay_config.validate_relay_url(typed, "Relay URL")
        except ValueError as exc:
            self.error_label.show_error(str(exc), "Relay URL not usable")
            return None

    def _remember_name(self) -> None:
        if not self.remember_name:
            return
        with contextlib.suppress(OSError):  # not remembered: the field still holds it
            save_name(self.display_name)

    def _create(self) -> None:
        self.error_label.clear_error()
        self._remember_name()
        if self.is_lan:
            self.session.create_lan_session(self.display_name, self.port_spin.value())
            return
        url = self._relay_url()
        if url is not None:
            private = not self.open_room_check.isChecked()
            self.session.create_relay_session(self.display_name, url, private=private)
            self._apply_legacy_weights_choice()

    def _on_code_typed(self, text: str) -> None:
        cleaned = clean_code(text)
        if cleaned != text:
            cursor = len(clean_code(text[: self.code_edit.cursorPosition()]))
            self.code_edit.setText(cleaned)
            self.code_edit.setCursorPosition(cursor)
        problem = explain_code(cleaned)
        self.code_hint_label.setText(problem)
        self.code_hint_label.setVisible(bool(problem))

    def _join(self) -> None:
        self.error_label.clear_error()
        self._remember_name()
        if self.is_lan:
            self.session.join_lan_session(self.address_edit.text(), self.display_name)
            return
        code = clean_code(self.code_edit.text())
        problem = explain_code(code)
        if problem:
            self.error_label.show_error(f"Room code {code}: {problem}", "Room code not usable")
            return
        if not is_complete_room_code(code):
            if not code:
                self.error_label.show_error(
                    "No room code given: type the code the host shared (e.g. K7QX2M-4HRT)"
                )
            else:
                self.error_label.show_error(
                    f"Room code {code[:6]}… is incomplete: codes have 6 characters, and a "
                    "private room's a dash and a secret part of at least 4 more",
                    "Room code incomplete",
                )
            return
        url = self._relay_url()
        if url is not None:
            self.session.join_relay_session(code, self.display_name, url)
            self._apply_legacy_weights_choice()

    def _save_relay_url(self) -> None:
        try:
            path = relay_config.save_user_relay_url(self.relay_url_edit.text())
        except (ValueError, OSError) as exc:
            self.error_label.show_error(f"Relay URL not saved: {exc}")
            return
        self.error_label.clear_error()
        self.note_label.setText(f"Relay URL saved to {path}")
        self._describe_relay_url()

    def _copy_code(self) -> None:
        QApplication.clipboard().setText(self.session.session_label)
        self.note_label.setText(f"Copied {self.session.session_label} to the clipboard")

    # --- reacting to the session --------------------------------------------------------

    def _on_mode(self, *_) -> None:
        lan = self.is_lan
        for widget in (self.relay_url_edit, self.save_url_button, self.relay_row_label):
            widget.setVisible(not lan)
        self.relay_source_label.setVisible(not lan)
        self.port_spin.setVisible(lan)
        self.port_row_label.setVisible(lan)
        self.code_edit.setVisible(not lan)
        self.address_edit.setVisible(lan)

    def _on_state(self, state: str) -> None:
        idle = state == states.IDLE
        for widget in (
            self.create_button,
            self.open_room_check,
            self.join_button,
            self.code_edit,
            self.address_edit,
        ):
            widget.setEnabled(idle)
        for widget in (
            self.relay_radio,
            self.lan_radio,
            self.name_edit,
            self.port_spin,
            self.relay_url_edit,
        ):
            widget.setEnabled(idle)
        self.leave_button.setEnabled(not idle)
        self.status_label.setText(self.session.state_text)
        self._update_remove_button()
        if idle and not self.session.session_label:
            self.code_label.setText("—")
            self.copy_button.setEnabled(False)
            self.code_hint.setText("Create or join a session; its code appears here.")

    def _update_remove_button(self) -> None:
        item = self.participant_list.currentItem()
        client = self.session.client
        chosen = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        self.remove_button.setVisible(self.session.is_host)
        self.remove_button.setEnabled(
            self.session.is_host
            and chosen is not None
            and client is not None
            and chosen != client.user_id
        )

    def _update_reopen_button(self) -> None:
        client = self.session.client
        closed = client is not None and self.session.is_host and client.private_room_closed
        self.reopen_button.setVisible(closed)

    def _reopen_room(self) -> None:
        client = self.session.client
        if client is not None:
            client.reopen_private_room()
            self.session.log_event("Reopened the room to new members")
        self.error_label.clear_error()
        self._update_reopen_button()

    def _remove_selected(self) -> None:
        item = self.participant_list.currentItem()
        if item is not None:
            self.session.remove_member(item.data(Qt.ItemDataRole.UserRole))

    def _show_session(self, label: str) -> None:
        self.status_label.setText(self.session.state_text)
        self.code_label.setText(label)
        self.copy_button.setEnabled(True)
        what = "address" if self.session.mode == "lan" else "code"
        self.code_hint.setText(f"Share this {what} with your colleagues so they can join.")

    def _show_participants(self, users: list) -> None:
        self.participant_list.clear()
        host_id = self.session.client.host_id if self.session.client else None
        own_id = self.session.client.user_id if self.session.client else None
        for user in users:
            user_id = user.get("user_id")
            name = self.session.name_of(user_id) if user_id else "?"
            notes = []
            if user_id == host_id:
                notes.append("host")
            if user_id == own_id and self.session.server is not None:
                notes.append("hosting the LAN session")  # its aggregator is not a member
            if user_id == own_id:
                notes.append("you")
            if user_id in self.session.opted_out:
                notes.append("opted out")
            item = QListWidgetItem(f"{name} ({', '.join(notes)})" if notes else name)
            item.setData(Qt.ItemDataRole.UserRole, user_id)
            self.participant_list.addItem(item)
        self._update_remove_button()
