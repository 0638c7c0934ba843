"""`segmentation-suite demo`: a local relay and simulated colleagues training together.

A relay starts on a free loopback port; each colleague is a separate process (spawned, one
torch thread each) with images from its own simulated microscope. Colleague 1 creates the
room, the others join with its code; each trains the U-Net on its own images, and every round
the members push their weights to colleague 1, which averages them (FedAvg) and sends the
global model back. At the end each colleague also trains a local-only model (same epochs, its
own images, no sharing), and the table compares the two on held-out images from every
microscope. Everything is seeded, so two runs print the same table: the colleagues also take
turns to push (colleague 1, then 2, ...), because the host sums the pushes in arrival order and
floating-point sums depend on their order.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from ..relay_process import RelayProcess
from ..training.settings import DEMO_SETTINGS
from .demo_view import DemoView

ROUND_TIMEOUT = 60.0


@dataclass
class Channels:
    """What the processes share: the room code (colleague 1 to the others), events (the
    colleagues to the parent) and whose turn it is to push (see `PushTurns`)."""

    codes: Any
    events: Any
    pushes: Any  # a shared int: pushes done so far, all rounds together


@dataclass(frozen=True)
class DemoPlan:
    """What the colleagues run: the command's options on top of training.DEMO_SETTINGS, the
    settings under which sharing is shown to beat training alone (tests/training)."""

    colleagues: int
    rounds: int
    epochs: int
    samples: int
    seed: int
    live: bool  # send batch progress (only shown on a terminal)
    held_out: int = DEMO_SETTINGS.held_out_images
    image_size: int = DEMO_SETTINGS.image_size
    learning_rate: float = DEMO_SETTINGS.learning_rate
    batch_size: int = DEMO_SETTINGS.batch_size


# --- the whole demo (the parent process) ---------------------------------------------------


def run_demo(args: argparse.Namespace, console: Console) -> int:
    settings = DemoPlan(
        colleagues=args.colleagues,
        rounds=args.rounds,
        epochs=args.epochs,
        samples=args.images,
        seed=args.seed,
        live=console.is_terminal and not args.quiet,
    )
    view = DemoView(console, settings, quiet=args.quiet)
    context = multiprocessing.get_context("spawn")
    channels = Channels(context.Queue(), context.Queue(), context.Value("i", 0))
    started = time.monotonic()
    with RelayProcess() as relay:
        view.line(f"Relay listening on {relay.url}")
        processes = [
            context.Process(
                target=run_colleague,
                args=(i, settings, relay.url, channels),
                name=f"colleague-{i + 1}",
                daemon=True,
            )
            for i in range(settings.colleagues)
        ]
        for process in processes:
            process.start()
        try:
            with view:
                failure = _follow(processes, channels.events, view, started + args.timeout)
        except KeyboardInterrupt:
            _stop(processes, wait=0)
            console.print("Stopped")
            return 130
        _stop(processes, wait=0 if failure else 10)
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    view.final_table(time.monotonic() - started)
    return 0


def _follow(processes, events, view: DemoView, deadline: float) -> str | None:
    """Shows the colleagues' events until each reported its final Dice; a failure message
    if one failed, stopped, or the demo ran out of time."""
    while not view.finished():
        try:
            event = events.get(timeout=0.5)
        except queue.Empty:
            if time.monotonic() > deadline:
                return "the demo timed out (--timeout)"
            stopped = [p.name for p in processes if not p.is_alive() and p.exitcode != 0]
            if stopped:
                return f"{stopped[0]} stopped unexpectedly"
            continue
        if event[0] == "error":
            return f"colleague {event[1] + 1}: {event[2]}"
        view.on_event(event)
    return None


def _stop(processes, wait: float) -> None:
    """Lets the colleagues finish (up to `wait` seconds), then ends those still running."""
    deadline = time.monotonic() + wait
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


# --- one colleague (a child process) --------------------------------------------------------


def run_colleague(index: int, settings: DemoPlan, relay_url: str, channels: Channels) -> None:
    try:
        _colleague(index, settings, relay_url, channels)
    except Exception as exc:  # told to the parent, which prints it and exits 1
        channels.events.put(("error", index, f"{type(exc).__name__}: {exc}"))
    except KeyboardInterrupt:  # Ctrl-C reaches every process; the parent says "Stopped"
        pass


def _colleague(index: int, settings: DemoPlan, relay_url: str, channels: Channels) -> None:
    import torch

    torch.set_num_threads(1)
    logging.getLogger("segmentation_suite").setLevel(logging.CRITICAL)
    from ..training.data import held_out_set, member_shard
    from ..training.federated import FederatedTraining

    events = channels.events
    data = member_shard(index, settings.samples, seed=settings.seed, size=settings.image_size)
    held_out = held_out_set(
        settings.held_out, seed=10_000 + settings.seed, size=settings.image_size
    )
    member = _enter_room(index, settings, relay_url, channels)
    turns = PushTurns(channels.pushes, index, settings.colleagues)

    def on_event(event) -> None:
        if event.kind == "epoch" and event.epoch == event.epochs:
            turns.wait(event.round)  # the push follows this round's last epoch
        elif event.kind == "upload":
            turns.done()
        elif event.kind == "batch" and settings.live:
            events.put(("batch", index, event.round, event.epoch, event.batch, event.batches))
        elif event.kind == "round":
            result = event.result
            events.put(("round", index, result.round, result.local_loss, result.global_dice))

    shared = _trainer(data, settings)
    training = FederatedTraining(
        member.client,
        shared,
        rounds=settings.rounds,
        epochs_per_round=settings.epochs,
        round_timeout=ROUND_TIMEOUT,
        evaluation=held_out,
    )
    results = training.run(on_event)
    if len(results) < settings.rounds or any(r.global_dice is None for r in results):
        raise RuntimeError("a round's global model did not arrive")
    if index != 0:
        member.leave()  # it has the final model; the host waits for everyone to have it

    local_only = _trainer(data, settings)
    epochs = settings.rounds * settings.epochs
    for epoch in range(1, epochs + 1):
        local_only.train_epoch()
        events.put(("local", index, epoch, epochs))
    events.put(("final", index, local_only.evaluate(held_out), shared.evaluate(held_out)))
    if index == 0:
        member.wait_for_others_to_leave(30)
        member.leave()


def _trainer(data, settings: DemoPlan):
    from ..training.trainer import Trainer

    return Trainer(
        data,
        seed=settings.seed,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
    )


def _enter_room(index: int, settings: DemoPlan, relay_url: str, channels: Channels):
    """Colleague 1 creates the room and starts once everyone is in; the others join."""
    from ..training.unet import ARCHITECTURE
    from .room import RoomMember

    name = f"colleague {index + 1}"
    member = RoomMember(lambda text: None, aggregation_timeout=ROUND_TIMEOUT)
    if index == 0:
        code = member.create(name, relay_url)
        for _ in range(settings.colleagues - 1):
            channels.codes.put(code)
        channels.events.put(("room", index, code))
        member.wait_for_members(settings.colleagues - 1, start_early=threading.Event())
        member.client.host_trains = True  # every round waits for colleague 1's push too
        member.client.send_architecture(ARCHITECTURE)  # also the others' signal to start
    else:
        code = channels.codes.get(timeout=60)
        member.join(code.lower(), name, relay_url)  # codes are case-insensitive
        channels.events.put(("joined", index, code))
        member.wait_for_architecture()
    return member


class PushTurns:
    """Colleague i pushes round r's weights only after colleagues 1..i-1 pushed theirs: the
    host then sums every round in the same order, so runs with one seed match exactly."""

    def __init__(self, pushes, index: int, colleagues: int):
        self.pushes, self.index, self.colleagues = pushes, index, colleagues

    def wait(self, round_number: int, timeout: float = ROUND_TIMEOUT) -> None:
        turn = (round_number - 1) * self.colleagues + self.index
        deadline = time.monotonic() + timeout
        while self.pushes.value < turn and time.monotonic() < deadline:
            time.sleep(0.005)

    def done(self) -> None:
        with self.pushes.get_lock():
            self.pushes.value += 1
