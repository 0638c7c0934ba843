"""The Training page's table: who is in the session and their last contribution."""

from __future__ import annotations

import time

from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from .session_controller import SessionController


class ParticipantTable(QTableWidget):
    """One row per member. The host sees every member's pushes (weights_received and
    round_complete); a member sees its own uploads and the round results."""

    def __init__(self, session: SessionController, parent=None):
        super().__init__(0, 2, parent)
        self.session = session
        self.setHorizontalHeaderLabels(["Participant", "Last contribution"])
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeader().setStretchLastSection(True)
        self.verticalHeader().hide()
        self.setWordWrap(True)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.contributions: dict[str, str] = {}  # user id -> their last push
        self.rounds: dict[str, int] = {}  # user id -> the host's round that averaged it
        session.participants_changed.connect(self.refresh)
        session.contribution_received.connect(self._on_contribution)
        session.round_completed.connect(self._on_round_completed)
        self.refresh()

    def refresh(self, *_) -> None:
        users = self.session.participants
        client = self.session.client
        self.setRowCount(len(users))
        for row, user in enumerate(users):
            user_id = user.get("user_id", "")
            name = self.session.name_of(user_id)
            notes = []
            if client is not None and user_id == client.host_id:
                notes.append("host")
            if client is not None and user_id == client.user_id:
                notes.append("you")
            if user_id in self.session.opted_out:
                notes.append("opted out")
            label = f"{name} ({', '.join(notes)})" if notes else name
            self.setItem(row, 0, QTableWidgetItem(label))
            text = self.contributions.get(user_id) or "—"
            if user_id in self.rounds:
                text = f"in round {self.rounds[user_id]}: {text}"
            item = QTableWidgetItem(text)
            item.setToolTip(text if text != "—" else self._unknown(client))
            self.setItem(row, 1, item)
        self.resizeRowsToContents()

    def _unknown(self, client) -> str:
        if client is not None and not client.is_host:
            return "Only the host sees every member's pushes"
        return "No push yet"

    def note_own(self, text: str) -> None:
        """This member's own upload, as the training events report it."""
        client = self.session.client
        if client is not None:
            self._set(client.user_id, f"{text}, {time.strftime('%H:%M:%S')}")

    def _on_contribution(self, user_id: str, info: dict) -> None:
        parts = []
        if isinstance(info.get("loss"), (int, float)):
            parts.append(f"loss {info['loss']:.3f}")
        if info.get("num_samples") is not None:
            parts.append(f"{info['num_samples']} images")
        parts.append(time.strftime("%H:%M:%S"))
        # The push's `epoch` field carries the session's round number (FederatedTraining).
        number = info.get("epoch")
        which = f" for round {number}" if number is not None else ""
        # The client reports the push that closes a round after the round itself: keep the
        # round then, it is this push's.
        self._set(user_id, f"weights{which}: " + ", ".join(parts), keep_round=number)

    def _on_round_completed(self, round_number: int, contributors: list) -> None:
        for user_id in contributors:
            self.rounds[user_id] = round_number
        self.refresh()

    def _set(self, user_id: str, text: str, keep_round: int | None = None) -> None:
        self.contributions[user_id] = text
        if keep_round is None or self.rounds.get(user_id) != keep_round:
            self.rounds.pop(user_id, None)  # a new push: not yet in a finished round
        self.refresh()

    def clear_contributions(self) -> None:
        self.contributions.clear()
        self.rounds.clear()
        self.refresh()
