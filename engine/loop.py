"""The whole continual-learning loop, top to bottom, in plain Python.

configure → data → model, optimiser, algorithm → state → compile → for each training
phase: train epochs (one dispatch per chunk of steps) → `end_task` → evaluate every task →
write the accuracy-matrix row. Observers (progress bar, JSONL, console tables) read values;
only this loop assigns the state.

    from sequax.engine import loop
    result = loop.run(config, workdir="/tmp/run")
    result.class_il  # accuracy matrix R[i, j], rows = training phases
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sequax.algorithms.protocol import phases_of
from sequax.engine import metrics as cl_metrics
from sequax.engine.build import ConfigError, build_algorithm, build_model, build_optimizer, build_scenario
from sequax.engine.evaluation import make_evaluate, stack_test_sets
from sequax.engine.state import STREAM_TASK, CLState, create_state, stream_key
from sequax.engine.step import epoch_order, make_run_steps, make_train_step, steps_per_epoch
from sequax.engine.task_data import task_arrays
from sequax.engine.writers import JsonlWriter, ProgressBar, format_duration


@dataclasses.dataclass
class RunResult:
    """What a run produced. Accuracies are fractions; matrices are [phases, tasks]."""

    class_il: np.ndarray
    task_il: np.ndarray
    random_init: dict[str, np.ndarray]  # accuracies of the untrained model ("class_il", "task_il")
    summary: dict[str, Any]
    timings: dict[str, float]
    state: CLState


def _summaries(setting: str, class_il, task_il, random_init) -> dict[str, Any]:
    views = {"class_il": class_il, "task_il": task_il} if setting == "class" else {"domain_il": class_il}
    out = {}
    for view, matrix in views.items():
        if matrix.shape[0] == matrix.shape[1]:
            out[view] = cl_metrics.summary(matrix, random_init["task_il" if view == "task_il" else "class_il"])
        else:  # joint training: one row, only the final accuracy is defined
            out[view] = {"acc": float(np.mean(matrix[-1]))}
    return out


def run(config, workdir: str | Path, *, verbose: bool = True) -> RunResult:
    """Trains `config`'s algorithm on its task stream; writes results under `workdir`."""
    wall_start = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    log = JsonlWriter(workdir / "metrics.jsonl")

    # ---------------- Data, model, optimiser, algorithm (all validated before compiling) -------
    scenario = build_scenario(config.data)
    model = build_model(config.model, scenario.num_classes)
    tx = build_optimizer(config.optimizer)
    algorithm = build_algorithm(config.algorithm)
    batch_size = int(config.training.batch_size)
    phases = phases_of(algorithm, scenario.num_tasks)
    phase_sizes = [sum(scenario.train_sizes[t] for t in phase) for phase in phases]
    if min(phase_sizes) < batch_size:
        raise ConfigError(
            f"config.training.batch_size={batch_size} exceeds the smallest task "
            f"({min(phase_sizes)} examples); lower the batch size"
        )
    capacity = max(phase_sizes)  # every phase is padded to this: one shape, one compile
    test = stack_test_sets(scenario)
    say(
        f"sequax: {config.algorithm.name} on {scenario.name} ({scenario.num_tasks} tasks, "
        f"{scenario.setting}-IL, {sum(scenario.train_sizes)} training examples), "
        f"batch {batch_size}, {config.training.epochs} epoch(s) per task; workdir {workdir}"
    )

    # ---------------- State and compiled functions -----------------------------------------
    # The first phase's examples are read once, for the example batch and for training.
    first_parts = [scenario.train(t) for t in phases[0]]
    x0, y0 = first_parts[0]
    example_batch = {
        "x": jnp.asarray(x0[:batch_size], jnp.float32) / 255.0,
        "y": jnp.asarray(y0[:batch_size], jnp.int32),
        "task": jnp.zeros((batch_size,), jnp.int32),
    }
    state = jax.jit(lambda b: create_state(model, algorithm, tx, b, int(config.seed)))(example_batch)
    train_step = make_train_step(model, algorithm, tx)
    run_steps = make_run_steps(train_step, batch_size)
    order_fn = jax.jit(epoch_order, static_argnums=3)
    end_task = jax.jit(lambda s, d, k: algorithm.end_task(s, d, k, model))
    evaluate = make_evaluate(model, scenario.task_classes, int(config.eval.batch_size))

    # ---------------- Accuracy of the untrained model (the b_j of forward transfer) ----------
    b_class, b_task = (np.asarray(a) for a in evaluate(state.params, state.model_state, state.task, test))
    random_init = {"class_il": b_class, "task_il": b_task}
    log.write({"kind": "eval", "phase": -1, "class_il": b_class, "task_il": b_task})

    class_il = np.full((len(phases), scenario.num_tasks), np.nan)
    task_il = np.full_like(class_il, np.nan)
    timings = {"compile": 0.0, "train": 0.0, "end_task": 0.0, "eval": 0.0}
    train_samples = 0
    chunk = int(config.training.steps_per_dispatch)
    compiled = None

    row_labels = [f"after task {ts[0]}" if len(ts) == 1 else f"after tasks {ts[0]}-{ts[-1]}" for ts in phases]
    for p, tasks in enumerate(phases):
        # ------------ Place the phase's examples on device, once -----------------------------
        parts = first_parts if p == 0 else [scenario.train(t) for t in tasks]
        first_parts = None  # keep no host copy of phase 0 once it is on device
        x = np.concatenate([xt for xt, _ in parts])
        y = np.concatenate([yt for _, yt in parts])
        task_ids = np.concatenate([np.full(len(yt), t, np.int32) for t, (_, yt) in zip(tasks, parts)])
        data = task_arrays(x, y, task_ids, capacity)
        state = state._replace(task=jnp.asarray(tasks[-1], jnp.int32))
        if p > 0 and config.optimizer.get("reset_each_task", False):
            state = state._replace(opt_state=tx.init(state.params))
        steps = steps_per_epoch(len(y), batch_size)

        if compiled is None:  # compile once, ahead of time; a shape change would raise, not retrace
            t0 = time.perf_counter()
            order = order_fn(state.key, state.step, data.size, capacity)
            compiled = run_steps.lower(state, data, order, np.int32(0), np.int32(1)).compile()
            timings["compile"] = time.perf_counter() - t0

        # ------------ Train: epochs of in-jit permutations, chunks of fori_loop steps ---------
        label = f"phase {p + 1}/{len(phases)}" if len(tasks) > 1 else f"task {tasks[0] + 1}/{scenario.num_tasks}"
        bar = ProgressBar(total=steps * batch_size * config.training.epochs, label=label) if verbose else None
        t0 = time.perf_counter()
        for epoch in range(int(config.training.epochs)):
            order = order_fn(state.key, state.step, data.size, capacity)
            for start in range(0, steps, chunk):
                stop = min(start + chunk, steps)
                state, means = compiled(state, data, order, np.int32(start), np.int32(stop))
                means = {k: float(v) for k, v in means.items()}  # blocks: honest timing
                done = (stop - start) * batch_size
                train_samples += done
                if bar:
                    bar.update(done, **means)
                log.write({"kind": "train", "phase": p, "epoch": epoch, "step": int(state.step), **means})
        timings["train"] += time.perf_counter() - t0
        if bar:
            bar.close()

        # ------------ End of task: importances, anchors, snapshots (compiled) ----------------
        t0 = time.perf_counter()
        algo = end_task(state, data, stream_key(state.key, STREAM_TASK, tasks[-1]))
        state = state._replace(algo=jax.block_until_ready(algo))
        timings["end_task"] += time.perf_counter() - t0

        # ------------ Evaluate every task: row p of the accuracy matrix ----------------------
        t0 = time.perf_counter()
        row_class, row_task = evaluate(state.params, state.model_state, state.task, test)
        class_il[p], task_il[p] = np.asarray(row_class), np.asarray(row_task)
        timings["eval"] += time.perf_counter() - t0
        log.write({"kind": "eval", "phase": p, "tasks": tasks, "class_il": class_il[p], "task_il": task_il[p]})
        view = "class" if scenario.setting == "class" else "domain"
        say(cl_metrics.format_matrix(class_il, title=f"accuracy (%), {view}-IL", row_labels=row_labels))
        if scenario.setting == "class":
            say(cl_metrics.format_matrix(task_il, title="accuracy (%), task-IL", row_labels=row_labels))

    # ---------------- Summary ---------------------------------------------------------------
    summary = _summaries(scenario.setting, class_il, task_il, random_init)
    timings["wall"] = time.perf_counter() - wall_start
    timings["train_samples"] = train_samples
    timings["train_samples_per_s"] = train_samples / max(timings["train"], 1e-9)
    log.write({"kind": "summary", **summary, "timings": timings})
    log.close()
    (workdir / "accuracy_matrix.json").write_text(
        json.dumps(
            {"class_il": class_il.tolist(), "task_il": task_il.tolist(),
             "random_init": {k: v.tolist() for k, v in random_init.items()}, "phases": phases},
            indent=1,
        )
    )
    (workdir / "summary.json").write_text(json.dumps({**summary, "timings": timings}, indent=2) + "\n")
    for view, values in summary.items():
        say(f"{view}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in values.items()))
    say(
        f"train {timings['train_samples_per_s']:,.0f} samples/s; compile {timings['compile']:.1f}s, "
        f"train {timings['train']:.1f}s, end_task {timings['end_task']:.1f}s, eval {timings['eval']:.1f}s, "
        f"wall {format_duration(timings['wall'])}"
    )
    return RunResult(class_il, task_il, random_init, summary, timings, state)
