"""`segmentation-suite train`: train on this machine only, no relay, and report the Dice."""

from __future__ import annotations

import argparse

from rich.console import Console

from .data import load_training_data
from .model import Checkpoints, build_trainer, save_model, training_plan
from .progress import TrainingView, format_dice
from .session import INTERRUPTED


def run_train(args: argparse.Namespace, console: Console) -> int:
    from ..training.federated import TrainingEvent

    data, evaluation, dice_of = load_training_data(args, console)
    trainer = build_trainer(data, args)
    plan = training_plan(args, data)
    checkpoints = Checkpoints(args, trainer, plan, console)
    dice = None
    try:
        with TrainingView(console) as view:
            for epoch in range(1, args.epochs + 1):

                def on_batch(batch: int, batches: int, epoch: int = epoch) -> None:
                    view.on_event(
                        TrainingEvent(
                            kind="batch",
                            round=0,
                            rounds=0,
                            epoch=epoch,
                            epochs=args.epochs,
                            batch=batch,
                            batches=batches,
                        )
                    )

                loss = trainer.train_epoch(progress=on_batch)
                dice = trainer.evaluate(evaluation) if evaluation is not None else None
                measured = "" if dice is None else f", {dice_of} Dice {format_dice(dice)}"
                view.line(f"epoch {epoch}/{args.epochs}: loss {loss:.4f}{measured}")
                checkpoints.save(epoch, kind="epoch")
    except KeyboardInterrupt:
        console.print("Stopped")
        checkpoints.report()
        return INTERRUPTED
    if dice is not None:
        epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
        console.print(f"{dice_of.capitalize()} Dice after {epochs}: {dice:.3f}")
    checkpoints.report()
    if args.save:
        save_model(trainer, args.save, plan)
        console.print(f"Saved the model to {args.save}", markup=False, highlight=False)
    return 0
