"""`segmentation-suite create` and `join`: train together in a relay room.

The creator is the room's host: it waits for the members it asked for, tells the room which
model is trained (session_info, which is also the members' signal to start) and averages every
round. A member joins with the code and trains in step with the host. Ctrl-C leaves cleanly
(goodbye and leave_room, so the others see "NAME left the room") and exits with 130.
"""

from __future__ import annotations

import argparse
import sys
import threading

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from .data import load_training_data
from .model import build_trainer, save_model
from .options import CommandError
from .progress import TrainingView
from .room import RoomMember, find_relay, parse_lan_session, parse_room_code

INTERRUPTED = 130
# How long the host stays after the last round so that every member gets the final model.
FAREWELL_SECONDS = 30.0
STOP_SECONDS = 30.0


def run_create(args: argparse.Namespace, console: Console) -> int:
    if args.lan is not None:
        return _session(args, console, _host_lan_session(args, console), lan_host=True)
    relay_url = find_relay(args.relay_url)

    def enter(member: RoomMember) -> None:
        code = member.create(args.name, relay_url)
        console.print(room_code_panel(code))
        console.print(f"Share this code: segmentation-suite join {code}")
        _wait_for_members(member, args, console)
        from ..training.unet import ARCHITECTURE

        member.client.host_trains = True  # every round waits for the host's own push too
        member.client.send_architecture(ARCHITECTURE)  # also the members' signal to start
        console.print(f"Training {ARCHITECTURE} with {_names(member)}")

    return _session(args, console, enter)


def _host_lan_session(args: argparse.Namespace, console: Console):
    """`create --lan`: this machine runs the session's AggregationServer (no relay) and
    trains as one of its members."""

    def enter(member: RoomMember) -> None:
        from ..training.unet import ARCHITECTURE

        address = member.host_lan(args.name, args.lan, ARCHITECTURE)
        console.print(room_code_panel(address, title="LAN session", spaced=False))
        console.print(f"Share this address: segmentation-suite join --lan {address}")
        _wait_for_members(member, args, console)
        console.print(f"Training {ARCHITECTURE} with {_names(member)}")

    return enter


def _wait_for_members(member: RoomMember, args: argparse.Namespace, console: Console) -> None:
    if args.wait_for:
        console.print(f"Waiting for {args.wait_for} member(s) to join (Ctrl-C to leave)")
        member.wait_for_members(args.wait_for, _enter_starts_early(console))


def run_join(args: argparse.Namespace, console: Console) -> int:
    # Refused before connecting or loading anything.
    if args.lan:
        host, port = parse_lan_session(args.code)
    else:
        code = parse_room_code(args.code)
        relay_url = find_relay(args.relay_url)

    def enter(member: RoomMember) -> None:
        if args.lan:
            member.join_lan(host, port, args.name)
        else:
            member.join(code, args.name, relay_url)
        console.print(f"Joined {member.where} with {_names(member)}")
        console.print("Waiting for the host to start (Ctrl-C to leave)")
        architecture = member.wait_for_architecture()
        from ..training.unet import ARCHITECTURE

        if architecture != ARCHITECTURE:
            raise CommandError(
                f"The host trains {architecture!r} but this version of segmentation-suite "
                f"trains {ARCHITECTURE!r}: install the host's version"
            )

    return _session(args, console, enter)


def _session(args: argparse.Namespace, console: Console, enter, lan_host: bool = False) -> int:
    """Reads the data (before connecting: a bad folder fails first), enters the room with
    `enter(member)`, trains the rounds and leaves; Ctrl-C leaves at any point."""
    data, evaluation, dice_of = load_training_data(args, console)
    member = RoomMember(
        _printer(console),
        aggregation_timeout=args.round_timeout / 2,
        lan_host=lan_host,
        accept_legacy_weights=args.accept_legacy_weights,
    )
    try:
        enter(member)
        trainer = build_trainer(data, args)
        view = _train_rounds(member, trainer, evaluation, args, console)
        if (member.client.is_host or member.server is not None) and member.others:
            console.print("Waiting for the members to receive the final model")
            member.wait_for_others_to_leave(FAREWELL_SECONDS)
    except KeyboardInterrupt:
        entered = member.code or member.lan_address
        member.leave()
        if entered:
            console.print(f"Left {member.where}")
        return INTERRUPTED
    except BaseException:
        member.leave()
        raise
    where = member.where
    member.leave()
    console.print(view.round_table(dice_of))
    if args.save:
        save_model(trainer, args.save)
        console.print(f"Saved the model to {args.save}", markup=False)
    console.print(f"Done: {len(view.results)} rounds; left {where}")
    return 0


def room_code_panel(code: str, title: str = "room code", spaced: bool = True) -> Panel:
    """The code (or a LAN address) in bold, a code spaced out so that it reads aloud well."""
    big = Text("  ".join(code) if spaced else code, style="bold", justify="center")
    return Panel(big, title=title, subtitle="share it", padding=(1, 6), expand=False)


def _train_rounds(member: RoomMember, trainer, evaluation, args, console: Console):
    """Runs FederatedTraining on a worker thread, so that Ctrl-C reaches the main thread at
    once; a lost connection ends the command."""
    from ..training.federated import FederatedTraining

    training = FederatedTraining(
        member.client,
        trainer,
        rounds=args.rounds,
        epochs_per_round=args.epochs_per_round,
        round_timeout=args.round_timeout,
        evaluation=evaluation,
    )
    stop, finished = threading.Event(), threading.Event()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["results"] = training.run(view.on_event, stop)
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            finished.set()

    view = TrainingView(console, host=member.client.is_host)
    member.report_errors = False  # training reports them itself, between rounds
    # Waits are on `finished`, never Thread.join: Ctrl-C inside join (Python 3.11) marks the
    # thread as ended while it still runs, and exiting during a torch call aborts the process.
    try:
        with view:
            threading.Thread(target=work, name="training", daemon=True).start()
            while not finished.wait(0.2):
                if member.lost.is_set():
                    raise CommandError("Lost the connection to the relay; training stopped")
    finally:
        stop.set()  # training stops after the current batch
        finished.wait(STOP_SECONDS)
        member.report_errors = True
    if "error" in outcome:
        raise outcome["error"]
    return view


def _enter_starts_early(console: Console) -> threading.Event:
    """Set when the user presses Enter (on a terminal only: a pipe's end is no answer)."""
    pressed = threading.Event()
    if sys.stdin is not None and sys.stdin.isatty():
        console.print("Press Enter to start with whoever is in the room")

        def read() -> None:
            if sys.stdin.readline():
                pressed.set()

        threading.Thread(target=read, name="enter", daemon=True).start()
    return pressed


def _printer(console: Console):
    return lambda text: console.print(text, markup=False, highlight=False)


def _names(member: RoomMember) -> str:
    return ", ".join(u.get("display_name") or u.get("user_id", "?") for u in member.client.users)
