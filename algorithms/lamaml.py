"""La-MAML: look-ahead meta-learning with learned per-parameter learning rates and replay.

Each incoming batch is seen `config.training.glances` times (the official `--glances`, 5 on
MNIST; a training setting of the stream, the step repeats the batch: `engine/step.py`). A glance
shuffles the batch and takes inner SGD steps on its examples `inner_batch` at a time,
θ_{k+1} = θ_k − max(0, α) ⊙ ∇ℓ(θ_k), with the current per-parameter learning rates α (one per
weight and bias, held in the state). After every inner step the meta-loss, the mean
cross-entropy of the look-ahead weights θ_{k+1} on the meta batch (a replay batch from a reservoir
memory, then the whole incoming batch), is taken; their mean is differentiated with respect to θ_0
and α through all the inner steps (`jax.value_and_grad` over a `lax.scan`, inside the compiled
step). Both meta-gradients are clipped to global norm `grad_clip`; then the asynchronous update:
α ← α − η ∇_α (its own step first), θ_0 ← θ_0 − max(0, α) ⊙ ∇_θ with the new α. The batch
enters the memory on its first glance only.

    algorithm = LaMAML(alpha_init=0.15, meta_lr=0.3, capacity=200, replay_batch=10)
    # with config.optimizer.lr = 1.0 (SGD) and config.training.glances = 5: the per-parameter
    # rates are the step size

How it maps onto the engine: the engine repeats the step `training.glances` times per batch
(`engine/step.py`, batch["glance"]). `loss` computes both meta-gradients with one
`value_and_grad` and returns the meta-loss through a linear surrogate whose gradient with
respect to the parameters is exactly the clipped ∇_θ (the engine's own backward pass is
then a dot product); the new α goes to the `optimizer` hook's transform, the per-parameter rates
max(0, α) as an optax transformation in front of SGD at learning rate 1, and to `update`, which
stores it.

Verified against the official code (github.com/montrealrobotics/La-MAML; line numbers of
`model/lamaml.py`, the MNIST model):
  * `observe` (l. 58-114): per glance `torch.randperm` of the batch (l. 64-66); the meta
    batch drawn once by `getBatch` (l. 78) before the batch's examples are pushed, the push
    inside the inner loop on the first glance of the first epoch only (l. 86-87, and
    `push_to_mem`'s `pass_itr>0` return in `model/lamaml_base.py`); one example per inner
    step (l. 81-85); the meta-loss after every inner step (l. 89-90), averaged over the
    steps (l. 95); `clip_grad_norm_` on the weights' and on α's gradients (l. 99-100);
    `opt_lr.step()` (plain SGD on α at `--opt_lr`, `lamaml_base.py`) first, then, without
    `--sync_update`, p ← p − p.grad ⊙ relu(α_new) (l. 107-109). `--opt_wt`/`--lr` are unused
    in this (asynchronous) mode. `zero_grads` clears the gradients at each glance; `train()`
    has no effect (no dropout, no batch norm in the MLP).
  * `inner_update` (l. 37-56): fast = w − g ⊙ relu(α) (l. 54-55), so max(0, α) in the inner
    steps as well, and α ≤ 0 gets no meta-gradient (it stays frozen). Its element-wise
    `torch.clamp(grads[i], ...)` (l. 51-52) is not in place and its result is discarded: the
    inner gradients are not clamped (`clamp_inner=False`); `--second_order` off gives
    `create_graph=False`, gradients as constants (l. 48-49).
  * `meta_loss` (l. 29-35): `CrossEntropyLoss` (mean) on the meta batch, which `getBatch`
    (`model/lamaml_base.py`) builds as min(replay_batch_size, len(M)) memory examples, each
    drawn uniformly with replacement (a `shuffle(order)` before each pick), followed by all
    the batch's examples; an empty memory gives the batch alone (here: rows of weight 0).
  * α: one tensor of α₀ per weight and bias (`define_task_lr_params`, `model/meta/learner.py`).
Remaining departures: the reservoir keeps the n-th example (1-based) with probability
capacity / n (`sequax.algorithms.reservoir`), the official `push_to_mem` draws
`random.randint(0, age)` inclusive, i.e. capacity / (n + 1) (shared helper; a relative
difference below 1/n). The official `--sync_update` variant (θ by a separate SGD optimiser)
is not offered. The network's initialisation is the engine's (`config.model`), not the
official Kaiming-normal weights (see configs/rmnist_lamaml.py).

References:
  Gupta, Yadav & Paull, "La-MAML: Look-ahead Meta Learning for Continual Learning",
  NeurIPS 2020 (Algorithm 1; code: github.com/montrealrobotics/La-MAML).
  Riemer et al., "Learning to Learn without Forgetting by Maximizing Transfer and
  Minimizing Interference", ICLR 2019 (MER: the single-pass "glances" protocol).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sequax.algorithms.losses import cross_entropy
from sequax.algorithms.projection import tree_vdot
from sequax.algorithms.reservoir import (
    ReplayState,
    ReservoirState,
    capacity_of,
    replay_init,
    reservoir_slots,
)
from sequax.core.clipping import clip_grad_norm
from sequax.core.protocol import Algorithm

PyTree = Any


class LaMAMLState(NamedTuple):
    alpha: PyTree  # per-parameter learning rates, the parameters' structure and shapes
    replay: ReplayState  # the memory and the replay batch of the next glance


def nonnegative_rates() -> optax.GradientTransformationExtraArgs:
    """La-MAML's weight step as an optax transform: `update(g, state, params, alpha=α)` gives
    max(0, α) ⊙ g (chained in front of SGD at lr 1, the step is −max(0, α) ⊙ g)."""

    def update(updates, state, params=None, *, alpha, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda g, a: jax.nn.relu(a) * g, updates, alpha), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def glance_order(key: jax.Array, size: int) -> jax.Array:
    """The order a glance takes the batch's examples in (official: `torch.randperm` per glance)."""
    return jax.random.permutation(key, size)


def sample_with_replacement(buffer: ReservoirState, size: int, key: jax.Array):
    """The official `getBatch` replay draw: min(size, filled) examples, each uniform over the
    filled slots, with replacement; the rows past `filled` are marked invalid (weight 0)."""
    filled = jnp.minimum(buffer.num_seen, capacity_of(buffer))
    index = jax.random.randint(key, (size,), 0, jnp.maximum(filled, 1))
    valid = jnp.arange(size) < filled
    return jax.tree.map(lambda b: b[index], buffer.items), valid


@dataclasses.dataclass(frozen=True)
class LaMAML(Algorithm):
    """La-MAML (Gupta et al. 2020).

    Attributes:
      alpha_init: α₀, the initial per-parameter learning rate (official `--alpha_init`;
        0.15 for MNIST Rotations).
      meta_lr: η, the SGD learning rate of α on its meta-gradient (official `--opt_lr`;
        0.3 for MNIST Rotations); 0 keeps α at α₀.
      capacity: reservoir memory size in examples (official `--memories`).
      replay_batch: memory examples added to each glance's meta-batch (`--replay_batch_size`).
      inner_batch: examples per inner SGD step (1: the batch's examples one by one, as the
        official code); must divide the batch size.
      grad_clip: the official `--grad_clip_norm` (default 2.0): the global-norm bound of
        both meta-gradients (`clip_grad_norm_`, model/lamaml.py l. 99-100); 0 disables it.
      second_order: True differentiates through the inner gradients (the exact
        meta-gradient, official `--second_order`); False treats them as constants (the
        first-order approximation: the official default, and its MNIST commands).
      clamp_inner: True clamps the inner gradients element-wise to ±grad_clip, what the
        official `inner_update` writes (model/lamaml.py l. 51-52) but does not do: its
        `torch.clamp` is not in place and its result is discarded. False (default) is the
        official behaviour: unclamped inner gradients.
    """

    alpha_init: float = 0.15
    meta_lr: float = 0.3
    capacity: int = 200
    replay_batch: int = 10
    inner_batch: int = 1
    grad_clip: float = 2.0
    second_order: bool = False
    clamp_inner: bool = False

    def __post_init__(self):
        if not 0 < self.replay_batch <= self.capacity:
            raise ValueError(
                f"LaMAML replay_batch={self.replay_batch} must be in [1, capacity={self.capacity}]"
            )
        if self.inner_batch < 1:
            raise ValueError(f"LaMAML inner_batch={self.inner_batch} must be >= 1")

    def init(self, params, model_state, example_batch, rng):
        alpha = jax.tree.map(lambda p: jnp.full_like(p, self.alpha_init), params)
        example = {"x": example_batch["x"][0], "y": example_batch["y"][0]}
        return LaMAMLState(alpha, replay_init(self.capacity, self.replay_batch, example))

    def meta_gradients(self, params, alpha, model_state, x, y, meta_x, meta_y, meta_w, rng, model):
        """(mean meta-loss, model_state), ∇_θ, ∇_α: inner steps over (x, y) in order, the
        meta-loss on (meta_x, meta_y) weighted by meta_w after each, differentiated through."""
        size = y.shape[0]
        if size % self.inner_batch:
            raise ValueError(
                f"LaMAML inner_batch={self.inner_batch} must divide the batch size {size}"
            )
        steps = size // self.inner_batch
        pieces = (
            x.reshape(steps, self.inner_batch, *x.shape[1:]),
            y.reshape(steps, self.inner_batch),
            jax.random.split(rng, steps),
        )

        def forward_loss(theta, state, inputs, labels, key, weights=None):
            outputs, state = model.apply(theta, state, inputs, train=True, rng=key)
            return cross_entropy(outputs["logits"], labels, weights), state

        def objective(theta, alpha):
            def inner_step(carry, piece):
                theta, state = carry
                inputs, labels, key = piece
                inner_key, meta_key = jax.random.split(key)
                grads, state = jax.grad(forward_loss, has_aux=True)(
                    theta, state, inputs, labels, inner_key
                )
                if not self.second_order:
                    grads = lax.stop_gradient(grads)
                if self.clamp_inner and self.grad_clip > 0:
                    grads = jax.tree.map(
                        lambda g: jnp.clip(g, -self.grad_clip, self.grad_clip), grads
                    )
                # max(0, α) here too (official `inner_update`): ∇_α is 0 where α <= 0.
                theta = jax.tree.map(lambda p, g, a: p - jax.nn.relu(a) * g, theta, grads, alpha)
                meta, state = forward_loss(theta, state, meta_x, meta_y, meta_key, meta_w)
                return (theta, state), meta

            (_, state), metas = lax.scan(inner_step, (theta, model_state), pieces)
            return metas.mean(), state

        (meta, state), (g_theta, g_alpha) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True
        )(params, alpha)
        return (meta, state), g_theta, g_alpha

    def loss(self, params, state, batch, rng, model):
        algo = state.algo
        order_key, inner_key = jax.random.split(rng)
        order = glance_order(order_key, batch["y"].shape[0])
        x, y = batch["x"][order], batch["y"][order]
        replay = algo.replay
        meta_x = jnp.concatenate([replay.replay["x"], x])
        meta_y = jnp.concatenate([replay.replay["y"], y])
        meta_w = jnp.concatenate([replay.valid, jnp.ones_like(y, bool)])
        # Differentiated on a constant copy of θ: the engine's gradient of the surrogate below
        # is then exactly the clipped ∇_θ, and its backward pass never re-enters the inner steps.
        theta = lax.stop_gradient(params)
        (meta, model_state), g_theta, g_alpha = self.meta_gradients(
            theta, algo.alpha, state.model_state, x, y, meta_x, meta_y, meta_w, inner_key, model
        )
        if self.grad_clip > 0:
            g_theta, g_alpha = (
                clip_grad_norm(g_theta, self.grad_clip),
                clip_grad_norm(g_alpha, self.grad_clip),
            )
        alpha = jax.tree.map(
            lambda a, g: a - self.meta_lr * g, algo.alpha, g_alpha
        )  # α first (asynchronous)
        surrogate = meta + tree_vdot(
            g_theta, jax.tree.map(jnp.subtract, params, theta)
        )  # value: meta exactly
        leaves = jax.tree.leaves(alpha)
        metrics = {
            "meta_loss": meta,
            "alpha_mean": sum(a.sum() for a in leaves) / sum(a.size for a in leaves),
            "alpha_negative": sum((a < 0).sum() for a in leaves) / sum(a.size for a in leaves),
        }
        return surrogate, {
            "model_state": model_state,
            "metrics": metrics,
            "alpha": alpha,
            "tx_args": {"alpha": alpha},
        }

    def optimizer(self, tx):
        return optax.chain(self.gradient_transform(), tx)

    def gradient_transform(self):
        return nonnegative_rates()

    def update(self, algo, state, batch, aux, rng):
        insert_key, sample_key = jax.random.split(rng)
        buffer, size = algo.replay.buffer, batch["y"].shape[0]
        capacity = self.capacity
        # The batch enters the memory on its first glance only; later glances redraw the replay.
        first = jnp.asarray(batch.get("glance", 0)) == 0
        slot = jnp.where(
            first, reservoir_slots(buffer.num_seen, size, capacity, insert_key), capacity
        )
        items = jax.tree.map(
            lambda b, new: b.at[slot].set(new, mode="drop"),
            buffer.items,
            {"x": batch["x"], "y": batch["y"]},
        )
        buffer = ReservoirState(
            items, buffer.num_seen + jnp.where(first, size, 0).astype(jnp.int32)
        )
        replay, valid = sample_with_replacement(buffer, self.replay_batch, sample_key)
        return LaMAMLState(aux["alpha"], ReplayState(buffer, replay, valid))

    def end_task(self, state, task_data, rng, model):
        return state.algo
