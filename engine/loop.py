"""The whole continual-learning loop, top to bottom, in plain Python.

configure → data → model, optimiser, algorithm → mesh and runs → state → compile → for
each training phase: train epochs (one dispatch per chunk of steps) → `end_task` →
evaluate every task → write the accuracy-matrix row. Observers (progress bar, JSONL,
console tables) read values; only this loop assigns the state.

The same loop runs one run on one device, a run whose batch is split over a mesh of
devices or hosts (`config.mesh`, `sequax.engine.sharding`), and N runs (seeds × swept
hyper-parameters, `config.runs` / `config.sweep`, `sequax.engine.runs`) vmapped into one
program: then every state leaf and every result carries a leading run axis.

    from sequax.engine import loop
    result = loop.run(config, workdir="/tmp/run")
    result.class_il  # accuracy matrix R[i, j], rows = training phases ([runs, i, j] if vmapped)
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

from sequax.algorithms.protocol import model_for, optimizer_for, phases_of
from sequax.engine import metrics as cl_metrics
from sequax.engine import runs as runs_lib
from sequax.engine import sharding, validate
from sequax.engine.build import (
    ConfigError,
    build_algorithm,
    build_model,
    build_optimizer,
    build_scenario,
    drawn_scenarios,
)
from sequax.engine.checkpoint import Checkpoints, checkpoint_folder, kill_point
from sequax.engine.distributed import to_numpy
from sequax.engine.evaluation import make_evaluate, stack_run_test_sets, stack_test_sets
from sequax.engine.state import STREAM_TASK, CLState, create_state, stream_key
from sequax.engine.step import epoch_order, make_run_steps, make_train_step, steps_per_epoch
from sequax.engine.stream import make_feed
from sequax.engine.task_data import TaskData, task_arrays
from sequax.engine.writers import ProgressBar, format_duration, make_writers


@dataclasses.dataclass
class RunResult:
    """What a run produced. Accuracies are fractions; matrices are [phases, tasks]."""

    class_il: np.ndarray  # [phases, tasks], or [runs, phases, tasks] for vmapped runs
    task_il: np.ndarray
    random_init: dict[str, np.ndarray]  # accuracies of the untrained model ("class_il", "task_il")
    summary: dict[str, Any]  # of the run, or {"runs": [per run], "table": [per grid point]}
    timings: dict[str, float]
    state: CLState
    grid: runs_lib.RunGrid | None = None  # the runs of a vmapped program (None: one run)


def _summaries(setting: str, class_il, task_il, random_init) -> dict[str, Any]:
    views = (
        {"class_il": class_il, "task_il": task_il}
        if setting == "class"
        else {"domain_il": class_il}
    )
    out = {}
    for view, matrix in views.items():
        if matrix.shape[0] == matrix.shape[1]:
            out[view] = cl_metrics.summary(
                matrix, random_init["task_il" if view == "task_il" else "class_il"]
            )
        else:  # joint training: one row, only the final accuracy is defined
            out[view] = {"acc": float(np.mean(matrix[-1]))}
    return out


def _phase_images(scenario, drawn, tasks):
    """(x, y, task ids) of a phase; x is [runs, n, ...] when each run drew its own transform."""
    if drawn is None:
        parts = [scenario.train(t) for t in tasks]
    else:  # labels and examples are shared; only the images differ per run
        parts = [
            (
                np.stack([d.train(t)[0] for d in drawn]),
                scenario.source.train_y[scenario.train_indices[t]],
            )
            for t in tasks
        ]
    axis = 0 if drawn is None else 1
    x = np.concatenate([xt for xt, _ in parts], axis=axis)
    y = np.concatenate([yt for _, yt in parts])
    task_ids = np.concatenate([np.full(len(yt), t, np.int32) for t, (_, yt) in zip(tasks, parts)])
    return x, y, task_ids


def _mesh(config) -> jax.sharding.Mesh:
    cfg = dict(config.get("mesh") or {})
    try:
        return sharding.make_mesh(
            int(cfg.get("data", -1)), int(cfg.get("fsdp", 1)), runs=int(cfg.get("runs", 1))
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def run(config, workdir: str | Path, *, verbose: bool = True) -> RunResult:
    """Trains `config`'s algorithm on its task stream; writes results under `workdir`."""
    wall_start = time.perf_counter()
    validate.check_config(config)  # keys, types, ranges: before the workdir or any data is touched
    main = jax.process_index() == 0  # only process 0 prints and writes (several hosts)
    say = print if verbose and main else (lambda *a, **k: None)
    workdir = Path(workdir)
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    writers = make_writers(
        config, workdir, main, verbose=verbose
    )  # JSONL, console tables, TensorBoard, W&B
    write = writers.write

    # ---------------- Data, model, optimiser, algorithm, runs, mesh (validated before compiling) -
    scenario = build_scenario(config.data)
    model = build_model(
        config.model, scenario.num_classes, config.data
    )  # data.augment, data.normalize
    tx = build_optimizer(config.optimizer)
    algorithm = build_algorithm(config.algorithm)
    validate.check_combination(config, scenario, algorithm)  # method x stream
    try:  # the model the method trains (HAT: the MLP with task embeddings and gates)
        model = model_for(algorithm, model)
    except ValueError as error:
        raise ConfigError(f"config.algorithm.name={config.algorithm.name!r}: {error}") from None
    grid = runs_lib.make_grid(config)
    vmapped = grid.vmapped
    mesh = _mesh(config)
    ways = sharding.batch_size_of(mesh)
    if mesh.shape["runs"] > 1 and grid.size % mesh.shape["runs"]:
        raise ConfigError(
            f"config.mesh.runs={mesh.shape['runs']} must divide the {grid.size} run(s) of config.runs x "
            f"config.sweep; use a divisor of {grid.size}"
        )
    batch_size = int(config.training.batch_size)
    if batch_size % ways:
        raise ConfigError(
            f"config.training.batch_size={batch_size} must divide evenly over the {ways} devices of "
            f"the mesh (data x fsdp); use a multiple of {ways}"
        )
    phases = phases_of(algorithm, scenario.num_tasks)
    phase_sizes = [sum(scenario.train_sizes[t] for t in phase) for phase in phases]
    if min(phase_sizes) < batch_size:
        raise ConfigError(
            f"config.training.batch_size={batch_size} exceeds the smallest task "
            f"({min(phase_sizes)} examples); lower the batch size"
        )
    # Every phase is padded to this (one shape, one compile), a multiple of the batch split.
    capacity = -(-max(phase_sizes) // ways) * ways
    replicated = sharding.replicated(mesh)
    put_replicated = lambda a: sharding.put(np.asarray(a), replicated)  # noqa: E731
    put_examples = lambda a: sharding.put(a, sharding.examples_sharding(mesh, np.shape(a)))  # noqa: E731
    # data.draws_per_run: each run draws its own permutations or angles, as separate runs of
    # the reference code do; the phase's images and the test sets then carry a run axis.
    scenario, drawn = drawn_scenarios(
        config.data, scenario, grid.seeds if vmapped else [config.seed], vmapped
    )
    put_run_examples = lambda a: sharding.put(
        a, sharding.examples_sharding(mesh, np.shape(a), run_axis=True)
    )  # noqa: E731
    # data.pipeline="stream": training batches come from a grain pipeline (engine/stream.py).
    feed = make_feed(config, mesh, batch_size, capacity, runs=vmapped or drawn is not None)
    # WORKDIR/checkpoints holding a run of another config is refused here, before compiling.
    checkpoints = Checkpoints(checkpoint_folder(workdir), config, num_phases=len(phases), main=main)
    if drawn is None:
        test = stack_test_sets(scenario, put=put_replicated)
    else:
        test = stack_run_test_sets(drawn, put=put_replicated)
    runs_note = (
        f"; {grid.size} runs in one program ({', '.join(grid.keys) or 'seeds'})" if vmapped else ""
    )
    mesh_note = (
        "; mesh " + " x ".join(f"{a}={n}" for a, n in mesh.shape.items() if n > 1 or a == "data")
        if mesh.size > 1
        else ""
    )
    say(
        f"sequax: {config.algorithm.name} on {scenario.name} ({scenario.num_tasks} tasks, "
        f"{scenario.setting}-IL, {sum(scenario.train_sizes)} training examples), "
        f"batch {batch_size}, {config.training.epochs} epoch(s) per task{runs_note}{mesh_note}; "
        f"workdir {workdir}"
    )
    write(
        {
            "kind": "start",
            "algorithm": config.algorithm.name,
            "scenario": scenario.name,
            "setting": scenario.setting,
            "num_tasks": scenario.num_tasks,
            "phases": [list(ts) for ts in phases],
            "runs": grid.size,
        }
    )

    # ---------------- State and compiled functions -----------------------------------------
    # A vmapped sweep rebinds the algorithm and optimizer from each run's `state.hparams`.
    bind = (lambda hp: runs_lib.bind(algorithm, config.optimizer, hp)) if grid.keys else None
    parts = bind or (lambda hp: (algorithm, tx))
    # The first phase's examples are read once, for the example batch and for training.
    first_phase = _phase_images(scenario, drawn, phases[0])
    x0, y0 = (first_phase[0] if drawn is None else first_phase[0][0]), first_phase[1]
    example_batch = {
        "x": jnp.asarray(x0[:batch_size], jnp.float32) / 255.0,
        "y": jnp.asarray(y0[:batch_size], jnp.int32),
        "task": jnp.zeros((batch_size,), jnp.int32),
    }

    def init(seed, hparams):
        algorithm_, tx_ = parts(hparams)
        return create_state(model, algorithm_, tx_, example_batch, seed, hparams)

    if vmapped:
        init = jax.vmap(init)
        init_args = (np.array(grid.seeds, np.int32), grid.hparams())
    else:
        init_args = (np.int32(config.seed), {})
    with jax.set_mesh(mesh):
        shapes = jax.eval_shape(init, *init_args)
        state_sharding = sharding.named(
            mesh,
            sharding.state_specs(
                shapes,
                shapes.params,
                mesh,
                fsdp_min_size=int(dict(config.get("mesh") or {}).get("fsdp_min_size", 2**18)),
                runs=vmapped,
            ),
        )
        # A restarted run continues from its newest good checkpoint (engine/checkpoint.py).
        restored = checkpoints.restore(shapes, state_sharding)
        state = (
            restored.state if restored else jax.jit(init, out_shardings=state_sharding)(*init_args)
        )
        data_sharding = TaskData(
            *(sharding.examples_sharding(mesh, (capacity,)) for _ in range(3)), replicated
        )
        if drawn is not None:
            data_sharding = data_sharding._replace(
                x=sharding.examples_sharding(mesh, (len(drawn), capacity), run_axis=True)
            )
        data_axes = TaskData(0, None, None, None) if drawn is not None else None
        train_step = make_train_step(model, algorithm, tx, bind=bind)
        run_steps = make_run_steps(
            train_step,
            batch_size,
            runs=vmapped,
            shardings=(state_sharding, data_sharding),
            data_axes=data_axes,
        )
        order_fn = jax.jit(
            jax.vmap(epoch_order, (0, 0, None, None)) if vmapped else epoch_order, static_argnums=3
        )

        def end_task_fn(state, data, key):
            return parts(state.hparams)[0].end_task(state, data, key, model)

        end_task = jax.jit(
            jax.vmap(end_task_fn, (0, data_axes, 0)) if vmapped else end_task_fn,
            out_shardings=state_sharding.algo,
        )
        task_key = jax.jit(
            jax.vmap(stream_key, (0, None, None)) if vmapped else stream_key, static_argnums=1
        )
        start_task = None
        if hasattr(
            algorithm, "start_task"
        ):  # optional hook: the phase's data before its first step

            def start_task_fn(state, data, key):
                return parts(state.hparams)[0].start_task(
                    state, data, jax.random.fold_in(key, 1), model
                )

            start_task = jax.jit(
                jax.vmap(start_task_fn, (0, data_axes, 0)) if vmapped else start_task_fn,
                out_shardings=state_sharding.algo,
            )
        reset_opt = jax.jit(
            lambda s: (jax.vmap if vmapped else (lambda f: f))(
                lambda s: optimizer_for(*parts(s.hparams)).init(s.params)
            )(s),
            out_shardings=state_sharding.opt_state,
        )
        evaluate = make_evaluate(
            model,
            scenario.task_classes,
            int(config.eval.batch_size),
            runs=vmapped,
            predict=getattr(algorithm, "predict", None),
            test_per_run=drawn is not None,
        )
        set_task = lambda t: sharding.put(
            np.full((grid.size,) if vmapped else (), t, np.int32), state_sharding.task
        )  # noqa: E731

        # ---------------- Accuracy of the untrained model (the b_j of forward transfer) ------
        if restored:  # the results so far, the counters and the timings come from the checkpoint
            class_il, task_il, random_init, timings, train_samples, train_steps = (
                restored.results_so_far()
            )
            say(
                f"resuming from {restored.folder} ({restored.describe(phases, scenario.num_tasks)})"
            )
            # The rows so far travel with the record, so every sink redraws the whole matrix.
            write(
                {
                    "kind": "resume",
                    "checkpoint": str(restored.folder),
                    "step": restored.step,
                    **restored.position_record(),
                    "class_il": class_il,
                    "task_il": task_il,
                    "random_init": random_init,
                }
            )
        else:
            b_class, b_task = (
                to_numpy(a)
                for a in evaluate(state.params, state.model_state, state.task, test, state.algo)
            )
            random_init = {"class_il": b_class, "task_il": b_task}
            write({"kind": "eval", "phase": -1, "class_il": b_class, "task_il": b_task})
            lead = (grid.size,) if vmapped else ()
            class_il = np.full((*lead, len(phases), scenario.num_tasks), np.nan)
            task_il = np.full_like(class_il, np.nan)
            timings = {
                "compile": 0.0,
                "train": 0.0,
                "end_task": 0.0,
                "eval": 0.0,
                "checkpoint": 0.0,
            }
            train_samples = train_steps = 0

        def results_so_far():  # what a checkpoint keeps besides the state
            wall = timings.get("wall", 0.0) + time.perf_counter() - wall_start
            return {
                "class_il": class_il,
                "task_il": task_il,
                "random_init": random_init,
                "train_samples": train_samples,
                "train_steps": train_steps,
                "timings": {**timings, "wall": wall},
            }

        chunk = int(config.training.steps_per_dispatch)
        compiled = None

        resume = restored.position if restored else None
        for p, tasks in enumerate(phases):
            if resume and resume.finished(p):  # trained, evaluated and saved before the restart
                first_phase = None
                continue
            mid_phase = (
                resume is not None and p == resume.phase
            )  # training continues inside this phase
            # ------------ Place the phase's examples on device, once (split over the mesh) ---
            x, y, task_ids = first_phase if p == 0 else _phase_images(scenario, drawn, tasks)
            first_phase = None  # keep no host copy of phase 0 once it is on device
            data = task_arrays(
                x,
                y,
                task_ids,
                capacity,
                put=put_examples,
                put_x=None if drawn is None else put_run_examples,
            )
            # data.pipeline="stream": the phase's batches come from grain; `data` serves end_task.
            stream = (
                feed.start_phase(
                    x, y, task_ids, state, p, resume=restored.stream if mid_phase else None
                )
                if feed
                else None
            )
            del x
            state = state._replace(task=set_task(tasks[-1]))
            if p > 0 and not mid_phase and config.optimizer.get("reset_each_task", False):
                state = state._replace(opt_state=reset_opt(state))
            if start_task is not None and not mid_phase:  # a resumed phase's state has it already
                state = state._replace(
                    algo=start_task(state, data, task_key(state.key, STREAM_TASK, tasks[-1]))
                )
            steps = steps_per_epoch(len(y), batch_size)

            if (
                compiled is None
            ):  # compile once, ahead of time; a shape change would raise, not retrace
                t0 = time.perf_counter()
                if stream:  # the same train step, fed chunks of batches from the host
                    compiled = stream.compile(state, train_step, state_sharding)
                else:
                    order = order_fn(state.key, state.step, data.size, capacity)
                    compiled = run_steps.lower(
                        state, data, order, np.int32(0), np.int32(1)
                    ).compile()
                timings["compile"] += time.perf_counter() - t0  # (a resumed run compiles again)
                timings.update(_program_costs(compiled))

            # ------------ Train: epochs of in-jit permutations, chunks of fori_loop steps -----
            label = (
                f"phase {p + 1}/{len(phases)}"
                if len(tasks) > 1
                else f"task {tasks[0] + 1}/{scenario.num_tasks}"
            )
            runs_factor = grid.size if vmapped else 1
            bar = (
                ProgressBar(total=steps * batch_size * config.training.epochs, label=label)
                if verbose and main
                else None
            )
            t0 = time.perf_counter()
            first_epoch, first_start = (resume.epoch, resume.start) if mid_phase else (0, 0)
            for epoch in range(first_epoch, int(config.training.epochs)):
                begin = (
                    first_start if epoch == first_epoch else 0
                )  # a resumed epoch continues mid-way
                # The order is keyed by the step the epoch started at, `begin` steps ago.
                order = (
                    None if stream else order_fn(state.key, state.step - begin, data.size, capacity)
                )
                for start in range(begin, steps, chunk):
                    stop = min(start + chunk, steps)
                    if stream:  # the next chunk of batches, already on the devices
                        state, means = stream.run(state, stop - start)
                    else:
                        state, means = compiled(state, data, order, np.int32(start), np.int32(stop))
                    means = {k: to_numpy(v) for k, v in means.items()}  # blocks: honest timing
                    done = (stop - start) * batch_size
                    train_samples += done * runs_factor
                    train_steps += stop - start
                    if bar:
                        bar.update(done, **{k: float(np.mean(v)) for k, v in means.items()})
                    step = int(np.max(to_numpy(state.step)))
                    write({"kind": "train", "phase": p, "epoch": epoch, "step": step, **means})
                    checkpoints.check_finite(
                        means, step=step, label=label, epoch=epoch
                    )  # NaN/inf: stop
                    kill_point("train_chunk", step)  # test-only (tests/engine/test_resume.py)
                    if checkpoints.due_after_chunk(p, epoch, start, stop, steps, step):
                        t1 = time.perf_counter()
                        checkpoints.save_chunk(
                            state,
                            step,
                            p,
                            epoch,
                            stop,
                            steps,
                            results_so_far(),
                            stream.get_state() if stream else None,
                        )
                        t0 += time.perf_counter() - t1  # saving is not training
                        timings["checkpoint"] = (
                            timings.get("checkpoint", 0.0) + time.perf_counter() - t1
                        )
            timings["train"] += time.perf_counter() - t0
            if stream:
                stream.close()
            if bar:
                bar.close()

            # ------------ End of task: importances, anchors, snapshots (compiled) ------------
            t0 = time.perf_counter()
            algo = end_task(state, data, task_key(state.key, STREAM_TASK, tasks[-1]))
            kill_point("end_task", p)  # test-only (tests/engine/test_resume.py)
            state = state._replace(algo=jax.block_until_ready(algo))
            timings["end_task"] += time.perf_counter() - t0
            del data

            # ------------ Evaluate every task: row p of the accuracy matrix ------------------
            t0 = time.perf_counter()
            row_class, row_task = evaluate(
                state.params, state.model_state, state.task, test, state.algo
            )
            class_il[..., p, :], task_il[..., p, :] = to_numpy(row_class), to_numpy(row_task)
            timings["eval"] += time.perf_counter() - t0
            write(
                {
                    "kind": "eval",
                    "phase": p,
                    "tasks": tasks,
                    "class_il": class_il[..., p, :],
                    "task_il": task_il[..., p, :],
                }
            )
            if checkpoints.due_after_phase(p):
                t0 = time.perf_counter()
                checkpoints.save_phase(
                    state, int(np.max(to_numpy(state.step))), p, results_so_far()
                )
                timings["checkpoint"] = timings.get("checkpoint", 0.0) + time.perf_counter() - t0

    # ---------------- Summary ---------------------------------------------------------------
    timings["wall"] = (
        timings.get("wall", 0.0) + time.perf_counter() - wall_start
    )  # earlier sessions' included
    checkpoints.close()
    timings["train_samples"] = train_samples
    timings["train_samples_per_s"] = train_samples / max(timings["train"], 1e-9)
    timings["train_steps"] = train_steps  # per run
    timings["eval_examples"] = (len(phases) + 1) * int(sum(scenario.test_sizes))  # per run
    timings["devices"] = mesh.size
    peak = _device_peak_bytes()
    if peak is not None:
        timings["device_peak_bytes"] = peak
    if vmapped:
        summary = _write_runs(
            workdir, grid, scenario.setting, class_il, task_il, random_init, phases, main
        )
    else:
        summary = _summaries(scenario.setting, class_il, task_il, random_init)
        if main:
            _write_matrices(workdir, class_il, task_il, random_init, phases)
    write({"kind": "summary", **summary, "timings": timings})
    writers.close()
    if main:
        (workdir / "summary.json").write_text(
            json.dumps({**summary, "timings": timings}, indent=2) + "\n"
        )
    if vmapped:
        say(runs_lib.format_table(summary["table"]))
    else:
        for view, values in summary.items():
            say(f"{view}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in values.items()))
    say(
        f"train {timings['train_samples_per_s']:,.0f} samples/s; compile {timings['compile']:.1f}s, "
        f"train {timings['train']:.1f}s, end_task {timings['end_task']:.1f}s, eval {timings['eval']:.1f}s, "
        f"wall {format_duration(timings['wall'])}"
    )
    return RunResult(
        class_il, task_il, random_init, summary, timings, state, grid if vmapped else None
    )


def _program_costs(compiled) -> dict[str, float]:
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
                memory.argument_size_in_bytes
                + memory.temp_size_in_bytes
                + memory.output_size_in_bytes
                - memory.alias_size_in_bytes
            )
    except Exception:  # noqa: BLE001 - an analysis a backend lacks is not worth failing a run for
        pass
    return costs


def _device_peak_bytes() -> float | None:
    """Peak bytes in use on the first local device, where the backend reports it (GPU, TPU)."""
    stats = jax.local_devices()[0].memory_stats()
    return float(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _write_matrices(folder: Path, class_il, task_il, random_init, phases) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "accuracy_matrix.json").write_text(
        json.dumps(
            {
                "class_il": np.asarray(class_il).tolist(),
                "task_il": np.asarray(task_il).tolist(),
                "random_init": {k: np.asarray(v).tolist() for k, v in random_init.items()},
                "phases": phases,
            },
            indent=1,
        )
    )


def _write_runs(
    workdir: Path, grid, setting: str, class_il, task_il, random_init, phases, main: bool
) -> dict:
    """Per-run matrices and summaries under runs/NNN/, and the mean ± std table per grid point."""
    per_run = []
    for r in range(grid.size):
        init_r = {k: v[r] for k, v in random_init.items()}
        summary_r = _summaries(setting, class_il[r], task_il[r], init_r)
        per_run.append({"seed": grid.seeds[r], "hparams": grid.points[r], **summary_r})
        if main:
            folder = workdir / "runs" / f"{r:03d}"
            _write_matrices(folder, class_il[r], task_il[r], init_r, phases)
            (folder / "summary.json").write_text(json.dumps(per_run[-1], indent=2) + "\n")
    table = runs_lib.summary_table(grid, per_run)
    if main:
        (workdir / "summary.md").write_text(runs_lib.format_table(table) + "\n")
    return {"runs": per_run, "table": table}
