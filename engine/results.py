"""What a run records: its accuracy matrices, counters and timings, and the files they go to.

    results = Results.start(num_runs, num_phases, num_tasks, random_init)  # or .resumed(...)
    results.record_row(p, class_il_row, task_il_row)
    summary = results.finish(experiment, workdir, main, say)   # summary.json, matrices, table

Matrices are [runs, phases, tasks] fractions (a single run is a grid of one); the files of a
single run sit in the workdir itself, those of several runs under runs/NNN/ with the mean ±
std table of each grid point in summary.md (`sequax.engine.runs`).
"""

from __future__ import annotations

import dataclasses
import json
import resource
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sequax.engine import evaluation as cl_evaluation
from sequax.engine import metrics as cl_metrics
from sequax.engine import runs as runs_lib
from sequax.engine.clock import SECTIONS
from sequax.engine.writers import format_duration


@dataclasses.dataclass
class RunResult:
    """What a run produced. Accuracies are fractions; matrices are [phases, tasks], with a
    leading run axis when the run was several (seeds x swept values)."""

    class_il: np.ndarray
    task_il: np.ndarray
    random_init: dict[str, np.ndarray]  # accuracies of the untrained model ("class_il", "task_il")
    summary: dict[str, Any]  # of the run, or {"runs": [per run], "table": [per grid point]}
    timings: dict[str, float]
    state: Any  # the final CLState (with the run axis when several runs)
    grid: runs_lib.RunGrid | None = None  # the runs of a vmapped program (None: one run)


ANYTIME_KEYS = ("step", "task", "samples", "class_il", "task_il")
COST_KEYS = ("epochs", "wall_s", "device_peak_bytes", "host_peak_rss_bytes")


@dataclasses.dataclass
class Results:
    """The results so far: what a checkpoint keeps besides the state."""

    class_il: np.ndarray  # [runs, phases, tasks]
    task_il: np.ndarray
    random_init: dict[str, np.ndarray]  # [runs, tasks] each
    timings: dict[str, float]
    train_samples: int = 0
    train_steps: int = 0  # per run
    # Anytime evaluation (config.eval.every_steps): one entry per point, in order. "step" and
    # "samples" count one run's batches and examples; "task" is the last task of the phase
    # being trained (the tasks seen so far are 0..task); "class_il"/"task_il" are [runs, T].
    anytime: dict = dataclasses.field(default_factory=lambda: {k: [] for k in ANYTIME_KEYS})
    # After each phase (`make_evaluate(details=True)`): top-5 and nearest-mean-of-exemplars
    # class-IL accuracy [runs, phases, tasks] (NaN: not measured), the (label, prediction)
    # counts [runs, phases, C, C], and the phase's wall time and peak memory.
    top5: np.ndarray | None = None
    nme: np.ndarray | None = None
    confusion: np.ndarray | None = None
    phase_costs: dict = dataclasses.field(default_factory=lambda: {k: [] for k in COST_KEYS})
    # The validation split's accuracy after each phase ([runs, phases, tasks]; None without
    # one) and early stopping's state in the phase being trained.
    val_class_il: np.ndarray | None = None
    val_task_il: np.ndarray | None = None
    early: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def start(cls, runs: int, phases: int, tasks: int, random_init: dict) -> Results:
        class_il = np.full((runs, phases, tasks), np.nan)
        return cls(
            class_il, np.full_like(class_il, np.nan), random_init, dict.fromkeys(SECTIONS, 0.0)
        )

    @classmethod
    def resumed(cls, restored, runs: int) -> Results:
        """The results a checkpoint saved (matrices of a single run gain the run axis)."""
        class_il, task_il, random_init, timings, samples, steps = restored.results_so_far()
        lead = lambda a: np.asarray(a).reshape(runs, *np.shape(a)[-2:])  # noqa: E731
        init = {k: np.asarray(v).reshape(runs, -1) for k, v in random_init.items()}
        anytime = {k: [] for k in ANYTIME_KEYS}
        saved = restored.results.get("anytime") or {}  # absent in checkpoints from before it
        if len(np.atleast_1d(saved.get("step", []))):
            tasks = np.shape(class_il)[-1]
            anytime = {k: [int(v) for v in saved[k]] for k in ("step", "task", "samples")}
            for k in ("class_il", "task_il"):
                anytime[k] = list(np.asarray(saved[k]).reshape(-1, runs, tasks))
        timings = {**dict.fromkeys(SECTIONS, 0.0), **timings}
        results = cls(lead(class_il), lead(task_il), init, timings, samples, steps, anytime)
        saved = restored.results
        for key in ("top5", "nme", "val_class_il", "val_task_il"):
            if key in saved:
                setattr(results, key, lead(saved[key]))
        early = saved.get("early") or {}
        if "phase" in early:
            results.early = {"phase": int(early["phase"]), "waited": int(early["waited"]),
                             "best": np.atleast_1d(early["best"]).tolist()}  # fmt: skip
        if "confusion" in saved:
            width = np.shape(saved["confusion"])[-1]
            results.confusion = np.asarray(saved["confusion"]).reshape(runs, -1, width, width)
        costs = saved.get("phase_costs") or {}
        results.phase_costs = {k: [float(v) for v in np.atleast_1d(costs.get(k, []))]
                               for k in COST_KEYS}  # fmt: skip
        return results

    def so_far(self, clock) -> dict:
        return {"class_il": self.class_il, "task_il": self.task_il, "random_init": self.random_init,
                "train_samples": self.train_samples, "train_steps": self.train_steps,
                "timings": clock.current(),
                "anytime": {k: np.asarray(v) for k, v in self.anytime.items()},
                "phase_costs": {k: np.asarray(v) for k, v in self.phase_costs.items()},
                "early": dict(self.early),
                **{k: v for k, v in (("top5", self.top5), ("nme", self.nme),
                                     ("confusion", self.confusion), ("val_class_il",
                                     self.val_class_il), ("val_task_il", self.val_task_il))
                   if v is not None}}  # fmt: skip

    def record_row(self, p: int, class_row, task_row, extra: dict | None = None) -> None:
        self.class_il[:, p, :], self.task_il[:, p, :] = class_row, task_row
        if extra is None:
            return
        runs, phases, tasks = self.class_il.shape
        if self.top5 is None:
            self.top5, self.nme = (np.full((runs, phases, tasks), np.nan) for _ in range(2))
        self.top5[:, p] = extra["top5"]
        if "nme" in extra:
            self.nme[:, p] = extra["nme"]
        if self.confusion is None:
            width = np.shape(extra["confusion"])[-1]
            self.confusion = np.zeros((runs, phases, width, width))
        self.confusion[:, p] = extra["confusion"]

    def record_costs(self, epochs: int, wall_s: float, device_peak: float, host_peak_rss: float):
        """A phase's epochs trained, wall time (start to its evaluation) and peak memory (NaN:
        not known)."""
        for key, value in zip(COST_KEYS, (epochs, wall_s, device_peak, host_peak_rss)):
            self.phase_costs[key].append(float(value))

    def record_validation(self, p: int, class_row, task_row) -> None:
        if self.val_class_il is None:
            self.val_class_il, self.val_task_il = (np.full_like(self.class_il, np.nan)
                                                   for _ in range(2))  # fmt: skip
        self.val_class_il[:, p], self.val_task_il[:, p] = class_row, task_row

    def stop_early(self, phase: int, scores: np.ndarray, patience: int) -> bool:
        """Early stopping after an epoch of `phase`: `scores` [runs] is each run's validation
        accuracy on the phase's tasks; True once `patience` epochs in a row improved no run's
        best (so several runs stop together)."""
        if self.early.get("phase") != phase:
            self.early = {"phase": phase, "best": [-np.inf] * len(scores), "waited": 0}
        best = np.asarray(self.early["best"], np.float64)
        improved = bool((scores > best).any())
        self.early = {"phase": phase, "best": np.maximum(best, scores).tolist(),
                      "waited": 0 if improved else int(self.early["waited"]) + 1}  # fmt: skip
        return self.early["waited"] >= patience

    def record_point(self, step: int, task: int, samples: int, class_row, task_row) -> None:
        """One anytime-evaluation point: every task's accuracy at `step`, tasks 0..`task` seen."""
        for key, value in zip(ANYTIME_KEYS, (step, task, samples, class_row, task_row)):
            self.anytime[key].append(value)

    def _extra(self, r: int) -> dict:
        """Run r's top-5 and nearest-mean matrices [phases, tasks] (those measured)."""
        out = {}
        if self.top5 is not None and np.shape(self.confusion)[-1] > 5:
            out["top5"] = self.top5[r]
        if self.nme is not None and np.isfinite(self.nme[r]).all():
            out["nme"] = self.nme[r]
        return out

    def details(self, experiment) -> dict:
        """What summary.json holds beside a single run's metrics (`_details`); {} for several
        runs, whose details sit in each run's entry of the summary."""
        return {} if experiment.grid.vmapped else self._details(0)

    def _details(self, r: int) -> dict:
        """Run r's per-class class-IL accuracy after the last phase (None: no test example)
        and each phase's wall time and peak memory, for summary.json."""
        out = {}
        if self.confusion is not None:
            final = cl_evaluation.per_class_accuracy(self.confusion[r, -1])
            out["per_class_acc"] = [None if np.isnan(v) else float(v) for v in final]
        costs = self.phase_costs
        if costs["wall_s"]:
            out["phases"] = [
                {k: (None if np.isnan(costs[k][p]) else costs[k][p]) for k in COST_KEYS}
                for p in range(len(costs["wall_s"]))
            ]
        return out

    def curve(self, r: int) -> dict | None:
        """Run r's anytime curve: step, task, samples [E]; class_il, task_il [E, T] (None
        when the run evaluated only at task ends)."""
        if not self.anytime["step"]:
            return None
        out = {k: np.asarray(self.anytime[k]) for k in ("step", "task", "samples")}
        for k in ("class_il", "task_il"):
            out[k] = np.stack(self.anytime[k])[:, r]
        return out

    def add(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds

    def finish(self, experiment, workdir: Path, main: bool) -> dict:
        """The final timings, the summary (metrics per view; the table of several runs) and
        the files: accuracy_matrix.json (per run), summary.md (several runs)."""
        grid, scenario, phases = experiment.grid, experiment.scenario, experiment.phases
        timings = self.timings  # closed by the run's clock (engine.clock) before this
        timings["train_samples"] = self.train_samples
        timings["train_samples_per_s"] = self.train_samples / max(timings["train"], 1e-9)
        timings["train_steps"] = self.train_steps  # per run
        timings["eval_examples"] = (len(phases) + 1) * int(sum(scenario.test_sizes))  # per run
        timings["devices"] = experiment.mesh.size
        device_peak, _ = peak_memory()  # GPU, TPU: the peak bytes in use (CPU: none)
        if not np.isnan(device_peak):
            timings["device_peak_bytes"] = device_peak
        per_run = []
        for r in range(grid.size):
            init_r = {k: v[r] for k, v in self.random_init.items()}
            curve = self.curve(r)
            summary_r = summaries(scenario.setting, self.class_il[r], self.task_il[r], init_r,
                                  scenario.test_sizes, curve, self._extra(r))  # fmt: skip
            if self.val_class_il is not None:  # the validation split's own metrics
                validation = summaries(
                    scenario.setting,
                    self.val_class_il[r],
                    self.val_task_il[r],
                    None,
                    scenario.validation.test_sizes,
                )
                summary_r.update({f"validation_{view}": m for view, m in validation.items()})
            per_run.append({"seed": grid.seeds[r], "hparams": grid.points[r], **summary_r,
                            **self._details(r)})  # fmt: skip
            if main:
                folder = workdir / "runs" / f"{r:03d}" if grid.vmapped else workdir
                write_matrices(folder, self.class_il[r], self.task_il[r], init_r, phases)
                if curve is not None:  # accuracy against steps (launch/report plots it)
                    (folder / "anytime.json").write_text(
                        json.dumps({k: v.tolist() for k, v in curve.items()}, indent=1) + "\n"
                    )
                if self.val_class_il is not None:
                    write_matrices(folder, self.val_class_il[r], self.val_task_il[r], {},
                                   phases, "validation_matrix.json")  # fmt: skip
                if self.confusion is not None:  # every phase's (label, prediction) counts
                    (folder / "confusion.json").write_text(json.dumps(
                        {"confusion": self.confusion[r].astype(int).tolist(), "phases": phases}
                    ) + "\n")  # fmt: skip
                if grid.vmapped:
                    (folder / "summary.json").write_text(json.dumps(per_run[-1], indent=2) + "\n")
        if not grid.vmapped:
            return {k: v for k, v in per_run[0].items() if isinstance(v, dict) and k != "hparams"}
        table = runs_lib.summary_table(grid, per_run)
        if main:
            (workdir / "summary.md").write_text(runs_lib.format_table(table) + "\n")
        out = {"runs": per_run, "table": table}
        if self.val_class_il is not None and len(table) > 1:
            out["chosen"] = chosen_point(table, scenario.setting)
        return out

    def result(self, experiment, summary: dict, state) -> RunResult:
        """The `RunResult`; a single run's matrices and state lose the run axis."""
        grid = experiment.grid
        if grid.vmapped:
            return RunResult(self.class_il, self.task_il, self.random_init, summary,
                             self.timings, state, grid)  # fmt: skip
        first = lambda a: a[0]  # noqa: E731
        return RunResult(self.class_il[0], self.task_il[0],
                         {k: v[0] for k, v in self.random_init.items()}, summary, self.timings,
                         jax.tree.map(first, state))  # fmt: skip


def summaries(
    setting: str, class_il, task_il, random_init, test_sizes=None, curve=None, extra=None
) -> dict[str, Any]:
    """ACC, BWT, FWT, forgetting, ... of each view ("class_il" and "task_il", or "domain_il");
    with the tasks' `test_sizes`, average incremental accuracy and old/new-task accuracy; with
    an anytime `curve` (`Results.curve`), average anytime accuracy ("aaa") and the area under
    the accuracy curve ("acc_auc"); with `extra` matrices (`Results._extra`), the final
    top-5 ("acc_top5") and nearest-mean-of-exemplars ("acc_nme") class-IL accuracy."""
    views = (
        {"class_il": class_il, "task_il": task_il}
        if setting == "class"
        else {"domain_il": class_il}
    )
    out = {}
    for view, matrix in views.items():
        if matrix.shape[0] == matrix.shape[1]:
            init = None if random_init is None else random_init[
                "task_il" if view == "task_il" else "class_il"]  # fmt: skip
            out[view] = cl_metrics.summary(matrix, init, test_sizes)
        else:  # joint training: one row, only the final accuracy is defined
            out[view] = {"acc": float(np.mean(matrix[-1]))}
        if view != "task_il":  # the class-IL (domain-IL) head's own extras
            for key, matrix_ in (extra or {}).items():
                out[view][f"acc_{key}"] = float(np.mean(matrix_[-1]))
        if curve is not None:
            points = curve["task_il" if view == "task_il" else "class_il"]
            out[view]["aaa"] = cl_metrics.average_anytime_accuracy(points, curve["task"])
            out[view]["acc_auc"] = cl_metrics.accuracy_auc(
                points, curve["task"], curve["samples"], test_sizes
            )
    return out


def chosen_point(table: list[dict], setting: str) -> dict:
    """The grid point with the best mean validation ACC over its seeds, and its test metrics:
    hyper-parameters chosen without looking at the test sets."""
    view = "class_il" if setting == "class" else "domain_il"
    scores = [row[f"validation_{view}"]["acc"][0] for row in table]
    best = int(np.argmax(scores))
    return {
        "point": table[best]["point"],
        "by": f"the best validation {view} ACC (final row, mean over seeds) of {len(table)} points",
        "validation_acc": scores[best],
        "test": {v: table[best][v] for v in table[best] if v in ("class_il", "task_il",
                                                                  "domain_il")},
    }  # fmt: skip


def write_matrices(folder: Path, class_il, task_il, random_init, phases,
                   name: str = "accuracy_matrix.json") -> None:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(
        json.dumps(
            {
                "class_il": np.asarray(class_il).tolist(),
                "task_il": np.asarray(task_il).tolist(),
                "random_init": {k: np.asarray(v).tolist() for k, v in random_init.items()},
                "phases": phases,
            },
            indent=1,
        )  # fmt: skip
    )


def final_lines(summary: dict, timings: dict, vmapped: bool) -> list[str]:
    """The console's last lines: the metrics (or the table of several runs) and the timings."""
    if vmapped:
        lines = [runs_lib.format_table(summary["table"])]
        if "chosen" in summary:  # the validation split chose; the test sets only report
            chosen = summary["chosen"]
            point = ", ".join(f"{k}={v:g}" for k, v in chosen["point"].items())
            lines.append(f"chosen on the validation split: {point} (validation ACC "
                         f"{100 * chosen['validation_acc']:.2f}; {chosen['by']})")  # fmt: skip
    else:  # the views' metrics (per-class accuracies and phase costs are in summary.json)
        lines = [f"{view}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in values.items())
                 for view, values in summary.items() if isinstance(values, dict)]  # fmt: skip
    parts = ", ".join(f"{key} {timings.get(key, 0.0):.1f}" for key in SECTIONS)
    lines.append(
        f"train {timings['train_samples_per_s']:,.0f} samples/s; "
        f"wall {format_duration(timings['wall'])} = {parts} s; "
        f"{timings.get('compile_count', 0)} compilations ({timings.get('cache_hits', 0)} from "
        f"the cache)"
    )
    return lines


def program_costs(compiled) -> dict[str, float]:
    """XLA's own account of the compiled train program: FLOPs of one step (the loop body is
    counted once; under a mesh, one device's share) and its memory (arguments + temporaries
    + outputs not aliased to donated arguments)."""
    costs = {}
    try:
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        if analysis and analysis.get("flops"):
            costs["step_flops"] = float(analysis["flops"])
        memory = compiled.memory_analysis()
        if memory is not None:
            costs["program_bytes"] = float(
                memory.argument_size_in_bytes + memory.temp_size_in_bytes
                + memory.output_size_in_bytes - memory.alias_size_in_bytes
            )  # fmt: skip
    except Exception:  # noqa: BLE001 - an analysis a backend lacks is not worth failing a run for
        pass
    return costs


def peak_memory() -> tuple[float, float]:
    """(device peak bytes in use, host peak RSS bytes) so far; NaN where the backend does not
    say (XLA:CPU keeps no device statistics: its arrays live in the host's memory)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    device = float(stats.get("peak_bytes_in_use", np.nan))
    return device, float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0
