"""The model a command trains (fresh, or from --init FILE), its training plan, saving it
(--save FILE) and the session folder that keeps every round's global model."""

from __future__ import annotations

import argparse

from rich.console import Console

from .options import CommandError


def build_trainer(data, args: argparse.Namespace):
    from ..training.trainer import Trainer

    trainer = Trainer(
        data, seed=args.seed, learning_rate=args.learning_rate, batch_size=args.batch_size
    )
    if getattr(args, "init", None):
        saved = read_starting_model(args.init, trainer.architecture)
        try:
            trainer.load_state_dict(saved.weights)
        except ValueError as exc:
            raise CommandError(f"{args.init}: {exc}") from None
    return trainer


def read_starting_model(path: str, architecture: str):
    """--init FILE: a model file of `architecture`, or CommandError in words."""
    from ..training.model_file import ModelFileError, load_starting_model

    try:
        return load_starting_model(path, architecture)
    except ModelFileError as exc:
        raise CommandError(str(exc)) from None


def read_model(path: str):
    """A model file, or CommandError in words."""
    from ..training.model_file import ModelFileError, load_model

    try:
        return load_model(path)
    except ModelFileError as exc:
        raise CommandError(str(exc)) from None


def training_plan(args: argparse.Namespace, data) -> dict:
    """What the model file's `training` metadata records about this command's run."""
    plan = {
        "command": args.command,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "data": "synthetic" if args.synthetic else "folder",
        "images": len(data),
    }
    if args.synthetic:
        plan.update(member=args.member, samples=args.samples)
    if args.command == "train":
        plan["epochs"] = args.epochs
    else:
        plan.update(rounds=args.rounds, epochs_per_round=args.epochs_per_round)
    if getattr(args, "init", None):
        plan["init"] = str(args.init)
    return plan


def save_model(trainer, path: str, plan: dict) -> None:
    from ..training.model_file import save_model as write

    try:
        write(path, trainer.state_dict(), architecture=trainer.architecture, training=plan)
    except OSError as exc:
        raise CommandError(f"Cannot save the model to {path}: {exc.strerror or exc}") from None


class Checkpoints:
    """Keeps each round's (or epoch's) model in a new session folder, made at the first save
    (--checkpoints DIR, default the user's data folder; --no-checkpoints keeps none). A failed
    save is told once and training goes on: the checkpoints are a convenience."""

    def __init__(self, args: argparse.Namespace, trainer, plan: dict, console: Console):
        self.enabled = not getattr(args, "no_checkpoints", False)
        self.root = getattr(args, "checkpoints", None)
        self.trainer = trainer
        self.plan = plan
        self.console = console
        self.tag = args.command
        self.folder = None
        self._failed = False

    def save(self, number: int, kind: str = "round") -> None:
        if not self.enabled or self._failed:
            return
        from ..training.model_file import CheckpointFolder

        try:
            if self.folder is None:
                self.folder = CheckpointFolder.new(
                    self.tag,
                    architecture=self.trainer.architecture,
                    training=self.plan,
                    root=self.root,
                )
            self.folder.save(number, self.trainer.state_dict(), kind=kind)
        except OSError as exc:
            self._failed = True
            self.console.print(
                f"warning: cannot keep checkpoints ({exc.strerror or exc}); training goes on",
                markup=False,
            )

    def report(self) -> None:
        if self.folder is not None and self.folder.saved:
            count = len(self.folder.saved)
            self.console.print(
                f"Kept {count} checkpoint{'s' if count != 1 else ''} in {self.folder.path}",
                markup=False,
                highlight=False,
            )
