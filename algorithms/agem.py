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

The memory is filled in one of two ways (`memory`, static):

  * "task_end" (A-GEM, the default), as in mammoth's agem.py at the DER paper's release: when a
    task ends, `capacity // num_tasks` of its training examples, drawn uniformly without
    replacement, are offered to a reservoir of `capacity` slots (which, never overflowing,
    keeps them all); nothing is stored during a task. (Later mammoth versions store one
    training batch per task.) The memory batch is drawn in `loss`.
  * "reservoir" (A-GEM-R, the DER paper's general-CL baseline on MNIST-360), as mammoth's
    agem_r.py: after every optimiser step the step's batch is offered to a reservoir of
    `capacity` slots (Algorithm R, `reservoir.replay_add`), and nothing happens when a task
    ends, so it runs without task boundaries. The reference takes g_ref from a sample of the
    buffer before the step's batch is inserted; here that sample is drawn right after the
    previous step's insertion (`reservoir.ReplayState`, as ER), the same buffer state, which
    lets XLA update the buffer in place.

Either way the memory forward runs second, in train mode, from the model state the current
batch's forward left, as in mammoth.

    algorithm = AGEM(capacity=500, replay_batch=128, num_tasks=5)
    algorithm = AGEM(capacity=500, replay_batch=128, memory="reservoir")   # A-GEM-R

One departure, for fixed shapes: while fewer than `replay_batch` examples are stored, the
memory forward still runs over `replay_batch` rows, the empty ones weighted out of the loss
(exact without BatchNorm, whose statistics would see them). A-GEM-R's further departures from
agem_r.py: the reference's `get_data` applies no transform to buffered images and stores
`not_aug_inputs`; sequax stores the batch as the step receives it (raw: `config.data.augment`
runs inside the model's train-mode forward) and that forward augments the memory batch too
(the same as the reference when there is no augmentation, as on MNIST-360). The reference
skips the memory forward while the buffer is empty (`is_empty()`); here the first step's
reference gradient is exactly zero, which leaves g unchanged (`projection.agem_project`).

References:
  Chaudhry, Ranzato, Rohrbach, Elhoseiny, "Efficient Lifelong Learning with A-GEM",
  ICLR 2019; Buzzega et al., NeurIPS 2020 (aimagelab/mammoth `models/agem.py`, followed here
  for "task_end", and `models/agem_r.py`, A-GEM-R of the DER paper's MNIST-360 table, for
  "reservoir").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from sequax.algorithms.losses import cross_entropy, forward_cross_entropy
from sequax.algorithms.projection import agem_projection
from sequax.algorithms.reservoir import (
    ReplayState,
    ReservoirState,
    replay_add,
    replay_init,
    reservoir_init,
    reservoir_sample,
    reservoir_slots,
)
from sequax.core.protocol import Algorithm
from sequax.core.task_data import gather_batch

MEMORIES = ("task_end", "reservoir")


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
      num_tasks: tasks in the stream; with memory="task_end" each stores
        `capacity // num_tasks` examples when it ends (at most `capacity`). Unused by
        "reservoir".
      memory: how the episodic memory is filled: "task_end" (A-GEM as in mammoth's agem.py,
        the default: a share of each task's examples when it ends; needs task boundaries) or
        "reservoir" (A-GEM-R, mammoth's agem_r.py: every step's batch is offered to a
        reservoir; needs no boundaries, so it runs on task-free streams such as MNIST-360).
    """

    capacity: int = 500
    replay_batch: int = 128
    num_tasks: int = 5
    memory: str = "task_end"

    @property
    def needs_boundaries(self) -> str:
        """Only the task-end memory is filled at the boundaries; A-GEM-R's reservoir is filled
        at every step, so it declares none (and the other mode names the fix)."""
        if self.memory == "reservoir":
            return ""
        return ("its memory is filled when a task ends; for A-GEM-R, whose reservoir is filled "
                "every step, set config.algorithm.memory='reservoir'")  # fmt: skip

    def __post_init__(self):
        if self.memory not in MEMORIES:
            raise ValueError(
                f"AGEM memory={self.memory!r} is unknown; known: "
                f"{', '.join(map(repr, MEMORIES))} (config.algorithm.memory)"
            )
        if not 0 < self.replay_batch <= self.capacity:
            raise ValueError(
                f"AGEM replay_batch={self.replay_batch} must be in [1, capacity={self.capacity}]"
            )
        # Only the task-end memory divides the capacity among the tasks.
        if self.memory == "task_end" and not 0 < self.num_tasks <= self.capacity:
            raise ValueError(
                f"AGEM num_tasks={self.num_tasks} must be in [1, capacity={self.capacity}]"
            )

    def init(self, params, model_state, example_batch, rng):
        example = {"x": example_batch["x"][0], "y": example_batch["y"][0]}
        if self.memory == "reservoir":
            return replay_init(self.capacity, self.replay_batch, example)
        return reservoir_init(self.capacity, example)

    def memory_batch(self, algo: ReservoirState | ReplayState, rng: jax.Array):
        """The memory examples of this step's reference gradient and their validity."""
        if self.memory == "reservoir":  # drawn after the previous step's insertion
            return algo.replay, algo.valid
        return reservoir_sample(algo, self.replay_batch, jax.random.fold_in(rng, 2))

    def loss(self, params, state, batch, rng, model):
        outputs, model_state, ce = forward_cross_entropy(
            model, params, state, batch["x"], batch["y"], rng
        )
        memory, valid = self.memory_batch(state.algo, rng)

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
        if self.memory == "reservoir":  # agem_r.py: `buffer.add_data` after `opt.step()`
            return replay_add(algo, {"x": batch["x"], "y": batch["y"]}, rng)
        return algo

    def end_task(self, state, task_data, rng, model):
        if self.memory == "reservoir":
            return state.algo
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


@dataclasses.dataclass(frozen=True)
class AGEMR(AGEM):
    """A-GEM-R, the name the DER paper's general-CL table uses: `AGEM(memory="reservoir")`,
    its episodic memory a reservoir filled at every step (mammoth `models/agem_r.py`)."""

    memory: str = "reservoir"
