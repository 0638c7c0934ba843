"""The host's plan for a session's rounds: what the app's host and `segmentation-suite create`
send, and what the app's members and `segmentation-suite join` follow.

It travels as a control message (SyncClient.send_control: `{"kind": "plan", "plan": {...}}`,
docs/app.md, "The host runs the session"), the same in relay rooms and LAN sessions; a host
that sends none (the original app, older versions) leaves each member to its own options.
A plan comes over the network, so a member reads it with `received_plan`, which checks every
field and refuses what it cannot follow.

A session that starts from a saved model ("Start from a model…", `create --init FILE`): the
host publishes the file's weights as the global model of the round before the plan's first
(round 0 in a new session) before it sends the plan
(`publish_starting_model`), and the plan says so (`starts_from`); every member, host too,
starts round 1 from that global model, exactly as the wire carries it.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from .settings import TRAINING_DEFAULTS

# The control messages' kinds: the host's plan and its stop, a member's opting out or back
# in, the host removing a member.
PLAN, STOP, OPT_OUT, OPT_IN, REMOVED = "plan", "stop", "opt_out", "opt_in", "removed"
DATA_KINDS = ("synthetic", "folder")
#: Upper bounds a member accepts (the app's fields allow the same).
MAX_ROUNDS, MAX_EPOCHS_PER_ROUND = 1000, 100
#: How long a member waits for the host's plan once the room's architecture came (the app
#: sends the plan before it, but a member who joins while the host waits may see the
#: architecture first); after it the member trains with its own options.
PLAN_GRACE_SECONDS = 5.0


def new_plan(
    *,
    first_round: int,
    rounds: int,
    epochs_per_round: int,
    learning_rate: float,
    data: str,
    fresh: bool = True,
    starts_from: str | None = None,
) -> dict:
    """A plan as the host sends it; `starts_from` names the saved model (its file name only)
    the host published as the global model of round `first_round - 1`."""
    plan = {
        "id": secrets.token_hex(4),
        "first_round": first_round,
        "last_round": first_round + rounds - 1,
        "epochs_per_round": epochs_per_round,
        "learning_rate": learning_rate,
        "data": data,
        "fresh": fresh,
    }
    if starts_from:
        plan["starts_from"] = starts_from
    return plan


def plan_control(plan: dict) -> dict:
    return {"kind": PLAN, "plan": dict(plan)}


class InvalidPlan(ValueError):
    """A plan message a member cannot follow; the text says which field and why."""


def received_plan(control: Any) -> dict | None:
    """The plan in a control message, every field checked; None if the message is not a
    plan; InvalidPlan naming the field if it is one that cannot be followed."""
    if not isinstance(control, dict) or control.get("kind") != PLAN:
        return None
    plan = control.get("plan")
    if not isinstance(plan, dict):
        raise InvalidPlan("the plan is not an object")
    checked = dict(plan)
    first = _whole(plan, "first_round", 1, None)
    last = _whole(plan, "last_round", first, first + MAX_ROUNDS - 1)
    checked.update(
        first_round=first,
        last_round=last,
        epochs_per_round=_whole(plan, "epochs_per_round", 1, MAX_EPOCHS_PER_ROUND),
        learning_rate=_learning_rate(plan),
        fresh=bool(plan.get("fresh", True)),
        late=bool(plan.get("late", False)),
    )
    if plan.get("data", "synthetic") not in DATA_KINDS:
        raise InvalidPlan(f"data must be one of {DATA_KINDS}, not {plan.get('data')!r}")
    checked["data"] = plan.get("data", "synthetic")
    if "current_round" in plan:
        checked["current_round"] = _whole(plan, "current_round", first, last)
    if "starts_from" in plan and not isinstance(plan["starts_from"], str):
        raise InvalidPlan("starts_from must be a file name")
    return checked


def first_round_to_train(plan: dict) -> int:
    """Where this member's rounds begin: the round under way for a late joiner."""
    return int(plan.get("current_round") or plan["first_round"])


def needs_global_model(plan: dict, has_own_model: bool) -> bool:
    """Whether a member starts from the host's global model rather than from scratch: it
    joins while the rounds run, the host started from a saved model, or the host continues
    (Resume) and this member has no model of its own."""
    late = plan.get("late") and first_round_to_train(plan) > plan["first_round"]
    continues = not plan.get("fresh", True) and not has_own_model
    return bool(late or plan.get("starts_from") or continues)


def describe(plan: dict) -> str:
    """`rounds 1–5, 1 epoch(s) each, learning rate 0.003, synthetic images`, for logs."""
    data = "each member's own folder" if plan.get("data") == "folder" else "synthetic images"
    text = (
        f"rounds {plan['first_round']}–{plan['last_round']}, "
        f"{plan['epochs_per_round']} epoch(s) each, learning rate {plan['learning_rate']:g}, "
        f"{data}"
    )
    if plan.get("starts_from"):
        text += f", starting from {plan['starts_from']}"
    return text


def publish_starting_model(host: Any, weights: dict, plan: dict) -> dict:
    """Host (a relay room's host client, or a LAN session's AggregationServer.host_client):
    sends `weights` to every member as the global model of the round before the plan's
    first (round 0 in a new session), the way a closed round's global model goes (so the
    members' later deltas refer to it). Returns what the members hold: the weights rounded
    as the wire carries them, which the host trains from too."""
    held = host.publish_global_model(weights, plan["first_round"] - 1)
    if held is None:
        raise ValueError("the starting model could not be sent (see the error shown)")
    return held


def _whole(plan: dict, key: str, low: int, high: int | None) -> int:
    value = plan.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPlan(f"{key} must be a whole number, not {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise InvalidPlan(f"{key} must be {bound}, not {value}")
    return value


def _learning_rate(plan: dict) -> float:
    value = plan.get("learning_rate", TRAINING_DEFAULTS.learning_rate)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPlan(f"learning_rate must be a number, not {value!r}")
    if not (math.isfinite(value) and 0 < value < 1):
        raise InvalidPlan(f"learning_rate must be between 0 and 1, not {value}")
    return float(value)
