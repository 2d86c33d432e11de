"""GSS-greedy: a replay buffer that keeps the examples whose gradients point elsewhere.

Gradient based Sample Selection (the greedy variant) replays like ER but fills its buffer by
gradient diversity instead of reservoir sampling. This transcribes mammoth's `Gss`, the
GSS of the DER paper's tables. Each incoming batch, as mammoth's `observe` and
`Buffer.add_data`:

    train    the batch concatenated with `replay_batch` buffered examples, one mean
             cross-entropy (`batch_num` optimizer steps per batch: `config.training.glances`)
    then, at the parameters after those steps (the score gradients in eval mode):
    M        = `gss_minibatch_size` buffered examples, uniform without replacement
    score(g) = max(0, max_{m in M} cos(g, ∇ CE(m)) + 1)
    c        = score(∇ mean CE(batch)), or 0.1 while the buffer is empty
    for each example i of the batch, in order:
      buffer not full      store i in the next slot with score c
      full and c < 1       c_i = score(∇ CE(i)); draw a slot j with probability s_j / Σ s;
                           replace it by i with score c_i if u < s_j / (s_j + c_i), u ~ U[0, 1)
      full and c >= 1      drop i (the batch resembles the buffer)

The stored scores s are updated as the loop goes, so a batch's later examples see its
earlier replacements; when two examples of a batch replace the same slot the later one stays.
The replay batch is the next chunk of a random permutation of the filled slots, drawn once
per incoming batch (mammoth's `fathom_mask` walk in `get_data`): the `batch_num` steps on one
batch replay disjoint chunks, wrapping around.

    algorithm = GSS(capacity=500, replay_batch=10, gss_minibatch_size=10)

How it maps onto the engine. The scores need gradients at the parameters after the
optimizer step, and `update` gets no model to differentiate, so a batch is offered to the
buffer at the start of the next step's `loss`, where `params` are exactly those parameters
(no gradient flows through the offer: the parameters are held fixed, as the reference's
separate `backward()` calls); the buffer then replays from the result, as the reference's
next `observe` does. The state holds the batch waiting to be offered (`pending`); `end_task`
offers a phase's last batch. mammoth's `--batch_num` (optimizer steps per incoming batch)
is the engine's `config.training.glances`: the batch is offered on glance 0 of the next
batch, and glance g replays the walk's g-th chunk, so any number of glances follows the
reference without a field to keep equal to it.

GSS needs no task boundaries: it never reads the task, and on a task-free stream (the
engine then calls no `start_task` or `end_task`) each phase's last batch is offered at the next
step instead, at the same parameters.

Deviations from the reference (mammoth `models/gss.py`, `utils/gss_buffer.py`):
  * Randomness is drawn from JAX keys, one set per offer: the memory sample M by the top
    `gss_minibatch_size` of uniform draws over the filled slots (`np.random.choice(...,
    replace=False)`), the replay walk's permutation by sorting uniform draws
    (`torch.randperm`), and two uniforms per example, the slot by inverse CDF (what numpy's
    legacy `np.random.choice(p=...)` does with its one uniform) and the acceptance `u`
    (`np.random.rand`). Draws are made for every example; the reference draws for
    candidates only. Same distributions, different streams.
  * Fixed shapes: M and the replay batch are padded to `gss_minibatch_size` and
    `replay_batch` rows with masks while the buffer holds fewer (the reference returns
    fewer rows), and masked rows weigh 0 in the loss and the maxima. Every offer computes the
    per-example gradients of the whole batch, even where the reference needs none (filling,
    or c >= 1); the results are the same. The reference's gradient cache memoises gradients
    at unchanged parameters, so it changes no value and is not kept.
  * Where the reference fails, values are defined: if every stored score is 0
    (`np.random.choice` rejects p = 0/0) nothing is replaced; the examples of a first batch
    larger than the buffer (`get_grad_score` on an empty M) are scored 0, the reference's
    initial `c_score`.
  * The cosine is torch's current `F.cosine_similarity` (each norm clamped to 1e-8; the
    2020 torch clamped their product): they differ only for gradients of norm below 1e-8.
  * Replayed examples are not augmented (mammoth applies the dataset's `transform` in
    `get_data`), and the stored example is the batch's `x` as the step sees it (mammoth
    stores `not_aug_inputs`), as sequax's ER does: the same where there is no augmentation
    (the MNIST streams).
  * Memory: each offer holds batch_size + `gss_minibatch_size` flattened gradients.

References:
  Aljundi, Lin, Goujaud, Bengio, "Gradient based sample selection for online continual
  learning", NeurIPS 2019 (GSS-greedy: Algorithm 2; code rahafaljundi/Gradient-based-Sample-
  Selection, `model/GSS_Greedy.py`, which scores against buffer minibatch gradients and
  min-max normalises: not the variant followed here).
  Buzzega et al., "Dark Experience for General Continual Learning: a Strong, Simple
  Baseline", NeurIPS 2020 (GSS in its tables): aimagelab/mammoth `models/gss.py` (`observe`,
  `get_grads`), `utils/gss_buffer.py` (`add_data`, `functional_reservoir`,
  `get_grad_score`, `get_data`, `reset_fathom`), `utils/best_args.py` (the defaults below).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from sequax.algorithms.losses import cross_entropy, forward_cross_entropy
from sequax.algorithms.reservoir import ReservoirState, capacity_of, reservoir_init
from sequax.core.protocol import Algorithm, is_number

PyTree = Any

EMPTY_BUFFER_SCORE = 0.1  # mammoth's `c = 0.1` for a batch offered to an empty buffer
COSINE_EPS = 1e-8  # torch's `F.cosine_similarity` default


class GSSState(NamedTuple):
    buffer: ReservoirState  # items {"x", "y"} [capacity, ...]; num_seen: examples offered
    scores: jax.Array  # float32 [capacity]: each slot's score (mammoth's `Buffer.scores`)
    order: jax.Array  # int32 [capacity]: this batch's replay walk, filled slots first
    pending: PyTree  # {"x", "y"} [batch, ...]: the last batch trained on, not yet offered
    has_pending: jax.Array  # bool scalar: whether `pending` holds a batch


def gss_keys(rng: jax.Array):
    """(offer key, walk key) of one step's `loss` (its `rng` itself drives dropout)."""
    offer_key, walk_key = jax.random.split(jax.random.fold_in(rng, 1))
    return offer_key, walk_key


def offer_draws(key, num_seen, capacity: int, batch_size: int, sample_size: int):
    """The random draws of one offer: (memory index [sample_size], memory valid
    [sample_size], uniforms [batch_size, 2]). The memory rows are `min(sample_size, filled)`
    distinct filled slots, uniformly (the reference's `get_data(..., random=True)`); each
    example's uniforms are the slot draw and the acceptance draw."""
    sample_key, draw_key = jax.random.split(key)
    filled = jnp.minimum(num_seen, capacity)
    u = jax.random.uniform(sample_key, (capacity,))
    _, index = jax.lax.top_k(jnp.where(jnp.arange(capacity) < filled, u, -1.0), sample_size)
    valid = jnp.arange(sample_size) < filled
    return index, valid, jax.random.uniform(draw_key, (batch_size, 2))


def walk_order(key, filled, capacity: int) -> jax.Array:
    """int32 [capacity]: the filled slots in uniform random order, then the empty ones (the
    reference's `fathom_mask = torch.randperm(filled)`, drawn at the start of `observe`)."""
    u = jnp.where(jnp.arange(capacity) < filled, jax.random.uniform(key, (capacity,)), 2.0)
    return jnp.argsort(u).astype(jnp.int32)


def replay_rows(order, filled, size: int, glance):
    """(slot index [size], valid [size]): the rows the `glance`-th step on a batch replays.

    The reference's `get_data(size)` walks `fathom_mask` in chunks of `size` from 0 and
    starts over once it reaches the filled count, so step g reads chunk g mod ceil(filled /
    size); a last chunk shorter than `size` has its tail marked invalid.
    """
    chunks = jnp.maximum((filled + size - 1) // size, 1)
    position = (glance % chunks) * size + jnp.arange(size)
    valid = position < filled
    return order[jnp.minimum(position, order.shape[0] - 1)], valid


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[n, m]: torch's `F.cosine_similarity` of every row of `a` [n, P] with every row of
    `b` [m, P], each norm clamped to 1e-8 (full float32 precision on every backend)."""
    dots = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    norm_a = jnp.maximum(jnp.linalg.norm(a, axis=1), COSINE_EPS)
    norm_b = jnp.maximum(jnp.linalg.norm(b, axis=1), COSINE_EPS)
    return dots / (norm_a[:, None] * norm_b[None, :])


def gradient_scores(model, params, model_state, x, y, memory_x, memory_y, memory_valid):
    """(batch score, example scores [B]): `max(0, max_m cos(g, G_m) + 1)` over the valid
    memory rows m, for g the gradient of the batch's mean cross-entropy and for g the
    gradient of each example's (the reference's `get_grad_score`, whose `get_grads` runs the
    network in eval mode and flattens every parameter's gradient into one vector).

    No valid memory row gives 0, the reference's initial `c_score`."""
    flat, unravel = ravel_pytree(jax.lax.stop_gradient(params))

    def mean_ce(flat_params, x, y):
        outputs, _ = model.apply(unravel(flat_params), model_state, x, train=False)
        return cross_entropy(outputs["logits"], y)

    def one_ce(flat_params, x, y):  # one example, as the reference's `x.unsqueeze(0)`
        return mean_ce(flat_params, x[None], y[None])

    per_example = jax.vmap(jax.grad(one_ce), in_axes=(None, 0, 0))
    memory = per_example(flat, memory_x, memory_y)

    def score(g):
        similarity = jnp.where(memory_valid[None, :], cosine_similarity(g, memory), -jnp.inf)
        return jnp.maximum(0.0, similarity.max(axis=1) + 1.0)

    batch = score(jax.grad(mean_ce)(flat, x, y)[None])[0]
    return batch, score(per_example(flat, x, y))


def select_slots(scores, num_seen, batch_score, example_scores, uniforms):
    """(slot [B] int32, scores [capacity]): where each example of the batch goes
    (`capacity`: dropped) and the stored scores after the batch: the reference's
    `functional_reservoir` loop, one example after another (`lax.scan`), given each
    example's (slot uniform, acceptance uniform)."""
    capacity = scores.shape[0]

    def one(carry, inputs):
        scores, seen = carry
        single, (u_slot, u_accept) = inputs
        # np.random.choice(p=s / s.sum()) with one uniform: numpy's legacy inverse CDF,
        # cdf = cumsum(p) / cdf[-1], index = searchsorted(cdf, u, side="right").
        cdf = jnp.cumsum(scores)
        candidate = jnp.searchsorted(cdf / cdf[-1], u_slot, side="right")
        candidate = jnp.minimum(candidate, capacity - 1)  # an all-zero cdf gives NaNs
        stored = scores[candidate]
        accept = u_accept < stored / (stored + single)  # NaN (0 / 0) compares False
        filling = seen < capacity
        replace = ~filling & (batch_score < 1) & accept
        slot = jnp.where(filling, seen, jnp.where(replace, candidate, capacity))
        score = jnp.where(filling, batch_score, single)
        return (scores.at[slot].set(score, mode="drop"), seen + 1), slot

    (scores, _), slots = jax.lax.scan(one, (scores, num_seen), (example_scores, uniforms))
    return slots.astype(jnp.int32), scores


def last_writes(slots: jax.Array, capacity: int) -> jax.Array:
    """`slots` with each write that a later example of the batch overwrites dropped: the
    sequential loop's result from one scatter (a scatter's order among duplicates is
    unspecified)."""
    order = jnp.arange(slots.shape[0])
    later = (slots[None, :] == slots[:, None]) & (order[None, :] > order[:, None])
    return jnp.where(later.any(axis=1), capacity, slots)


def offer(buffer: ReservoirState, scores, batch, key, model, params, model_state, sample_size):
    """(buffer, scores) after offering `batch` ({"x", "y"}) as the reference's `add_data`,
    at `params` (held fixed)."""
    capacity = capacity_of(buffer)
    batch = {k: batch[k].astype(buffer.items[k].dtype) for k in buffer.items}  # drops "task"
    batch_size = batch["y"].shape[0]
    index, valid, uniforms = offer_draws(key, buffer.num_seen, capacity, batch_size, sample_size)
    memory = jax.tree.map(lambda b: b[index], buffer.items)
    batch_score, example_scores = gradient_scores(
        model, params, model_state, batch["x"], batch["y"], memory["x"], memory["y"], valid
    )
    batch_score = jnp.where(buffer.num_seen > 0, batch_score, EMPTY_BUFFER_SCORE)
    slots, scores = select_slots(scores, buffer.num_seen, batch_score, example_scores, uniforms)
    slots = last_writes(slots, capacity)
    items = jax.tree.map(lambda b, new: b.at[slots].set(new, mode="drop"), buffer.items, batch)
    return ReservoirState(items, buffer.num_seen + batch_size), scores


@dataclasses.dataclass(frozen=True)
class GSS(Algorithm):
    """GSS-greedy replay (Aljundi et al., NeurIPS 2019), as mammoth runs it.

    GSS needs no task boundaries (it never reads the task; see the module docstring).
    mammoth's `--batch_num` (optimizer steps per incoming batch; default 1, and 1 in every
    `best_args` entry) is `config.training.glances`. mammoth's `utils/best_args.py` for GSS
    (buffer: lr, minibatch_size, gss_minibatch_size; batch_size 128 on MNIST, 32 on CIFAR-10):
    Sequential MNIST 200 and 500: 0.1, 10, 10; 5120: 0.1, 128, 10. Permuted MNIST 200: 0.2,
    10, 128; 500: 0.1, 128, 10; 5120: 0.03, 128, 10. Rotated MNIST 200: 0.2, 10, 128; 500 and
    5120: 0.2, 128, 128. Sequential CIFAR-10 200, 500, 5120: 0.03, 32, 32. It has no GSS
    entry for MNIST-360 (its MNIST-360 entries are SGD, ER, MER, A-GEM-R, DER and DER++).

    Attributes:
      capacity: buffer size in examples (the paper's M; mammoth's `--buffer_size`, no
        default; the DER tables' 200 / 500 / 5120, and 200 / 500 / 1000 on MNIST-360).
      replay_batch: buffered examples concatenated to each step's batch (mammoth's
        `--minibatch_size`, no default; 10 in its Sequential MNIST `best_args`); at most
        `capacity`. The default follows sequax's ER.
      gss_minibatch_size: buffered examples whose per-example gradients each offer compares
        against (the paper's n, Algorithm 2; mammoth's `--gss_minibatch_size`, whose default
        None means `minibatch_size`; 10 in its Sequential MNIST `best_args`); at most
        `capacity`. Each offer computes this many per-example gradients, plus one per
        example of the batch and one for the batch.
    """

    capacity: int = 500
    replay_batch: int = 10
    gss_minibatch_size: int = 10

    def __post_init__(self):
        if is_number(self.capacity) and self.capacity < 1:
            raise ValueError(f"GSS capacity={self.capacity} must be at least 1")
        for name in ("replay_batch", "gss_minibatch_size"):
            value = getattr(self, name)
            if is_number(value) and is_number(self.capacity) and not 0 < value <= self.capacity:
                raise ValueError(f"GSS {name}={value} must be in [1, capacity={self.capacity}]")

    def init(self, params, model_state, example_batch, rng):
        pending = {k: jnp.zeros_like(example_batch[k]) for k in ("x", "y")}
        buffer = reservoir_init(self.capacity, jax.tree.map(lambda a: a[0], pending))
        return GSSState(
            buffer=buffer,
            scores=jnp.zeros((self.capacity,), jnp.float32),
            order=jnp.arange(self.capacity, dtype=jnp.int32),
            pending=pending,
            has_pending=jnp.zeros((), bool),
        )

    def _offer_pending(self, algo: GSSState, key, model, params, model_state, now=True):
        """The buffer and scores once the pending batch (if any, and if `now`) is offered;
        the gradients are only computed when it is."""

        def offered(_):
            buffer, scores, pending = algo.buffer, algo.scores, algo.pending
            size = self.gss_minibatch_size
            return offer(buffer, scores, pending, key, model, params, model_state, size)

        kept = lambda _: (algo.buffer, algo.scores)  # noqa: E731
        return jax.lax.cond(algo.has_pending & now, offered, kept, None)

    def loss(self, params, state, batch, rng, model):
        algo = state.algo
        glance = batch.get("glance", 0)  # the engine's glances: mammoth's batch_num steps
        first = jnp.asarray(glance) == 0
        offer_key, walk_key = gss_keys(rng)
        # The previous batch enters the buffer before this batch's first step, at the
        # parameters its own last step left (held fixed: no gradient flows through it).
        buffer, scores = self._offer_pending(
            algo, offer_key, model, jax.lax.stop_gradient(params), state.model_state, first
        )
        filled = jnp.minimum(buffer.num_seen, self.capacity)
        order = jnp.where(first, walk_order(walk_key, filled, self.capacity), algo.order)
        index, valid = replay_rows(order, filled, self.replay_batch, glance)
        replay = jax.tree.map(lambda b: b[index], buffer.items)

        x = jnp.concatenate([batch["x"], replay["x"].astype(batch["x"].dtype)])
        y = jnp.concatenate([batch["y"], replay["y"].astype(batch["y"].dtype)])
        weights = jnp.concatenate([jnp.ones_like(batch["y"], bool), valid])
        _, model_state, loss = forward_cross_entropy(model, params, state, x, y, rng, weights)
        stored = jnp.arange(self.capacity) < filled
        metrics = {
            "ce": loss,
            "replayed": valid.sum().astype(jnp.float32),
            "buffer_score": jnp.where(stored, scores, 0.0).sum() / jnp.maximum(filled, 1),
        }
        aux = {"model_state": model_state, "metrics": metrics, "gss": (buffer, scores, order)}
        return loss, aux

    def update(self, algo, state, batch, aux, rng):
        buffer, scores, order = aux["gss"]
        pending = {k: batch[k].astype(algo.pending[k].dtype) for k in ("x", "y")}
        return GSSState(buffer, scores, order, pending, jnp.ones((), bool))

    def end_task(self, state, task_data, rng, model):
        # A phase's last batch is offered now, at the parameters the next step would see.
        algo = state.algo
        offer_key, _ = gss_keys(rng)
        buffer, scores = self._offer_pending(
            algo, offer_key, model, state.params, state.model_state
        )
        return algo._replace(buffer=buffer, scores=scores, has_pending=jnp.zeros((), bool))
