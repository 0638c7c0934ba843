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
    from ..training.predict import Predictor, iter_predictions, write_masks

    saved = read_model(args.model)
    try:
        predictor = Predictor(saved.build(), tile=args.tile, overlap=args.overlap)
    except ModelFileError as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:  # tile and overlap that do not go together
        raise CommandError(str(exc)) from None
    console.print(f"Predicting with {args.model} ({saved.architecture})", markup=False)
    skipped: list = []
    dice: list[float | None] = []
    files = 0
    with _PredictionView(console) as view:
        if args.synthetic:
            # Images the model did not train on (training draws seed=--seed).
            data = member_shard(args.member - 1, args.samples, seed=HELD_OUT_SEED + args.seed)
            batches = _synthetic(predictor, data, view.on_prediction)
        else:
            batches = iter_predictions(
                predictor,
                args.data,
                progress=view.on_prediction,
                strict=args.strict_data,
                skipped=skipped,
            )
        try:
            # Each file's masks are written as soon as it is done, then let go: a folder of
            # large images never has to fit in memory.
            for predictions in batches:
                files += len(write_masks(predictions, args.out))
                dice.extend(p.dice for p in predictions)
        except DatasetError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(
                f"Cannot write the masks to {args.out}: {exc.strerror or exc}"
            ) from None
        except ValueError as exc:  # --out is the input folder
            raise CommandError(str(exc)) from None
    warn_skipped(skipped)
    if not dice:
        raise CommandError(f"No image in {args.data} could be read")
    scored = [d for d in dice if d is not None]
    if scored:
        console.print(
            f"Mean Dice over {len(scored)} image{'s' if len(scored) != 1 else ''} with masks: "
            f"{sum(scored) / len(scored):.3f}"
        )
    else:
        console.print("No reference masks: no Dice")
    console.print(
        f"Wrote {files} mask file{'s' if files != 1 else ''} ({len(dice)} images) to {args.out}",
        markup=False,
        highlight=False,
    )
    return 0


def _synthetic(predictor, data, progress):
    """Synthetic images one at a time, like iter_predictions does files."""
    from ..training.predict import predict_data

    for index in range(len(data)):
        run = predict_data(predictor, data.subset([index]))
        progress(index + 1, len(data), run.predictions[0])
        yield run.predictions


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
