"""Which model each side of a session holds, so that weights travel as deltas against it.

Without I/O: SyncClient (client.py) feeds messages in and sends what comes out.

* A member (`MemberDeltas`) pushes its model as a delta against the last global model it
  holds, with error feedback, once the host has said it accepts deltas (ours do; an original
  host never says so); it tells the host
  which global it holds in every push, and rebuilds a delta global against the one it holds.
* The host (`GlobalModelLedger`) sends each round's global model as a delta against the
  previous one to the members known to hold it, and whole (float16) to everyone else: late
  joiners, members after a resume, members that never said what they hold (original clients,
  compression=None). It keeps the last few globals by id to rebuild the members' pushes,
  and carries what each global delta dropped into the next one (error feedback): members
  train on from what they rebuilt, so the next average would not contain it.

Every member must hold the same global bit for bit, whichever way it arrived, or the next
deltas would name a reference nobody has. So the global the host publishes (the *canonical*
global) is rounded to float16 values: a member that rebuilt it from a delta rounds the same way
(`round_as_float16_wire`), and the whole float16 message of it is then exact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from .codec import (
    DEFAULT_TOPK_FRACTION,
    ErrorFeedback,
    decode_weights,
    message_reference_id,
    reference_id,
    serialize_weights,
)

#: SyncClient(compression=...) choices; "auto" is q8-delta whenever both sides hold the
#: reference, whole float16 otherwise.
SESSION_COMPRESSIONS = ("auto", "q8-delta", "topk", None)
#: metadata.extra keys of pushes and global models (docs/protocol.md).
HOLDS_GLOBAL_KEY = "holds_global"  # push: hex id of the global model the member holds
ACCEPTS_DELTAS_KEY = "accepts_deltas"  # global model: the host rebuilds delta pushes
#: How many past globals the host keeps to rebuild pushes made against them.
KEPT_GLOBALS = 4


def codec_compression(setting: str | None) -> str | None:
    """The codec's compression= for a session setting ("auto" means q8-delta)."""
    if setting not in SESSION_COMPRESSIONS:
        raise ValueError(f"compression must be one of {SESSION_COMPRESSIONS}, not {setting!r}")
    return "q8-delta" if setting == "auto" else setting


def round_as_float16_wire(weights: Mapping[str, Any]) -> dict:
    """float32/float64 tensors rounded to float16 values (kept in their dtype), as a whole
    float16 message carries them; other tensors unchanged. Done by the codec's own float16
    kernels (encode, then decode: the same bits as numpy's astype, several times faster)."""
    return decode_weights(serialize_weights(weights))[0]


class MemberDeltas:
    """A member's side: what global it holds, and its pushes as deltas against it."""

    def __init__(self, compression: str | None = "auto", *, topk_fraction: float | None = None):
        self.compression = codec_compression(compression)
        fraction = topk_fraction if topk_fraction is not None else DEFAULT_TOPK_FRACTION
        self._feedback = (
            ErrorFeedback(self.compression, topk_fraction=fraction) if self.compression else None
        )
        self.held: dict | None = None  # the canonical global this member holds
        self.held_id: bytes | None = None
        self.host_accepts_deltas = False

    def encode_push(self, weights: Mapping[str, Any], **fields: Any) -> memoryview:
        """The push message: a delta against the held global when the host accepts deltas,
        else whole (float16). Both say which global this member holds, when it holds one."""
        extra = dict(fields.pop("metadata", None) or {})
        if self.compression is not None and self.held_id is not None:
            extra[HOLDS_GLOBAL_KEY] = self.held_id.hex()
        if self._feedback is not None and self.held is not None and self.host_accepts_deltas:
            return self._feedback.encode(weights, reference=self.held, metadata=extra, **fields)
        return serialize_weights(weights, metadata=extra, **fields)

    def receive_global(self, data: Any) -> tuple[dict, dict]:
        """Decodes a global model message (a delta against the held global, or whole) and
        holds the result. ValueError when it is a delta against a global this member does not
        hold (then ask the host for the whole model)."""
        # a delta is rebuilt rounded to float16 values, as the host's canonical global is
        delta = message_reference_id(data) is not None
        weights, metadata = decode_weights(data, reference=self.held, float16_values=delta)
        self.held = weights
        self.held_id = reference_id(weights) if self.compression is not None else None
        self.host_accepts_deltas = bool(metadata["extra"].get(ACCEPTS_DELTAS_KEY))
        return weights, metadata


class GlobalModelLedger:
    """The host's side: the canonical globals by id, and which one each member holds."""

    def __init__(self, compression: str | None = "auto", *, topk_fraction: float | None = None):
        self.compression = codec_compression(compression)
        self.topk_fraction = topk_fraction if topk_fraction is not None else DEFAULT_TOPK_FRACTION
        # The part of the exact averages its members do not hold yet (error feedback)
        self._feedback = (
            ErrorFeedback(self.compression, topk_fraction=self.topk_fraction)
            if self.compression
            else None
        )
        # The last few canonical globals by id, oldest first (deltas only: nothing names one
        # without them); the last one is also `latest`
        self._globals: OrderedDict[bytes, dict] = OrderedDict()
        self._latest: dict | None = None
        self._holds: dict[str, bytes] = {}  # member -> id of the global it holds
        self._delta_capable: set[str] = set()  # members that said what they hold

    # --- what the host learns -------------------------------------------------------------

    def reference_for(self, data: Any, *, also_held: dict | None = None) -> dict | None:
        """The global a push is a delta against (None for a whole push); ValueError when the
        push is malformed or made against a global this host no longer keeps.

        `also_held` is the global this client holds as a member: after the host left and this
        client took over, the members' pushes are deltas against it; it is kept from then on."""
        wanted = message_reference_id(data)
        if wanted is None:
            return None
        reference = self._globals.get(wanted)
        if reference is None and also_held is not None and reference_id(also_held) == wanted:
            self._globals[wanted] = self._latest = reference = also_held
        if reference is None:
            raise ValueError(
                "it is a delta against a global model this host does not keep "
                f"({wanted.hex()[:16]}...)"
            )
        return reference

    def note_push(self, member: str, metadata: Mapping[str, Any]) -> None:
        """A member's push says which global it holds (ours only: originals never do)."""
        held = metadata.get("extra", {}).get(HOLDS_GLOBAL_KEY)
        if not isinstance(held, str):
            return
        try:
            held_id = bytes.fromhex(held)
        except ValueError:
            return
        self._delta_capable.add(member)
        if held_id in self._globals:
            self._holds[member] = held_id

    def forget_held(self, member: str) -> None:
        """After a resume the member may have missed a global: send the next one whole."""
        self._holds.pop(member, None)

    def remove(self, member: str) -> None:
        self._holds.pop(member, None)
        self._delta_capable.discard(member)

    @property
    def latest(self) -> dict | None:
        """The canonical global of the last round (what members hold), or None."""
        return self._latest

    def holds(self, member: str) -> bytes | None:
        return self._holds.get(member)

    # --- publishing a round -----------------------------------------------------------------

    def publish(
        self, global_weights: Mapping[str, Any], members: Iterable[str], **fields: Any
    ) -> tuple[dict, list[tuple[memoryview, list[str]]]]:
        """The canonical global of a new round and the messages to send: [(data, recipients)],
        a delta to the members holding the previous global, the whole model to the others.
        `fields` are serialize_weights' (metadata=... goes in extra, with accepts_deltas)."""
        extra = dict(fields.pop("metadata", None) or {})
        extra[ACCEPTS_DELTAS_KEY] = self.compression is not None
        previous_id = next(reversed(self._globals)) if self._globals else None
        delta = None
        if self._feedback is not None and previous_id is not None:
            # what members will hold: the delta rebuilt, rounded to float16 values; what that
            # leaves out of this average goes into the next round's delta
            delta, canonical = self._feedback.encode_and_rebuild(
                global_weights,
                reference=self._globals[previous_id],
                float16_values=True,
                metadata=extra,
                **fields,
            )
            whole = None
        else:
            # Encoded once: what it carries, decoded, is the canonical global (encoding that
            # again would give the same bytes, float16 values being exact in float16)
            whole = serialize_weights(global_weights, metadata=extra, **fields)
            canonical = decode_weights(whole)[0]
            if self._feedback is not None:
                self._feedback.reset()  # a new chain of globals: nothing owed to it yet
        members = list(members)
        by_delta = [m for m in members if delta is not None and self._holds.get(m) == previous_id]
        by_whole = [m for m in members if m not in by_delta]
        if whole is None and by_whole:
            whole = serialize_weights(canonical, metadata=extra, **fields)
        self._latest = canonical
        if self.compression is not None:  # only deltas name a global by its id
            canonical_id = reference_id(canonical)
            self._globals[canonical_id] = canonical
            self._globals.move_to_end(canonical_id)
            while len(self._globals) > KEPT_GLOBALS:
                self._globals.popitem(last=False)
            # Members that take part in deltas hold this global once it arrived (the relay
            # delivers in order or the member resumes, which forget_held handles).
            for member in members:
                if member in self._delta_capable:
                    self._holds[member] = canonical_id
        sends = [(data, ids) for data, ids in ((delta, by_delta), (whole, by_whole)) if ids]
        return canonical, sends
