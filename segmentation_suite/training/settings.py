"""Training settings and prediction's tiling as plain values, importable without torch (the
CLI reads them for its --help, the app for its fields). Each default has its one home here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingDefaults:
    """What the app and the `create`/`join`/`train` commands start with when the user changes
    nothing. Chosen so that a new user's first session learns: with these values three
    members on the three synthetic microscopes reach a held-out Dice of 0.75 or more within
    5 rounds, and so do one or two members (measured with
    tests/training/training_simulation.py; figures in docs/training.md).

    The learning rate is the value that matters most: at 1e-2, Adam's first steps (every
    parameter moves by about the learning rate, whatever its gradient) switch off the last
    decoder channels that raise the cell logit; a switched-off ReLU channel gets no gradient
    and never comes back, every pixel stays below 0.5, the predicted masks are empty and the
    Dice is exactly 0 (docs/training.md, "Why the Dice was 0.000")."""

    images_per_member: int = 32
    image_size: int = 64
    held_out_images: int = 24  # synthetic: images from every microscope that measure Dice
    rounds: int = 5
    epochs_per_round: int = 1
    learning_rate: float = 3e-3
    batch_size: int = 4
    round_timeout: float = 120.0  # seconds a member waits for a round's global model
    local_epochs: int = 5  # `segmentation-suite train` (no sharing)


TRAINING_DEFAULTS = TrainingDefaults()


#: How many simulated microscopes there are (training.data.MICROSCOPES holds them).
MICROSCOPE_COUNT = 3


def microscope_for_position(position: int) -> int:
    """The default synthetic microscope (1-based, as the app and the CLI number them) of the
    member at `position` in the room (1 = the host, 2 = the first to join, ...): each member
    gets another one, as real labs have different microscopes."""
    if position < 1:
        raise ValueError(f"position must be >= 1, not {position}")
    return (position - 1) % MICROSCOPE_COUNT + 1


@dataclass(frozen=True)
class DemoSettings:
    """Settings under which the shared model beats every local-only one on the held-out set
    of all microscopes, with a margin (measured in tests/training/training_simulation.py)."""

    images_per_member: int = 48
    image_size: int = 48
    held_out_images: int = 60
    rounds: int = 6
    epochs_per_round: int = 2
    learning_rate: float = TRAINING_DEFAULTS.learning_rate
    batch_size: int = 8


DEMO_SETTINGS = DemoSettings()


#: Side of the square tiles prediction cuts a large image into, and how many pixels
#: neighbouring tiles share (blended, so that no seam shows).
PREDICTION_TILE = 256
PREDICTION_OVERLAP = 32
