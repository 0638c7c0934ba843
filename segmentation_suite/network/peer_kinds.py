"""Who in a room speaks what: our protocol 2 (framed binaries, data-only weights) or the
original app's format (docs/protocol.md, "Mixed rooms").

On our relay (feature `member_features`) the relay attests it: a user-list entry whose
`features` hold `frame_header` is a protocol-2 member. On a relay that does not (the original
Worker), our clients announce themselves with `peer_hello`, which original clients ignore. A
member that never announces is original. No I/O here: the client feeds membership lists and
announcements in, and asks whom to send which format.
"""

from __future__ import annotations

from collections.abc import Iterable

from .protocol import Feature


class PeerKinds:
    """The protocol-2 members of one room, as far as this client knows."""

    def __init__(self) -> None:
        self._ours: set[str] = set()
        self.attested = False  # the relay lists members' features (no announcements needed)

    def reset(self, attested: bool) -> None:
        self._ours.clear()
        self.attested = attested

    def take_user_list(self, users: Iterable[dict]) -> None:
        """A membership list from the relay. With `attested`, it says who is ours; else a
        member leaving the list is forgotten (its id may come back as another client)."""
        present = {u.get("user_id") for u in users}
        if self.attested:
            self._ours = {
                u.get("user_id")
                for u in users
                if Feature.FRAME_HEADER.value in (u.get("features") or ())
            }
        else:
            self._ours &= present

    def announced(self, user_id: str) -> None:
        """A `peer_hello` from `user_id` (only counted where the relay attests nothing: on our
        relay the entry is the truth, and a text message cannot change it)."""
        if not self.attested:
            self._ours.add(user_id)

    def speaks_frames(self, user_id: str) -> bool:
        return user_id in self._ours

    def originals(self, user_ids: Iterable[str]) -> list[str]:
        """Those of `user_ids` that are original clients, in the given order."""
        return [u for u in user_ids if u not in self._ours]
