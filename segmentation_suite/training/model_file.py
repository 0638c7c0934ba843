"""Model files: a U-Net's weights in safetensors, with what it is and how it was trained.

A model file is a `.safetensors` file (tensors plus a JSON header, no code) whose metadata,
string to string, holds:

- `format`: "segmentation-suite model", `format_version`: "1";
- `architecture`: the architecture_name the weights fit, e.g. "unet2d-v1:base=8:depth=2";
- `training`: a JSON object, the plan it was trained under (rounds, epochs, learning rate,
  batch size, data kind, ...), whatever the saving program knew;
- `normalization`: how an image is prepared for the model (NORMALIZATION);
- `created` (UTC, ISO 8601) and, for a round's checkpoint, `round`.

Loading reads safetensors only: a pickle (torch.save) can run code when loaded, so it is
refused with a message that says what the file looks like, as is anything truncated or
malformed. Nothing here imports Qt; the app and the command line share it.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "segmentation-suite model"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
#: What load_folder and predict do to an image before the model sees it (one home: data.py).
NORMALIZATION = "per image: (value - min) / (max - min), a constant image gives 0"
#: Larger than any U-Net of this program by far; a header claiming more is corrupt.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 2 * 1024**3

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip of pickles
_PICKLE_PROTOCOL = 0x80  # a bare pickle (torch.save with _use_new_zipfile_serialization=False)


class ModelFileError(ValueError):
    """A file that is not a usable model; the message says which file and why."""


@dataclass
class SavedModel:
    """A loaded model file: its weights (CPU tensors) and what its metadata says."""

    weights: dict[str, Any]
    architecture: str
    training: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def round(self) -> int | None:
        value = self.metadata.get("round")
        return int(value) if value and value.isdigit() else None

    def build(self):
        """The U-Net with these weights, in eval mode; ModelFileError if they do not fit."""
        from .unet import build_unet, parse_architecture

        try:
            model = build_unet(**parse_architecture(self.architecture))
        except ValueError as exc:
            raise ModelFileError(f"{self._where()}: {exc}") from None
        own = model.state_dict()
        missing = sorted(set(own) - set(self.weights))
        extra = sorted(set(self.weights) - set(own))
        if missing or extra:
            raise ModelFileError(
                f"{self._where()}: the weights do not fit {self.architecture} "
                f"(missing {missing[:3]}, unexpected {extra[:3]})"
            )
        for key, reference in own.items():
            if tuple(self.weights[key].shape) != tuple(reference.shape):
                raise ModelFileError(
                    f"{self._where()}: {key!r} has shape {tuple(self.weights[key].shape)}, "
                    f"{self.architecture} needs {tuple(reference.shape)}"
                )
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in self.weights.items()})
        return model.eval()

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "the model"


def save_model(
    path: str | Path,
    weights: Mapping[str, Any],
    *,
    architecture: str,
    training: Mapping[str, Any] | None = None,
    round_number: int | None = None,
) -> Path:
    """Writes a model file (atomically: a crash leaves the old file or none, never half of
    one) and returns its path. `weights` are torch tensors or numpy arrays. OSError if the
    file cannot be written."""
    from safetensors.torch import save as to_bytes

    tensors = {key: _contiguous_tensor(value) for key, value in weights.items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "training": json.dumps(dict(training or {}), sort_keys=True),
        "normalization": NORMALIZATION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if round_number is not None:
        metadata["round"] = str(round_number)
    payload = to_bytes(tensors, metadata=metadata)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def load_model(path: str | Path) -> SavedModel:
    """Reads a model file; ModelFileError, naming the file and what is wrong, for a missing,
    unreadable, truncated or foreign file (a pickle in particular) or unknown metadata."""
    source = Path(path)
    try:
        size = source.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ModelFileError(f"{source} is {size} bytes, too large for a model file")
        data = source.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{source} does not exist") from None
    except IsADirectoryError:
        raise ModelFileError(f"{source} is a folder, not a model file") from None
    except OSError as exc:
        raise ModelFileError(f"Cannot read {source}: {exc.strerror or exc}") from None
    return parse_model(data, source)


def load_starting_model(path: str | Path, architecture: str) -> SavedModel:
    """A model file a session or a run starts from (`--init FILE`, the app's "Start from a
    model…"): ModelFileError in words unless it holds `architecture` (what the plan trains)
    with every tensor of the right shape."""
    saved = load_model(path)
    if saved.architecture != architecture:
        raise ModelFileError(
            f"{path} holds a {saved.architecture} model; this session trains {architecture}: "
            "choose a model saved by a session of this version"
        )
    from .unet import build_unet, parse_architecture

    expected = build_unet(**parse_architecture(architecture)).state_dict()
    missing = sorted(set(expected) - set(saved.weights))
    extra = sorted(set(saved.weights) - set(expected))
    misshapen = [
        key
        for key in expected
        if key in saved.weights and tuple(saved.weights[key].shape) != tuple(expected[key].shape)
    ]
    if missing or extra or misshapen:
        raise ModelFileError(
            f"{path} says {architecture} but its tensors do not fit it (missing {missing[:3]}, "
            f"unexpected {extra[:3]}, wrong shape {misshapen[:3]})"
        )
    # In the model's own order (safetensors stores them sorted by name): the id of a global
    # model that members' deltas name follows the tensors' order (codec.reference_id), so a
    # starting model sent in another order than the members' own weights would make their
    # first pushes name a model the host does not keep.
    saved.weights = {key: saved.weights[key] for key in expected}
    return saved


def parse_model(data: bytes, source: Path | None = None) -> SavedModel:
    """A model from the bytes of a model file (see load_model)."""
    name = str(source) if source is not None else "the model"
    _check_container(data, name)
    from safetensors import SafetensorError
    from safetensors.torch import load as from_bytes

    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelFileError(
            f"{name} is a safetensors file but not a segmentation-suite model (its metadata "
            f"has no format {FORMAT!r})"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{name} is a model file of format version {metadata.get('format_version')!r}; "
            f"this version of segmentation-suite reads version {FORMAT_VERSION}"
        )
    architecture = metadata.get("architecture")
    if not architecture:
        raise ModelFileError(f"{name} does not say its architecture")
    try:
        training = json.loads(metadata.get("training") or "{}")
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{name}: its training metadata is not JSON ({exc})") from None
    if not isinstance(training, dict):
        raise ModelFileError(f"{name}: its training metadata is not a JSON object")
    try:
        weights = from_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{name} is damaged: {exc}") from None
    return SavedModel(weights, architecture, training, dict(metadata), source)


def _check_container(data: bytes, name: str) -> None:
    """The safetensors framing: an 8-byte little-endian header length, then a JSON object
    of that length, then the tensors. Explains the usual wrong files in words."""
    try:
        _check_framing(data, name)
    except ModelFileError:
        # Only now: a valid header length may begin with the pickle protocol byte.
        if data.startswith(_ZIP_MAGIC) or data[:1] == bytes([_PICKLE_PROTOCOL]):
            raise ModelFileError(
                f"{name} is a PyTorch pickle (torch.save), not safetensors. Pickles can run "
                "code when loaded, so they are not read; save models with this version's --save"
            ) from None
        raise


def _check_framing(data: bytes, name: str) -> None:
    if len(data) < 8:
        raise ModelFileError(f"{name} is truncated: {len(data)} bytes, not a safetensors file")
    header_length = struct.unpack("<Q", data[:8])[0]
    if header_length > MAX_HEADER_BYTES:
        raise ModelFileError(f"{name} is not a safetensors file (no valid header)")
    if 8 + header_length > len(data):
        raise ModelFileError(
            f"{name} is truncated: its header needs {header_length} bytes, {len(data) - 8} follow"
        )
    try:
        header = json.loads(data[8 : 8 + header_length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{name} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{name} is not a safetensors file (its header is not an object)")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise ModelFileError(f"{name} is not a safetensors file (its metadata is not strings)")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
        ):
            raise ModelFileError(f"{name} is not a safetensors file (tensor {key!r} is malformed)")
        end = max(end, offsets[1])
    needed = 8 + header_length + end
    if needed > len(data):
        raise ModelFileError(
            f"{name} is truncated: {len(data)} bytes, its header describes {needed}"
        )


def _contiguous_tensor(value: Any):
    import torch

    tensor = value if torch.is_tensor(value) else torch.from_numpy(np.array(value))
    return tensor.detach().cpu().contiguous()


# --- the session folder: every round's global model ---------------------------------------


def default_sessions_dir() -> Path:
    """Where session folders go unless told otherwise: the user's data folder
    (platformdirs; ~/.local/share/segmentation-suite/sessions on Linux)."""
    import platformdirs

    return platformdirs.user_data_path("segmentation-suite", appauthor=False) / "sessions"


class CheckpointFolder:
    """One session's folder of checkpoints, `round-001.safetensors` and so on, each a model
    file (see save_model) with its round number in the metadata."""

    def __init__(self, path: str | Path, *, architecture: str, training: Mapping[str, Any]):
        self.path = Path(path)
        self.architecture = architecture
        self.training = dict(training)
        self.saved: list[Path] = []

    @classmethod
    def new(
        cls,
        tag: str,
        *,
        architecture: str,
        training: Mapping[str, Any],
        root: str | Path | None = None,
    ) -> CheckpointFolder:
        """A fresh folder `<root>/<UTC date and time>-<tag>` (a number appended if taken)."""
        base = Path(root) if root is not None else default_sessions_dir()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        safe_tag = "".join(c if c.isalnum() or c in "-_" else "-" for c in tag) or "session"
        base.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 1000):
            suffix = "" if attempt == 1 else f"-{attempt}"
            candidate = base / f"{stamp}-{safe_tag}{suffix}"
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return cls(candidate, architecture=architecture, training=training)
        raise OSError(f"cannot make a new session folder in {base}")

    def file_for(self, round_number: int, kind: str = "round") -> Path:
        return self.path / f"{kind}-{round_number:03d}{SUFFIX}"

    def save(self, round_number: int, weights: Mapping[str, Any], kind: str = "round") -> Path:
        saved = save_model(
            self.file_for(round_number, kind),
            weights,
            architecture=self.architecture,
            training=self.training,
            round_number=round_number,
        )
        self.saved.append(saved)
        return saved
