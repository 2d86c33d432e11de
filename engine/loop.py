"""The whole continual-learning loop, top to bottom, in plain Python.

restore → for each training phase: train (epochs of compiled chunks of steps) → end of task
→ evaluate every task → record the accuracy-matrix row → checkpoint. Everything else is
built before the loop starts: the parts and every config rule (`engine.experiment`), the
compiled programs (`engine.programs`), and the feed that brings batches to the step
(`engine.feed`: on-device arrays, per-run draws, or a grain stream). Observers (progress
bar, JSONL, console tables) read values; only this loop assigns the state.

A single run is a grid of one: the state always carries a leading run axis, so N seeds ×
swept values (`config.runs` / `config.sweep`) are the same program with N > 1, on one
device or split over a mesh of devices and hosts (`config.mesh`).

    from sequax.engine import loop
    result = loop.run(config, workdir="/tmp/run")         # a config, resolved into objects
    result = loop.run(experiment, workdir="/tmp/run")     # or an engine.experiment.Experiment
    result.class_il  # accuracy matrix R[i, j], rows = training phases ([runs, i, j] if several)
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import jax
import numpy as np

from sequax.data.scenarios import describe as describe_scenario
from sequax.engine.checkpoint import Checkpoints, checkpoint_folder
from sequax.engine.clock import Clock
from sequax.engine.compilation import Compilations, compilation_cache
from sequax.engine.distributed import to_numpy
from sequax.engine.experiment import Experiment, from_config
from sequax.engine.feed import Feed
from sequax.engine.integrity import workdir_path
from sequax.engine.interrupts import Interrupts, kill_point
from sequax.engine.library_logs import orbax_logs_to
from sequax.engine.program_cache import run_cache
from sequax.engine.programs import make_programs
from sequax.engine.results import (
    Results,
    RunResult,
    final_lines,
    peak_memory,
    program_costs,
)
from sequax.engine.writers import ProgressBar, make_writers


def run(experiment, workdir: str | Path, *, verbose: bool = True) -> RunResult:
    """Trains `experiment` (or the config it is resolved from) and writes its results under
    `workdir`; a workdir holding a checkpoint of the same run resumes from it."""
    workdir = workdir_path(workdir)  # "~/runs/x" and "$SCRATCH/x" as the shell would expand
    if not isinstance(experiment, Experiment):
        experiment = from_config(experiment)  # every config rule: before any data is placed
    exp, config = experiment, experiment.config
    main = jax.process_index() == 0  # only process 0 prints and writes (several hosts)
    # WORKDIR/checkpoints holding a run of another config is refused here, before compiling.
    checkpoints = Checkpoints(
        checkpoint_folder(workdir), config, num_phases=len(exp.phases), main=main
    )
    with (
        compilation_cache(config.get("compilation_cache", "")) as folder,
        Compilations() as compiles,
        run_cache(exp, folder, compiles),  # whole programs: a rerun neither traces nor lowers
    ):
        # SIGINT/SIGTERM: the chunk in flight finishes, its position is saved, `Interrupted`.
        with Interrupts() as interrupts, orbax_logs_to(workdir, enabled=main):
            cleanup = contextlib.ExitStack()  # what a run that stops early must still close
            try:
                with cleanup:
                    return _run(exp, config, workdir, checkpoints, compiles, interrupts, main,
                                verbose, cleanup)  # fmt: skip
            finally:  # a run that stops early still completes the save in flight
                checkpoints.settle()


def _run(exp, config, workdir, checkpoints, compiles, interrupts, main, verbose, cleanup):
    say = print if verbose and main else (lambda *a, **k: None)
    timings = {}
    clock = Clock(timings, compiles, exp)  # startup, data, compile, train, ... (engine.clock)
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    writers = make_writers(config, workdir, main, verbose=verbose)  # JSONL, console, TB, W&B
    write = writers.write
    with clock("data"):
        feed = Feed(exp)  # on-device arrays, per-run draws, or a grain stream: chosen once
        cleanup.callback(feed.close)  # a phase's grain workers, if the run stops inside it
        example = feed.example_batch()
    say(f"sequax: {exp.describe()}; workdir {workdir}")
    say(f"sequax: {describe_scenario(exp.scenario)}")  # what the stream built
    if config.training.get("task_free", False):
        say("sequax: task-free: the method is not told where tasks end (no start_task/end_task)")
    write({"kind": "start", "algorithm": config.algorithm.name, "scenario": exp.scenario.name,
           "setting": exp.scenario.setting, "num_tasks": exp.scenario.num_tasks,
           "phases": [list(ts) for ts in exp.phases], "runs": exp.grid.size})  # fmt: skip

    with jax.set_mesh(exp.mesh):
        programs = make_programs(exp, example, per_run_images=feed.per_run_images)
        with clock("data"):
            test = feed.test_sets()
            validation = feed.validation_sets()  # None without config.data.validation
        # ------------ Restore, or start: the untrained model's accuracy (FWT's b_j) ----------
        restored, state, results = _restore_or_start(exp, programs, checkpoints, test, write,
                                                     say, clock)  # fmt: skip
        clock.adopt(results.timings)
        interrupts.stop_if(interrupts.requested(), checkpoints, None, "before training anything")
        resume = restored.position if restored else None
        epochs, chunk = int(config.training.epochs), int(config.training.steps_per_dispatch)
        every = int(config.eval.get("every_steps", 0))  # anytime evaluation (0: task ends only)
        patience = int(config.training.get("patience", 0))  # early stopping on the validation

        for p, tasks in enumerate(exp.phases):
            if resume and resume.finished(p):  # trained, evaluated and saved before the restart
                continue
            mid_phase = resume is not None and p == resume.phase  # training continues inside it
            phase_start = time.perf_counter()  # the phase's wall time, start to evaluation
            # ------------ Start the phase: its examples on device, its task, start_task -------
            with clock("data"):
                phase = feed.start_phase(
                    p, tasks, state, programs, resume=restored.stream if mid_phase else None
                )
            with clock("end_task"):
                state = programs.start_phase(state, phase.data, tasks, fresh=not mid_phase,
                                             later=p > 0)  # fmt: skip
            if feed.compiled is None:  # once, ahead of time: a shape change raises, not retraces
                results.timings.update(program_costs(feed.compile(state, phase, programs)))

            # ------------ Train: epochs of chunks of steps, one dispatch each ----------------
            label = (
                f"phase {p + 1}/{len(exp.phases)}"
                if len(tasks) > 1
                else f"task {tasks[0] + 1}/{exp.scenario.num_tasks}"
            )
            bar = (
                ProgressBar(total=phase.steps * exp.batch_size * epochs, label=label)
                if verbose and main
                else None
            )
            first_epoch, first_start = (resume.epoch, resume.start) if mid_phase else (0, 0)
            trained = first_epoch
            step = int(np.max(to_numpy(state.step))) if every else 0  # anytime: where we are
            for epoch in range(first_epoch, epochs):
                start = first_start if epoch == first_epoch else 0
                while start < phase.steps:
                    # A chunk also ends where an anytime evaluation is due (every `every` steps).
                    due = start + (every - step % every) if every else phase.steps
                    stop = min(start + chunk, phase.steps, due)
                    with clock("train"):
                        state, means = phase.run(state, epoch, start, stop)
                        means = {k: to_numpy(v) for k, v in means.items()}  # blocks: honest
                    results.train_samples += (stop - start) * exp.batch_size * exp.grid.size
                    results.train_steps += stop - start
                    if bar:
                        bar.update((stop - start) * exp.batch_size,
                                   **{k: float(np.mean(v)) for k, v in means.items()})  # fmt: skip
                    step = int(np.max(to_numpy(state.step)))
                    write({"kind": "train", "phase": p, "epoch": epoch, "step": step,
                           **_shown(exp, means)})  # fmt: skip
                    checkpoints.check_finite(means, step=step, label=label, epoch=epoch)  # NaN
                    inside = epoch + 1 < epochs or stop < phase.steps  # the task end evaluates
                    if every and step % every == 0 and inside:  # before a save: it keeps it
                        with clock("eval"):
                            _anytime(exp, programs, state, test, results, write, step, tasks)
                    kill_point("train_chunk", step, checkpoints.wait)  # test-only: test_resume
                    with clock("checkpoint"):
                        signum = interrupts.requested()  # SIGINT/SIGTERM: save here, then stop
                        due = checkpoints.due_after_chunk(p, epoch, start, stop, phase.steps, step)
                        saved = (
                            checkpoints.save_chunk(state, step, p, epoch, stop, phase.steps,
                                                   results.so_far(clock), phase.position())
                            if due or (signum and checkpoints.enabled)
                            else None
                        )  # fmt: skip
                        where = f"at step {step} ({label}, epoch {epoch + 1})"
                        interrupts.stop_if(signum, checkpoints, saved, where)
                    start = stop
                trained = epoch + 1
                if patience and trained < epochs:  # early stopping: the phase's validation ACC
                    with clock("eval"):
                        rows = programs.evaluate(state, validation, tasks[-1])[0]
                        scores = to_numpy(rows)[:, tasks].mean(axis=1)
                    if results.stop_early(p, scores, patience):
                        say(f"sequax: {label}: no better validation accuracy for {patience} "
                            f"epoch(s); stopping after epoch {trained}")  # fmt: skip
                        break
            phase.close()
            if bar:
                bar.close()

            # ------------ End of task: importances, anchors, snapshots (compiled) ------------
            with clock("end_task"):
                state = programs.finish_phase(state, phase.data, tasks)
            kill_point("end_task", p, checkpoints.wait)  # test-only (tests/engine/test_resume.py)
            del phase

            # ------------ Evaluate every task: row p of the accuracy matrix ------------------
            with clock("eval"):
                *rows, extra = jax.tree.map(to_numpy, programs.evaluate(state, test, tasks[-1]))
                results.record_row(p, *rows, extra)
                if every:  # the task's end is a point of the anytime curve too
                    results.record_point(step, tasks[-1], step * exp.batch_size, *rows)
                if validation is not None:  # the held-out split: early stopping, sweeps
                    val_class, val_task = programs.evaluate(state, validation, tasks[-1])[:2]
                    results.record_validation(p, to_numpy(val_class), to_numpy(val_task))
            results.record_costs(trained, time.perf_counter() - phase_start, *peak_memory())
            write({"kind": "eval", "phase": p, "tasks": tasks,
                   "class_il": _shown(exp, results.class_il[:, p]),
                   "task_il": _shown(exp, results.task_il[:, p])})  # fmt: skip
            with clock("checkpoint"):
                step, last = int(np.max(to_numpy(state.step))), p + 1 == len(exp.phases)
                signum = 0 if last else interrupts.requested()  # the summary is a moment away
                saved = (
                    checkpoints.save_phase(state, step, p, results.so_far(clock))
                    if checkpoints.due_after_phase(p) or (signum and checkpoints.enabled)
                    else None
                )
                interrupts.stop_if(signum, checkpoints, saved, f"after {label} (step {step})")

    # ---------------- Summary ---------------------------------------------------------------
    with clock("checkpoint"):
        checkpoints.close()
    results.timings.update(compile_count=compiles.count, cache_hits=compiles.cache_hits,
                           compilations=compiles.by_program())  # fmt: skip
    clock.finish()
    summary = results.finish(exp, workdir, main)  # the matrices' files, summary.md
    details = results.details(exp)  # per-class accuracy, each phase's time and memory
    write({"kind": "summary", **summary, **details, "timings": results.timings})
    writers.close()
    if main:
        (workdir / "summary.json").write_text(
            json.dumps({**summary, **details, "timings": results.timings}, indent=2) + "\n"
        )
    for line in final_lines(summary, results.timings, exp.grid.vmapped):
        say(line)
    return results.result(exp, summary, state)


def _restore_or_start(exp, programs, checkpoints, test, write, say, clock):
    """(restored, state, results): the newest good checkpoint's, or a fresh state and the
    untrained model's accuracy row (the b_j of forward transfer)."""
    with clock("checkpoint"):
        restored = checkpoints.restore(programs.shapes, programs.state_sharding)
    if restored:
        results = Results.resumed(restored, exp.grid.size)
        say(
            f"resuming from {restored.folder} "
            f"({restored.describe(exp.phases, exp.scenario.num_tasks)})"
        )
        # The rows so far travel with the record, so every sink redraws the whole matrix.
        write({"kind": "resume", "checkpoint": str(restored.folder), "step": restored.step,
               **restored.position_record(), "class_il": _shown(exp, results.class_il),
               "task_il": _shown(exp, results.task_il),
               "random_init": _shown(exp, results.random_init)})  # fmt: skip
        return restored, restored.state, results
    with clock("eval"):
        state = programs.init()
        b_class, b_task = (to_numpy(a) for a in programs.evaluate(state, test)[:2])
    results = Results.start(exp.grid.size, len(exp.phases), exp.scenario.num_tasks,
                            {"class_il": b_class, "task_il": b_task})  # fmt: skip
    write({"kind": "eval", "phase": -1, "class_il": _shown(exp, b_class),
           "task_il": _shown(exp, b_task)})  # fmt: skip
    return None, state, results


def _anytime(exp, programs, state, test, results, write, step: int, tasks) -> None:
    """An anytime-evaluation point inside a phase: every task's test set at `step`."""
    class_row, task_row = (to_numpy(a) for a in programs.evaluate(state, test, tasks[-1])[:2])
    results.record_point(step, tasks[-1], step * exp.batch_size, class_row, task_row)
    write({"kind": "anytime", "step": step, "task": tasks[-1],
           "class_il": _shown(exp, class_row), "task_il": _shown(exp, task_row)})  # fmt: skip


def _shown(experiment, values):
    """Values as the records show them: a single run's without the run axis."""
    if experiment.grid.vmapped:
        return values
    if isinstance(values, dict):
        return {k: np.asarray(v)[0] for k, v in values.items()}
    return np.asarray(values)[0]
