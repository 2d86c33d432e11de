"""Averaged Gradient Episodic Memory (A-GEM): gradient surgery against one reference gradient.

Each step computes the gradient g of the cross-entropy on the current batch and a reference
gradient g_ref of the cross-entropy on `replay_batch` examples drawn uniformly without
replacement from the episodic memory. When they conflict (g . g_ref < 0), the optimizer gets
g projected onto the half-space where the memory's loss does not increase to first order:

    g~ = g - (g . g_ref / g_ref . g_ref) g_ref     if g . g_ref < 0, else g

over all parameters as one flat vector. While the memory is empty, g passes unchanged.
`loss` computes g_ref (a nested `jax.grad` at the stopped parameters) and passes it in
aux["tx_args"]; `gradient_transform` (`projection.agem_projection`) projects in front of
the optimizer, so `combine(AGEM(...), EWC(...))` projects the combined objective's gradient.

The memory is filled as in mammoth's agem.py at the DER paper's release: when a task ends,
`capacity // num_tasks` of its training examples, drawn uniformly without replacement, are
offered to a reservoir of `capacity` slots (which, never overflowing, keeps them all);
nothing is stored during a task. (Later mammoth versions store one training batch per task.)
As there, the memory forward runs second, in train mode, from the model state the current
batch's forward left.

    algorithm = AGEM(capacity=500, replay_batch=128, num_tasks=5)

One departure, for fixed shapes: while fewer than `replay_batch` examples are stored, the
memory forward still runs over `replay_batch` rows, the empty ones weighted out of the loss
(exact without BatchNorm, whose statistics would see them).

References:
  Chaudhry, Ranzato, Rohrbach, Elhoseiny, "Efficient Lifelong Learning with A-GEM",
  ICLR 2019; Buzzega et al., NeurIPS 2020 (aimagelab/mammoth `models/agem.py`, followed here).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from sequax.algorithms.losses import cross_entropy, forward_cross_entropy
from sequax.algorithms.projection import agem_projection
from sequax.algorithms.reservoir import (
    ReservoirState,
    reservoir_init,
    reservoir_sample,
    reservoir_slots,
)
from sequax.core.protocol import Algorithm
from sequax.core.task_data import gather_batch


def task_sample(task_data, count: int, key: jax.Array):
    """`count` of a phase's examples, uniformly without replacement, and their validity.

    The first `min(count, size)` rows are real (padding is never drawn); images are float32
    in [0, 1], as the train step sees them. mammoth: `next(iter(not_aug_dataloader(count)))`.
    """
    capacity = task_data.y.shape[0]
    scores = jax.random.uniform(key, (capacity,))
    _, index = jax.lax.top_k(jnp.where(jnp.arange(capacity) < task_data.size, scores, -1.0), count)
    batch = gather_batch(task_data, index)
    return {"x": batch["x"], "y": batch["y"]}, jnp.arange(count) < task_data.size


@dataclasses.dataclass(frozen=True)
class AGEM(Algorithm):
    """A-GEM.

    Attributes:
      capacity: episodic memory size in examples (the "buffer 200/500/5120" of the DER table).
      replay_batch: examples per reference gradient ("minibatch size" mb, 128 in the DER
        best-args); at most `capacity`.
      num_tasks: tasks in the stream; each stores `capacity // num_tasks` examples when it ends.
    """

    needs_boundaries = "its memory is filled when a task ends"

    capacity: int = 500
    replay_batch: int = 128
    num_tasks: int = 5

    def __post_init__(self):
        if not 0 < self.replay_batch <= self.capacity:
            raise ValueError(
                f"AGEM replay_batch={self.replay_batch} must be in [1, capacity={self.capacity}]"
            )
        if not 0 < self.num_tasks <= self.capacity:
            raise ValueError(
                f"AGEM num_tasks={self.num_tasks} must be in [1, capacity={self.capacity}]"
            )

    def init(self, params, model_state, example_batch, rng):
        return reservoir_init(
            self.capacity, {"x": example_batch["x"][0], "y": example_batch["y"][0]}
        )

    def loss(self, params, state, batch, rng, model):
        outputs, model_state, ce = forward_cross_entropy(
            model, params, state, batch["x"], batch["y"], rng
        )
        memory, valid = reservoir_sample(state.algo, self.replay_batch, jax.random.fold_in(rng, 2))

        def memory_loss(p):
            out, new_state = model.apply(
                p, model_state, memory["x"], train=True, rng=jax.random.fold_in(rng, 1)
            )
            return cross_entropy(out["logits"], memory["y"], valid), new_state

        (memory_ce, memory_state), reference = jax.value_and_grad(memory_loss, has_aux=True)(
            jax.lax.stop_gradient(params)
        )
        model_state = jax.tree.map(
            lambda new, old: jnp.where(valid.any(), new, old), memory_state, model_state
        )
        aux = {
            "model_state": model_state,
            "metrics": {"ce": ce, "memory_ce": memory_ce},
            "outputs": outputs,
            "tx_args": {"reference": reference},
        }
        return ce, aux

    def optimizer(self, tx):
        return optax.chain(self.gradient_transform(), tx)

    def gradient_transform(self):
        return agem_projection()

    def update(self, algo, state, batch, aux, rng):
        return algo

    def end_task(self, state, task_data, rng, model):
        sample_key, insert_key = jax.random.split(rng)
        count = self.capacity // self.num_tasks
        examples, valid = task_sample(task_data, count, sample_key)
        buffer = state.algo
        # Algorithm R over the real examples (first in the sample); padding rows are dropped.
        slot = jnp.where(
            valid, reservoir_slots(buffer.num_seen, count, self.capacity, insert_key), self.capacity
        )
        items = jax.tree.map(
            lambda b, new: b.at[slot].set(new, mode="drop"), buffer.items, examples
        )
        return ReservoirState(items, buffer.num_seen + valid.sum(dtype=jnp.int32))
