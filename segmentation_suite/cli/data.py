"""The images a command trains on, from --data FOLDER or --synthetic, and what measures Dice."""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..training.settings import TRAINING_DEFAULTS
from .options import CommandError


def load_training_data(args: argparse.Namespace, console: Console):
    """(training data, evaluation data or None, a phrase naming the evaluation data).
    With --synthetic, `args.member` (1-based) must be known by now."""
    from ..training.data import DatasetError, held_out_set, load_folder, member_shard

    if args.synthetic:
        data = member_shard(args.member - 1, args.samples, seed=args.seed)
        evaluation = held_out_set(TRAINING_DEFAULTS.held_out_images, seed=10_000 + args.seed)
        console.print(
            f"{len(data)} synthetic images from microscope {args.member}; Dice is measured on "
            f"{len(evaluation)} held-out images from every microscope"
        )
        return data, evaluation, "held-out"
    try:
        data = _load_with_progress(args.data, console, load_folder)
    except DatasetError as exc:
        raise CommandError(str(exc)) from None
    training, validation = split(data, args.validation, args.seed)
    if validation is None:
        console.print(f"{len(training)} images from {args.data}; no validation images kept aside")
    else:
        console.print(
            f"{len(training)} images from {args.data} for training, "
            f"{len(validation)} kept aside to measure Dice"
        )
    return training, validation, "validation"


def split(data, fraction: float, seed: int):
    """(training, validation) with about `fraction` of the samples in validation, at least one
    in each when there are two or more; validation is None when nothing is kept aside."""
    kept = min(round(len(data) * fraction), len(data) - 1)
    if fraction > 0 and len(data) >= 2:
        kept = max(kept, 1)
    if kept <= 0:
        return data, None
    order = np.random.default_rng(seed).permutation(len(data))
    return data.subset(sorted(order[kept:])), data.subset(sorted(order[:kept]))


def _load_with_progress(folder: str, console: Console, load_folder):
    if not console.is_terminal:
        return load_folder(folder)
    label = TextColumn("loading {task.description}", markup=False)
    columns = (label, BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(folder, total=None)
        return load_folder(
            folder, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
