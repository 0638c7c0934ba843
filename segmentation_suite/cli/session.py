"""`segmentation-suite create` and `join`: train together in a relay room.

The creator is the room's host: it waits for the members it asked for, tells the room which
model is trained (session_info, which is also the members' signal to start) and averages every
round. A member joins with the code and trains in step with the host. Ctrl-C leaves cleanly
(goodbye and leave_room, so the others see "NAME left the room") and exits with 130.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from ..training.settings import TRAINING_DEFAULTS, microscope_for_position
from .data import load_training_data
from .model import Checkpoints, build_trainer, save_model, training_plan
from .options import CommandError
from .plan import follow_plan, host_plan, send_plan, starting_weights
from .progress import TrainingView
from .room import RoomMember, find_relay_url, parse_lan_session, parse_room_code

INTERRUPTED = 130
# How long the host stays after the last round so that every member gets the final model.
FAREWELL_SECONDS = 30.0
STOP_SECONDS = 30.0


def run_create(args: argparse.Namespace, console: Console) -> int:
    if args.lan is not None:
        return _session(args, console, _host_lan_session(args, console), lan_host=True)
    relay = find_relay_url(args.relay_url)

    def enter(member: RoomMember) -> None:
        code = member.create(args.name, relay.url, private=not args.open)
        console.print(room_code_panel(code))
        console.print(f"Share this code: {share_command(code, args, relay)}", markup=False)
        _wait_for_members(member, args, console)
        member.client.host_trains = True  # every round waits for the host's own push too

    return _session(args, console, enter, host=True)


def share_command(code: str, args: argparse.Namespace, relay=None) -> str:
    """The `join` command a colleague pastes on their own machine: the code (or LAN
    address), the relay unless it is the installed default (a URL from the command line, the
    environment or this user's config is unknown over there), and the host's data kind and
    training options where they differ from the defaults, so that both sides train alike."""
    words = ["segmentation-suite", "join"]
    words += ["--lan", code] if relay is None else [code]
    if relay is not None and relay.source != "package config":
        words += ["--relay-url", relay.url]
    words += ["--synthetic"] if args.synthetic else ["--data", "FOLDER"]
    for option, value, default in (
        ("--rounds", args.rounds, TRAINING_DEFAULTS.rounds),
        ("--epochs-per-round", args.epochs_per_round, TRAINING_DEFAULTS.epochs_per_round),
        ("--learning-rate", args.learning_rate, TRAINING_DEFAULTS.learning_rate),
        ("--batch-size", args.batch_size, TRAINING_DEFAULTS.batch_size),
        ("--round-timeout", args.round_timeout, TRAINING_DEFAULTS.round_timeout),
    ):
        if value != default:
            words += [option, f"{value:g}" if isinstance(value, float) else str(value)]
    if args.synthetic and args.samples != TRAINING_DEFAULTS.images_per_member:
        words += ["--samples", str(args.samples)]
    command = " ".join(shlex.quote(word) for word in words)
    return command + ("   (FOLDER: your own images and masks)" if not args.synthetic else "")


def _host_lan_session(args: argparse.Namespace, console: Console):
    """`create --lan`: this machine runs the session's AggregationServer (no relay) and
    trains as one of its members."""

    def enter(member: RoomMember) -> None:
        from ..training.unet import ARCHITECTURE

        address = member.host_lan(args.name, args.lan, ARCHITECTURE)
        console.print(room_code_panel(address, title="LAN session", spaced=False))
        console.print(f"Share this address: {share_command(address, args)}", markup=False)
        _wait_for_members(member, args, console)

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
        relay_url = find_relay_url(args.relay_url).url

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
        member.followed_plan = follow_plan(member, args, console)

    return _session(args, console, enter)


def _session(
    args: argparse.Namespace, console: Console, enter, lan_host: bool = False, host: bool = False
) -> int:
    """Reads the data (before connecting: a bad folder fails first; synthetic images without
    --member once in the room, whose place picks the microscope), enters the room with
    `enter(member)` (a member follows the host's plan there, which may change `args`), sends
    the host's plan or takes the model it starts from, trains the rounds and leaves; Ctrl-C
    leaves at any point."""
    host = host or lan_host
    args.first_round = 1
    by_position = args.synthetic and args.member is None
    loaded_synthetic = None
    if not by_position:
        data, evaluation, dice_of = load_training_data(args, console)
        loaded_synthetic = args.synthetic
    member = RoomMember(
        _printer(console),
        aggregation_timeout=args.round_timeout / 2,
        lan_host=lan_host,
        accept_legacy_weights=args.accept_legacy_weights,
    )
    checkpoints = None
    try:
        enter(member)
        if args.synthetic and loaded_synthetic is not True:  # by place, or the plan's kind
            if args.member is None:
                args.member = microscope_for_position(member.position)
            data, evaluation, dice_of = load_training_data(args, console)
        trainer = build_trainer(data, args)
        if host:
            _start_rounds(member, trainer, args, console)
        else:
            weights = starting_weights(member, member.followed_plan, args.round_timeout)
            if weights is not None:
                trainer.load_state_dict(weights)
                starts_from = member.followed_plan.get("starts_from")
                console.print(
                    f"Starting from the host's starting model {starts_from}"
                    if starts_from
                    else f"Starting from the global model of round {args.first_round - 1}",
                    markup=False,
                    highlight=False,
                )
        plan = training_plan(args, data)
        checkpoints = Checkpoints(args, trainer, plan, console)
        view = _train_rounds(member, trainer, evaluation, args, console, checkpoints)
        if (member.client.is_host or member.server is not None) and member.others:
            console.print("Waiting for the members to receive the final model")
            member.wait_for_others_to_leave(FAREWELL_SECONDS)
    except KeyboardInterrupt:
        entered = member.code or member.lan_address
        member.leave()
        if entered:
            console.print(f"Left {member.where}")
        if checkpoints is not None:
            checkpoints.report()
        return INTERRUPTED
    except BaseException:
        member.leave()
        raise
    where = member.where
    member.leave()
    console.print(view.round_table(dice_of))
    checkpoints.report()
    if args.save:
        save_model(trainer, args.save, plan)
        console.print(f"Saved the model to {args.save}", markup=False, highlight=False)
    console.print(f"Done: {len(view.results)} rounds; left {where}")
    return 0


def _start_rounds(member: RoomMember, trainer, args, console: Console) -> None:
    """Host: the plan (with --init, the starting model before it), then the architecture,
    which is the members' signal to start (relay rooms; a LAN session's welcome carries it)."""
    from ..training.unet import ARCHITECTURE

    send_plan(member, trainer, host_plan(args), console)
    if member.server is None:
        member.client.send_architecture(ARCHITECTURE)
    console.print(f"Training {ARCHITECTURE} with {_names(member)}")


def room_code_panel(code: str, title: str = "room code", spaced: bool = True) -> Panel:
    """The code (or a LAN address) in bold, a code spaced out so that it reads aloud well."""
    big = Text("  ".join(code) if spaced else code, style="bold", justify="center")
    return Panel(big, title=title, subtitle="share it", padding=(1, 6), expand=False)


def _train_rounds(
    member: RoomMember, trainer, evaluation, args, console: Console, checkpoints: Checkpoints
):
    """Runs FederatedTraining on a worker thread, so that Ctrl-C reaches the main thread at
    once; a lost connection ends the command. After a round whose global model arrived, the
    trainer holds that model (until the next round's training starts on the same thread),
    which goes into the session folder."""
    from ..training.federated import FederatedTraining

    training = FederatedTraining(
        member.client,
        trainer,
        rounds=args.rounds,
        epochs_per_round=args.epochs_per_round,
        round_timeout=args.round_timeout,
        evaluation=evaluation,
        first_round=args.first_round,
    )
    stop, finished = threading.Event(), threading.Event()
    outcome: dict = {}

    def on_event(event) -> None:
        view.on_event(event)
        if event.kind == "round" and event.result and event.result.global_dice is not None:
            checkpoints.save(event.round)

    def work() -> None:
        try:
            outcome["results"] = training.run(on_event, stop)
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
                if member.host_stopped.is_set():
                    break  # said by RoomMember; the rounds done so far are kept
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
