"""SimpleCIL: a frozen backbone's class means (prototypes) as a cosine classifier.

No gradient training: when a task ends, each of its classes' prototype is the mean of the
frozen backbone's "features" over the task's examples of that class, and `predict` scores
the cosine between an input's features and every prototype (LAMDA-PILOT's `CosineLinear`
with its `sigma` at its initial 1, never trained):

    logits[b, c] = <f_b / |f_b|, p_c / |p_c|>          (F.normalize: x / max(|x|, 1e-12))

Classes without a prototype yet score NO_PROTOTYPE (the reference's head has no row for
them). Any `Model` whose outputs hold "features" works (a pretrained ViT, a ResNet, an MLP).

    algorithm = SimpleCIL(num_classes=100, feature_dim=768)

The loss is a constant zero computed without a forward pass, and `wrap_model` marks every
parameter frozen (`Model.trainable`: the engine gives them a zero update and no optimizer
state), so the engine's training steps cost next to nothing: run it with one epoch per task.
The prototypes are computed in `end_task` by one scan over the task's resident examples
(`scan_batches`, `batch_size` at a time, padding slots masked out).

Deviations from the reference: PILOT replaces the weight row of a class with the mean over
the current task only (`fc.weight.data[class_index] = proto`); here a class met again in a
later task (a domain-incremental stream) gets the running mean over all the examples of it
seen so far ((old mean * old count + task sum) / total count). On a class-incremental stream
each class is met once and the two agree exactly. The reference draws its examples with the
test-time transform (`mode="test"`); the engine's resident examples are untransformed, the
same thing for a stream without augmentation.

References:
  Zhou, Cai, Ye, Zhan, Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models:
  Generalizability and Adaptivity are All You Need", IJCV 2024 (arXiv:2303.07338), the
  SimpleCIL baseline; sun-hailong/LAMDA-PILOT `models/simplecil.py` (`replace_fc`),
  `utils/inc_net.py` (`SimpleVitNet`), `backbone/linears.py` (`CosineLinear`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sequax.core.protocol import Algorithm
from sequax.core.task_data import scan_batches

# Below every cosine (>= -1), above the evaluation mask's finfo.min (as iCaRL's NO_MEAN).
NO_PROTOTYPE = -1e30
HIGHEST = lax.Precision.HIGHEST  # full float32 products (no TF32/bf16 passes on accelerators)


class SimpleCILState(NamedTuple):
    prototypes: jax.Array  # float32 [num_classes, feature_dim]: class means (zero: none yet)
    counts: jax.Array  # int32 [num_classes]: examples each prototype averages (0: none yet)


def normalize(x: jax.Array) -> jax.Array:
    """torch's `F.normalize(x, p=2, dim=-1)`: x / max(|x|, 1e-12)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_logits(features: jax.Array, weights: jax.Array) -> jax.Array:
    """[B, C]: PILOT's `CosineLinear` (sigma 1): normalised features times normalised rows."""
    return jnp.matmul(normalize(features), normalize(weights).T, precision=HIGHEST)


def class_sums(features, labels, valid, num_classes: int):
    """(float32 [C, D] per-class sums of the valid rows of `features`, float32 [C] counts)."""
    onehot = jax.nn.one_hot(labels, num_classes) * valid[:, None].astype(jnp.float32)
    return jnp.matmul(onehot.T, features, precision=HIGHEST), onehot.sum(0)


def merge_means(means, counts, sums, new_counts):
    """Running class means: (means * counts + sums) / (counts + new_counts) where a class has
    new examples, the old mean elsewhere. `counts` int32 [C], `new_counts` float32 [C]."""
    total = counts.astype(jnp.float32) + new_counts
    merged = (means * counts[:, None].astype(jnp.float32) + sums) / jnp.maximum(total, 1.0)[:, None]
    return jnp.where(new_counts[:, None] > 0, merged, means), total.astype(jnp.int32)


def frozen_model(model):
    """`model` with every parameter frozen (`Model.trainable` all False)."""
    return model._replace(trainable=lambda params: jax.tree.map(lambda _: False, params))


def frozen_features(model, params, model_state, x, feature_dim: int, name: str) -> jax.Array:
    """float32 [B, D]: the model's eval-mode "features" of `x`, checked against `feature_dim`."""
    outputs = model.apply(params, model_state, x, train=False)[0]
    if "features" not in outputs:
        raise ValueError(f"{name} needs a model whose outputs hold 'features'")
    features = lax.stop_gradient(outputs["features"]).astype(jnp.float32)
    features = features.reshape(features.shape[0], -1)
    if features.shape[-1] != feature_dim:
        raise ValueError(
            f"{name} feature_dim={feature_dim} but the model's features have "
            f"{features.shape[-1]}; set config.algorithm.feature_dim={features.shape[-1]}"
        )
    return features


def zero_loss(state):
    """The loss of a method that trains nothing: a constant zero, no forward pass."""
    return jnp.zeros((), jnp.float32), {"model_state": state.model_state, "metrics": {}}


@dataclasses.dataclass(frozen=True)
class SimpleCIL(Algorithm):
    """SimpleCIL (see the module docstring).

    Attributes:
      num_classes: width of the classifier (the stream's classes).
      feature_dim: width of the model's "features" (768 for ViT-B/16); `init` does not see
        the model, so the prototypes' shape is given here (checked when traced).
      batch_size: examples per forward pass of `end_task`'s scan over the task (the
        reference's loader batch, 128); memory only, the prototypes do not depend on it.
    """

    needs_boundaries = "the class prototypes are taken when a task ends"

    num_classes: int = 10
    feature_dim: int = 768
    batch_size: int = 128

    def __post_init__(self):
        for name in ("num_classes", "feature_dim", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"SimpleCIL {name}={value!r} must be an integer >= 1")

    def wrap_model(self, model):
        return frozen_model(model)

    def init(self, params, model_state, example_batch, rng):
        return SimpleCILState(
            prototypes=jnp.zeros((self.num_classes, self.feature_dim), jnp.float32),
            counts=jnp.zeros(self.num_classes, jnp.int32),
        )

    def loss(self, params, state, batch, rng, model):
        return zero_loss(state)

    def end_task(self, state, task_data, rng, model):
        algo = state.algo

        def fold(carry, batch, valid):
            features = frozen_features(
                model, state.params, state.model_state, batch["x"], self.feature_dim, "SimpleCIL"
            )
            sums, counts = class_sums(features, batch["y"], valid, self.num_classes)
            return carry[0] + sums, carry[1] + counts

        init = (
            jnp.zeros((self.num_classes, self.feature_dim), jnp.float32),
            jnp.zeros(self.num_classes, jnp.float32),
        )
        batch_size = min(self.batch_size, task_data.y.shape[0])
        sums, counts = scan_batches(fold, task_data, batch_size, init)
        prototypes, total = merge_means(algo.prototypes, algo.counts, sums, counts)
        return SimpleCILState(prototypes, total)

    def predict(self, params, model_state, algo, x, task, model):
        features = frozen_features(model, params, model_state, x, self.feature_dim, "SimpleCIL")
        logits = cosine_logits(features, algo.prototypes)
        return jnp.where(algo.counts > 0, logits, NO_PROTOTYPE)
