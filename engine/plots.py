"""Figures of continual-learning results: accuracy-matrix heat maps, per-task accuracy
curves, training loss and a metrics table, drawn with matplotlib's Agg canvas.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas, never through pyplot,
so drawing changes no global backend or figure registry of the caller's process (the
TensorBoard writer draws inside a training run). Accuracies are fractions in [0, 1];
figures show percent.

    fig = matrix_figure({"class-IL": R}, row_labels=["after task 0", ...], title="er")
    save(fig, "er_accuracy_matrix.png")
    rgb = to_rgb(fig)   # uint8 [H, W, 3], for TensorBoard's add_image
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_PANEL_INCHES = 4.2  # one heat map or curve panel


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attaches the Agg canvas: savefig and to_rgb need no pyplot
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Writes `fig` as a PNG (the format follows the suffix) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def to_rgb(fig: Figure) -> np.ndarray:
    """The rendered figure as uint8 [height, width, 3]."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def matrix_figure(
    matrices: dict[str, np.ndarray], row_labels: Sequence[str], title: str = ""
) -> Figure:
    """Heat maps of accuracy matrices R[i, j] (row i: after training phase i; column j: task j),
    one panel per view ("class-IL", "task-IL", ...), each cell annotated in percent.

    matrices: view name -> float [phases, tasks] in [0, 1]; NaN cells (not evaluated) stay blank.
    row_labels: one label per row, e.g. "after task 2" or "after tasks 0-4" (joint training).
    """
    num_rows, num_tasks = next(iter(matrices.values())).shape
    width = _PANEL_INCHES * len(matrices) * max(1.0, num_tasks / 8)
    fig = _new_figure(
        width, 1.0 + 0.9 * _PANEL_INCHES * max(1.0, num_rows / 8) * max(num_rows / num_tasks, 0.3)
    )
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    annotate = num_tasks <= 12  # past that the numbers no longer fit their cells
    for ax, (view, matrix) in zip(axes, matrices.items()):
        percent = 100.0 * np.asarray(matrix, np.float64)
        image = ax.imshow(
            np.ma.masked_invalid(percent), cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto"
        )
        if annotate:
            for (i, j), value in np.ndenumerate(percent):
                if np.isfinite(value):  # dark text on the bright (high) end of viridis
                    ax.text(
                        j,
                        i,
                        f"{value:.0f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if value > 60 else "white",
                    )
        ax.set_xticks(range(num_tasks), [f"{j}" for j in range(num_tasks)])
        ax.set_yticks(range(num_rows), list(row_labels))
        ax.set_xlabel("task evaluated")
        ax.set_title(f"{view} accuracy (%)")
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def task_curves_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray | None]],
    phase_labels: Sequence[str],
    first_phase: Sequence[int],
    title: str = "",
) -> Figure:
    """Accuracy of each task after each training phase: one line per task, one panel per view.

    curves: view -> (mean [phases, tasks], std [phases, tasks] or None); the std (over seeds
      of a vmapped run) is drawn as a band.
    phase_labels: x-axis labels, one per phase.
    first_phase: first_phase[j] is the phase that trains task j; its line starts there
      (before that a class-IL head cannot predict the task's classes, so the line would only
      show zeros).
    """
    fig = _new_figure(_PANEL_INCHES * 1.25 * len(curves), _PANEL_INCHES)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (view, (mean, std)) in zip(axes, curves.items()):
        mean = 100.0 * np.asarray(mean, np.float64)
        phases = np.arange(mean.shape[0])
        for j in range(mean.shape[1]):
            shown = phases >= first_phase[j]
            (line,) = ax.plot(
                phases[shown], mean[shown, j], marker="o", markersize=3, label=f"task {j}"
            )
            if std is not None:
                spread = 100.0 * np.asarray(std, np.float64)[shown, j]
                ax.fill_between(
                    phases[shown],
                    mean[shown, j] - spread,
                    mean[shown, j] + spread,
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
        ax.set_xticks(phases, list(phase_labels), rotation=30, ha="right")
        _accuracy_axes(ax, f"{view}: each task after each phase", mean.shape[1])
    if title:
        fig.suptitle(title)
    return fig


def _accuracy_axes(ax, title: str, num_tasks: int) -> None:
    """A per-task accuracy panel's y axis (percent), grid, title and legend (up to 10 tasks)."""
    ax.set_ylim(-2, 102)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if num_tasks <= 10:
        ax.legend(fontsize=7, loc="lower left")


def anytime_figure(
    steps: np.ndarray, curves: dict[str, np.ndarray], tasks: np.ndarray, title: str = ""
) -> Figure:
    """Accuracy of every task against the training step (anytime evaluation), one panel per
    view: the stability gap shows as the dip of old tasks' lines just after a task starts.

    steps: int [E], the step of each evaluation point; curves: view -> float [E, T];
    tasks: int [E], the last task being trained at each point (task j's line starts once
    its training starts, with a dotted line there).
    """
    fig = _new_figure(_PANEL_INCHES * 1.5 * len(curves), _PANEL_INCHES)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    steps, tasks = np.asarray(steps), np.asarray(tasks)
    for ax, (view, curve) in zip(axes, curves.items()):
        percent = 100.0 * np.asarray(curve, np.float64)
        for j in range(percent.shape[1]):
            shown = tasks >= j
            if shown.any():
                ax.plot(steps[shown], percent[shown, j], linewidth=1, label=f"task {j}")
                ax.axvline(steps[shown][0], color="gray", linestyle=":", linewidth=0.6)
        ax.set_xlabel("step")
        _accuracy_axes(ax, f"{view}: every task during training", percent.shape[1])
    if title:
        fig.suptitle(title)
    return fig


def confusion_figure(confusion: np.ndarray, title: str = "") -> Figure:
    """The (label, class-IL prediction) counts after the last phase as row-normalised percent
    (each row: where a class's test examples went); rows without examples stay blank."""
    counts = np.asarray(confusion, np.float64)
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(totals > 0, 100.0 * counts / totals, np.nan)
    size = _PANEL_INCHES * max(1.0, counts.shape[0] / 12)
    fig = _new_figure(size * 1.15, size)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(percent), cmap="viridis", vmin=0, vmax=100)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, label="% of the class's test examples")
    ax.set_title(title or "confusion after the last phase (class-IL)")
    return fig


def loss_figure(
    steps: np.ndarray,
    losses: dict[str, np.ndarray],
    phase_starts: Sequence[int] = (),
    title: str = "",
) -> Figure:
    """Training metrics (one line each, e.g. "loss", "ce") against the global step, with a
    dotted vertical line where each training phase begins."""
    fig = _new_figure(_PANEL_INCHES * 1.5, _PANEL_INCHES * 0.75)
    ax = fig.subplots()
    for name, values in losses.items():
        ax.plot(steps, values, label=name, linewidth=1)
    for start in phase_starts:
        ax.axvline(start, color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "training metrics (mean of each dispatch)")
    return fig


def table_figure(header: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> Figure:
    """A table of strings as a figure (the comparison table as a PNG)."""
    widths = [max(len(str(h)), *(len(str(r[c])) for r in rows)) for c, h in enumerate(header)]
    fig = _new_figure(
        max(4.0, 0.085 * sum(widths) + 0.3 * len(header)), 0.6 + 0.3 * (len(rows) + 1)
    )
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(
        cellText=[list(map(str, r)) for r in rows],
        colLabels=list(header),
        loc="center",
        cellLoc="center",
        colWidths=[w / sum(widths) for w in widths],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.3)
    for c in range(len(header)):
        table[0, c].set_text_props(fontweight="bold")
    if title:
        ax.set_title(title)
    return fig
