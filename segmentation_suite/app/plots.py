"""Live loss and Dice curves (pyqtgraph) of the local and the global model."""

from __future__ import annotations

import math

import pyqtgraph as pg
from qtpy.QtWidgets import QHBoxLayout, QWidget

LOCAL_COLOUR = "#1f77b4"
GLOBAL_COLOUR = "#d62728"


class MetricsPlot(QWidget):
    """Left: the local model's training loss per epoch, and the global model's loss on the
    same images when it arrives (at the round's end). Right: Dice per round of the local
    model (after local training) and of the global model (after loading it). Both x axes
    are the session's rounds, the numbering of the status line and the table: an epoch is
    drawn at its fraction of its round (epoch 1 of 2 in round 3 at 2.5)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.loss_plot = _plot("Loss on your images", "round", "loss")
        # Dice curves run high: their legend goes to the bottom right, out of their way.
        self.dice_plot = _plot("Dice on evaluation images", "round", "Dice", legend=(-10, -30))
        self.dice_plot.setYRange(0.0, 1.0)
        layout.addWidget(self.loss_plot)
        layout.addWidget(self.dice_plot)
        self.loss_points: list[tuple[float, float]] = []
        self.local_dice_points: list[tuple[float, float]] = []
        self.global_dice_points: list[tuple[float, float]] = []
        self.global_loss_points: list[tuple[float, float]] = []
        self._loss_curve = _curve(self.loss_plot, LOCAL_COLOUR, "o", 6, "local loss")
        self._global_loss_curve = _curve(self.loss_plot, GLOBAL_COLOUR, "s", 7, "global model")
        self._local_curve = _curve(self.dice_plot, LOCAL_COLOUR, "o", 7, "local model")
        self._global_curve = _curve(self.dice_plot, GLOBAL_COLOUR, "s", 7, "global model")

    def add_loss(self, round_position: float, loss: float) -> None:
        """An epoch's loss at `round_position` (the round, or a fraction before its end)."""
        self.loss_points.append((round_position, loss))
        _show(self.loss_plot, self._loss_curve, self.loss_points)

    def add_round(
        self,
        round_number: float,
        local_dice: float,
        global_dice: float | None,
        global_loss: float | None = None,
    ) -> None:
        """A finished round; `global_loss` is drawn at the round's end, like its last epoch."""
        if global_loss is not None:
            self.global_loss_points.append((round_number, global_loss))
            _show(self.loss_plot, self._global_loss_curve, self.global_loss_points)
        self.local_dice_points.append((round_number, local_dice))
        _show(self.dice_plot, self._local_curve, self.local_dice_points)
        if global_dice is not None:
            self.global_dice_points.append((round_number, global_dice))
            _show(self.dice_plot, self._global_curve, self.global_dice_points)

    def clear(self) -> None:
        self.loss_points.clear()
        self.local_dice_points.clear()
        self.global_dice_points.clear()
        self.global_loss_points.clear()
        curves = (self._loss_curve, self._global_loss_curve, self._local_curve, self._global_curve)
        for curve in curves:
            curve.setData([], [])

    @property
    def point_count(self) -> int:
        lists = (
            self.loss_points,
            self.global_loss_points,
            self.local_dice_points,
            self.global_dice_points,
        )
        return sum(len(points) for points in lists)


def _show(plot: pg.PlotWidget, curve, points: list[tuple[float, float]]) -> None:
    curve.setData([x for x, _ in points], [y for _, y in points])
    # Whole epochs and rounds only: about ten labelled ticks, never fractions.
    last = max(x for x, _ in points)
    step = max(1, math.ceil(last / 10))
    plot.getAxis("bottom").setTickSpacing(step, step)


def _plot(
    title: str, x_label: str, y_label: str, legend: tuple[int, int] = (-10, 10)
) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="#222")
    plot.setLabel("bottom", x_label)
    plot.setLabel("left", y_label)
    plot.showGrid(x=True, y=True, alpha=0.25)
    plot.addLegend(offset=legend)
    plot.setMinimumHeight(200)
    return plot


def _curve(plot, colour, symbol: str, size: int, name: str):
    """An empty line-and-markers curve in `plot`, filled as points arrive."""
    return plot.plot(
        [],
        [],
        pen=pg.mkPen(colour, width=2),
        symbol=symbol,
        symbolSize=size,
        symbolBrush=colour,
        name=name,
    )
