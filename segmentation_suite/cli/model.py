"""The model a command trains, built from the training options, and saving it."""

from __future__ import annotations

import argparse

from .options import CommandError


def build_trainer(data, args: argparse.Namespace):
    from ..training.trainer import Trainer

    return Trainer(
        data, seed=args.seed, learning_rate=args.learning_rate, batch_size=args.batch_size
    )


def save_model(trainer, path: str) -> None:
    import torch

    try:
        torch.save(trainer.state_dict(), path)
    except OSError as exc:
        raise CommandError(f"Cannot save the model to {path}: {exc.strerror or exc}") from None
