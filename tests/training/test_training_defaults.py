"""The defaults a new user starts with learn: why 24 images at the old learning rate gave a
held-out Dice of exactly 0, and that the shared defaults reach 0.75 within 5 rounds."""

from __future__ import annotations

import os

import pytest
import torch
from training_simulation import simulate

from segmentation_suite.training import Trainer, held_out_set, member_shard
from segmentation_suite.training.data import MICROSCOPES
from segmentation_suite.training.settings import (
    MICROSCOPE_COUNT,
    TRAINING_DEFAULTS,
    microscope_for_position,
)

SLOW_UNDER_ASAN = pytest.mark.skipif(
    os.environ.get("SANITIZED_BUILD") == "1",
    reason="torch only, none of our C code: the normal stage runs it (5x slower under ASan)",
)


def silent_head_channels(trainer: Trainer, images) -> list[int]:
    """Channels into the U-Net's 1x1 head that are zero on every pixel of `images` (a ReLU
    switched off for good: no gradient reaches it any more)."""
    seen = {}
    hook = trainer.model.head.register_forward_hook(lambda m, i, o: seen.setdefault("in", i[0]))
    try:
        trainer.predict(images)
    finally:
        hook.remove()
    features = seen["in"]
    return [c for c in range(features.shape[1]) if float(features[:, c].max()) == 0.0]


def test_the_old_learning_rate_silences_the_head_and_every_mask_comes_out_empty():
    """The cause of the 0.000: not the evaluation (the masks have cells, the threshold is
    0.5 of a probability) but the learning: at 1e-2 Adam's first steps switch off the head's
    positively weighted input channels, so no pixel can rise above the head's bias (< 0)."""
    data = member_shard(0, 24, size=64)
    evaluation = held_out_set(TRAINING_DEFAULTS.held_out_images)
    old = Trainer(data, learning_rate=1e-2, batch_size=8)
    for _ in range(4):
        old.train_epoch()
    silent = silent_head_channels(old, evaluation.images)
    head_weights = old.model.head.weight.detach().flatten()
    assert silent and all(head_weights[c] > 0 for c in silent), silent
    assert all(head_weights[c] <= 0 for c in range(len(head_weights)) if c not in silent)
    probabilities = old.predict(evaluation.images)
    # Nothing above the bias: the best cell pixel is the bias alone, below 0.5.
    assert float(torch.logit(probabilities.max())) == pytest.approx(
        float(old.model.head.bias.detach()), abs=1e-4
    )
    assert float(probabilities.max()) < 0.5 and old.evaluate(evaluation) == 0.0

    new = Trainer(data)  # the defaults
    new.train_epoch()
    assert not silent_head_channels(new, evaluation.images)
    assert new.evaluate(evaluation) > 0.5


@SLOW_UNDER_ASAN
@pytest.mark.parametrize("members", [1, 3])
def test_the_shared_defaults_reach_a_dice_of_075_within_5_rounds(members):
    defaults = TRAINING_DEFAULTS
    result = simulate(
        members=members,
        images=defaults.images_per_member,
        size=defaults.image_size,
        held_out=defaults.held_out_images,
        rounds=5,
        epochs_per_round=defaults.epochs_per_round,
        learning_rate=defaults.learning_rate,
        batch_size=defaults.batch_size,
    )
    assert max(result.shared_per_round) >= 0.75, result.shared_per_round


def test_each_place_in_the_room_gets_another_microscope_counted_from_1():
    assert len(MICROSCOPES) == MICROSCOPE_COUNT
    assert [microscope_for_position(p) for p in range(1, 6)] == [1, 2, 3, 1, 2]
    with pytest.raises(ValueError):
        microscope_for_position(0)
