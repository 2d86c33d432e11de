"""The run's whole training state as one pytree.

`CLState` carries everything a continual-learning run learns or remembers: parameters,
model state (BatchNorm statistics), optimizer state, the algorithm's own memory (Fisher,
anchors, the replay reservoir) and the counters. Its structure, shapes and dtypes never
change during a run, so one compiled step serves every task.

    state = create_state(model, algorithm, tx, example_batch, seed=0)
    state, metrics = train_step(state, batch)
    step_key(state, STREAM_TRAIN)            # randomness is fold_in(base, stream, step)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any

# Independent random streams derived from the run's base key. A stream is folded in before
# the step, so the data order never shares bits with dropout or replay sampling, and a
# resumed run draws exactly what an uninterrupted one would.
STREAM_TRAIN = 1  # dropout, replay sampling, reservoir insertion (per step)
STREAM_ORDER = 2  # the in-jit permutation of a task's examples (per epoch)
STREAM_TASK = 3  # end_task randomness (per task)
STREAM_INIT = 4  # parameter and algorithm initialisation


class CLState(NamedTuple):
    """Everything that evolves during a run. "Not yet" is a zero or a mask, never None."""

    step: jax.Array  # int32 scalar: global optimisation step, counted across tasks
    task: jax.Array  # int32 scalar: index of the task being learned
    params: PyTree
    model_state: PyTree  # BatchNorm statistics etc.; {} when the model has none
    opt_state: optax.OptState
    algo: PyTree  # the algorithm's own memory; {} for naive fine-tuning
    key: jax.Array  # uint32[2]: the run's base PRNG key (raw data, checkpointable)
    # float32 scalars of the hyper-parameters a vmapped sweep varies ({} otherwise); the
    # step rebinds the algorithm and optimizer from them (`sequax.engine.runs.bind`).
    hparams: dict = {}


def base_key(seed: int) -> jax.Array:
    """The raw uint32[2] key of a run (raw so that it checkpoints and vmaps as plain data)."""
    return jax.random.PRNGKey(seed)


def stream_key(key: jax.Array, stream: int, counter: jax.typing.ArrayLike) -> jax.Array:
    """`fold_in(fold_in(key, stream), counter)`: the key of one stream at one counter value."""
    return jax.random.fold_in(jax.random.fold_in(key, stream), counter)


def step_key(state: CLState, stream: int = STREAM_TRAIN) -> jax.Array:
    """The key for the current step of `state` on `stream`."""
    return stream_key(state.key, stream, state.step)


def create_state(
    model, algorithm, tx: optax.GradientTransformation, example_batch, seed, hparams=None
):
    """Initialises every part of the state at its final shape (called once, under jit).

    `seed` may be traced (a vmap over seeds); `hparams` are this run's swept values.
    """
    key = base_key(seed)
    init_key = jax.random.fold_in(key, STREAM_INIT)
    model_key, algo_key = jax.random.split(init_key)
    params, model_state = model.init(model_key, example_batch["x"])
    algo = algorithm.init(params, model_state, example_batch, algo_key)
    return CLState(
        step=jnp.zeros((), jnp.int32),
        task=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=algorithm.optimizer(tx).init(params),
        algo=algo,
        key=key,
        hparams={} if hparams is None else dict(hparams),
    )
