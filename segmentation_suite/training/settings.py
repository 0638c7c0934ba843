"""The demo's training settings and prediction's tiling: plain values, importable without
torch (the CLI reads them for its --help)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoSettings:
    """Settings under which the shared model beats every local-only one on the held-out set
    of all microscopes, with a margin (measured in tests/training/training_simulation.py)."""

    images_per_member: int = 48
    image_size: int = 48
    held_out_images: int = 60
    rounds: int = 6
    epochs_per_round: int = 2
    learning_rate: float = 3e-3
    batch_size: int = 8


DEMO_SETTINGS = DemoSettings()


#: Side of the square tiles prediction cuts a large image into, and how many pixels
#: neighbouring tiles share (blended, so that no seam shows).
PREDICTION_TILE = 256
PREDICTION_OVERLAP = 32
