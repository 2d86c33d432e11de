"""Less-Forgetting Learning (LFL): keep the last hidden layer's features where they were.

At the end of each task the parameters are snapshotted; while learning the next task, the
features of the current batch (the model's `outputs["features"]`, the last hidden layer) are
pulled towards the snapshot's features of the same batch:

    loss = CE(f(x), y) + lam * mean_batch ||h(x) - h_old(x)||²

with h the current features (the train-mode forward that the cross-entropy uses), h_old
the snapshot's in evaluation mode (not differentiated), and ||.||² the squared Euclidean
norm over the feature axis. The penalty is exactly 0 until the first task ends.

    algorithm = LFL(lam=0.1)
    algorithm = combine(ER(500, 10), LFL(lam=0.1))   # ER's loss plus the feature penalty

Conventions: the paper writes lam_e * (1/2) ||.||², so its lam_e is 2 * lam; avalanche's
`LFLPlugin` uses `F.mse_loss` (a mean over the feature axis too), so its lambda_e is
lam * D for D features (256 in its P-MNIST baseline). Departures: the paper (and avalanche)
also freeze the softmax layer after the first task; that is not done here: under one shared
class-incremental head the new classes' output weights would stay at their random
initialisation, and a regulariser cannot change the optimiser when combined with a base
method (`combine`). mammoth has no LFL, so the reference is the paper and avalanche.

Default lam = 0.1 (no DER-table row): on Split MNIST under the DER protocol (MLP 784-100-100,
SGD lr 0.03, batch 10; `mnist_packaged`, 1,000 examples per task, seed 0) task-IL ACC is 96.5 %
at lam 0 (naive), 98.2 % at 0.1, 94.6 % at 0.3 and 76.2 % at 1.0: the penalty's curvature in
the first layer's weights grows with |x|² (about 100 for an MNIST image), so large lam makes
plain SGD at these learning rates unstable. Class-IL stays at naive's 19 %: a shared head
still drifts towards the newest classes.

References:
  Jung, Ju, Jung, Kim, "Less-forgetting Learning in Deep Neural Networks", arXiv:1607.00122,
  2016.  Avalanche's `training/plugins/lfl.py` (ContinualAI/avalanche) for the code form.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sequax.algorithms.losses import penalised_cross_entropy
from sequax.core.protocol import Algorithm, is_number


class LFLState(NamedTuple):
    old_params: Any  # the parameters at the end of the previous task (a copy of the init before)
    old_model_state: Any
    has_old: jax.Array  # bool scalar: a task has ended (False: the penalty is exactly 0)


def feature_distance(features: jax.Array, old_features: jax.Array) -> jax.Array:
    """mean over the batch of the squared Euclidean distance; `old_features` not differentiated."""
    return jnp.sum(jnp.square(features - jax.lax.stop_gradient(old_features)), -1).mean()


@dataclasses.dataclass(frozen=True)
class LFL(Algorithm):
    """Less-Forgetting Learning.

    Attributes:
      lam: weight λ of the feature distance (≥ 0). May be a traced scalar (a vmapped sweep):
        it is only multiplied.
    """

    needs_boundaries = "the anchor network is taken when a task ends"

    lam: float = 0.1

    def __post_init__(self):
        if is_number(self.lam) and self.lam < 0:
            raise ValueError(f"LFL lam={self.lam} must be >= 0")

    def init(self, params, model_state, example_batch, rng):
        # Copies, not aliases of the parameters' buffers (the train step donates them).
        snapshot = jax.tree.map(jnp.array, (params, model_state))
        return LFLState(*snapshot, jnp.zeros((), bool))

    def penalty(self, params, state, batch, rng, model, outputs=None):
        if outputs is None:
            outputs, _ = model.apply(params, state.model_state, batch["x"], train=True, rng=rng)
        algo = state.algo
        old, _ = model.apply(algo.old_params, algo.old_model_state, batch["x"], train=False)
        distance = jnp.where(
            algo.has_old, feature_distance(outputs["features"], old["features"]), 0.0
        )
        return self.lam * distance, {"feature_distance": distance}

    def loss(self, params, state, batch, rng, model):
        return penalised_cross_entropy(self, params, state, batch, rng, model)

    def update(self, algo, state, batch, aux, rng):
        return algo

    def end_task(self, state, task_data, rng, model):
        snapshot = jax.tree.map(jnp.array, (state.params, state.model_state))
        return LFLState(*snapshot, jnp.ones((), bool))
