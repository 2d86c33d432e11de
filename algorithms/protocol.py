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
`update` is called. An algorithm may also define `phases(num_tasks) -> list[list[int]]`
to say which tasks each training phase holds (joint training uses one phase of all tasks);
the default is one phase per task.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

PyTree = Any
AlgoState = PyTree


@runtime_checkable
class Algorithm(Protocol):
    def init(self, params, model_state, example_batch, rng: jax.Array) -> AlgoState: ...

    def loss(self, params, state, batch, rng: jax.Array, model) -> tuple[jax.Array, dict]: ...

    def update(self, algo: AlgoState, state, batch, aux: dict, rng: jax.Array) -> AlgoState: ...

    def end_task(self, state, task_data, rng: jax.Array, model) -> AlgoState: ...


def sequential_phases(num_tasks: int) -> list[list[int]]:
    """The default stream: one training phase per task, in order."""
    return [[t] for t in range(num_tasks)]


def phases_of(algorithm, num_tasks: int) -> list[list[int]]:
    """The training phases `algorithm` asks for (one per task unless it says otherwise)."""
    phases = getattr(algorithm, "phases", None)
    return phases(num_tasks) if phases is not None else sequential_phases(num_tasks)
