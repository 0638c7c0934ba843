"""Training a small U-Net on each member's own images, and federated rounds over a SyncClient.

`data` needs numpy and Pillow only; the model, trainer and federated parts need torch (the
`train` extra) and are imported on first use, so a UI can read folders without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .data import (
    FOLDER_LAYOUT_HELP,
    DatasetError,
    SegmentationData,
    held_out_set,
    load_folder,
    member_shard,
    synthetic_dataset,
)

_LAZY = {
    "ARCHITECTURE": "unet",
    "architecture_name": "unet",
    "build_unet": "unet",
    "dice_score": "trainer",
    "Trainer": "trainer",
    "DemoSettings": "settings",
    "DEMO_SETTINGS": "settings",
    "FederatedTraining": "federated",
    "RoundResult": "federated",
    "TrainingEvent": "federated",
}

__all__ = [
    "FOLDER_LAYOUT_HELP",
    "DatasetError",
    "SegmentationData",
    "held_out_set",
    "load_folder",
    "member_shard",
    "synthetic_dataset",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
