"""The U-Net, dice_score and the Trainer: shapes, learning, weights in and out, stopping."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from segmentation_suite.training import (
    ARCHITECTURE,
    Trainer,
    build_unet,
    dice_score,
    member_shard,
    synthetic_dataset,
)


def test_unet_maps_one_channel_to_one_channel_of_any_size():
    model = build_unet()
    for height, width in ((64, 64), (48, 48), (37, 50)):
        out = model(torch.zeros(2, 1, height, width))
        assert out.shape == (2, 1, height, width)
    assert ARCHITECTURE == "unet2d-v1:base=8:depth=2"
    deeper = build_unet(base_channels=4, depth=3)
    assert deeper(torch.zeros(1, 1, 20, 20)).shape == (1, 1, 20, 20)
    assert sum(p.numel() for p in deeper.parameters()) != sum(p.numel() for p in model.parameters())


def test_unet_is_small_enough_for_the_demo():
    parameters = sum(p.numel() for p in build_unet().parameters())
    assert 5_000 < parameters < 100_000


def test_dice_score_on_hand_computed_cases():
    mask = np.zeros((2, 1, 4, 4), dtype=np.float32)
    mask[0, 0, :2, :2] = 1  # 4 pixels
    probabilities = np.zeros_like(mask)
    probabilities[0, 0, :2, :1] = 0.9  # 2 of the 4 found, no false positives: 2*2/(2+4)
    probabilities[0, 0, 3, 3] = 0.4  # below the threshold
    # image 2: empty mask, empty prediction -> 1
    assert dice_score(probabilities, mask) == pytest.approx((4 / 6 + 1) / 2)
    # logits: values outside [0, 1] go through a sigmoid
    logits = np.where(probabilities > 0.5, 5.0, -5.0).astype(np.float32)
    assert dice_score(torch.from_numpy(logits), torch.from_numpy(mask)) == pytest.approx(
        (4 / 6 + 1) / 2
    )
    assert dice_score(mask, mask) == 1.0
    assert dice_score(1 - mask, mask) == 0.0
    with pytest.raises(ValueError, match="differ"):
        dice_score(mask[:1], mask)


def test_trainer_learns_its_own_microscope():
    data = member_shard(0, 24, size=32)
    trainer = Trainer(data, learning_rate=3e-3)
    before, loss_before = trainer.evaluate(data), trainer.loss_on(data)
    losses = [trainer.train_epoch() for _ in range(6)]
    assert losses[-1] < losses[0]
    assert trainer.evaluate(data) > max(before, 0.6)
    # loss_on measures without training: the same weights give the same figure twice
    assert trainer.loss_on(data) < loss_before
    assert trainer.loss_on(data) == trainer.loss_on(data)
    assert trainer.num_samples == 24
    assert trainer.epochs_trained == 6


def test_trainers_with_one_seed_are_identical_and_members_start_alike():
    data = synthetic_dataset(10, size=32, seed=4)
    a, b = Trainer(data, seed=5), Trainer(data, seed=5)
    other = Trainer(member_shard(2, 10, size=32), seed=9)
    for key, value in a.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key  # one initial model per room
    assert a.train_epoch() == b.train_epoch()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_progress_reports_every_batch_and_stop_ends_after_the_current_batch():
    data = synthetic_dataset(20, size=16)
    trainer = Trainer(data, batch_size=6)
    calls = []
    trainer.train_epoch(progress=lambda batch, batches: calls.append((batch, batches)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    stop = threading.Event()
    calls.clear()

    def progress(batch, batches):
        calls.append(batch)
        if batch == 2:
            stop.set()

    loss = trainer.train_epoch(progress=progress, stop=stop)
    assert calls == [1, 2] and np.isfinite(loss)
    assert trainer.epochs_trained == 1  # the stopped epoch does not count
    assert np.isnan(trainer.train_epoch(stop=stop))


def test_state_dict_is_a_detached_copy_and_load_accepts_numpy():
    data = synthetic_dataset(8, size=16)
    trainer = Trainer(data)
    saved = trainer.state_dict()
    assert all(not v.requires_grad and v.device.type == "cpu" for v in saved.values())
    trainer.train_epoch()
    changed = trainer.state_dict()
    assert any(not torch.equal(saved[k], changed[k]) for k in saved)  # a copy, not a view
    trainer.load_state_dict({k: v.numpy() for k, v in saved.items()})
    for key, value in trainer.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert trainer.optimizer.state == {}  # Adam's moments belong to the replaced weights


def test_load_global_keeps_adam_state_where_the_global_left_the_weights():
    trainer = Trainer(synthetic_dataset(8, size=16))
    start = trainer.state_dict()  # what load_global compares the first global with
    trainer.train_epoch()
    parameters = dict(trainer.model.named_parameters())
    state = trainer.optimizer.state
    before = {n: {k: v.clone() for k, v in state[p].items()} for n, p in parameters.items()}
    matrices = [n for n, p in parameters.items() if p.ndim > 1]
    sparse_name, dense_name = matrices[0], matrices[1]
    untouched = [n for n in parameters if n not in (sparse_name, dense_name)]
    # a global as topk sends it: three values of one tensor moved; and one tensor moved whole
    global_weights = {k: v.clone() for k, v in start.items()}
    flat = global_weights[sparse_name].view(-1)
    moved = torch.tensor([0, 5, flat.numel() - 1])
    flat[moved] += 0.25
    global_weights[dense_name] += 0.01
    assert (before[sparse_name]["exp_avg"].view(-1)[moved] != 0).all()

    trainer.load_global(global_weights)
    for key, value in trainer.state_dict().items():
        assert torch.equal(value, global_weights[key]), key
    assert parameters[dense_name] not in state  # replaced: Adam starts afresh there
    sparse = state[parameters[sparse_name]]
    kept = torch.ones(flat.numel(), dtype=torch.bool)
    kept[moved] = False
    assert (sparse["exp_avg"].view(-1)[moved] == 0).all()  # momentum towards the old values
    assert torch.equal(
        sparse["exp_avg"].view(-1)[kept], before[sparse_name]["exp_avg"].view(-1)[kept]
    )
    assert torch.equal(sparse["exp_avg_sq"], before[sparse_name]["exp_avg_sq"])
    for name in untouched:
        assert torch.equal(state[parameters[name]]["exp_avg"], before[name]["exp_avg"]), name
        assert torch.equal(state[parameters[name]]["exp_avg_sq"], before[name]["exp_avg_sq"]), name

    # compared with the global loaded last now: the same global again changes nothing
    trainer.load_global(global_weights)
    assert torch.equal(state[parameters[sparse_name]]["exp_avg"], sparse["exp_avg"])
    assert len(state) == len(parameters) - 1
    # a global that does not fit changes neither the weights nor Adam's state
    with pytest.raises(ValueError, match="missing"):
        trainer.load_global({k: v for k, v in global_weights.items() if k != sparse_name})
    assert len(state) == len(parameters) - 1
    # whole float16 and q8 globals change every value: all of Adam's state goes, as before
    trainer.load_global({k: v + 0.01 if v.is_floating_point() else v for k, v in start.items()})
    assert trainer.optimizer.state == {}


def test_load_state_dict_names_what_does_not_fit():
    trainer = Trainer(synthetic_dataset(4, size=16))
    weights = trainer.state_dict()
    key = next(iter(weights))
    with pytest.raises(ValueError, match="missing"):
        trainer.load_state_dict({k: v for k, v in weights.items() if k != key})
    wrong = dict(weights)
    wrong[key] = torch.zeros(3)
    with pytest.raises(ValueError, match=f"{key}.*has shape"):
        trainer.load_state_dict(wrong)
    other = Trainer(synthetic_dataset(4, size=16), base_channels=4).state_dict()
    with pytest.raises(ValueError, match="unet2d-v1:base=8:depth=2"):
        trainer.load_state_dict(other)


def test_trainer_refuses_empty_data():
    with pytest.raises(ValueError, match="no training images"):
        Trainer(synthetic_dataset(0, size=16))
