"""The report's PNG plots, drawn with matplotlib's Agg canvas (no display, no pyplot state) and saved
without the ``Software`` metadata entry so the same numbers give the same file."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from vlp.sweep.results import Row

SEED_SPREAD = 0.25  # seeds of one arm are spread over this width, right of its error bar
SEED_SHIFT = 0.1  # the error bar sits this far left of the arm's tick, its seeds as far right


def _figure(width: float) -> Figure:
    figure = Figure(figsize=(width, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def plot_metric(path: Path, name: str, note: str, rows: Sequence[Row], baseline: str | None) -> Path:
    """Each arm's mean with its 95 % interval as an error bar (none at n < 2) and its seeds as dots; the
    baseline's mean as a dashed line."""
    figure = _figure(max(4.0, 1.0 + 0.9 * len(rows)))
    axes = figure.add_subplot()
    for x, row in enumerate(rows):
        seeds = sorted(row.values)
        offsets = [SEED_SHIFT + SEED_SPREAD * i / max(1, len(seeds) - 1) for i in range(len(seeds))]
        axes.scatter([x + o for o in offsets], [row.values[s] for s in seeds], s=14, color="0.55", zorder=2)
        summary = row.summary
        if summary.n == 0:
            continue
        error = None
        if summary.has_interval:
            error = [[summary.mean - summary.ci_low], [summary.ci_high - summary.mean]]
        axes.errorbar(
            [x - SEED_SHIFT],
            [summary.mean],
            yerr=error,
            fmt="o",
            color="C0",
            capsize=6,
            markersize=7,
            zorder=3,
        )
        if row.arm == baseline:
            axes.axhline(summary.mean, color="C0", linestyle="--", linewidth=0.8, zorder=1)
    axes.set_xticks(range(len(rows)), [row.arm for row in rows], rotation=20, ha="right")
    axes.set_xlim(-0.6, len(rows) - 0.4)
    axes.set_ylabel(name)
    axes.set_title(f"{name} ({note})\nmean and 95 % CI; seeds as grey dots", fontsize=10)
    axes.grid(axis="y", linewidth=0.4)
    return _save(figure, path)


def plot_curves(path: Path, name: str, note: str, curves: Mapping[str, Sequence[tuple[int, float]]]) -> Path:
    """Each arm's validation curve: the mean over its seeds at each validation step."""
    figure = _figure(6.0)
    axes = figure.add_subplot()
    drawn = False
    for i, (arm, points) in enumerate(curves.items()):
        points = [(step, value) for step, value in points if math.isfinite(value)]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, marker="o", markersize=3, color=f"C{i % 10}", label=arm)
            drawn = True
    if drawn:
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no validations recorded", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("step")
    axes.set_ylabel(name)
    axes.set_title(f"{name} ({note})\nvalidation curves, mean over seeds", fontsize=10)
    axes.grid(linewidth=0.4)
    return _save(figure, path)
