"""Composition: one base method plus regularisers, each keeping its own state.

    algorithm = combine(ER(capacity=500, replay_batch=10), EWC(lam=100.0))
    state.algo == {"er": <ER's ReplayState>, "ewc": <EWC's QuadraticState>}

The combined loss is the base's whole loss (its data term: the current batch, replay,
distillation of stored logits) plus each regulariser's `penalty` (the term the
regulariser's own `loss` adds to its cross-entropy), so the task loss is counted once:
ER + EWC trains on `CE(batch ∪ replay) + (λ/2) Σ F (θ − θ*)²`. The regularisers receive the
base's train-mode outputs on the current batch when the base reports them
(`aux["outputs"]`), so LwF or LFL need no second forward pass. Each part's `update` and
`end_task` see the state with `algo` replaced by their own entry; the step's gradient
(`aux["grads"]`) is the combined objective's. Every optional hook is the base's:
training phases, gradient surgery and projection, the evaluation classifier, the wrapped
model, the task-start hook and glances (`phases`, `gradient_transform`,
`projection_transform`, `predict`, `wrap_model`, `start_task`, `glances`), so HAT + EWC
trains HAT's gated network with EWC's penalty added; a regulariser defining one is refused.
A base with `task_model(model, state)` gives the regularisers its network for the current
task (HAT binds the task's gates at s_max, so EWC's Fisher is the gated network's).

In a config, `name` joins the parts with "+", and each part's hyper-parameters sit under
its name:  algorithm = dict(name="er+ewc", er=dict(capacity=500, replay_batch=10),
ewc=dict(lam=100.0)).

Reference: optax's `chain` (each transformation's state under its own index), the design
this mirrors for continual-learning methods.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax

PyTree = Any

# Optional protocol hooks only the base may define: the combination takes them from it.
BASE_ONLY = (
    "gradient_transform",
    "projection_transform",
    "predict",
    "phases",
    "wrap_model",
    "start_task",
    "glances",
    "task_model",
)


@dataclasses.dataclass(frozen=True)
class Combined:
    """`parts`: ((name, algorithm), ...), the base first; regularisers define `penalty`."""

    parts: tuple[tuple[str, Any], ...]

    def __post_init__(self):
        names = [name for name, _ in self.parts]
        if len(self.parts) < 2 or len(set(names)) != len(names):
            raise ValueError(f"combine needs two or more parts with distinct names, got {names}")
        for name, part in self.parts[1:]:
            if not hasattr(part, "penalty"):
                raise ValueError(
                    f"combine: {name!r} has no `penalty`, so it cannot be added to another method's "
                    f"loss; only the first part (the base) may be a replay or data-loss method"
                )
            for hook in BASE_ONLY:
                if hasattr(part, hook):
                    raise ValueError(
                        f"combine: {name!r} defines `{hook}`; only the base (first part) may"
                    )
        base_name, base = self.parts[0]
        # The base's optional hooks are the combination's (HAT's model, gates and clamp;
        # La-MAML's glances); hooks that read the algorithm state get the base's own entry.
        for hook in (
            "gradient_transform",
            "projection_transform",
            "phases",
            "wrap_model",
            "glances",
        ):
            if hasattr(base, hook):
                object.__setattr__(self, hook, getattr(base, hook))
        if hasattr(base, "start_task"):
            object.__setattr__(
                self,
                "start_task",
                lambda state, task_data, rng, model: {
                    **state.algo,
                    base_name: base.start_task(self._own(state, base_name), task_data, rng, model),
                },
            )
        if hasattr(base, "predict"):  # the base's classifier reads the base's own state
            if (
                "task" in inspect.signature(base.predict).parameters
            ):  # task-IL classifiers (HAT, KCL)
                predict = lambda params, model_state, algo, x, model, *, task: base.predict(  # noqa: E731
                    params, model_state, algo[base_name], x, model, task=task
                )
            else:
                predict = lambda params, model_state, algo, x, model: base.predict(  # noqa: E731
                    params, model_state, algo[base_name], x, model
                )
            object.__setattr__(self, "predict", predict)

    def _own(self, state, name):
        return state._replace(algo=state.algo[name])

    def _regularised_model(self, state, model):
        """The network the regularisers see: the base's `task_model(model, state)` when it has
        one (HAT: its gated MLP with the current task's gates bound), else `model`."""
        base_name, base = self.parts[0]
        task_model = getattr(base, "task_model", None)
        return task_model(model, self._own(state, base_name)) if task_model is not None else model

    def init(self, params, model_state, example_batch, rng):
        keys = jax.random.split(rng, len(self.parts))
        return {
            name: part.init(params, model_state, example_batch, k)
            for (name, part), k in zip(self.parts, keys)
        }

    def loss(self, params, state, batch, rng, model):
        (base_name, base), *regularisers = self.parts
        total, aux = base.loss(
            params, self._own(state, base_name), batch, jax.random.fold_in(rng, 0), model
        )
        metrics = {f"{base_name}/{k}": v for k, v in aux["metrics"].items()}
        outputs, seen = aux.get("outputs"), self._regularised_model(state, model)
        for i, (name, part) in enumerate(regularisers, start=1):
            value, part_metrics = part.penalty(
                params, self._own(state, name), batch, jax.random.fold_in(rng, i), seen, outputs
            )
            total = total + value
            metrics.update({f"{name}/{k}": v for k, v in part_metrics.items()})
        return total, {**aux, "metrics": metrics}

    def update(self, algo, state, batch, aux, rng):
        keys = jax.random.split(rng, len(self.parts))
        return {
            name: part.update(algo[name], state._replace(algo=algo[name]), batch, aux, k)
            for (name, part), k in zip(self.parts, keys)
        }

    def end_task(self, state, task_data, rng, model):
        keys = jax.random.split(rng, len(self.parts))
        seen = self._regularised_model(state, model)
        return {
            name: part.end_task(self._own(state, name), task_data, k, model if i == 0 else seen)
            for i, ((name, part), k) in enumerate(zip(self.parts, keys))
        }


def combine(*parts, names: tuple[str, ...] | None = None) -> Combined:
    """Joins a base method and regularisers; names default to the lower-cased class names."""
    names = names or tuple(type(p).__name__.lower() for p in parts)
    return Combined(tuple(zip(names, parts)))
