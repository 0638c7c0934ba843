"""`segmentation-suite predict`: masks for a folder of images (or synthetic ones) from a
saved model, with each image's Dice where the folder has reference masks."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .data import HELD_OUT_SEED, warn_skipped
from .model import read_model
from .options import CommandError
from .progress import format_dice


def run_predict(args: argparse.Namespace, console: Console) -> int:
    from ..training.data import DatasetError, member_shard
    from ..training.model_file import ModelFileError
    from ..training.predict import Predictor, predict_data, predict_folder, write_masks

    saved = read_model(args.model)
    try:
        predictor = Predictor(saved.build(), tile=args.tile, overlap=args.overlap)
    except ModelFileError as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:  # tile and overlap that do not go together
        raise CommandError(str(exc)) from None
    console.print(f"Predicting with {args.model} ({saved.architecture})", markup=False)
    with _PredictionView(console) as view:
        if args.synthetic:
            # Images the model did not train on (training draws seed=--seed).
            data = member_shard(args.member, args.samples, seed=HELD_OUT_SEED + args.seed)
            run = predict_data(predictor, data, progress=view.on_prediction)
        else:
            try:
                run = predict_folder(
                    predictor, args.data, progress=view.on_prediction, strict=args.strict_data
                )
            except DatasetError as exc:
                raise CommandError(str(exc)) from None
    warn_skipped(run.skipped)
    if not run.predictions:
        raise CommandError(f"No image in {args.data} could be read")
    try:
        written = write_masks(run.predictions, args.out)
    except OSError as exc:
        raise CommandError(f"Cannot write the masks to {args.out}: {exc.strerror or exc}") from None
    except ValueError as exc:  # the input folder itself
        raise CommandError(str(exc)) from None
    scored = [p for p in run.predictions if p.dice is not None]
    if scored:
        console.print(
            f"Mean Dice over {len(scored)} image{'s' if len(scored) != 1 else ''} with masks: "
            f"{run.mean_dice:.3f}"
        )
    else:
        console.print("No reference masks: no Dice")
    console.print(
        f"Wrote {len(written)} mask file{'s' if len(written) != 1 else ''} "
        f"({len(run.predictions)} images) to {args.out}",
        markup=False,
        highlight=False,
    )
    return 0


class _PredictionView:
    """A line per image; on a terminal, a bar below them too."""

    def __init__(self, console: Console):
        self.console = console
        self._progress = None
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("predicting", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}", markup=False),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._task = self._progress.add_task("", total=None)

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_prediction(self, done: int, total: int, prediction) -> None:
        height, width = prediction.mask.shape
        dice = "no mask" if prediction.dice is None else f"Dice {format_dice(prediction.dice)}"
        self.console.print(
            f"{prediction.name}: {width}x{height}, {dice}, {prediction.seconds:.2f} s",
            markup=False,
            highlight=False,
        )
        if self._progress is not None:
            self._progress.update(
                self._task, completed=done, total=total, description=prediction.name
            )
