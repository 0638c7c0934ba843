"""The host's plan on the command line: `create` sends it (and, with --init, the starting
model first), `join` follows it, printing it, with its own options as the fallback when the
host sends none (the original app, older versions). Format and checks: training/session_plan.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..training import session_plan
from .options import CommandError
from .room import RoomMember


def host_plan(args: argparse.Namespace) -> dict:
    """The plan of this `create` command's options."""
    return session_plan.new_plan(
        first_round=1,
        rounds=args.rounds,
        epochs_per_round=args.epochs_per_round,
        learning_rate=args.learning_rate,
        data="synthetic" if args.synthetic else "folder",
        starts_from=Path(args.init).name if getattr(args, "init", None) else None,
    )


def send_plan(member: RoomMember, trainer, plan: dict, console: Console) -> None:
    """Host: the starting model of --init (as the global model of round 0, which the host's
    trainer then holds exactly as the members do), then the plan, to the whole room; the
    plan again, with the round under way, to whoever joins later."""
    host = member.host_connection
    if plan.get("starts_from"):
        try:
            held = session_plan.publish_starting_model(host, trainer.state_dict(), plan)
        except ValueError as exc:
            raise CommandError(f"Cannot send the starting model: {exc}") from None
        trainer.load_state_dict(held)
        console.print(f"Sent the starting model {plan['starts_from']} to the members")
    host.send_control(session_plan.plan_control(plan))
    console.print(f"The plan: {session_plan.describe(plan)}", markup=False, highlight=False)

    def newcomer(name: str) -> None:
        ids = [u.get("user_id") for u in host.users if u.get("display_name") == name]
        if ids:
            current = min(max(host.aggregation_round + 1, plan["first_round"]), plan["last_round"])
            late = dict(plan, late=True, current_round=current)
            host.send_control(session_plan.plan_control(late), [ids[-1]])

    host.user_joined_room.connect(newcomer)


def follow_plan(member: RoomMember, args: argparse.Namespace, console: Console) -> dict | None:
    """Member, once the host started: the host's plan (waited for briefly, see
    PLAN_GRACE_SECONDS), put into `args` (rounds, first round, epochs per round, learning
    rate, data kind) and printed; None when the host sends none, and `args` keep this
    command's options, also printed."""
    plan = member.wait_for_plan(_plan_wait(member))
    if member.invalid_plan:
        console.print(
            f"warning: the host's plan cannot be followed ({member.invalid_plan})",
            markup=False,
            highlight=False,
        )
    if plan is None:
        args.first_round = 1
        console.print(
            "The host sent no plan: training with this command's options (rounds 1–"
            f"{args.rounds}, {args.epochs_per_round} epoch(s) each, learning rate "
            f"{args.learning_rate:g})",
            markup=False,
            highlight=False,
        )
        return None
    console.print(
        f"Following the host's plan: {session_plan.describe(plan)}", markup=False, highlight=False
    )
    first = session_plan.first_round_to_train(plan)
    if first > plan["first_round"]:
        console.print(f"Joining the rounds under way at round {first}")
    args.first_round = first
    args.rounds = plan["last_round"] - first + 1
    args.epochs_per_round = plan["epochs_per_round"]
    args.learning_rate = plan["learning_rate"]
    if plan["data"] == "folder" and args.synthetic:
        raise CommandError(
            "The host's plan trains on each member's own folder: join with --data FOLDER "
            "(your images and masks) instead of --synthetic"
        )
    if plan["data"] == "synthetic" and not args.synthetic:
        console.print(
            f"The host's plan trains on synthetic images: using them instead of {args.data}",
            markup=False,
            highlight=False,
        )
        args.synthetic, args.data = True, None
    return plan


def starting_weights(member: RoomMember, plan: dict | None, timeout: float) -> dict | None:
    """Member: the host's global model to start from (the starting model of a plan that
    names one, the current global model when joining late); None to start anew."""
    if plan is None or not session_plan.needs_global_model(plan, has_own_model=False):
        return None
    first = session_plan.first_round_to_train(plan)
    weights = member.wait_for_global_model(first - 1, timeout)
    if weights is None:
        raise CommandError(
            f"The host's {'starting' if plan.get('starts_from') else 'global'} model did not "
            f"arrive within {timeout:g} s"
        )
    return weights


def _plan_wait(member: RoomMember) -> float | None:
    """How long to wait for a plan once the host started: none from an original-app host;
    in a LAN session of ours (whose welcome names the relay) until the plan comes, since
    the plan is the start there; else a grace for the plan sent just after the start."""
    client = member.client
    if client.host_id in (getattr(client, "original_members", None) or []):
        return 0.0
    if member.lan_address:
        return None if client.capabilities is not None else 0.0
    return session_plan.PLAN_GRACE_SECONDS
