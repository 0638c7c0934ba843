"""The images a command trains on, from --data FOLDER or --synthetic, and what measures Dice."""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..training.settings import TRAINING_DEFAULTS
from .options import CommandError

#: Added to --seed for synthetic images that measure a model: a draw no training run with the
#: same --seed has seen (training draws member_shard(seed=--seed)).
HELD_OUT_SEED = 10_000


def load_training_data(args: argparse.Namespace, console: Console):
    """(training data, evaluation data or None, a phrase naming the evaluation data).
    With --synthetic, `args.member` (1-based) must be known by now."""
    from ..training.data import DatasetError, held_out_set, load_folder, member_shard

    if args.synthetic:
        data = member_shard(args.member - 1, args.samples, seed=args.seed)
        evaluation = held_out_set(TRAINING_DEFAULTS.held_out_images, seed=HELD_OUT_SEED + args.seed)
        console.print(
            f"{len(data)} synthetic images from microscope {args.member}; Dice is measured on "
            f"{len(evaluation)} held-out images from every microscope"
        )
        return data, evaluation, "held-out"
    strict = getattr(args, "strict_data", False)
    try:
        data = _load_with_progress(args.data, console, load_folder, strict=strict, seed=args.seed)
    except DatasetError as exc:
        raise CommandError(str(exc)) from None
    warn_skipped(data.skipped)
    if len(set(data.sources)) != len(data):
        console.print(
            f"{len(data)} samples from {len(set(data.sources))} images (pages of stacks, crops "
            "of images of different sizes)"
        )
    training, validation = split(data, args.validation, args.seed)
    # Pages and crops are samples, not images: say which is counted.
    unit = "images" if len(set(data.sources)) == len(data) else "samples"
    if validation is None:
        console.print(f"{len(training)} {unit} from {args.data}; no validation {unit} kept aside")
    else:
        console.print(
            f"{len(training)} {unit} from {args.data} for training, "
            f"{len(validation)} kept aside to measure Dice"
        )
    return training, validation, "validation"


def warn_skipped(skipped) -> None:
    """Each file a folder had that could not be used, on stderr: never skipped silently."""
    if not skipped:
        return
    warnings = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
    for entry in skipped:
        warnings.print(f"warning: skipped {entry}")
    count = len(skipped)
    warnings.print(
        f"warning: {count} unusable file{'s' if count != 1 else ''} left out "
        "(--strict-data refuses such a folder instead)"
    )


def split(data, fraction: float, seed: int):
    """(training, validation) with about `fraction` of the images in validation, at least one
    in each when there are two or more; validation is None when nothing is kept aside. All
    samples of one image (the pages of a stack, the crops of a large image) stay together."""
    sources = list(dict.fromkeys(data.sources))
    kept = min(round(len(sources) * fraction), len(sources) - 1)
    if fraction > 0 and len(sources) >= 2:
        kept = max(kept, 1)
    if kept <= 0:
        return data, None
    order = np.random.default_rng(seed).permutation(len(sources))
    aside = {sources[i] for i in order[:kept]}
    validation = [i for i, source in enumerate(data.sources) if source in aside]
    training = [i for i, source in enumerate(data.sources) if source not in aside]
    return data.subset(training), data.subset(validation)


def _load_with_progress(folder: str, console: Console, load_folder, **options):
    if not console.is_terminal:
        return load_folder(folder, **options)
    label = TextColumn("loading {task.description}", markup=False)
    columns = (label, BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(folder, total=None)
        return load_folder(
            folder,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            **options,
        )
