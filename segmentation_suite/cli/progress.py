"""Showing training as it happens: live bars on a terminal, a few plain lines otherwise.

On a terminal, one bar follows the batches of the current epoch and one the last weight
transfer (bytes and rate); finished rounds are printed above them as rows. When the output is
not a terminal (a pipe, a log file, a test), bars would either not show or flood, so each
epoch, transfer and round is one plain line instead.
"""

from __future__ import annotations

import threading

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


def describe_rate(size: int, seconds: float) -> str:
    rate = f"{decimal(int(size / seconds))}/s" if seconds > 0 else "instant"
    return f"{decimal(size)} in {seconds:.2f} s ({rate})"


def format_dice(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class LiveView:
    """A view whose live bars (a rich Progress, None when not on a terminal) show while it is
    entered: `with view: ...`."""

    _progress: Progress | None = None

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()


class TrainingView(LiveView):
    """Renders the TrainingEvents of segmentation_suite.training.federated (thread-safe)."""

    def __init__(self, console: Console, *, host: bool = False):
        self.console = console
        self.host = host  # the host's own push goes straight into its round: no transfer
        self.results: list = []
        self._lock = threading.Lock()
        self._shown: set[tuple[int, str]] = set()
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}", markup=False),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._batches = self._progress.add_task("training", total=None, detail="")
        self._transfer = None  # a second bar, from the first transfer on

    def line(self, text: str) -> None:
        """A line above the bars (or just a line)."""
        self.console.print(text, markup=False, highlight=False)

    def on_event(self, event) -> None:
        with self._lock:
            handler = getattr(self, f"_on_{event.kind}", None)
            if handler is not None:
                handler(event)

    # --- one method per TrainingEvent kind ------------------------------------------------

    def _on_batch(self, event) -> None:
        if self._progress is not None:
            loss = "" if event.loss is None else f"loss {event.loss:.4f}"
            self._progress.update(
                self._batches,
                description=where(event),
                completed=event.batch,
                total=event.batches,
                detail=loss,
            )

    def _on_epoch(self, event) -> None:
        if self._progress is None:
            loss = "" if event.loss is None else f": loss {event.loss:.4f}"
            self.line(f"  {where(event)}{loss}")

    def _on_upload(self, event) -> None:
        if not self.host:
            self._transfer_done(event, "sent weights to the host", event.bytes, event.seconds)

    def _on_download(self, event) -> None:
        if self.host:
            what = f"averaged the round's weights after {event.seconds:.2f} s"
            self._transfer_done(event, what, None, 0.0)
        else:
            self._transfer_done(event, "received the global model", event.bytes, event.seconds)

    def _transfer_done(self, event, what: str, size: int | None, seconds: float) -> None:
        rate = "" if size is None else describe_rate(size, seconds)
        if self._progress is not None:
            self._progress.update(
                self._transfer_task(),
                description=f"round {event.round}: {what}",
                completed=1,
                total=1,
                detail=rate,
            )
        else:
            self.line(f"  round {event.round}: {what}" + (f", {rate}" if rate else ""))

    def _on_waiting(self, event) -> None:
        routine = event.message.startswith("Waiting")
        if self._progress is not None and routine:
            self._progress.update(self._batches, description=f"round {event.round}: waiting")
            self._progress.update(
                self._transfer_task(), description=event.message, total=None, completed=0, detail=""
            )
        elif (event.round, event.message) not in self._shown:
            # The same trouble may be reported repeatedly; once per round is enough.
            self._shown.add((event.round, event.message))
            self.line(f"  {event.message}")

    def _on_round(self, event) -> None:
        result = event.result
        if result is None:
            return
        self.results.append(result)
        self.line(
            f"round {result.round}/{event.rounds}: loss {result.local_loss:.4f}, "
            f"local Dice {format_dice(result.local_dice)}, "
            f"global Dice {format_dice(result.global_dice)}, "
            f"{result.contributors} contributor{'s' if result.contributors != 1 else ''}, "
            f"{result.seconds:.1f} s"
        )
        if event.message:
            self.line(f"  {event.message}")

    def _on_stopped(self, event) -> None:
        if event.message:
            self.line(event.message)

    def _transfer_task(self):
        if self._transfer is None:
            self._transfer = self._progress.add_task("", total=None, detail="")
        return self._transfer

    # --- the summary ------------------------------------------------------------------------

    def round_table(self, dice_of: str) -> Table:
        table = Table(title="Rounds")
        for heading in ("round", "loss", f"local {dice_of} Dice", f"global {dice_of} Dice"):
            table.add_column(heading, justify="right")
        table.add_column("contributors", justify="right")
        table.add_column("seconds", justify="right")
        for r in self.results:
            table.add_row(
                str(r.round),
                f"{r.local_loss:.4f}",
                format_dice(r.local_dice),
                format_dice(r.global_dice),
                str(r.contributors),
                f"{r.seconds:.1f}",
            )
        return table


def where(event) -> str:
    """`round 2/5, epoch 1/3`, or `epoch 1/3` outside rounds."""
    epoch = f"epoch {event.epoch}/{event.epochs}" if event.epochs else ""
    if event.rounds:
        return f"round {event.round}/{event.rounds}" + (f", {epoch}" if epoch else "")
    return epoch
