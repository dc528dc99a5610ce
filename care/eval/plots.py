"""The results figure of a run: training curves over steps and accuracy per level before/after each stage.

Input is plain data, so any stage can draw it from what it has (DuckDB metrics, summaries) without pandas:

* ``training``: metric name -> points ``[(step, value), ...]`` for one run, or metric name -> run label ->
  points to overlay runs (e.g. ``grpo`` vs ``grpo_care``). Known names get their own titles
  (:data:`METRIC_TITLES`); any other name is drawn too, titled from the name. Non-finite values are dropped.
* ``levels``: stage label (``"base"``, ``"after SFT"``, ``"after RL"``, in the order given) -> level ->
  ``(accuracy, ci_low, ci_high)``; :func:`level_points` turns :class:`~care.eval.scoring.LevelAccuracy` records
  into that.

Drawn with matplotlib's object API on an Agg canvas (no pyplot global state, no display needed), written
atomically (temp file, then rename).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from care.eval.scoring import LevelAccuracy, level_sort_key

Points = Sequence[tuple[float, float]]
SeriesGroup = Points | Mapping[str, Points]
LevelPoint = tuple[float, float, float]

METRIC_TITLES = {
    "reward_mean": ("Mean reward", "reward"),
    "bonus_rate": ("Consistency bonus rate", "share of rollouts"),
    "consistency_likelihood_mean": ("Reference likelihood of the answer (mean)", "likelihood"),
    "accuracy": ("Accuracy", "accuracy"),
    "stage_seconds": ("Seconds per stage per iteration", "seconds"),
}
# Metrics that are shares: drawn on a fixed 0-100 % axis so runs and steps compare at a glance.
SHARE_METRICS = {"bonus_rate", "accuracy", "consistency_likelihood_mean"}


def level_points(records: Sequence[LevelAccuracy]) -> dict[str, LevelPoint]:
    """``level -> (accuracy, ci_low, ci_high)`` from accuracy records."""
    return {r.level: (r.accuracy, r.ci_low, r.ci_high) for r in records}


def _as_groups(series: SeriesGroup) -> dict[str, list[tuple[float, float]]]:
    if isinstance(series, Mapping):
        groups = {str(label): list(points) for label, points in series.items()}
    else:
        groups = {"": list(series)}
    return {
        label: sorted((float(s), float(v)) for s, v in points if math.isfinite(float(s)) and math.isfinite(float(v)))
        for label, points in groups.items()
    }


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.45")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_metric(ax: Axes, name: str, series: SeriesGroup) -> None:
    text = name.replace("_", " ")
    # upper-case the first letter only: str.capitalize would turn "SFT loss" into "Sft loss"
    title, ylabel = METRIC_TITLES.get(name, (text[:1].upper() + text[1:], name))
    ax.set_title(title)
    groups = {label: pts for label, pts in _as_groups(series).items() if pts}
    if not groups:
        _no_data(ax, "no data")
        return
    for label, points in groups.items():
        steps, values = zip(*points, strict=True)
        # Markers make short series (and a single point) visible; long ones read better as plain lines.
        ax.plot(steps, values, marker="o" if len(points) <= 40 else None, markersize=3.5, linewidth=1.6,
                label=label or None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if name in SHARE_METRICS:
        ax.set_ylim(-0.02, 1.02)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(alpha=0.3)
    if any(groups):
        ax.legend(fontsize=8, frameon=False)


def _draw_levels(ax: Axes, levels: Mapping[str, Mapping[str, LevelPoint]], chance: float | None) -> None:
    ax.set_title("Accuracy per level (95 % Wilson interval)")
    names = sorted({lv for per_stage in levels.values() for lv in per_stage}, key=level_sort_key)
    stages = list(levels)
    if not names:
        _no_data(ax, "no evaluation yet")
        return
    width = min(0.8 / len(stages), 0.3)  # a lone bar per level stays a bar, not a slab
    for s, stage in enumerate(stages):
        xs, accs, lows, highs = [], [], [], []
        for i, level in enumerate(names):
            point = levels[stage].get(level)
            if point is None or not math.isfinite(point[0]):
                continue
            acc, low, high = point
            xs.append(i + width * (s - (len(stages) - 1) / 2))
            accs.append(acc)
            lows.append(max(0.0, acc - low))
            highs.append(max(0.0, high - acc))
        if not xs:
            continue
        bars = ax.bar(xs, accs, width * 0.92, yerr=[lows, highs], capsize=3, label=stage,
                      error_kw={"elinewidth": 1, "ecolor": "0.25"})
        for bar, acc, high in zip(bars, accs, highs, strict=True):
            ax.annotate(f"{acc:.0%}", (bar.get_x() + bar.get_width() / 2, acc + high), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8)
    if chance is not None:
        ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label=f"chance ({chance:.0%})")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, 1.12)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, ncols=min(len(stages) + 1, 5), loc="upper left")


def plot_results(
    path: str | os.PathLike,
    *,
    training: Mapping[str, SeriesGroup] | None = None,
    levels: Mapping[str, Mapping[str, LevelPoint]] | None = None,
    title: str = "GRPO-CARE run",
    chance: float | None = 0.25,
) -> Path:
    """Write the results figure as a PNG at ``path`` (parent folders created) and return the path.

    One panel per training metric (3 per row; 2 for exactly 4 metrics), then the per-level accuracy bars across
    the full width. Missing parts are simply left out; with no data at all the figure says so.
    """
    path = Path(path)
    training = dict(training or {})
    levels = dict(levels or {})
    n_metrics = len(training)
    ncols = 2 if n_metrics in (2, 4) else max(1, min(3, n_metrics))
    rows = math.ceil(n_metrics / ncols) if n_metrics else 0
    height = max(3.0, 3.2 * rows + (4.2 if levels else 0) + 0.6)
    fig = Figure(figsize=(5.2 * ncols if n_metrics else 10, height),
                 layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows + (1 if levels else 0) or 1, ncols,
                            height_ratios=[1.0] * rows + ([1.3] if levels else []) or None)
    for i, (name, series) in enumerate(training.items()):
        _draw_metric(fig.add_subplot(grid[i // ncols, i % ncols]), name, series)
    if levels:
        _draw_levels(fig.add_subplot(grid[rows, :]), levels, chance)
    if not training and not levels:
        _no_data(fig.add_subplot(grid[0, :]), "no metrics recorded")
    fig.suptitle(title, fontsize=14, fontweight="bold")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
    return path
