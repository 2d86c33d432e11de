"""Observers of a run: one writer interface that fans records out to sinks, and the
console progress bar.

The loop hands every observer plain Python/numpy records (`{"kind": "start" | "train" |
"eval" | "summary" | ..., ...}`); writers never see or touch training state. Sinks:

- JSONL (always): every record, one JSON object per line, in `WORKDIR/metrics.jsonl`.
- console (`verbose`): the accuracy matrix as a table after each task.
- TensorBoard (`config.writers.tensorboard`, tensorboardX): train metrics by step; per-task
  accuracies, ACC/BWT/FWT/forgetting and the accuracy matrix (text and heat map) by phase,
  in `WORKDIR/tensorboard/`.
- W&B (`config.writers.wandb`): the same content; offline (`WORKDIR/wandb/`) unless
  `config.writers.wandb_mode="online"`.

Only process 0 writes: elsewhere `make_writers` returns a writer with no sinks. A sink that
fails is reported once on stderr and dropped; training goes on unchanged.

    writers = make_writers(config, workdir)   # main defaults to jax.process_index() == 0
    writers.write({"kind": "eval", "phase": 0, "tasks": [0], "class_il": row, "task_il": row})
    writers.close()
    bar = ProgressBar(total=12000, label="task 1/5"); bar.update(1000, loss=0.31); bar.close()
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from sequax.engine import metrics as cl_metrics


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    return value


class JsonlWriter:
    """Appends one JSON object per line; the file is flushed after every record."""

    name = "jsonl"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_jsonable(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def format_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    return (
        f"{seconds // 60}:{seconds % 60:02d}"
        if seconds < 3600
        else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"
    )


class ProgressBar:
    """A one-line progress bar with samples/s and ETA.

    On a terminal it redraws in place; otherwise (CI logs, files) it prints a line at every
    quarter so logs stay short.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 24):
        self.total, self.label, self.width = max(total, 1), label, width
        self.stream = stream or sys.stdout
        self.done = 0
        self.start = time.perf_counter()
        self._interactive = self.stream.isatty()
        self._next_quarter = 0.25

    def _line(self, metrics: dict[str, float]) -> str:
        fraction = min(self.done / self.total, 1.0)
        filled = int(fraction * self.width)
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        shown = " ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())
        bar = "#" * filled + "." * (self.width - filled)
        return (
            f"{self.label} [{bar}] {fraction:4.0%} {self.done}/{self.total} "
            f"{rate:,.0f} samples/s ETA {format_duration(eta)} {shown}"
        ).rstrip()

    def update(self, samples: int, **metrics: float) -> None:
        self.done += samples
        if self._interactive:
            self.stream.write("\r" + self._line(metrics))
            self.stream.flush()
        elif self.done / self.total >= self._next_quarter:
            self.stream.write(self._line(metrics) + "\n")
            while self.done / self.total >= self._next_quarter:
                self._next_quarter += 0.25

    def close(self) -> None:
        if self._interactive:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# Results as the records tell them (shared by the sinks that show matrices and metrics)
# ---------------------------------------------------------------------------------------------


def _row_label(tasks: list[int]) -> str:
    return f"after task {tasks[0]}" if len(tasks) == 1 else f"after tasks {tasks[0]}-{tasks[-1]}"


class RecordedResults:
    """The accuracy matrix as far as the records go, rebuilt from plain values.

    Each sink that shows matrices keeps its own copy (a few [phases, tasks] arrays), so no
    sink depends on another or on the loop's arrays. Rows of vmapped runs are [runs, tasks].
    Rows are kept by phase: a resumed run that re-evaluates a phase replaces its row, and
    phases finished before a restart stay NaN (not shown) unless a "resume" record carries
    the matrices so far (`class_il`, `task_il`, `random_init`).
    """

    def __init__(self):
        self.setting = "class"  # from the "start" record; class-IL and task-IL until told
        self.runs = 1
        self.phases: list[list[int]] = []  # every phase's tasks, from the "start" record
        self.random_init: dict[str, np.ndarray] = {}
        self.rows: dict[
            int, dict[str, np.ndarray]
        ] = {}  # phase -> {"class_il": row, "task_il": row}

    def add(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "start":
            self.setting = record.get("setting", self.setting)
            self.runs = int(record.get("runs", 1))
            self.phases = [list(tasks) for tasks in record.get("phases", [])]
        elif kind == "eval" and record["phase"] < 0:
            self.random_init = {
                k: np.asarray(record[k], np.float64) for k in ("class_il", "task_il")
            }
        elif kind == "eval":
            p = int(record["phase"])
            self.rows[p] = {k: np.asarray(record[k], np.float64) for k in ("class_il", "task_il")}
            if "tasks" in record:  # the record's own word on the phase's tasks
                self.phases += [[q] for q in range(len(self.phases), p + 1)]
                self.phases[p] = list(record["tasks"])
        elif kind == "resume" and "class_il" in record:
            matrices = {k: np.asarray(record[k], np.float64) for k in ("class_il", "task_il")}
            for p in range(matrices["class_il"].shape[-2]):
                if np.isfinite(matrices["class_il"][..., p, :]).all():
                    self.rows[p] = {k: m[..., p, :] for k, m in matrices.items()}
            if record.get("random_init"):
                self.random_init = {
                    k: np.asarray(v, np.float64) for k, v in record["random_init"].items()
                }

    def views(self) -> dict[str, str]:
        """Record key -> name: {"class_il": "class-IL", "task_il": "task-IL"}, or for a
        domain-IL stream {"class_il": "domain-IL"} (its summary calls it "domain_il")."""
        return (
            {"class_il": "domain-IL"}
            if self.setting == "domain"
            else {"class_il": "class-IL", "task_il": "task-IL"}
        )

    def _stacked(self, key: str) -> np.ndarray:
        """[runs, phases so far, tasks] (runs = 1 for one run), NaN for rows not recorded."""
        last = max(self.rows)
        some = np.atleast_2d(self.rows[last][key])
        out = np.full((some.shape[0], last + 1, some.shape[1]), np.nan)
        for p, row in self.rows.items():
            out[:, p] = np.atleast_2d(row[key])
        return out

    def matrix(self, key: str) -> np.ndarray:
        """[phases so far, tasks]: the mean over runs for vmapped runs."""
        return self._stacked(key).mean(0)

    def tasks_of(self, p: int) -> list[int]:
        return self.phases[p] if p < len(self.phases) else [p]

    def row_labels(self) -> list[str]:
        return [_row_label(self.tasks_of(p)) for p in range(max(self.rows) + 1)]

    def metrics_so_far(self, key: str) -> dict[str, float]:
        """ACC, BWT, FWT, forgetting, learning accuracy of the tasks trained so far: the
        definitions of `sequax.engine.metrics` on the square corner R[:p+1, :p+1] (after
        the last task, exactly the run's summary). Vmapped runs: the mean over runs of
        each run's value. Only ACC where the corner is not complete (a joint phase trains
        several tasks at once; a resumed run may lack the rows before the restart)."""
        runs, p = self._stacked(key), max(self.rows)
        init = self.random_init.get("task_il" if key == "task_il" else "class_il")
        init = None if init is None else np.atleast_2d(init)[:, : p + 1]
        if [self.tasks_of(q) for q in range(p + 1)] == [[q] for q in range(p + 1)]:
            try:
                per_run = [
                    cl_metrics.summary(run[: p + 1, : p + 1], None if init is None else init[r])
                    for r, run in enumerate(runs)
                ]
                return {name: float(np.mean([m[name] for m in per_run])) for name in per_run[0]}
            except ValueError:  # NaN in the corner: rows from before a restart
                return {"acc": float(runs[:, p, : p + 1].mean())}
        return {"acc": float(runs[:, p].mean())}


def _train_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The train record's metrics as floats (means over runs for vmapped runs)."""
    out = {}
    for key, value in record.items():
        if key in ("kind", "phase", "epoch", "step"):
            continue
        try:
            out[key] = float(np.mean(np.asarray(value, np.float64)))
        except (TypeError, ValueError):  # a non-numeric field a later loop may add
            pass
    return out


def _final_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A summary record's metrics as {"view/metric": value}; vmapped runs: mean over runs."""
    runs = record.get("runs", [record])
    out: dict[str, list[float]] = {}
    for run in runs:
        for view, metrics in run.items():
            if isinstance(metrics, dict) and view not in ("timings", "hparams"):
                for name, value in metrics.items():
                    out.setdefault(f"{view}/{name}", []).append(float(value))
    return {key: float(np.mean(values)) for key, values in out.items()}


# ---------------------------------------------------------------------------------------------
# Sinks: each has write(record) and close()
# ---------------------------------------------------------------------------------------------


class ConsoleSink:
    """Prints the accuracy matrix (percent) after each task, class-IL and task-IL (domain-IL
    on a Permuted/Rotated stream); for vmapped runs, the mean over runs."""

    name = "console"

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream
        self.results = RecordedResults()

    def write(self, record: dict[str, Any]) -> None:
        self.results.add(record)
        if record.get("kind") != "eval" or record["phase"] < 0:
            return
        of_runs = f", mean of {self.results.runs} runs" if self.results.runs > 1 else ""
        for key, view in self.results.views().items():
            table = cl_metrics.format_matrix(
                self.results.matrix(key),
                title=f"accuracy (%), {view}{of_runs}",
                row_labels=self.results.row_labels(),
            )
            print(table, file=self.stream or sys.stdout)

    def close(self) -> None:
        pass


class TensorBoardSink:
    """tensorboardX event files in `logdir`. Train metrics by global step (`train/...`);
    per-task accuracies (`accuracy/VIEW/task_J`), the metrics of the tasks so far
    (`metrics/VIEW/acc|bwt|fwt|forgetting|learning_acc`) and the matrix as text
    (`accuracy_matrix/VIEW`) by training phase (0, 1, ...); at the end the final metrics
    (`summary/...`), timings (`timings/...`) and the matrix as a heat-map image
    (`accuracy_matrix`)."""

    name = "tensorboard"

    def __init__(self, logdir: Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=30)
        self.results = RecordedResults()

    def write(self, record: dict[str, Any]) -> None:
        self.results.add(record)
        kind, add = record.get("kind"), self.writer.add_scalar
        if kind == "train":
            for name, value in _train_scalars(record).items():
                add(f"train/{name}", value, int(record["step"]))
        elif kind == "anytime":  # accuracy against steps inside a task (eval.every_steps)
            for name, value in _anytime_scalars(record).items():
                add(name, value, int(record["step"]))
        elif kind == "eval" and record["phase"] >= 0:
            phase = int(record["phase"])
            for key in self.results.views():
                view = "domain_il" if self.results.setting == "domain" else key
                for j, value in enumerate(self.results.matrix(key)[record["phase"]]):
                    add(f"accuracy/{view}/task_{j}", float(value), phase)
                for name, value in self.results.metrics_so_far(key).items():
                    add(f"metrics/{view}/{name}", value, phase)
                table = cl_metrics.format_matrix(
                    self.results.matrix(key), row_labels=self.results.row_labels()
                )
                # Indented four spaces: TensorBoard renders text as markdown, this as a code block.
                self.writer.add_text(
                    f"accuracy_matrix/{view}",
                    "\n".join("    " + line for line in table.splitlines()),
                    phase,
                )
        elif kind == "summary":
            phase = max(self.results.rows, default=0)
            for name, value in _final_metrics(record).items():
                add(f"summary/{name}", value, phase)
            for name, value in record.get("timings", {}).items():
                add(f"timings/{name}", float(value), phase)
            for name, value, step in _details_scalars(record):  # per class, per phase
                add(name, value, step)
            if self.results.rows:
                from sequax.engine import plots

                figure = plots.matrix_figure(
                    {view: self.results.matrix(key) for key, view in self.results.views().items()},
                    self.results.row_labels(),
                )
                self.writer.add_image(
                    "accuracy_matrix", plots.to_rgb(figure), phase, dataformats="HWC"
                )
        self.writer.flush() if kind in ("eval", "summary") else None

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run with the TensorBoard sink's content: train metrics at the global
    step, accuracies and metrics so far after each phase (at the phase's last step, with a
    `phase` field to plot against), the final metrics in the run summary and the final
    matrices as tables.

    mode: "offline" (the default: files under `WORKDIR/wandb/`, no network; upload later with
      `wandb sync`), "online", or "disabled". The run id is kept in `WORKDIR/wandb_run_id`, so
      a resumed run continues the same W&B run.
    """

    name = "wandb"

    def __init__(self, workdir: Path, project: str, mode: str, config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        id_file = workdir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=project,
            mode=mode,
            dir=str(workdir),
            name=workdir.name,
            id=run_id,
            resume="allow",
            config=config,
            settings=wandb.Settings(console="off"),
        )
        self.results = RecordedResults()
        self.step = 0

    def write(self, record: dict[str, Any]) -> None:
        self.results.add(record)
        kind = record.get("kind")
        if kind == "train":
            self.step = max(self.step, int(record["step"]))  # W&B steps only move forward
            scalars = {f"train/{k}": v for k, v in _train_scalars(record).items()}
            self.run.log(
                {**scalars, "phase": record["phase"], "epoch": record["epoch"]}, step=self.step
            )
        elif kind == "anytime":
            self.step = max(self.step, int(record["step"]))
            self.run.log(_anytime_scalars(record), step=self.step)
        elif kind == "eval" and record["phase"] >= 0:
            values: dict[str, float] = {"phase": int(record["phase"])}
            for key in self.results.views():
                view = "domain_il" if self.results.setting == "domain" else key
                values.update(
                    {
                        f"accuracy/{view}/task_{j}": float(v)
                        for j, v in enumerate(self.results.matrix(key)[record["phase"]])
                    }
                )
                values.update(
                    {f"metrics/{view}/{k}": v for k, v in self.results.metrics_so_far(key).items()}
                )
            self.run.log(values, step=self.step)
        elif kind == "summary":
            self.run.summary.update({f"summary/{k}": v for k, v in _final_metrics(record).items()})
            self.run.summary.update(
                {f"timings/{k}": float(v) for k, v in record.get("timings", {}).items()}
            )
            self.run.summary.update(
                {  # per class (named by it), per phase (phase_p appended)
                    n if n.startswith("per_class") else f"{n}/phase_{s}": v
                    for n, v, s in _details_scalars(record)
                }
            )
            tables = {}
            for key, view in self.results.views().items():
                matrix, labels = self.results.matrix(key), self.results.row_labels()
                columns = ["phase", *(f"task {j}" for j in range(matrix.shape[1]))]
                tables[f"accuracy_matrix/{view}"] = self.wandb.Table(
                    columns=columns,
                    data=[[label, *map(float, row)] for label, row in zip(labels, matrix)],
                )
            if tables:
                self.run.log(tables, step=self.step)

    def close(self) -> None:
        self.run.finish()


# ---------------------------------------------------------------------------------------------
# The writer the loop holds
# ---------------------------------------------------------------------------------------------


class Writers:
    """Fans each record out to its sinks. A sink that raises is reported once on stderr and
    dropped for the rest of the run: observers may fail, training never does because of them
    (records are plain values, so a sink cannot have changed the state either)."""

    def __init__(self, sinks: list[Any]):
        self.sinks = list(sinks)

    def _guarded(self, sink, method: str, *args) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception as error:  # noqa: BLE001 - any observer failure must spare the run
            self.sinks = [s for s in self.sinks if s is not sink]
            print(
                f"sequax: warning: the {getattr(sink, 'name', type(sink).__name__)} writer failed "
                f"({type(error).__name__}: {error}); it writes nothing more in this run, "
                "training goes on",
                file=sys.stderr,
            )
            if method != "close":
                try:
                    sink.close()
                except Exception:  # noqa: BLE001 - already reported
                    pass

    def write(self, record: dict[str, Any]) -> None:
        for sink in list(self.sinks):
            self._guarded(sink, "write", record)

    def close(self) -> None:
        for sink in list(self.sinks):
            self._guarded(sink, "close")
        self.sinks = []


WANDB_MODES = ("offline", "online", "disabled")


def make_writers(
    config,
    workdir: str | Path,
    main: bool | None = None,
    *,
    verbose: bool = True,
    stream: TextIO | None = None,
) -> Writers:
    """The run's writers from `config.writers` (see engine/schema.py base_config).

    config: the run's config; reads `writers.tensorboard`, `writers.wandb`,
      `writers.wandb_project`, `writers.wandb_mode` (all optional: a config without a
      `writers` block gets JSONL and the console only).
    workdir: where metrics.jsonl, tensorboard/ and wandb/ go.
    main: whether this process writes; default `jax.process_index() == 0`. Elsewhere the
      writer has no sinks (and imports neither tensorboardX nor wandb).
    verbose: print the accuracy-matrix tables (the console sink); `stream` is where (stdout).

    A W&B sink asked for without wandb installed, or an unknown `wandb_mode`, raises
    `ConfigError` with the fix, before the run compiles anything.
    """
    if main is None:
        import jax

        main = jax.process_index() == 0
    if not main:
        return Writers([])
    from sequax.engine.build import ConfigError

    workdir = Path(workdir)
    options = dict(config.get("writers") or {}) if hasattr(config, "get") else {}
    sinks: list[Any] = [JsonlWriter(workdir / "metrics.jsonl")]
    if verbose:
        sinks.append(ConsoleSink(stream))
    if options.get("tensorboard", False):
        sinks.append(_opened("tensorboard", lambda: TensorBoardSink(workdir / "tensorboard")))
    if options.get("wandb", False):
        mode = options.get("wandb_mode", "offline")
        if mode not in WANDB_MODES:
            raise ConfigError(
                f"config.writers.wandb_mode={mode!r} is unknown; use one of "
                f"{', '.join(map(repr, WANDB_MODES))}"
            )
        try:
            import wandb  # noqa: F401 - optional: only a run that asks for W&B needs it
        except ImportError:
            raise ConfigError(
                "config.writers.wandb=True needs the wandb package: pip install 'sequax[wandb]' "
                "(or set config.writers.wandb=False)"
            ) from None
        resolved = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        project = str(options.get("wandb_project", "sequax"))
        sinks.append(_opened("wandb", lambda: WandbSink(workdir, project, mode, resolved)))
    for spec in options.get("sinks") or ():  # the user's own: "package.module:factory"
        from sequax.data.factories import load_callable

        factory = load_callable(spec, "writers.sinks", ConfigError, "a sink factory")
        try:
            sink = factory(workdir, config)
        except Exception as error:  # noqa: BLE001 - the user's factory: its failure in one line
            raise ConfigError(
                f"config.writers.sinks: {spec!r} failed when called with (workdir, config) "
                f"({type(error).__name__}: {_first_line(error)}); it must take those two "
                "arguments and return an object with write(record) and close()"
            ) from None
        if not (callable(getattr(sink, "write", None)) and callable(getattr(sink, "close", None))):
            raise ConfigError(
                f"config.writers.sinks: {spec!r} returned a {type(sink).__name__}, which lacks "
                f"write(record) and close(); return an object with both"
            )
        sinks.append(sink)
    return Writers([sink for sink in sinks if sink is not None])


def _first_line(error: BaseException) -> str:
    return next(iter(str(error).splitlines()), "")


def _opened(name: str, open_sink):
    """The sink, or None after one line on stderr if it cannot start (an unwritable folder,
    W&B online without a login): a sink that cannot start must not stop the run either."""
    try:
        return open_sink()
    except Exception as error:  # noqa: BLE001 - any observer failure must spare the run
        print(
            f"sequax: warning: the {name} writer could not start ({type(error).__name__}: "
            f"{error}); the run goes on without it",
            file=sys.stderr,
        )
        return None


def _anytime_scalars(record: dict[str, Any]) -> dict[str, float]:
    """An anytime point's per-task accuracies (a single run's; the mean over runs otherwise)."""
    out = {}
    for view in ("class_il", "task_il"):
        values = np.asarray(record[view], np.float64)
        values = values.reshape(-1, values.shape[-1]).mean(axis=0)
        out.update({f"anytime/{view}/task_{j}": float(v) for j, v in enumerate(values)})
    return out


def _details_scalars(record: dict[str, Any]) -> list[tuple[str, float, int]]:
    """A single run's summary details as (name, value, step): the last phase's per-class
    accuracy (step = class) and each phase's epochs, wall time and peak memory (step = phase);
    values not measured (None) are left out."""
    out = [(f"per_class_acc/class_{c}", float(v), c)
           for c, v in enumerate(record.get("per_class_acc") or []) if v is not None]  # fmt: skip
    for p, costs in enumerate(record.get("phases") or []):
        out += [(f"phases/{k}", float(v), p) for k, v in costs.items() if v is not None]
    return out
