"""The compiled programs of a run, built once from its `Experiment`.

Every program carries the run axis: a single run is a grid of one, so the state's leaves,
the epoch orders and the results all lead with `[runs]`, and nothing below branches on how
many runs there are. Each run's algorithm and optimizer are rebound from its own swept
values (`state.hparams`) inside the program (`Experiment.parts`).

    programs = make_programs(experiment, example_batch, per_run_images=False)
    state = programs.init()                              # or a restored checkpoint
    state = programs.start_phase(state, data, tasks, reset_optimizer=True)
    state = programs.finish_phase(state, data, tasks)    # end_task, its key drawn inside
    class_il, task_il, extra = programs.evaluate(state, test)   # [runs, tasks] each; top5...
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sequax.core.state import STREAM_TASK, create_state, stream_key
from sequax.core.task_data import TaskData
from sequax.engine import sharding
from sequax.engine.evaluation import make_evaluate
from sequax.engine.host_loops import HostLoops
from sequax.engine.optimizers import restart_schedule
from sequax.engine.program_cache import cached, eval_shape
from sequax.engine.step import epoch_order, make_run_steps, make_train_step


@dataclasses.dataclass
class Programs:
    """The run's jitted functions and the shardings they pin (see the module docstring)."""

    experiment: Any
    init: Any  # () -> state
    shapes: Any  # the state's abstract shapes (for a restore)
    state_sharding: Any
    data_sharding: TaskData
    data_axes: Any  # vmap axes of a phase's TaskData (x per run when runs draw their own)
    train_step: Any  # the pure step of one run
    run_steps: Any  # (state, data, order, start, stop) -> (state, means), the device path
    order: Any  # (key, step, start, size, capacity) -> [runs, capacity]: the order of the
    #              epoch that began `start` steps before `step`
    end_task: Any  # (state, data, task) -> algo, the task's key drawn inside
    start_task: Any  # (state, data, task) -> algo
    reset_optimizer: Any  # state -> opt_state
    restart_schedule: Any  # opt_state -> opt_state: the learning-rate schedule back at step 0
    evaluate_fn: Any

    @property
    def task_free(self) -> bool:
        return bool(self.experiment.config.training.get("task_free", False))

    def evaluate(self, state, test, task: int | None = None):
        """(class_il, task_il, extra): [runs, T] each, and `make_evaluate(details=True)`'s
        dict; class-IL's candidates are the classes of tasks 0..`task` (None: `state.task`;
        a task-free stream's state.task is -1, so the loop names the segment it is in)."""
        seen = state.task if task is None else self._task_array(task)
        return self.evaluate_fn(state.params, state.model_state, seen, test, state.algo)

    def _task_array(self, task: int):
        runs = self.experiment.grid.size
        return sharding.put(np.full((runs,), task, np.int32), self.state_sharding.task)

    def set_task(self, state, task: int):
        return state._replace(task=self._task_array(task))

    def start_phase(self, state, data, tasks, *, fresh: bool, later: bool):
        """The state a phase starts from: its task set; for a `later` phase (not the first)
        the optimizer re-initialised (`optimizer.reset_each_task`) or its learning-rate
        schedule restarted (`optimizer.per_task`); the method's `start_task`. `fresh=False`
        (a phase resumed mid-way) keeps the checkpointed state as it is, apart from the task.
        A task-free stream hides all of this from the method: the task is -1 and the state
        goes on as the last step left it."""
        if self.task_free:
            return self.set_task(state, -1)
        state = self.set_task(state, tasks[-1])
        if not fresh:
            return state
        optimizer = self.experiment.config.optimizer
        if later and optimizer.get("reset_each_task", False):
            state = state._replace(opt_state=self.reset_optimizer(state))
        elif later and optimizer.get("per_task", True) and optimizer.get("schedule") != "constant":
            state = state._replace(opt_state=self.restart_schedule(state.opt_state))
        return state._replace(algo=self.start_task(state, data, np.int32(tasks[-1])))

    def finish_phase(self, state, data, tasks):
        """The state after the method's `end_task` (blocks until it is computed); unchanged on
        a task-free stream."""
        if self.task_free:
            return state
        algo = self.end_task(state, data, np.int32(tasks[-1]))
        return state._replace(algo=jax.block_until_ready(algo))


def make_programs(experiment, example_batch: dict, *, per_run_images: bool) -> Programs:
    """Builds (traces lazily, compiles on first use) every program of `experiment`'s run.

    `example_batch` fixes the shapes the state is initialised with; `per_run_images`: a
    phase's images carry the run axis (each run drew its own transform)."""
    exp, mesh = experiment, experiment.mesh
    grid, model = exp.grid, exp.model
    config = exp.config

    def init_one(seed, hparams, batch):
        algorithm, tx = exp.parts(hparams)
        return create_state(model, algorithm, tx, batch, seed, hparams)

    # The example batch is an argument, not a closed-over constant: lowering a program
    # embeds its constants, which took a tenth of a second for a batch of 128 images.
    init = jax.vmap(init_one, in_axes=(0, 0, None))
    init_args = (np.array(grid.seeds, np.int32), grid.hparams(), example_batch)
    shapes = eval_shape(init, *init_args, name="init_one")
    fsdp_min = int(dict(config.get("mesh") or {}).get("fsdp_min_size", 2**18))
    state_sharding = sharding.named(
        mesh, sharding.state_specs(shapes, shapes.params, mesh, fsdp_min_size=fsdp_min, runs=True)
    )
    replicated = sharding.replicated(mesh)
    examples = sharding.examples_sharding(mesh, (exp.capacity,))
    data_sharding = TaskData(examples, examples, examples, replicated)
    data_axes = None
    if per_run_images:
        run_examples = sharding.examples_sharding(mesh, (grid.size, exp.capacity), run_axis=True)
        data_sharding = data_sharding._replace(x=run_examples)
        data_axes = TaskData(0, None, None, None)

    train_step = make_train_step(
        model, exp.algorithm, None, bind=exp.parts, glances=int(config.training.get("glances", 1))
    )
    run_steps = cached(
        make_run_steps(
            train_step,
            exp.batch_size,
            runs=True,
            shardings=(state_sharding, data_sharding),
            data_axes=data_axes,
            with_index=bool(getattr(exp.algorithm, "example_index", False)),
        ),
        "run_steps",
    )

    # The task's key is drawn inside the programs that use it (one program, not two).
    def end_task_one(state, data, task):
        key = stream_key(state.key, STREAM_TASK, task)
        return exp.parts(state.hparams)[0].end_task(state, data, key, model)

    def start_task_one(state, data, task):
        key = stream_key(state.key, STREAM_TASK, task)
        key = jax.random.fold_in(key, 1)  # not end_task's key: both draw from the phase's key
        return exp.parts(state.hparams)[0].start_task(state, data, key, model)

    ordered = exp.scenario.ordered

    def order_one(key, step, start, size, capacity):
        if ordered:  # the stream's own order (blurry segments, MNIST-360), padding last
            return jnp.arange(capacity, dtype=jnp.int32)
        return epoch_order(key, step - start, size, capacity)

    def reset_one(state):
        algorithm, tx = exp.parts(state.hparams)
        return algorithm.optimizer(tx).init(state.params)

    per_phase = (0, data_axes, None)
    algo_out = state_sharding.algo
    return Programs(
        experiment=exp,
        init=lambda: cached(
            jax.jit(init, out_shardings=state_sharding), "init_one", model_dependent=True
        )(*init_args),
        shapes=shapes,
        state_sharding=state_sharding,
        data_sharding=data_sharding,
        data_axes=data_axes,
        train_step=train_step,
        run_steps=run_steps,
        order=cached(
            jax.jit(jax.vmap(order_one, (0, 0, None, None, None)), static_argnums=4),
            "order_one",
            static_argnums=(4,),
        ),
        # On XLA:CPU a convolutional network's loops over the task run from the host.
        end_task=cached(
            HostLoops(jax.vmap(end_task_one, per_phase), out_shardings=algo_out), "end_task_one"
        ),
        start_task=cached(
            HostLoops(jax.vmap(start_task_one, per_phase), out_shardings=algo_out),
            "start_task_one",
        ),
        reset_optimizer=cached(
            jax.jit(jax.vmap(reset_one), out_shardings=state_sharding.opt_state), "reset_one"
        ),
        restart_schedule=cached(
            jax.jit(restart_schedule, out_shardings=state_sharding.opt_state), "restart_schedule"
        ),
        evaluate_fn=cached(
            make_evaluate(
                model,
                exp.scenario.task_classes,
                int(config.eval.batch_size),
                runs=True,
                predict=exp.algorithm.predict,
                test_per_run=per_run_images,
                details=True,  # top-5, confusion counts, nearest-mean accuracy: one pass
            ),
            "evaluate",
        ),
    )
