"""What `segmentation-suite demo` prints: progress while it runs, a row per round, the table.

On a terminal a bar per colleague follows its batches; otherwise progress is one line per
round and per finished local-only model. The final table's rows are plain fixed-width lines,
`  1             0.712     0.845` (colleague, local-only Dice, shared Dice), for scripts too.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from .progress import LiveView


class DemoView(LiveView):
    def __init__(self, console: Console, settings, *, quiet: bool = False):
        self.console = console
        self.settings = settings
        self.quiet = quiet
        self.losses: dict[int, dict[int, float]] = {}  # round -> colleague -> local loss
        self.shared_dice: dict[int, float | None] = {}  # round -> Dice of the global model
        self.finals: dict[int, tuple[float, float]] = {}  # colleague -> (local only, shared)
        self._progress: Progress | None = None
        if settings.live:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                TaskProgressColumn(),
                console=console,
                transient=True,
            )
            self._tasks = [
                self._progress.add_task(f"colleague {i + 1}", total=None)
                for i in range(settings.colleagues)
            ]

    def line(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, highlight=False)

    def finished(self) -> bool:
        return len(self.finals) == self.settings.colleagues

    def on_event(self, event: tuple) -> None:
        kind, index, *rest = event
        getattr(self, f"_on_{kind}")(index, *rest)

    # --- events from the colleagues ---------------------------------------------------------

    def _on_room(self, index: int, code: str) -> None:
        self.line(f"colleague {index + 1} created room {code}")

    def _on_joined(self, index: int, code: str) -> None:
        self.line(f"colleague {index + 1} joined room {code}")

    def _on_batch(self, index: int, round_: int, epoch: int, batch: int, batches: int) -> None:
        if self._progress is not None:
            description = (
                f"colleague {index + 1}  round {round_}/{self.settings.rounds}, "
                f"epoch {epoch}/{self.settings.epochs}"
            )
            self._progress.update(
                self._tasks[index], description=description, completed=batch, total=batches
            )

    def _on_round(self, index: int, round_: int, loss: float, global_dice: float | None) -> None:
        self.losses.setdefault(round_, {})[index] = loss
        if index == 0:
            self.shared_dice[round_] = global_dice
        if len(self.losses[round_]) < self.settings.colleagues:
            return
        rounds = self.settings.rounds
        width = len(f"round {rounds}/{rounds}")
        if round_ == 1:
            self.line("each colleague's local training loss, and the shared model's held-out Dice:")
            names = "".join(f"{f'loss {i + 1}':>10}" for i in range(self.settings.colleagues))
            self.line(f"  {'round':<{width}}{names}{'Dice':>10}")
        losses = "".join(f"{self.losses[round_][i]:>10.4f}" for i in sorted(self.losses[round_]))
        dice = self.shared_dice.get(round_)
        dice_text = "-" if dice is None else f"{dice:.3f}"
        self.line(f"  {f'round {round_}/{rounds}':<{width}}{losses}{dice_text:>10}")
        if round_ == self.settings.rounds:
            epochs = self.settings.rounds * self.settings.epochs
            self.line(f"training local-only models for comparison ({epochs} epochs each)")

    def _on_local(self, index: int, epoch: int, epochs: int) -> None:
        if self._progress is not None:
            self._progress.update(
                self._tasks[index],
                description=f"colleague {index + 1}  local-only, epoch {epoch}/{epochs}",
                completed=epoch,
                total=epochs,
            )

    def _on_final(self, index: int, local_only: float, shared: float) -> None:
        self.finals[index] = (local_only, shared)
        self.line(f"colleague {index + 1}: local-only model done")

    # --- the end -----------------------------------------------------------------------------

    def final_table(self, seconds: float) -> None:
        """Printed even with --quiet: the demo's result."""
        say = self._print
        if not self.quiet:
            say("")
        say("held-out Dice (images from every microscope):")
        say(f"  {'colleague':<12}{'local only':>12}{'shared':>10}")
        for index in sorted(self.finals):
            local_only, shared = self.finals[index]
            say(f"  {index + 1:<12}{local_only:>12.3f}{shared:>10.3f}")
        better = all(shared > local for local, shared in self.finals.values())
        say(
            "the shared model beats every local-only model"
            if better
            else "the shared model does not beat every local-only model this time"
        )
        if not self.quiet:
            say(f"({seconds:.0f} s)")

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)
