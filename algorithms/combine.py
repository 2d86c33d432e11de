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
(`aux["grads"]`) is the combined objective's. Training phases, gradient surgery and the
evaluation classifier (`phases`, `gradient_transform`, `predict`) are the base's.

In a config, `name` joins the parts with "+", and each part's hyper-parameters sit under
its name:  algorithm = dict(name="er+ewc", er=dict(capacity=500, replay_batch=10),
ewc=dict(lam=100.0)).

Reference: optax's `chain` (each transformation's state under its own index), the design
this mirrors for continual-learning methods.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

PyTree = Any


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
            for hook in ("gradient_transform", "predict", "phases"):
                if hasattr(part, hook):
                    raise ValueError(f"combine: {name!r} defines `{hook}`; only the base (first part) may")
        base_name, base = self.parts[0]
        for hook in ("gradient_transform", "phases"):
            if hasattr(base, hook):
                object.__setattr__(self, hook, getattr(base, hook))
        if hasattr(base, "predict"):  # the base's classifier reads the base's own state
            object.__setattr__(
                self, "predict", lambda params, model_state, algo, x, model: base.predict(
                    params, model_state, algo[base_name], x, model)
            )

    def _own(self, state, name):
        return state._replace(algo=state.algo[name])

    def init(self, params, model_state, example_batch, rng):
        keys = jax.random.split(rng, len(self.parts))
        return {name: part.init(params, model_state, example_batch, k) for (name, part), k in zip(self.parts, keys)}

    def loss(self, params, state, batch, rng, model):
        (base_name, base), *regularisers = self.parts
        total, aux = base.loss(params, self._own(state, base_name), batch, jax.random.fold_in(rng, 0), model)
        metrics = {f"{base_name}/{k}": v for k, v in aux["metrics"].items()}
        outputs = aux.get("outputs")
        for i, (name, part) in enumerate(regularisers, start=1):
            value, part_metrics = part.penalty(
                params, self._own(state, name), batch, jax.random.fold_in(rng, i), model, outputs
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
        return {
            name: part.end_task(self._own(state, name), task_data, k, model)
            for (name, part), k in zip(self.parts, keys)
        }


def combine(*parts, names: tuple[str, ...] | None = None) -> Combined:
    """Joins a base method and regularisers; names default to the lower-cased class names."""
    names = names or tuple(type(p).__name__.lower() for p in parts)
    return Combined(tuple(zip(names, parts)))
