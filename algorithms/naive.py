"""Naive fine-tuning: plain SGD on each task in turn, the lower bound of every table.

    algorithm = Naive()
    loss, aux = algorithm.loss(params, state, batch, rng, model)

References:
  The "SGD" / "fine-tune" baseline of every CL benchmark, e.g. Buzzega et al., "Dark
  Experience for General Continual Learning", NeurIPS 2020 (row "SGD").
"""

from __future__ import annotations

import dataclasses

from sequax.algorithms.losses import forward_cross_entropy
from sequax.core.protocol import Algorithm


@dataclasses.dataclass(frozen=True)
class Naive(Algorithm):
    """Cross-entropy on the current batch only; no memory (its state is `{}`)."""

    def init(self, params, model_state, example_batch, rng):
        return {}

    def loss(self, params, state, batch, rng, model):
        _, model_state, loss = forward_cross_entropy(
            model, params, state, batch["x"], batch["y"], rng
        )
        return loss, {"model_state": model_state, "metrics": {"ce": loss}}

    def update(self, algo, state, batch, aux, rng):
        return algo

    def end_task(self, state, task_data, rng, model):
        return state.algo
