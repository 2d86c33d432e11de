"""The `Algorithm` protocol: a fixed table of hooks, each with a default.

A continual-learning method is a frozen dataclass that subclasses `Algorithm` and holds
Python hyper-parameters only (never arrays: a jitted method reading arrays from `self` would
bake in their first value). Its memory lives in `CLState.algo`, created at full size by
`init` and threaded through pure functions. The engine calls every hook of this table, in
this order, and nothing else; a method overrides the hooks it needs:

    hook                                                     default            called
    wrap_model(model) -> Model                               model              once, when built
    optimizer(tx) -> optax.GradientTransformation            tx                 once, when built
    phases(num_tasks) -> list[list[int]]                     [[0], [1], ...]    once, when built
    init(params, model_state, example_batch, rng) -> algo    {}                 once, in jit
    start_task(state, task_data, rng, model) -> algo         state.algo         phase start, jit
    loss(params, state, batch, rng, model) -> (loss, aux)    CE + penalty       every step (grad)
    penalty(params, state, batch, rng, model, outputs)       (0.0, {})          inside `loss`
        -> (value, metrics)
    update(algo, state, batch, aux, rng) -> algo             algo               every step
    end_task(state, task_data, rng, model) -> algo           state.algo         phase end, jit
    task_model(model, state) -> Model                        model              `combine`'s parts
    predict(params, model_state, algo, x, task, model)       the model's        evaluation, jit
        -> logits                                            eval logits

* `aux` (from `loss`) holds at least "model_state" (the model state after the forward
  pass) and "metrics" (scalars to log). It may hold "outputs" (the train-mode outputs on
  batch["x"], so `combine`d regularisers need no second forward pass) and "tx_args" (a dict
  given to the optimizer's `update(..., **tx_args)`: A-GEM's reference gradient). The step
  adds "grads" and "updates" (the parameter change) before `update`.
* `optimizer(tx)` wraps the configured optimizer: gradient surgery chained in front (A-GEM,
  GEM: projections), a constraint chained after (HAT's embedding clamp). Every optimizer
  state and update the engine makes goes through it, so their structures agree.
* `wrap_model` gives the network the method trains, built from the configured one (HAT's
  gated MLP, KCL's inference networks); `task_model(model, state)` the network as it stands
  for the current task, which `combine`'s regularisers differentiate (HAT's gates at s_max).
* `phases` groups tasks into training phases: one per task, or one holding all (`Joint`).
* `predict` gets each test example's task id, int32 [B] (task-IL methods gate by it; the
  rest ignore it).
* `penalty` is a regulariser's term (EWC, SI, LwF, ...): the default `loss` adds it to the
  cross-entropy, and `combine(base, *regularisers)` adds it to the base's loss.

A user's method in its own file subclasses `Algorithm`, overrides the hooks it needs, and is
named in a config by its import path (`algorithm.name = "my_pkg.my_method:MyER"`);
`sequax.testing.check_algorithm` holds it to the contract every built-in method passes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any
AlgoState = PyTree

# The fixed hook table, in the order the engine calls the hooks (docs/architecture.md).
HOOKS = (
    "wrap_model",
    "optimizer",
    "phases",
    "init",
    "start_task",
    "loss",
    "penalty",
    "update",
    "end_task",
    "task_model",
    "predict",
)


class Algorithm:
    """The base of every method: each hook of the table, with its default.

    Subclasses are frozen dataclasses of hyper-parameters (`@dataclasses.dataclass(frozen=True)`).
    The defaults make `Algorithm()` itself naive fine-tuning: cross-entropy on the current
    batch, no memory, the model's own predictions.

    `needs_boundaries` is a declaration, not a hook: "" (the default) for a method that
    learns without being told where tasks end, else the reason it needs them ("the Fisher
    is taken when a task ends"). On a task-free stream (`config.training.task_free`) the
    engine calls neither `start_task` nor `end_task`, `state.task` and every batch's "task"
    are -1, and a method declaring a reason is refused with it, before any compile.

    `example_index` is a declaration too: True gives every training batch read from a task's
    device-resident examples an "index" (int32 [B], each example's slot in the phase's
    `TaskData`), so `loss` can read per-example values the method computed once in
    `start_task`: the frozen-feature cache (`sequax.algorithms.feature_cache`). A streamed
    source's batches have no "index"; the method computes the values instead.
    """

    needs_boundaries = ""
    example_index = False

    def wrap_model(self, model):
        """The network this method trains, built once from the configured `model`."""
        return model

    def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """The optimizer this method steps with, built once from the configured `tx`."""
        return tx

    def phases(self, num_tasks: int) -> list[list[int]]:
        """The tasks of each training phase, in order: one phase per task by default."""
        return [[t] for t in range(num_tasks)]

    def init(self, params, model_state, example_batch, rng: jax.Array) -> AlgoState:
        """The method's memory at its final shape (zeros or masks for "not yet")."""
        return {}

    def start_task(self, state, task_data, rng: jax.Array, model) -> AlgoState:
        """When a phase starts, after `state.task` is set and before its first step."""
        return state.algo

    def loss(self, params, state, batch, rng: jax.Array, model) -> tuple[jax.Array, dict]:
        """The whole differentiated objective: cross-entropy on the batch plus `penalty`."""
        outputs, model_state = model.apply(
            params, state.model_state, batch["x"], train=True, rng=rng
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], batch["y"]).mean()
        value, metrics = self.penalty(params, state, batch, rng, model, outputs)
        aux = {"model_state": model_state, "metrics": {"ce": ce, **metrics}, "outputs": outputs}
        return ce + value, aux

    def penalty(self, params, state, batch, rng: jax.Array, model, outputs):
        """A regulariser's term added to the data loss, and its metrics."""
        return jnp.zeros((), jnp.float32), {}

    def update(self, algo: AlgoState, state, batch, aux: dict, rng: jax.Array) -> AlgoState:
        """After every optimizer step (`state` is the new state): reservoirs, path integrals."""
        return algo

    def end_task(self, state, task_data, rng: jax.Array, model) -> AlgoState:
        """At the end of a phase: importances, anchors, snapshots."""
        return state.algo

    def task_model(self, model, state):
        """The network as it stands for the current task (what regularisers see)."""
        return model

    def predict(self, params, model_state, algo, x, task, model) -> jax.Array:
        """The evaluation's logits for inputs `x` of tasks `task` (int32 [B])."""
        return model.apply(params, model_state, x, train=False)[0]["logits"]


def missing_hooks(obj) -> list[str]:
    """The hooks of the table `obj` lacks (empty for any `Algorithm`); used when a config or
    a caller hands the engine a method, so a wrong object gets one line before any compile."""
    if isinstance(obj, Algorithm):
        return []
    return [hook for hook in HOOKS if not callable(getattr(obj, hook, None))]


def is_number(value) -> bool:
    """A plain Python number: hyper-parameters are validated in `__post_init__` only then
    (a vmapped sweep rebinds floats to tracers, which have no truth value)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
