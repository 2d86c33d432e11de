"""The `Algorithm` protocol every continual-learning method implements.

An algorithm is a frozen dataclass holding Python hyper-parameters only (never arrays: a
jitted method reading arrays from `self` would bake in their first value). Its memory lives
in `CLState.algo`, created at full size by `init` and threaded through four pure methods:

    algo_state = algorithm.init(params, model_state, example_batch, rng)
    loss, aux = algorithm.loss(params, state, batch, rng, model)      # differentiated
    algo_state = algorithm.update(state.algo, new_state, batch, aux, rng)  # every step
    algo_state = algorithm.end_task(state, task_data, rng, model)     # at task boundaries

`aux` is a dict with at least "model_state" (the model state after the forward pass) and
"metrics" (a dict of scalars to log); the train step adds "grads" and "updates" before
`update` is called.

Optional methods, each used by the engine when present:

    phases(num_tasks) -> list[list[int]]     # the tasks of each training phase (Joint: one)
    glances: int                             # an attribute: the step trains on each batch this
        # many times in a row, batch["glance"] = 0, 1, ... (La-MAML); state.step counts it once
    gradient_transform() -> optax transform  # gradient surgery (A-GEM, GEM), chained in
        # front of the optimizer; `loss` passes its extra arguments (a reference gradient)
        # as aux["tx_args"], a dict given to `tx.update(..., **tx_args)`
    predict(params, model_state, algo, x, model) -> logits   # evaluation's classifier
        # (iCaRL's nearest mean of exemplars, GDumb's retrained model)
    predict(..., *, task) -> logits           # a `predict` naming a keyword `task` also gets
        # each example's task id, int32 [B] (HAT's per-task gates, task-IL)
    start_task(state, task_data, rng, model) -> algo_state   # when a phase starts, compiled,
        # after `state.task` is set and before its first step (HAT: the task's classes, size)
    wrap_model(model) -> Model               # the model the algorithm trains, built once from
        # the configured one (HAT: the MLP with task embeddings and gates); see `model_for`
    task_model(model, state) -> Model        # the network for the current task, as the
        # regularisers `combine`d with this base see it (HAT: its gates bound at s_max)
    projection_transform() -> optax transform   # chained after the optimizer: maps its updates
        # so the new parameters satisfy a constraint (HAT clamps its embeddings)
    penalty(params, state, batch, rng, model, outputs) -> (value, metrics)
        # regularisers (EWC, SI, MAS, RWalk, LwF, LFL): the term their `loss` adds to the
        # cross-entropy. `outputs` is the train-mode model output on batch["x"] from the data
        # loss's forward ({"logits", "features"}), or None (then compute what you need).
        # `combine(base, *regularisers)` adds these to a base method's whole loss.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import optax

PyTree = Any
AlgoState = PyTree


@runtime_checkable
class Algorithm(Protocol):
    def init(self, params, model_state, example_batch, rng: jax.Array) -> AlgoState: ...

    def loss(self, params, state, batch, rng: jax.Array, model) -> tuple[jax.Array, dict]: ...

    def update(self, algo: AlgoState, state, batch, aux: dict, rng: jax.Array) -> AlgoState: ...

    def end_task(self, state, task_data, rng: jax.Array, model) -> AlgoState: ...


def is_number(value) -> bool:
    """A plain Python number: hyper-parameters are validated in `__post_init__` only then
    (a vmapped sweep rebinds floats to tracers, which have no truth value)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def optimizer_for(algorithm, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx`, with the algorithm's gradient surgery chained in front and its projection after,
    when it has them.

    Every place that builds an optimizer state or applies an update goes through this, so the
    state's structure and the update agree."""
    transform = getattr(algorithm, "gradient_transform", None)
    projection = getattr(algorithm, "projection_transform", None)
    if transform is None and projection is None:
        return tx
    return optax.chain(
        *([transform()] if transform else []), tx, *([projection()] if projection else [])
    )


def model_for(algorithm, model):
    """The model `algorithm` trains: `algorithm.wrap_model(model)` when it has one, else `model`."""
    wrap = getattr(algorithm, "wrap_model", None)
    return wrap(model) if wrap is not None else model


def sequential_phases(num_tasks: int) -> list[list[int]]:
    """The default stream: one training phase per task, in order."""
    return [[t] for t in range(num_tasks)]


def phases_of(algorithm, num_tasks: int) -> list[list[int]]:
    """The training phases `algorithm` asks for (one per task unless it says otherwise)."""
    phases = getattr(algorithm, "phases", None)
    return phases(num_tasks) if phases is not None else sequential_phases(num_tasks)
