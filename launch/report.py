"""Reports of finished runs: per run, an accuracy-matrix heat map, per-task accuracy curves
and the training loss; across runs, a comparison table (markdown and PNG) of ACC, BWT, FWT,
forgetting and wall time.

    python -m sequax.launch.report runs/quickstart                      # -> runs/quickstart/report/
    python -m sequax.launch.report runs/er runs/ewc                     # -> runs/report/
    python -m sequax.launch.report runs/er runs/ewc runs/der --out=reports/mnist

`--out` defaults to WORKDIR/report for one workdir and, for several, to report/ in the folder
that holds them all: a command writes beside the runs it reads, never into the current folder
by chance (a repository's, when run from its checkout); the report has no copy in the
repository's docs, so it takes no `--update_docs`. The folder gets
`report.md` (the comparison table, then each run's figures), `comparison.png` (the table),
and per run `NAME_accuracy_matrix.png`, `NAME_task_curves.png`, `NAME_train_loss.png`.

What a workdir holds (written by `sequax.engine.loop`): config.json, summary.json,
accuracy_matrix.json and metrics.jsonl for one run. A vmapped workdir (`config.runs > 1` or a
`config.sweep`) holds runs/NNN/accuracy_matrix.json per run, and summary.json carries each
run and the mean ± std (sample std, ddof=1) per grid point. Such a workdir is reported per
grid point, as the mean over its seeds: one heat map of the mean matrix, curves with a ±std
band, one table row with the summary's mean ± std. Ten seeds as ten rows would bury the
comparison; each run's own numbers stay in runs/NNN/summary.json.

Table values are read from summary.json, never recomputed here (the definitions live in
`sequax.engine.metrics`); a missing or incomplete workdir stops with one line naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

_OUT = flags.DEFINE_string(
    "out", None, "Output folder (default: WORKDIR/report for one workdir, ./report for several)."
)

METRICS = (("acc", "ACC"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting"),
           ("avg_incremental_acc", "avg incremental ACC"), ("acc_top5", "top-5 ACC"),
           ("acc_nme", "NME ACC"), ("aaa", "AAA"), ("acc_auc", "A_AUC"))  # fmt: skip
VIEW_NAMES = {"class_il": "class-IL", "task_il": "task-IL", "domain_il": "domain-IL"}
MATRIX_KEY = {
    "class_il": "class_il",
    "task_il": "task_il",
    "domain_il": "class_il",
}  # view -> accuracy_matrix.json key


class ReportError(ValueError):
    """A workdir the report cannot read; the message names the file and the fix."""


@dataclasses.dataclass
class ReportedRun:
    """One row group of the report: a run, or a grid point of a vmapped workdir (its seeds'
    mean)."""

    name: str
    workdir: Path
    method: str
    stream: str
    phases: list[list[int]]
    matrices: dict[
        str, tuple[np.ndarray, np.ndarray | None]
    ]  # view -> (mean, std over seeds or None)
    metrics: dict[
        str, dict[str, tuple[float, float | None]]
    ]  # view -> metric -> (value or mean, std or None)
    wall: float | None
    seeds: int = 1
    loss: tuple[np.ndarray, dict[str, np.ndarray], list[int]] | None = (
        None  # steps, metrics, phase starts
    )
    details: dict | None = None  # summary.json's per_class_acc and phases (a group: its first run)
    anytime: dict | None = None  # anytime.json (mean over the seeds): step, task, class_il, ...
    confusion: np.ndarray | None = None  # the last phase's counts (summed over the seeds)


# ---------------------------------------------------------------------------------------------
# Reading workdirs
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ReportError(f"{path} is missing: {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{path} is not valid JSON ({error}): the file is damaged; rerun the run into "
            "a fresh workdir"
        ) from None


def _train_curves(
    path: Path, runs: slice | None
) -> tuple[np.ndarray, dict[str, np.ndarray], list[int]] | None:
    """Train records of metrics.jsonl: steps, each metric (mean over `runs` of a vmapped
    workdir), and the first step of each phase. None when the file has no train records."""
    if not path.is_file():
        return None
    by_step: dict[int, dict[str, float]] = {}
    starts: dict[int, int] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: the rest is still good
            continue
        if record.get("kind") != "train":
            continue
        step = int(record["step"])
        values = {}
        for key, value in record.items():
            if key in ("kind", "phase", "epoch", "step") or not isinstance(
                value, (int, float, list)
            ):
                continue
            array = np.asarray(value, np.float64)
            values[key] = float(
                array[runs].mean() if runs is not None and array.ndim else array.mean()
            )
        by_step[step] = values  # a resumed run rewrites steps: the last record wins
        starts.setdefault(int(record["phase"]), step)
    if not by_step:
        return None
    steps = np.array(sorted(by_step))
    names = list(by_step[steps[0]])
    return (
        steps,
        {n: np.array([by_step[s].get(n, np.nan) for s in steps]) for n in names},
        [starts[p] for p in sorted(starts)[1:]],
    )


def _extras(folders: list[Path]) -> tuple[dict | None, np.ndarray | None]:
    """(anytime curve, last confusion counts) of runs' folders: the curve's accuracies are
    the mean over the runs, the counts their sum; None where a run wrote no such file."""
    curves = [json.loads((f / "anytime.json").read_text()) for f in folders
              if (f / "anytime.json").is_file()]  # fmt: skip
    anytime = None
    if curves and len(curves) == len(folders):
        anytime = {k: np.asarray(curves[0][k]) for k in ("step", "task")}
        for key in ("class_il", "task_il"):
            anytime[key] = np.mean([np.asarray(c[key], np.float64) for c in curves], axis=0)
    counts = [json.loads((f / "confusion.json").read_text())["confusion"][-1] for f in folders
              if (f / "confusion.json").is_file()]  # fmt: skip
    confusion = np.sum(counts, axis=0) if counts and len(counts) == len(folders) else None
    return anytime, confusion


def _details(summary: dict) -> dict | None:
    details = {k: summary[k] for k in ("per_class_acc", "phases") if summary.get(k)}
    return details or None


def details_markdown(details: dict | None, seeds: int) -> str:
    """Each phase's epochs, wall time and peak memory, and the per-class accuracy after the
    last phase, as markdown (a vmapped group shows its first run's)."""
    if not details:
        return ""
    lines = ["" if seeds == 1 else "(the group's first run)"]
    if details.get("phases"):
        lines += ["| phase | epochs | wall (s) | device peak (MB) | host peak RSS (MB) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        mb = lambda v: "–" if v is None else f"{v / 2**20:.0f}"  # noqa: E731
        for p, c in enumerate(details["phases"]):
            device, host = mb(c.get("device_peak_bytes")), mb(c.get("host_peak_rss_bytes"))
            lines.append(
                f"| {p} | {c.get('epochs', 0):.0f} | {c['wall_s']:.2f} | {device} | {host} |"
            )
    if details.get("per_class_acc"):
        shown = ", ".join(f"{c}: {'–' if v is None else f'{100 * v:.1f}'}"
                          for c, v in enumerate(details["per_class_acc"]))  # fmt: skip
        lines += ["", f"Per-class class-IL accuracy (%) after the last phase: {shown}"]
    return "\n".join(lines).strip("\n")


def _views(summary: dict) -> list[str]:
    return [v for v in VIEW_NAMES if isinstance(summary.get(v), dict)]


def _name(workdir: Path, config: dict) -> tuple[str, str]:
    method = str(config.get("algorithm", {}).get("name", "?"))
    data = config.get("data", {})
    stream = f"{data.get('scenario', '?')} {data.get('source', '?')}"
    return method, stream


def load_workdir(workdir: str | Path) -> list[ReportedRun]:
    """The runs a workdir holds: one, or one per grid point of a vmapped workdir."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ReportError(f"{workdir} is not a folder: give the --workdir of a finished run")
    config = _read_json(
        workdir / "config.json", "not a sequax workdir (the run writes config.json first)"
    )
    summary = _read_json(
        workdir / "summary.json",
        "the run has not finished (summary.json is written at its end); finish it and report again",
    )
    method, stream = _name(workdir, config)
    wall = summary.get("timings", {}).get("wall")
    if "runs" not in summary:  # one run
        matrices_file = _read_json(
            workdir / "accuracy_matrix.json", "written with summary.json; rerun the run"
        )
        views = _views(summary)
        matrices = {v: (np.asarray(matrices_file[MATRIX_KEY[v]], np.float64), None) for v in views}
        metrics = {
            v: {m: (float(summary[v][m]), None) for m, _ in METRICS if m in summary[v]}
            for v in views
        }
        return [
            ReportedRun(
                workdir.name,
                workdir,
                method,
                stream,
                matrices_file["phases"],
                matrices,
                metrics,
                wall,
                loss=_train_curves(workdir / "metrics.jsonl", None),
                details=_details(summary),
                **dict(zip(("anytime", "confusion"), _extras([workdir]))),
            )
        ]

    # A vmapped workdir: runs/NNN/ per run, grid points of consecutive runs (seeds vary fastest).
    per_run = summary["runs"]
    files = [
        _read_json(
            workdir / "runs" / f"{r:03d}" / "accuracy_matrix.json",
            "written with summary.json; rerun the run",
        )
        for r in range(len(per_run))
    ]
    out, first = [], 0
    for row in summary["table"]:
        count = len(row["seeds"])
        group = files[first : first + count]
        views = _views(row)
        matrices = {}
        for v in views:
            stack = np.stack([np.asarray(f[MATRIX_KEY[v]], np.float64) for f in group])
            matrices[v] = (stack.mean(0), stack.std(0, ddof=1) if count > 1 else None)
        metrics = {
            v: {m: (float(row[v][m][0]), float(row[v][m][1])) for m, _ in METRICS if m in row[v]}
            for v in views
        }
        point = ", ".join(f"{k}={value:g}" for k, value in row["point"].items())
        name = f"{workdir.name} ({point})" if point else workdir.name
        out.append(
            ReportedRun(
                name,
                workdir,
                method,
                stream,
                group[0]["phases"],
                matrices,
                metrics,
                wall,
                seeds=count,
                loss=_train_curves(workdir / "metrics.jsonl", slice(first, first + count)),
                details=_details(per_run[first]),
                **dict(
                    zip(
                        ("anytime", "confusion"),
                        _extras(
                            [workdir / "runs" / f"{r:03d}" for r in range(first, first + count)]
                        ),
                    )
                ),
            )
        )
        first += count
    return out


# ---------------------------------------------------------------------------------------------
# The comparison table
# ---------------------------------------------------------------------------------------------


def _percent(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "–"  # not defined for this run (FWT and BWT of joint training)
    mean, std = value
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def comparison_table(runs: list[ReportedRun]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings): one row per run and view; metrics in percent."""
    from sequax.engine.writers import format_duration

    header = ["run", "method", "stream", "seeds", "view", *(label for _, label in METRICS), "wall"]
    rows = []
    for run in runs:
        for view, metrics in run.metrics.items():
            wall = "–" if run.wall is None else format_duration(run.wall)
            rows.append(
                [
                    run.name,
                    run.method,
                    run.stream,
                    str(run.seeds),
                    VIEW_NAMES[view],
                    *(_percent(metrics.get(m)) for m, _ in METRICS),
                    wall,
                ]
            )
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _slug(name: str, taken: set[str]) -> str:
    slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", name).strip("_") or "run"
    base, k = slug, 2
    while slug in taken:  # two workdirs of the same name in different folders
        slug, k = f"{base}_{k}", k + 1
    taken.add(slug)
    return slug


def render(workdirs: list[str | Path], out: str | Path) -> list[Path]:
    """Reads every workdir (all of them first, so a bad one stops before anything is drawn),
    then writes the figures and report.md into `out`; returns the files written."""
    from sequax.engine import plots

    runs = [run for workdir in workdirs for run in load_workdir(workdir)]
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file there, a read-only or missing parent: before any figure
        raise ReportError(
            f"cannot write the report in {out} ({error.strerror or error}); give a folder you "
            "can write to with --out"
        ) from None
    written, sections, taken = [], [], set()
    for run in runs:
        slug = _slug(run.name, taken)
        labels = [
            f"after task {ts[0]}" if len(ts) == 1 else f"after tasks {ts[0]}-{ts[-1]}"
            for ts in run.phases
        ]
        of_seeds = f", mean of {run.seeds} seeds" if run.seeds > 1 else ""
        title = f"{run.name}: {run.method} on {run.stream}{of_seeds}"
        views = {VIEW_NAMES[v]: m for v, m in run.matrices.items()}
        files = [
            plots.save(
                plots.matrix_figure({v: mean for v, (mean, _) in views.items()}, labels, title),
                out / f"{slug}_accuracy_matrix.png",
            )
        ]
        num_tasks = next(iter(views.values()))[0].shape[1]
        first_phase = [
            next(p for p, ts in enumerate(run.phases) if j in ts) for j in range(num_tasks)
        ]
        files.append(
            plots.save(
                plots.task_curves_figure(views, labels, first_phase, title),
                out / f"{slug}_task_curves.png",
            )
        )
        if run.loss is not None:
            steps, values, starts = run.loss
            files.append(
                plots.save(
                    plots.loss_figure(
                        steps, values, starts, f"{run.name}: training metrics{of_seeds}"
                    ),
                    out / f"{slug}_train_loss.png",
                )
            )
        if run.anytime is not None:  # accuracy against steps: the stability gap
            curves = {VIEW_NAMES[v]: run.anytime[MATRIX_KEY[v]] for v in run.matrices}
            files.append(plots.save(
                plots.anytime_figure(run.anytime["step"], curves, run.anytime["task"], title),
                out / f"{slug}_anytime.png"))  # fmt: skip
        if run.confusion is not None:
            files.append(plots.save(
                plots.confusion_figure(run.confusion, f"{title}: confusion after the last phase"),
                out / f"{slug}_confusion.png"))  # fmt: skip
        written += files
        figures = "\n".join(f"![{f.stem}]({f.name})" for f in files)
        sections.append(f"## {run.name}\n\n{details_markdown(run.details, run.seeds)}\n\n{figures}")

    header, rows = comparison_table(runs)
    written.append(
        plots.save(
            plots.table_figure(header, rows, "accuracy (%) and wall time"), out / "comparison.png"
        )
    )
    note = (
        "Metrics in percent, read from each workdir's summary.json (definitions: "
        "`sequax.engine.metrics`). Rows with seeds > 1 are the mean ± std (ddof=1) over the seeds "
        "of a vmapped workdir; their wall time is the whole workdir's (all its runs trained "
        "in one program)."
    )
    report = out / "report.md"
    report.write_text(
        f"# Report\n\n{markdown_table(header, rows)}\n\n{note}\n\n" + "\n\n".join(sections) + "\n"
    )
    return [report, *written]


def default_out(workdirs: list[str]) -> Path:
    """WORKDIR/report for one workdir; for several, report/ in the deepest folder holding them
    all (runs/er runs/ewc -> runs/report)."""
    if len(workdirs) == 1:
        return Path(workdirs[0]) / "report"
    parent = Path(os.path.commonpath([Path(w).resolve() for w in workdirs]))
    if parent == Path(parent.anchor):
        raise ReportError(
            f"the workdirs share no folder but {parent}: give the report's folder with --out"
        )
    return parent / "report"


def main(argv):
    workdirs = argv[1:]
    try:
        if not workdirs:  # one line, not absl's whole --help
            raise ReportError(
                "give at least one WORKDIR: "
                "python -m sequax.launch.report WORKDIR [WORKDIR ...] [--out=FOLDER]"
            )
        out = Path(_OUT.value) if _OUT.value else default_out(workdirs)
        files = render(workdirs, out)
    except ReportError as error:
        print(f"sequax: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(
        f"sequax: report of {len(workdirs)} workdir(s) in {out}: "
        + ", ".join(f.name for f in files)
    )


if __name__ == "__main__":
    app.run(main)
