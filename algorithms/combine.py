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
(`aux["grads"]`) is the combined objective's. The hooks that shape the
run are the base's: the model, the optimizer (gradient surgery, projections), the phases, the
task model and the evaluation classifier (`wrap_model`, `optimizer`, `phases`, `task_model`,
`predict`), so HAT + EWC trains HAT's gated network with EWC's penalty added; a regulariser
overriding one of them is refused. The state hooks (`init`, `start_task`, `update`,
`end_task`) are a plain loop over the parts, each on its own entry of the state.
A base with `task_model(model, state)` gives the regularisers its network for the current
task (HAT binds the task's gates at s_max, so EWC's Fisher is the gated network's).

In a config, `name` joins the parts with "+", and each part's hyper-parameters sit under
its name:  algorithm = dict(name="er+ewc", er=dict(capacity=500, replay_batch=10),
ewc=dict(lam=100.0)).

Reference: optax's `named_chain` (each transformation's state under its own name), the
design this mirrors for continual-learning methods.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from sequax.core.protocol import Algorithm

PyTree = Any

# Hooks that shape the whole run: the combination takes them from its base, and a
# regulariser overriding one is refused (two models or two optimizers cannot both hold).
BASE_ONLY = ("wrap_model", "optimizer", "phases", "start_task", "task_model", "predict")


def _overrides(part, hook: str) -> bool:
    """Whether `part`'s class defines `hook` itself rather than inheriting the default."""
    return getattr(type(part), hook, None) is not getattr(Algorithm, hook)


@dataclasses.dataclass(frozen=True)
class Combined(Algorithm):
    """`parts`: ((name, algorithm), ...), the base first; the rest override `penalty`."""

    parts: tuple[tuple[str, Any], ...]

    def __post_init__(self):
        names = [name for name, _ in self.parts]
        if len(self.parts) < 2 or len(set(names)) != len(names):
            raise ValueError(f"combine needs two or more parts with distinct names, got {names}")
        for name, part in self.parts[1:]:
            if not _overrides(part, "penalty"):
                raise ValueError(
                    f"combine: {name!r} has no `penalty`, so it cannot be added to another "
                    f"method's loss; only the first part (the base) may be a replay or "
                    f"data-loss method"
                )
            for hook in BASE_ONLY:
                if _overrides(part, hook):
                    raise ValueError(
                        f"combine: {name!r} defines `{hook}`; only the base (first part) may"
                    )

    @property
    def base(self):
        return self.parts[0][1]

    def _own(self, state, name):
        return state._replace(algo=state.algo[name])

    # ---- hooks that shape the run: the base's --------------------------------------------
    def wrap_model(self, model):
        return self.base.wrap_model(model)

    def optimizer(self, tx):
        return self.base.optimizer(tx)

    def phases(self, num_tasks):
        return self.base.phases(num_tasks)

    def task_model(self, model, state):
        return self.base.task_model(model, self._own(state, self.parts[0][0]))

    def predict(self, params, model_state, algo, x, task, model):
        return self.base.predict(params, model_state, algo[self.parts[0][0]], x, task, model)

    # ---- state hooks: a plain loop over the parts ------------------------------------------
    def init(self, params, model_state, example_batch, rng):
        keys = jax.random.split(rng, len(self.parts))
        return {
            name: part.init(params, model_state, example_batch, k)
            for (name, part), k in zip(self.parts, keys)
        }

    def start_task(self, state, task_data, rng, model):
        # Every part gets the phase's key (only the base may use it: BASE_ONLY).
        return {
            name: part.start_task(self._own(state, name), task_data, rng, model)
            for name, part in self.parts
        }

    def loss(self, params, state, batch, rng, model):
        """The base's whole loss plus each regulariser's penalty on the base's outputs, seen
        through the base's network for the current task (`task_model`)."""
        (base_name, base), *regularisers = self.parts
        total, aux = base.loss(
            params, self._own(state, base_name), batch, jax.random.fold_in(rng, 0), model
        )
        metrics = {f"{base_name}/{k}": v for k, v in aux["metrics"].items()}
        outputs, seen = aux.get("outputs"), self.task_model(model, state)
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
        seen = self.task_model(model, state)
        return {
            name: part.end_task(self._own(state, name), task_data, k, model if i == 0 else seen)
            for i, ((name, part), k) in enumerate(zip(self.parts, keys))
        }


def combine(*parts, names: tuple[str, ...] | None = None) -> Combined:
    """Joins a base method and regularisers; names default to the lower-cased class names."""
    names = names or tuple(type(p).__name__.lower() for p in parts)
    return Combined(tuple(zip(names, parts)))
