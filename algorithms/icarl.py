"""iCaRL: herded exemplars, distillation through a binary cross-entropy, nearest-mean-of-exemplars.

Each step: a binary cross-entropy with logits over every class on the batch plus
`replay_batch` exemplars; targets are the old model's sigmoids (the parameters at the last
`end_task`) for the classes of ended tasks, one-hot labels for the rest. At a task's end: m =
capacity // classes seen per class, old classes keep their first m herded, new ones are herded
(`herding`, on L2-normalised features) and the class means of the exemplars are stored;
`predict` scores minus the squared distance to each mean (classes without exemplars: NO_MEAN).

    algorithm = ICaRL(capacity=500, replay_batch=10, num_classes=10, feature_dim=100)

mammoth's `icarl.py` before its fix (read at commit 0d727a7) used un-normalised features, a BCE
over the seen classes `[:, :ac]` and class means as a running average of batch means; its later
fix normalises features for herding and means, takes the BCE over all classes and re-normalises
the means. We follow the fix, without its flip-averaged means (no flips on MNIST) or default L2
1e-5 (best-args: wd 0; see `config.optimizer.weight_decay`). Departure: mammoth appends the
memory to the task's training set (`icarl_replay`, ~4 % of a batch; its mb is unused); the
engine's phases hold the task alone, so `replay_batch` exemplars join every step instead.

References:
  Rebuffi, Kolesnikov, Sperl, Lampert, "iCaRL: Incremental Classifier and Representation
  Learning", CVPR 2017. Buzzega et al., "Dark Experience for General Continual Learning: a
  Strong, Simple Baseline", NeurIPS 2020 (aimagelab/mammoth `models/icarl.py`, `utils/buffer.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sequax.core.protocol import Algorithm
from sequax.core.task_data import gather_batch

NO_MEAN = -1e30  # below every -distance (>= -4), above the evaluation mask's finfo.min


class ICaRLState(NamedTuple):
    items: dict  # "x" [capacity, ...] float32, "y" int32 [capacity]
    rank: jax.Array  # int32 [capacity]: each exemplar's place in its class's herding order
    valid: jax.Array  # bool [capacity]
    seen: jax.Array  # bool [num_classes]: the classes of every task ended so far
    means: jax.Array  # float32 [num_classes, feature_dim]: normalised class means of the exemplars
    has_mean: jax.Array  # bool [num_classes]: classes holding exemplars
    old_params: Any  # the distillation teacher: the parameters at the last end_task
    old_model_state: Any


def normalize(features: jax.Array) -> jax.Array:  # torch's F.normalize (eps 1e-12)
    return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def herding(features, labels, valid, classes, m, max_per_class: int) -> jax.Array:
    """int32 [C, max_per_class]: per class in `classes`, its first min(m, n_c) herded examples
    (indices into the normalised `features` [N, D]), then -1; mammoth's greedy `fill_buffer`."""
    num_classes, n = classes.shape[0], labels.shape[0]
    member = (labels == jnp.arange(num_classes)[:, None]) & valid & classes[:, None]  # [C, N]
    count = member.sum(1)
    mean = (member.astype(features.dtype) @ features) / jnp.maximum(count, 1)[:, None]

    def pick(i, carry):  # the example bringing the running mean closest to the class mean
        running, taken, order = carry
        cost = jnp.sum((mean[labels] - (running[labels] + features) / (i + 1)) ** 2, -1)
        best = jnp.argmin(jnp.where(member & ~taken, cost, jnp.inf), axis=1)
        active = classes & (i < count)
        taken = taken.at[jnp.where(active, best, n)].set(True, mode="drop")
        running = running + jnp.where(active[:, None], features[best], 0.0)
        return running, taken, order.at[:, i].set(jnp.where(active, best, -1))

    init = (
        jnp.zeros_like(mean),
        jnp.zeros(n, bool),
        jnp.full((num_classes, max_per_class), -1, jnp.int32),
    )
    return jax.lax.fori_loop(0, jnp.minimum(m, max_per_class), pick, init)[2]


def draw_exemplars(algo: ICaRLState, size: int, key):
    """`size` distinct exemplars, uniformly without replacement, and which rows hold one."""
    _, index = jax.lax.top_k(
        jnp.where(algo.valid, jax.random.uniform(key, algo.valid.shape), -1.0), size
    )
    return {k: a[index] for k, a in algo.items.items()}, algo.valid[index]


@dataclasses.dataclass(frozen=True)
class ICaRL(Algorithm):
    """iCaRL.

    Attributes:
      capacity: exemplars in memory, split equally over the classes seen (DER's 200/500/5120).
      replay_batch: exemplars concatenated to each training batch (mammoth's mb; see above).
      num_classes: width of the head (targets, class means).
      feature_dim: width of the model's "features" (100: the DER MLP's last hidden layer); `init`
        does not see the model, so the class means' shape is given here (checked when traced).
    """

    needs_boundaries = "exemplars and the distillation targets are taken when a task ends"

    capacity: int = 500
    replay_batch: int = 10
    num_classes: int = 10
    feature_dim: int = 100

    def __post_init__(self):
        if (
            not 0 < self.replay_batch <= self.capacity
            or min(self.num_classes, self.feature_dim) < 1
        ):
            raise ValueError(
                f"ICaRL needs 1 <= replay_batch={self.replay_batch} <= capacity={self.capacity}, "
                f"num_classes={self.num_classes} >= 1 and feature_dim={self.feature_dim} >= 1"
            )

    def init(self, params, model_state, example_batch, rng):
        items = {
            k: jnp.zeros((self.capacity, *example_batch[k].shape[1:]), example_batch[k].dtype)
            for k in "xy"
        }
        empty, none = jnp.zeros(self.capacity, bool), jnp.zeros(self.num_classes, bool)
        return ICaRLState(
            items,
            empty.astype(jnp.int32),
            empty,
            none,
            jnp.zeros((self.num_classes, self.feature_dim)),
            none,
            jax.tree.map(jnp.copy, params),
            jax.tree.map(jnp.copy, model_state),
        )

    def _features(self, model, params, model_state, x):
        features = model.apply(params, model_state, x, train=False)[0]["features"]
        if features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"ICaRL feature_dim={self.feature_dim} but the model's features have "
                f"{features.shape[-1]}; set config.algorithm.feature_dim={features.shape[-1]}"
            )
        return normalize(features)

    def loss(self, params, state, batch, rng, model):
        algo = state.algo
        replay, valid = draw_exemplars(algo, self.replay_batch, jax.random.fold_in(rng, 1))
        x, y = (jnp.concatenate([batch[k], replay[k]]) for k in "xy")
        rows = jnp.concatenate([jnp.ones_like(batch["y"], bool), valid]).astype(jnp.float32)
        outputs, model_state = model.apply(params, state.model_state, x, train=True, rng=rng)
        if outputs["logits"].shape[-1] != self.num_classes:
            raise ValueError(
                f"ICaRL num_classes={self.num_classes} but the model has "
                f"{outputs['logits'].shape[-1]}"
            )
        old_logits = model.apply(algo.old_params, algo.old_model_state, x, train=False)[0]["logits"]
        targets = jnp.where(
            algo.seen, jax.nn.sigmoid(old_logits), jax.nn.one_hot(y, self.num_classes)
        )
        per_row = optax.sigmoid_binary_cross_entropy(
            outputs["logits"], jax.lax.stop_gradient(targets)
        ).mean(-1)
        loss = (per_row * rows).sum() / rows.sum()
        return loss, {"model_state": model_state, "metrics": {"bce": loss}}

    def update(self, algo, state, batch, aux, rng):
        return algo  # the memory changes only at a task's end

    def end_task(self, state, task_data, rng, model):
        algo, capacity, num_classes = state.algo, self.capacity, self.num_classes
        data = gather_batch(task_data, jnp.arange(task_data.y.shape[0]))
        valid = jnp.arange(task_data.y.shape[0]) < task_data.size
        present = (
            jnp.zeros(num_classes, bool)
            .at[jnp.where(valid, data["y"], num_classes)]
            .set(True, mode="drop")
        )
        seen = algo.seen | present
        m = capacity // jnp.maximum(seen.sum(), 1)
        block = (jnp.cumsum(seen) - 1) * m  # each seen class's first slot
        # Old classes keep the first m of their herding order (a class met again is re-herded).
        keep = algo.valid & (algo.rank < m) & ~present[algo.items["y"]]
        slot = jnp.where(keep, block[algo.items["y"]] + algo.rank, capacity)
        order = herding(
            self._features(model, state.params, state.model_state, data["x"]),
            data["y"],
            valid,
            present,
            m,
            capacity,
        )  # [C, capacity]
        target = jnp.where(order >= 0, block[:, None] + jnp.arange(capacity), capacity).ravel()
        # Each new slot's source: an old slot (< capacity) or a task example (capacity + index).
        source = jnp.full(capacity, -1, jnp.int32).at[slot].set(jnp.arange(capacity), mode="drop")
        source = source.at[target].set(capacity + order.ravel(), mode="drop")
        stored = source >= 0
        items = {k: jnp.concatenate([algo.items[k], data[k]])[jnp.maximum(source, 0)] for k in "xy"}
        rank = jnp.arange(capacity) - block[items["y"]]  # slots of a class are contiguous, by rank
        # Nearest-mean-of-exemplars: the class means under the network that just finished the task.
        member = (items["y"][:, None] == jnp.arange(num_classes)) & stored[:, None]
        sums = member.astype(jnp.float32).T @ self._features(
            model, state.params, state.model_state, items["x"]
        )
        return ICaRLState(
            items,
            rank,
            stored,
            seen,
            normalize(sums),
            member.any(0),
            jax.tree.map(jnp.copy, state.params),
            jax.tree.map(jnp.copy, state.model_state),
        )

    def predict(self, params, model_state, algo, x, task, model):
        features = self._features(model, params, model_state, x)
        distance = jnp.sum((features[:, None, :] - algo.means) ** 2, -1)
        return jnp.where(algo.has_mean, -distance, NO_MEAN)
