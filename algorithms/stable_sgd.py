"""Stable SGD: a training regime (dropout, per-task learning-rate decay, batch size) as a method.

Stable SGD is plain SGD whose hyper-parameters widen the tasks' minima: dropout on the
hidden layers (`config.model.dropout`), a larger batch (`config.training.batch_size`), and
a learning rate decayed once per task,

    lr_t = max(lr * decay ** (t + offset), lr * min_factor)      (t: 0-based task index)

with `offset=1` as in the reference code (`lr = max(lr * gamma ** task_id, 5e-5)` with
1-based task ids, so the first task already trains at lr * decay). Only the decay is the
algorithm's: `loss` computes the factor from `state.task` (a traced value, so every task
shares one compiled step) and hands it to `gradient_transform`, an optax transformation
chained in front of the optimizer that multiplies the gradient by it. With the optimizer
state reset at every task (`config.optimizer.reset_each_task`, the reference code builds a
new `torch.optim.SGD(lr, momentum=0.8)` per task) scaling the gradient by the factor equals
scaling the learning rate, momentum included: the trace starts at 0 and stays linear in
the gradients.

    algorithm = StableSGD(decay=0.8)          # config.model.dropout=0.25, batch 64, lr 0.1

References:
  Mirzadeh, Farajtabar, Pascanu, Ghasemzadeh, "Understanding the Role of Training Regimes in
  Continual Learning", NeurIPS 2020 (imirzadeh/stable-continual-learning `stable_sgd/main.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from sequax.algorithms.losses import forward_cross_entropy
from sequax.core.protocol import Algorithm, is_number


def task_lr_factor(task: jax.Array, decay, offset: int, min_factor) -> jax.Array:
    """float32 scalar max(decay ** (task + offset), min_factor): task `task`'s learning rate
    as a fraction of the optimizer's. `decay` and `min_factor` may be traced (sweeps)."""
    exponent = (task + offset).astype(jnp.float32)
    return jnp.maximum(
        jnp.asarray(decay, jnp.float32) ** exponent, jnp.asarray(min_factor, jnp.float32)
    )


def scale_by_lr_factor() -> optax.GradientTransformationExtraArgs:
    """Multiplies the gradient by the extra argument `lr_factor` (a scalar, default 1).

    Chained in front of SGD (with or without momentum) it scales the step as a learning rate
    would, exactly so while the momentum trace restarts with each factor."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, lr_factor=1.0, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda u: u * jnp.asarray(lr_factor, u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def decayed_cross_entropy(model, params, state, batch, rng, decay, offset: int, min_factor):
    """The cross-entropy of the batch, with the task's learning-rate factor
    (`task_lr_factor`) handed to `scale_by_lr_factor` through aux["tx_args"] (Stable SGD's
    and MC-SGD's loss)."""
    _, model_state, ce = forward_cross_entropy(model, params, state, batch["x"], batch["y"], rng)
    factor = task_lr_factor(state.task, decay, offset, min_factor)
    aux = {
        "model_state": model_state,
        "metrics": {"ce": ce, "lr_factor": factor},
        "tx_args": {"lr_factor": factor},
    }
    return ce, aux


@dataclasses.dataclass(frozen=True)
class StableSGD(Algorithm):
    """Stable SGD's per-task learning-rate decay (dropout and batch size live in the config).

    Attributes:
      decay: γ, the factor applied to the learning rate at every new task (the paper's
        "learning rate decay"; 0.8 on Permuted, 0.55 on Rotated MNIST as corrected by the
        author; 1.0 disables it). May be traced (a sweep).
      offset: the exponent of the first task: 1 reproduces the reference code (task ids
        from 1), 0 gives the first task the optimizer's own learning rate.
      min_factor: floor of the factor, as a fraction of the optimizer's learning rate (the
        reference code's absolute floor 5e-5 at lr 0.1: 5e-4). May be traced.
    """

    needs_boundaries = "the learning rate decays with the task id"

    decay: float = 0.8
    offset: int = 1
    min_factor: float = 5e-4

    def __post_init__(self):
        if is_number(self.decay) and not 0 < self.decay <= 1:
            raise ValueError(f"StableSGD decay={self.decay} must be in (0, 1]")
        if is_number(self.min_factor) and not 0 <= self.min_factor <= 1:
            raise ValueError(f"StableSGD min_factor={self.min_factor} must be in [0, 1]")
        if not isinstance(self.offset, int) or self.offset < 0:
            raise ValueError(f"StableSGD offset={self.offset!r} must be an int >= 0")

    def init(self, params, model_state, example_batch, rng):
        return {}

    def loss(self, params, state, batch, rng, model):
        return decayed_cross_entropy(
            model, params, state, batch, rng, self.decay, self.offset, self.min_factor
        )

    def optimizer(self, tx):
        return optax.chain(self.gradient_transform(), tx)

    def gradient_transform(self):
        return scale_by_lr_factor()

    def update(self, algo, state, batch, aux, rng):
        return algo

    def end_task(self, state, task_data, rng, model):
        return state.algo
