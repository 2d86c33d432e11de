"""The one train step, and the on-device loop over a task's batches.

`make_train_step` builds the pure step every data path shares. `make_run_steps` wraps it
for the on-device path: a task's examples sit on the device, the epoch's order is an
in-jit permutation keyed by `fold_in(key, ORDER, step)`, and a `fori_loop` runs steps
`[start, stop)` of the epoch in one dispatch. The bounds are traced values, so tasks of
different sizes and chunks of any length reuse one compiled program.

    train_step = make_train_step(model, algorithm, tx)        # (state, batch) -> (state, metrics)
    run_steps = make_run_steps(train_step, batch_size=10)      # jitted once, state donated
    order = epoch_order(state.key, state.step, data.size, capacity)
    state, metrics = run_steps(state, data, order, 0, steps)   # metrics: means over the steps

The streaming path (`sequax.engine.stream`) feeds the same `train_step` from the host:
`make_run_stream` runs the first `count` batches of a chunk `[K, B, ...]` in one dispatch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sequax.core.state import STREAM_ORDER, STREAM_TRAIN, CLState, stream_key
from sequax.core.task_data import TaskData, constrain_batch, gather_batch

TrainStep = Callable[[CLState, dict], tuple[CLState, dict]]


def make_train_step(
    model, algorithm, tx: optax.GradientTransformation, bind=None, glances: int = 1
) -> TrainStep:
    """The pure training step: loss and gradient, optimizer update, algorithm update.

    The algorithm's `loss` is the whole objective (task loss, replay terms, penalties), so
    every penalty is part of the differentiated graph and fused into the step. Its `aux`
    must hold "model_state" and "metrics"; the step adds "grads" and "updates" (the
    parameter change) before calling `update`, which is what path-integral methods need.

    `bind(hparams) -> (algorithm, tx)`, when given, rebuilds both from `state.hparams` at
    every step: how a vmapped sweep gives each run its own learning rate or λ.

    `glances` (`config.training.glances`): each batch is trained on this many times in a row,
    each a full step (La-MAML's and MER's single-pass protocol).
    """

    def train_step(state: CLState, batch: dict) -> tuple[CLState, dict]:
        algorithm_, tx_ = bind(state.hparams) if bind else (algorithm, tx)
        key = stream_key(state.key, STREAM_TRAIN, state.step)
        if glances == 1:
            return _step(algorithm_, tx_, state, batch, key)

        # "Glances" (La-MAML, MER): the batch is trained on `glances` times in a row, each a
        # full step (loss, optimizer, `update`) with its own key that sees batch["glance"]
        # (int32, 0 first). state.step counts the batch once: epoch orders and resume
        # positions count batches. Metrics are means over the glances.
        def glance(state_, g):
            glanced, metrics = _step(
                algorithm_, tx_, state_, {**batch, "glance": g}, jax.random.fold_in(key, g)
            )
            return glanced._replace(step=state_.step), metrics

        glanced, metrics = lax.scan(glance, state, jnp.arange(glances, dtype=jnp.int32))
        return glanced._replace(step=state.step + 1), jax.tree.map(lambda m: m.mean(0), metrics)

    def _step(algorithm, tx, state, batch, key):
        loss_key, update_key = jax.random.split(key)
        grad_fn = jax.value_and_grad(algorithm.loss, has_aux=True)
        (loss, aux), grads = grad_fn(state.params, state, batch, loss_key, model)
        # The method's optimizer hook chains gradient surgery (A-GEM, GEM) in front of the
        # optimizer, fed the loss's extra arguments (a reference gradient) in aux["tx_args"].
        tx = algorithm.optimizer(tx)
        updates, opt_state = tx.update(
            grads, state.opt_state, state.params, **aux.pop("tx_args", {})
        )
        params = optax.apply_updates(state.params, updates)
        new_state = state._replace(
            step=state.step + 1,
            params=params,
            model_state=aux["model_state"],
            opt_state=opt_state,
        )
        aux = {**aux, "grads": grads, "updates": updates}
        algo = algorithm.update(state.algo, new_state, batch, aux, update_key)
        metrics = {"loss": loss, **aux["metrics"]}
        return new_state._replace(algo=algo), metrics

    return train_step


def epoch_order(key: jax.Array, step: jax.Array, size: jax.Array, capacity: int) -> jax.Array:
    """int32 [capacity]: a uniform permutation of `range(size)` followed by the padding.

    Keyed by the step at which the epoch starts, so a resumed run reproduces it.
    """
    u = jax.random.uniform(stream_key(key, STREAM_ORDER, step), (capacity,))
    u = jnp.where(jnp.arange(capacity) < size, u, 2.0)  # padding sorts last
    return jnp.argsort(u).astype(jnp.int32)


def steps_per_epoch(size: int, batch_size: int) -> int:
    """Full batches per epoch; the last partial batch is dropped (fewer than batch_size)."""
    return size // batch_size


def make_run_steps(
    train_step: TrainStep,
    batch_size: int,
    *,
    runs: bool = False,
    shardings=None,
    data_axes=None,
    host_loop: bool | None = None,
    with_index: bool = False,
):
    """`run_steps(state, data, order, start, stop) -> (state, mean metrics)`, jitted once.

    Runs steps `start..stop-1` of an epoch whose example order is `order`; the state is
    donated, so its buffers (a replay reservoir, say) are updated in place.

    `runs=True`: the state and `order` carry a leading run axis and the runs share `data`
    (a vmap: N seeds or sweep points in one program); `data_axes` (a `TaskData` of axes,
    e.g. a run axis on `x` only, for runs that draw their own images) overrides that sharing.
    `shardings`, a `(state, data)` pair of sharding trees, pins the placement of the inputs and the
    output state.

    `with_index`: each batch also holds "index", int32 [B], its examples' slots in `data`
    (`Algorithm.example_index`: a method reading features it cached at the phase's start).

    `host_loop`: run the steps from the host, one compiled step per dispatch, instead of the
    `fori_loop`; None (default) chooses it for convolutional steps on XLA:CPU (`HostLoopSteps`).
    """

    def batch_at(data: TaskData, order: jax.Array, i):
        index = lax.dynamic_slice(order, (i * batch_size,), (batch_size,))
        batch = gather_batch(data, index)
        return {**batch, "index": index} if with_index else batch

    def run_steps(state: CLState, data: TaskData, order: jax.Array, start, stop):
        return _mean_over_steps(train_step, state, lambda i: batch_at(data, order, i), start, stop)

    def step_at(state: CLState, data: TaskData, order: jax.Array, i):
        return train_step(state, batch_at(data, order, i))

    if runs:
        run_steps = jax.vmap(run_steps, in_axes=(0, data_axes, 0, None, None))
        step_at = jax.vmap(step_at, in_axes=(0, data_axes, 0, None))
    in_loop = _jit_donating_state(run_steps, shardings, extra_args=4)
    if host_loop is False:
        return in_loop
    return HostLoopSteps(in_loop, _jit_donating_state(step_at, shardings, extra_args=3), host_loop)


def _has_convolution(jaxpr) -> bool:
    return "conv_general_dilated" in str(jaxpr)  # the printed jaxpr includes every sub-jaxpr


class HostLoopSteps:
    """`run_steps` with the same calls as the jitted one (`__call__`, `.lower(...).compile()`),
    running steps `[start, stop)` either in its `fori_loop` or from the host, one dispatch per step.

    Why: inside a `while` loop XLA:CPU leaves the backward convolutions in layouts its fast
    (Eigen) convolution does not take (dim_labels `b01f_01oi->b01f` and `f01b_i01o->01bf`, 39 of
    the 59 convolutions of a ResNet-18 step; in a plain jit layout assignment transposes all 59
    into `b01f_01io->b01f`) and runs them through its slow generic emitter. Measured on the
    2-core CPU (ResNet-18 nf=8, batch 32, 28x28, naive SGD, ms per step, 1 core pinned / 2
    cores): one step per dispatch 37 / 46; `fori_loop` with traced bounds (this loop's) 339 /
    217; with static bounds and `unroll` 1, 2, 4: 350, 424, 690 / 479, 214, 331 (unrolling
    copies the slow convolutions). An MLP step (784-100-100-10, batch 10) is the other way
    round: 0.08 ms in the `fori_loop` against 0.11 ms per dispatch (1 core), so the choice
    (`host_loop=None`) is the host loop only for steps with a convolution on the CPU backend.
    The host loop runs the same steps on the same batches; its floats may differ from the
    `fori_loop`'s in the last bits (the step compiles differently).
    """

    def __init__(self, in_loop, step_at, host_loop: bool | None):
        self.in_loop, self.step_at, self.host_loop = in_loop, step_at, host_loop
        self.__wrapped__ = in_loop.__wrapped__  # the un-jitted run_steps, as for a jitted function

    def __getattr__(self, name):  # the rest of a jitted function's API (`trace`, `_cache_size`)
        if name == "in_loop":
            raise AttributeError(name)
        return getattr(self.in_loop, name)

    def __call__(self, state, data, order, start, stop):
        """Calls without compiling ahead of time (tests): the `fori_loop` unless
        `host_loop=True`."""
        if self.host_loop:
            return self.lower(state, data, order, start, stop).compile()(
                state, data, order, start, stop
            )
        return self.in_loop(state, data, order, start, stop)

    def lower(self, state, data, order, start, stop):
        """The loop's ahead-of-time path; with `host_loop=None` the choice is made here, from
        the traced `fori_loop` program (one trace when it is kept)."""
        if self.host_loop is False:
            return self.in_loop.lower(state, data, order, start, stop)
        if self.host_loop is None:
            traced = self.in_loop.trace(state, data, order, start, stop)
            if jax.default_backend() != "cpu" or not _has_convolution(traced.jaxpr):
                return traced.lower()
        metrics = jax.eval_shape(self.step_at, state, data, order, start)[1]
        return _LoweredHostLoop(self.step_at.lower(state, data, order, start), metrics)


class _LoweredHostLoop:
    def __init__(self, lowered, metrics):
        self.lowered, self.metrics = lowered, metrics

    def compile(self):
        step, metrics = self.lowered.compile(), self.metrics

        def run_steps(state, data, order, start, stop):
            sums = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics)
            for i in range(int(start), int(stop)):
                state, step_metrics = step(state, data, order, np.int32(i))
                sums = jax.tree.map(jnp.add, sums, step_metrics)
            count = np.float32(max(int(stop) - int(start), 1))
            return state, jax.tree.map(lambda s: s / count, sums)

        # XLA's account of one step, as the compiled `fori_loop` gives (its body counted once).
        run_steps.cost_analysis, run_steps.memory_analysis = (
            step.cost_analysis,
            step.memory_analysis,
        )
        return run_steps


def _mean_over_steps(train_step: TrainStep, state: CLState, batch_at, start, stop):
    """Steps `start..stop-1` (`batch_at(i)` gives step i's batch) in one `fori_loop`;
    returns the state and each metric's mean over those steps."""

    def body(i, carry):
        state, sums = carry
        state, metrics = train_step(state, batch_at(i))
        return state, jax.tree.map(jnp.add, sums, metrics)

    shapes = jax.eval_shape(train_step, state, batch_at(start))[1]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    state, sums = lax.fori_loop(start, stop, body, (state, zeros))
    count = jnp.maximum(stop - start, 1).astype(jnp.float32)
    return state, jax.tree.map(lambda s: s / count, sums)


def _jit_donating_state(fn, shardings, extra_args: int):  # extra_args: arguments after the state
    """`jit(fn)` with the state (first argument) donated; `shardings`, a `(state, second
    argument)` pair, pins those inputs and the output state (the rest: unspecified)."""
    if shardings is None:
        return jax.jit(fn, donate_argnums=0)
    state_sharding, second = shardings
    return jax.jit(
        fn,
        donate_argnums=0,
        in_shardings=(state_sharding, second, *([None] * (extra_args - 1))),
        out_shardings=(state_sharding, None),
    )


def stream_batch(batch: dict) -> dict:
    """A batch fed from the host as the step sees it: split across the mesh's batch axes,
    uint8 images scaled to float32 in [0, 1] with the same ops as `gather_batch` (so both
    paths give the step bit-identical inputs); float images are used as they are."""
    batch = constrain_batch(batch)
    x = batch["x"]
    return {**batch, "x": x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x}


def make_run_stream(train_step: TrainStep, *, shardings=None):
    """`run_stream(state, chunk, count) -> (state, mean metrics)`, jitted once: the streaming
    path's counterpart of `make_run_steps`.

    `chunk` holds K batches fed from the host, {"x": [K, B, ...], "y": int32 [K, B],
    "task": int32 [K, B]}; the first `count` of them go through `train_step`, in order, in
    one dispatch. `count` is traced (the loop lowers to a `while`, as in `make_run_steps`), so
    an epoch's last, shorter chunk (zero-padded to K) reuses the program; the padding is
    never trained on. `shardings`, a `(state, chunk)` pair of sharding trees, pins the
    placement of the inputs and the output state; the state is donated.
    """

    def run_stream(state: CLState, chunk: dict, count):
        batch_at = lambda i: stream_batch(
            jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, i, keepdims=False), chunk)
        )  # noqa: E731
        return _mean_over_steps(train_step, state, batch_at, 0, count)

    return _jit_donating_state(run_stream, shardings, extra_args=2)
