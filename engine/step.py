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
import optax
from jax import lax

from sequax.algorithms.protocol import optimizer_for
from sequax.engine.sharding import constrain_batch
from sequax.engine.state import STREAM_ORDER, STREAM_TRAIN, CLState, stream_key
from sequax.engine.task_data import TaskData, gather_batch

TrainStep = Callable[[CLState, dict], tuple[CLState, dict]]


def make_train_step(model, algorithm, tx: optax.GradientTransformation, bind=None) -> TrainStep:
    """The pure training step: loss and gradient, optimizer update, algorithm update.

    The algorithm's `loss` is the whole objective (task loss, replay terms, penalties), so
    every penalty is part of the differentiated graph and fused into the step. Its `aux`
    must hold "model_state" and "metrics"; the step adds "grads" and "updates" (the
    parameter change) before calling `update`, which is what path-integral methods need.

    `bind(hparams) -> (algorithm, tx)`, when given, rebuilds both from `state.hparams` at
    every step: how a vmapped sweep gives each run its own learning rate or λ.
    """

    def train_step(state: CLState, batch: dict) -> tuple[CLState, dict]:
        algorithm_, tx_ = bind(state.hparams) if bind else (algorithm, tx)
        return _step(algorithm_, tx_, state, batch)

    def _step(algorithm, tx, state, batch):
        key = stream_key(state.key, STREAM_TRAIN, state.step)
        loss_key, update_key = jax.random.split(key)
        grad_fn = jax.value_and_grad(algorithm.loss, has_aux=True)
        (loss, aux), grads = grad_fn(state.params, state, batch, loss_key, model)
        # Gradient surgery (A-GEM, GEM) is chained in front of the optimizer and gets the
        # loss's extra arguments (a reference gradient) through aux["tx_args"].
        tx = optimizer_for(algorithm, tx)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **aux.pop("tx_args", {}))
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


def make_run_steps(train_step: TrainStep, batch_size: int, *, runs: bool = False, shardings=None, data_axes=None):
    """`run_steps(state, data, order, start, stop) -> (state, mean metrics)`, jitted once.

    Runs steps `start..stop-1` of an epoch whose example order is `order`; the state is
    donated, so its buffers (a replay reservoir, say) are updated in place.

    `runs=True`: the state and `order` carry a leading run axis and the runs share `data`
    (a vmap: N seeds or sweep points in one program); `data_axes` (a `TaskData` of axes,
    e.g. a run axis on `x` only, for runs that draw their own images) overrides that sharing. `shardings`, a `(state, data)` pair
    of sharding trees, pins the placement of the inputs and the output state.
    """

    def run_steps(state: CLState, data: TaskData, order: jax.Array, start, stop):
        batch_at = lambda i: gather_batch(data, lax.dynamic_slice(order, (i * batch_size,), (batch_size,)))  # noqa: E731
        return _mean_over_steps(train_step, state, batch_at, start, stop)

    if runs:
        run_steps = jax.vmap(run_steps, in_axes=(0, data_axes, 0, None, None))
    return _jit_donating_state(run_steps, shardings, extra_args=4)


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
        batch_at = lambda i: stream_batch(jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, i, keepdims=False), chunk))  # noqa: E731
        return _mean_over_steps(train_step, state, batch_at, 0, count)

    return _jit_donating_state(run_stream, shardings, extra_args=2)
