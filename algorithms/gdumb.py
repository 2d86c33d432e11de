"""GDumb: a class-balanced greedy memory, and a model trained from scratch on it alone.

Every step offers the batch to the memory, example by example in order (a `lax.scan` over the
batch's labels, then one scatter of the examples): an example is stored in the next free slot
while the memory is not full; once full, it replaces a uniformly drawn example of the largest
class (the lowest class index among ties) if its own class holds fewer examples than that
class, and is dropped otherwise. At each task's end (compiled) a fresh model is initialised
from the task's key (`model.init`) and trained for `epochs` epochs of plain SGD on the memory
alone (a new permutation each epoch, the last batch partial, as mammoth's loop); its parameters
are stored in `state.algo` and `predict` classifies with them. `state.params` is left to the
stream step, which nothing reads here: the engine always applies an update, so `loss` is plain
cross-entropy on the current batch (mammoth's `observe` trains nothing).

    algorithm = GDumb(capacity=500, num_classes=10, epochs=128, fit_lr=0.05, batch_size=16)

Departures from mammoth's `gdumb.py` (read for this port): it fills a reservoir `Buffer` (its
default sampler), where we use the paper's class-balanced sampler; it retrains only after the
last task (earlier accuracy-matrix rows are the untrained network's), where we retrain after
every task, as the paper's evaluation does; its CutMix (alpha 1) and SGDR cosine schedule with
a 1-epoch warm start are left out, as are the GDumb code's momentum 0.9, gradient clipping (10)
and weight decay (1e-6): constant-lr SGD. `fit_lr` is named apart from `lr` so that a vmapped
`config.sweep.lr` (the stream optimizer's, `sequax.engine.runs`) cannot be mistaken for it.

References:
  Prabhu, Torr, Dokania, "GDumb: A Simple Approach that Questions Our Progress in Continual
  Learning", ECCV 2020 (drimpossible/GDumb: maxlr 0.05, batch 16, 128 passes on MNIST).
  aimagelab/mammoth `models/gdumb.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sequax.algorithms.losses import cross_entropy, forward_cross_entropy
from sequax.core.protocol import Algorithm, is_number


class GDumbState(NamedTuple):
    items: dict  # "x" [capacity, ...] float32, "y" int32 [capacity]; slots [0, counts.sum()) filled
    counts: jax.Array  # int32 [num_classes]: examples of each class in memory
    params: Any  # the model trained on the memory at the last end_task (the initial one before)
    model_state: Any


def balanced_slots(stored_y, counts, labels, key):
    """(int32 [B] slot per offered label, `capacity` = dropped; the new counts), offered in
    order."""
    capacity = stored_y.shape[0]

    def offer(carry, inputs):
        stored_y, counts = carry
        y, draw_key = inputs
        filled, largest = counts.sum(), jnp.argmax(counts)
        replace = (filled >= capacity) & (counts[y] < counts[largest])
        victim = jnp.argmax(
            jnp.where(stored_y == largest, jax.random.uniform(draw_key, (capacity,)), -1.0)
        )
        slot = jnp.where(filled < capacity, filled, jnp.where(replace, victim, capacity))
        counts = (
            counts.at[y]
            .add((slot < capacity).astype(counts.dtype))
            .at[largest]
            .add(-replace.astype(counts.dtype))
        )
        return (stored_y.at[slot].set(y, mode="drop"), counts), slot

    keys = jax.random.split(key, labels.shape[0])
    (_, counts), slots = jax.lax.scan(offer, (stored_y, counts), (labels, keys))
    # A slot written again later in the batch keeps the later example, as the sequential loop.
    order = jnp.arange(labels.shape[0])
    overwritten = ((slots[None, :] == slots[:, None]) & (order[None, :] > order[:, None])).any(1)
    return jnp.where(overwritten, capacity, slots), counts


@dataclasses.dataclass(frozen=True)
class GDumb(Algorithm):
    """Greedy sampler and dumb learner.

    Attributes:
      capacity: examples in memory (GDumb's k; 500 to compare with the DER table's buffers).
      num_classes: width of the head (the per-class counts).
      epochs: passes over the memory when retraining at each task's end (GDumb on MNIST: 128;
        mammoth: 256).
      fit_lr: the retraining's SGD learning rate (GDumb's and mammoth's maxlr, 0.05); may be a
        traced scalar (a vmapped sweep).
      batch_size: the retraining's batch size (GDumb: 16; mammoth: the stream's batch).
    """

    needs_boundaries = "the network is retrained on the memory when a task ends"

    capacity: int = 500
    num_classes: int = 10
    epochs: int = 128
    fit_lr: float = 0.05
    batch_size: int = 16

    def __post_init__(self):
        if not 0 < self.batch_size <= self.capacity or self.num_classes < 1 or self.epochs < 0:
            raise ValueError(
                f"GDumb needs 1 <= batch_size={self.batch_size} <= capacity={self.capacity}, "
                f"num_classes={self.num_classes} >= 1 and epochs={self.epochs} >= 0"
            )
        if is_number(self.fit_lr) and not self.fit_lr > 0:
            raise ValueError(f"GDumb fit_lr={self.fit_lr} must be > 0")

    def init(self, params, model_state, example_batch, rng):
        items = {
            k: jnp.zeros((self.capacity, *example_batch[k].shape[1:]), example_batch[k].dtype)
            for k in ("x", "y")
        }
        return GDumbState(
            items,
            jnp.zeros(self.num_classes, jnp.int32),
            jax.tree.map(jnp.copy, params),
            jax.tree.map(jnp.copy, model_state),
        )

    def loss(self, params, state, batch, rng, model):
        _, model_state, loss = forward_cross_entropy(
            model, params, state, batch["x"], batch["y"], rng
        )
        return loss, {
            "model_state": model_state,
            "metrics": {"ce": loss, "memory": state.algo.counts.sum()},
        }

    def update(self, algo, state, batch, aux, rng):
        slots, counts = balanced_slots(algo.items["y"], algo.counts, batch["y"], rng)
        items = {k: a.at[slots].set(batch[k], mode="drop") for k, a in algo.items.items()}
        return algo._replace(items=items, counts=counts)

    def memory_orders(self, key, filled) -> jax.Array:
        """int32 [epochs, capacity rounded up to batches]: each epoch's order, filled slots
        first."""
        padded = -(-self.capacity // self.batch_size) * self.batch_size
        scores = jax.random.uniform(key, (self.epochs, self.capacity))
        scores = jnp.where(jnp.arange(self.capacity) < filled, scores, 2.0)
        return jnp.pad(
            jnp.argsort(scores, axis=1).astype(jnp.int32), ((0, 0), (0, padded - self.capacity))
        )

    def fit(self, params, model_state, items, filled, key, model):
        """`epochs` epochs of SGD on the first `filled` memory slots: (params, model_state)."""
        tx, size = optax.sgd(self.fit_lr), self.batch_size
        order_key, dropout_key = jax.random.split(key)
        orders = self.memory_orders(order_key, filled)

        def epoch(e, carry):
            order = orders[e]

            def step(s, carry):
                params, model_state, opt_state = carry
                index = jax.lax.dynamic_slice(order, (s * size,), (size,))
                rows = s * size + jnp.arange(size) < filled  # the last batch may be partial

                def objective(p):
                    rng = jax.random.fold_in(jax.random.fold_in(dropout_key, e), s)
                    outputs, new_state = model.apply(
                        p, model_state, items["x"][index], train=True, rng=rng
                    )
                    return cross_entropy(outputs["logits"], items["y"][index], rows), new_state

                grads, model_state = jax.grad(objective, has_aux=True)(params)
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), model_state, opt_state

            return jax.lax.fori_loop(0, (filled + size - 1) // size, step, carry)

        params, model_state, _ = jax.lax.fori_loop(
            0, self.epochs, epoch, (params, model_state, tx.init(params))
        )
        return params, model_state

    def end_task(self, state, task_data, rng, model):
        algo = state.algo
        init_key, fit_key = jax.random.split(rng)
        params, model_state = model.init(init_key, algo.items["x"][:1])  # from scratch
        params, model_state = self.fit(
            params, model_state, algo.items, algo.counts.sum(), fit_key, model
        )
        return algo._replace(params=params, model_state=model_state)

    def predict(self, params, model_state, algo, x, task, model):
        return model.apply(algo.params, algo.model_state, x, train=False)[0]["logits"]
