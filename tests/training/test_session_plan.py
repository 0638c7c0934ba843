"""The host's plan as a member reads it (session_plan.received_plan): every field checked,
what cannot be followed refused by name; and a starting model's checks and tensor order."""

from __future__ import annotations

import pytest

from segmentation_suite.training import session_plan
from segmentation_suite.training.session_plan import InvalidPlan, received_plan


def _plan(**changes):
    plan = session_plan.new_plan(
        first_round=1, rounds=3, epochs_per_round=2, learning_rate=0.002, data="synthetic"
    )
    plan.update(changes)
    return {"kind": "plan", "plan": plan}


def test_a_plan_round_trips_and_other_controls_are_not_plans():
    plan = received_plan(_plan())
    assert (plan["first_round"], plan["last_round"], plan["epochs_per_round"]) == (1, 3, 2)
    assert plan["learning_rate"] == 0.002 and plan["data"] == "synthetic" and plan["fresh"]
    assert session_plan.describe(plan) == (
        "rounds 1–3, 2 epoch(s) each, learning rate 0.002, synthetic images"
    )
    assert received_plan({"kind": "stop"}) is None
    assert received_plan("plan") is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"first_round": 0}, "first_round"),
        ({"first_round": "1"}, "first_round"),
        ({"last_round": 0}, "last_round"),
        ({"last_round": 5000}, "last_round"),
        ({"epochs_per_round": True}, "epochs_per_round"),
        ({"epochs_per_round": 101}, "epochs_per_round"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"data": "../etc"}, "data"),
        ({"current_round": 9}, "current_round"),
        ({"starts_from": 3}, "starts_from"),
    ],
)
def test_a_plan_that_cannot_be_followed_is_refused_by_name(changes, named):
    with pytest.raises(InvalidPlan, match=named):
        received_plan(_plan(**changes))
    with pytest.raises(InvalidPlan, match="not an object"):
        received_plan({"kind": "plan", "plan": [1, 2]})


def test_where_a_member_starts():
    late = received_plan(_plan(late=True, current_round=3))
    assert session_plan.first_round_to_train(late) == 3
    assert session_plan.needs_global_model(late, has_own_model=True)
    fresh = received_plan(_plan())
    assert not session_plan.needs_global_model(fresh, has_own_model=False)
    assert session_plan.needs_global_model(received_plan(_plan(starts_from="m.safetensors")), True)
    resumed = received_plan(_plan(fresh=False))
    assert session_plan.needs_global_model(resumed, has_own_model=False)
    assert not session_plan.needs_global_model(resumed, has_own_model=True)


def test_a_starting_model_is_checked_and_comes_in_the_models_own_order(tmp_path):
    torch = pytest.importorskip("torch", reason="models need torch (the train extra)")
    from segmentation_suite.training.model_file import (
        ModelFileError,
        load_starting_model,
        save_model,
    )
    from segmentation_suite.training.unet import ARCHITECTURE, build_unet

    weights = build_unet().state_dict()
    path = tmp_path / "m.safetensors"
    save_model(path, weights, architecture=ARCHITECTURE)
    saved = load_starting_model(path, ARCHITECTURE)
    # safetensors sorts the tensors by name; a starting model goes out in the model's order.
    assert list(saved.weights) == list(weights)
    assert all(torch.equal(saved.weights[k], weights[k]) for k in weights)

    cut = dict(weights)
    cut.pop(next(iter(cut)))
    save_model(tmp_path / "cut.safetensors", cut, architecture=ARCHITECTURE)
    with pytest.raises(ModelFileError, match="do not fit"):
        load_starting_model(tmp_path / "cut.safetensors", ARCHITECTURE)
    with pytest.raises(ModelFileError, match="this session trains"):
        load_starting_model(path, "unet2d-v1:base=4:depth=2")
