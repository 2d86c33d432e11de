"""ER-AML: experience replay with an asymmetric metric-learning loss on the incoming batch.

The incoming batch is not trained with cross-entropy once a task has ended: each incoming
example (the anchor) is pulled towards a positive of its class and pushed from a negative
of another class *of the current task*, on L2-normalised penultimate features, with a
supervised-contrastive loss. Old classes are never negatives of incoming examples, so new
classes do not push the old classes' representation away (the abrupt change at task
boundaries the paper measures); the replayed batch keeps plain cross-entropy over every
logit. Each step, as the reference's `ER_AML.process_inc` and `ER.observe`:

    during the first task:  loss = CE(f(x), y)
    afterwards:             loss = SupCon(h(x), h(pos), h(neg)) + CE(f(x_r), y_r)

    h = the "features" output divided by (its L2 norm + 1e-5)        (the reference's `normalize`)
    pool = the filled buffer slots and the incoming batch              (`sample_pos_neg`)
    pos_i ~ uniform over pool rows with label y_i, other than x_i itself
    neg_i ~ uniform over pool rows with a label != y_i and the current task
            (task_free: rows whose label is one of the incoming batch's labels)

    SupCon: anchors h(x_i) (valid ones), contrasts [h(pos); h(neg)] (valid anchors' only),
      l_ik = <h(x_i), c_k> / temperature;  P(i) = {k : label(c_k) = y_i}  (pos_i and any other
      contrast of the same class, e.g. another anchor's negative)
      loss = -(temperature / base_temperature)
             * mean_i [ mean_{k in P(i)} (l_ik - logsumexp_k l_ik) ]

An anchor without a positive (its class has no other example in the pool) or without a
negative (the pool holds no other class of its task) is invalid: the reference drops it
from the loss and, if every anchor is invalid, the incoming loss is 0 for that step. The
reference computes the loss over each anchor twice (`anchor.repeat(2)`): the two copies are
equal, so the mean over one copy is the same value and gradient. (x_r, y_r) are
`replay_batch` examples drawn uniformly without replacement from the whole buffer (the
reference sets `exclude_task=None`), with their own forward pass. After the step the batch
is offered to the reservoir with its task id (`reservoir.ReplayState`, as ER); the buffer
stores {"x", "y", "task"}.

Sampling with fixed shapes (jittable): the pool is indexed by [0, capacity) for buffer slots
(valid below the filled count) and capacity + i for the i-th incoming example, so masks
`positive`/`negative` of shape [B, capacity + B] replace the reference's concatenated
variable-size buffer. Each anchor draws one index by arg-max of uniform scores over its
allowed slots (uniform among them, as `torch.multinomial` over a 0/1 mask). Where an anchor
has no candidate, the reference sets its whole column to 1 (any pool row) "so the fetching
operation won't fail": here it draws from the valid pool rows alike, the drawn rows go
through the forward pass (so BatchNorm statistics see them, as in the reference) and the
anchor and its contrasts are weighted out of the loss. Positives and negatives are gathered
from the buffer and the batch separately (no concatenated copy of the buffer). During the
first task the metric loss and the replay term are computed on these fixed shapes but
selected away with `jnp.where`, and neither their forward pass changes the model state.

    algorithm = ERAML(capacity=500, replay_batch=10, temperature=0.2)
    algorithm = ERAML(capacity=500, buffer_policy="class_balanced", buffer_classes=10)

Departures: the reference applies its training augmentation (`train_tf`) to the incoming,
positive/negative and replayed images; this method applies none of its own (the batch
arrives as the data pipeline gives it, buffered images are used as stored). Unlike ER's
replay batch, the positives and negatives are gathered from the buffer inside `loss` (they
depend on the incoming labels), 2B rows per step; see `reservoir` on the cost of gathers.
The reference's `use_minimal_selection` variant (positives and negatives from the incoming
batch only) and its triplet variant `ER_AML_Triplet` are not implemented (both off by
default). `buffer_policy="class_balanced"` fills the buffer by class-balancing reservoir
sampling (`reservoir.ClassBalancedState`) instead of the reference's reservoir; positives,
negatives and the replay batch are drawn from it as from the reservoir.

References:
  Caccia, Aljundi, Asadi, Tuytelaars, Pineau, Belilovsky, "New Insights on Reducing Abrupt
  Representation Change in Online Continual Learning", ICLR 2022.
  pclucas14/AML `methods/er_aml.py` (`ER_AML.sup_con_loss`, `process_inc`), `buffer.py`
  (`Buffer.sample_pos_neg`), `methods/er.py` (`ER.observe`), `model.py` (`normalize`),
  `main.py` (defaults: `supcon_temperature` 0.2, `buffer_batch_size` 10, `task_free` 0).
  Chrysakis, Moens, "Online Continual Learning from Imbalanced Data", ICML 2020 (CBRS, the
  "class_balanced" buffer policy).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sequax.algorithms.der import replay_forward
from sequax.algorithms.losses import cross_entropy
from sequax.algorithms.reservoir import (
    Buffer,
    ReplayState,
    check_buffer_classes,
    check_buffer_policy,
    replay_add,
    replay_init,
)
from sequax.core.protocol import Algorithm, is_number


def normalize(features: jax.Array, eps: float = 1e-5) -> jax.Array:
    """The reference's `normalize`: each row divided by (its L2 norm + eps).

    The norm is written so an all-zero row (dead ReLUs) has a zero gradient, not NaN.
    """
    squared = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
    positive = squared > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
    return features / (norm + eps)


def supcon_loss(
    anchor: jax.Array,
    anchor_y: jax.Array,
    anchor_valid: jax.Array,
    contrast: jax.Array,
    contrast_y: jax.Array,
    contrast_valid: jax.Array,
    temperature: float,
    base_temperature: float,
) -> jax.Array:
    """`ER_AML.sup_con_loss` over the valid anchors and the valid contrasts.

    Args:
      anchor: [A, D] normalised anchor features; anchor_y int [A]; anchor_valid bool [A].
      contrast: [K, D] normalised contrast features; contrast_y int [K]; contrast_valid bool [K].
      temperature, base_temperature: see `ERAML`.

    Returns the mean over valid anchors of -(T / T_base) * (mean log-probability of the
    valid contrasts with the anchor's label); 0 (with a zero gradient) when no anchor is
    valid. A valid anchor must have a valid contrast of its label (its positive).
    """
    logits = anchor @ contrast.T / temperature  # [A, K]
    # The reference subtracts the (detached) row maximum over the contrasts it kept.
    masked = jnp.where(contrast_valid[None, :], logits, -jnp.inf)
    row_max = jnp.max(masked, axis=1, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    logits = logits - row_max
    exp_logits = jnp.where(contrast_valid[None, :], jnp.exp(logits), 0.0)
    denominator = exp_logits.sum(axis=1, keepdims=True)
    log_prob = logits - jnp.log(jnp.where(denominator > 0, denominator, 1.0))
    positive = (anchor_y[:, None] == contrast_y[None, :]) & contrast_valid[None, :]
    count = positive.sum(axis=1)
    mean_log_prob_pos = jnp.where(positive, log_prob, 0.0).sum(axis=1) / jnp.maximum(count, 1)
    per_anchor = -(temperature / base_temperature) * mean_log_prob_pos
    weights = anchor_valid.astype(per_anchor.dtype)
    return (per_anchor * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def pair_candidates(
    pool_y: jax.Array,
    pool_valid: jax.Array,
    pool_same_task: jax.Array,
    y: jax.Array,
    capacity: int,
) -> tuple[jax.Array, jax.Array]:
    """`Buffer.sample_pos_neg`'s masks (with `same_task_neg=True`), anchor-major.

    Args:
      pool_y: int [P] labels of the pool (P = capacity + B: buffer slots, then the batch).
      pool_valid: bool [P]: filled buffer slots and every incoming row.
      pool_same_task: bool [P]: rows of the current task (task-free: rows whose label is in
        the incoming batch).
      y: int [B] the incoming labels; row i of the pool is capacity + i.

    Returns (positive, negative), bool [B, P]: the rows each anchor may draw.
    """
    rows = jnp.arange(pool_y.shape[0])
    same_label = pool_y[None, :] == y[:, None]
    itself = rows[None, :] == capacity + jnp.arange(y.shape[0])[:, None]
    positive = pool_valid[None, :] & same_label & ~itself
    negative = pool_valid[None, :] & ~same_label & pool_same_task[None, :]
    return positive, negative


def draw_uniform(candidates: jax.Array, fallback: jax.Array, key: jax.Array) -> jax.Array:
    """int32 [B]: for each row of `candidates` (bool [B, P]) a uniform column among its True
    entries, or among `fallback`'s (bool [P], not empty) where it has none (the reference's
    `valid_pos[:, invalid_idx] = 1` before `torch.multinomial`)."""
    has = candidates.any(axis=1, keepdims=True)
    allowed = jnp.where(has, candidates, fallback[None, :])
    scores = jnp.where(allowed, jax.random.uniform(key, allowed.shape), -1.0)
    return jnp.argmax(scores, axis=1).astype(jnp.int32)


def sample_pos_neg(buffer: Buffer, y: jax.Array, task: jax.Array, task_free: bool, key: jax.Array):
    """One positive and one negative pool index per incoming example, and which anchors are
    valid (have both): (positive int32 [B], negative int32 [B], valid bool [B])."""
    capacity = buffer.items["y"].shape[0]
    filled = jnp.minimum(buffer.num_seen, capacity)
    pool_y = jnp.concatenate([buffer.items["y"], y])
    pool_task = jnp.concatenate([buffer.items["task"], jnp.broadcast_to(task, y.shape)])
    pool_valid = jnp.concatenate([jnp.arange(capacity) < filled, jnp.ones(y.shape, bool)])
    if task_free:  # the reference mimics the task with the labels of the incoming batch
        pool_same_task = (pool_y[:, None] == y[None, :]).any(axis=1)
    else:
        pool_same_task = pool_task == task
    positive, negative = pair_candidates(pool_y, pool_valid, pool_same_task, y, capacity)
    valid = positive.any(axis=1) & negative.any(axis=1)
    pos_key, neg_key = jax.random.split(key)
    return (
        draw_uniform(positive, pool_valid, pos_key),
        draw_uniform(negative, pool_valid, neg_key),
        valid,
    )


def gather_pool(stored: jax.Array, incoming: jax.Array, index: jax.Array) -> jax.Array:
    """Rows `index` of the pool [stored; incoming] without concatenating the buffer."""
    capacity, size = stored.shape[0], incoming.shape[0]
    from_buffer = stored[jnp.minimum(index, capacity - 1)]
    from_batch = incoming[jnp.clip(index - capacity, 0, size - 1)]
    in_buffer = (index < capacity).reshape((-1,) + (1,) * (stored.ndim - 1))
    return jnp.where(in_buffer, from_buffer, from_batch)


@dataclasses.dataclass(frozen=True)
class ERAML(Algorithm):
    """Experience replay with the asymmetric metric-learning (supervised-contrastive) loss.

    Attributes:
      capacity: buffer size in examples (the reference's `mem_size` times its number of
        classes).
      replay_batch: examples replayed with cross-entropy per step (the reference's
        `buffer_batch_size`, default 10); at most `capacity`.
      temperature: the SupCon temperature dividing the cosine similarities (the reference's
        `supcon_temperature`, default 0.2); > 0. Lower is sharper.
      base_temperature: the SupCon loss is scaled by temperature / base_temperature (the
        reference's `sup_con_loss` default 0.07, never overridden; with temperature 0.2 the
        incoming loss is weighted by about 2.86 against the replayed cross-entropy); > 0.
      task_free: the reference's `task_free` (default 0). False: the metric loss and replay
        start with the second task (`state.task > 0`) and negatives come from buffered
        examples of the current task. True: both start as soon as the buffer holds an example
        (or with the second task) and negatives are pool rows whose label is one of the
        incoming batch's labels.
      buffer_policy: how the buffer is filled: "reservoir" (Algorithm R, the reference's, the
        default) or "class_balanced" (class-balancing reservoir sampling, Chrysakis & Moens,
        ICML 2020: for imbalanced streams, where a reservoir mirrors the stream's class
        frequencies and holds few positives of the rare classes).
      buffer_classes: the number of classes the class-balanced buffer counts (the model's
        logits; checked when tracing); unused by "reservoir". Not named `num_classes`, which
        `engine.validate` requires to equal the stream's classes on every method that has it.
    """

    capacity: int = 500
    replay_batch: int = 10
    temperature: float = 0.2
    base_temperature: float = 0.07
    task_free: bool = False
    buffer_policy: str = "reservoir"
    buffer_classes: int = 0

    @property
    def needs_boundaries(self) -> str:
        """On a task-free stream (task -1) only `task_free=True` ever starts the metric loss
        and replay, so the other mode declares it needs the boundaries (and the fix)."""
        if self.task_free:
            return ""
        return ("with task_free=False its metric loss and replay start with the second task; "
                "set config.algorithm.task_free=True")  # fmt: skip

    def __post_init__(self):
        if not 0 < self.replay_batch <= self.capacity:
            raise ValueError(
                f"ERAML replay_batch={self.replay_batch} must be in [1, capacity={self.capacity}]"
            )
        for name in ("temperature", "base_temperature"):
            value = getattr(self, name)
            if is_number(value) and value <= 0:
                raise ValueError(f"ERAML {name}={value} must be > 0")
        if not isinstance(self.task_free, bool):
            raise ValueError(f"ERAML task_free={self.task_free!r} must be True or False")
        check_buffer_policy("ERAML", self.buffer_policy, self.buffer_classes, "buffer_classes")

    def init(self, params, model_state, example_batch, rng):
        example = {
            "x": example_batch["x"][0],
            "y": example_batch["y"][0],
            "task": jnp.zeros((), jnp.int32),
        }
        policy = {"policy": self.buffer_policy, "num_classes": self.buffer_classes}
        return replay_init(self.capacity, self.replay_batch, example, **policy)

    def loss(self, params, state, batch, rng, model):
        x, y = batch["x"], batch["y"]
        algo: ReplayState = state.algo
        outputs, model_state = model.apply(params, state.model_state, x, train=True, rng=rng)
        ce = cross_entropy(outputs["logits"], y)
        check_buffer_classes("ERAML", algo.buffer, outputs["logits"].shape[-1], "buffer_classes")
        metric_on = state.task > 0  # the reference: `t > 0 or (task_free and len(buffer) > 0)`
        if self.task_free:
            metric_on = metric_on | (algo.buffer.num_seen > 0)

        # Positives and negatives from the buffer as it stands before this batch is inserted.
        positive, negative, valid = sample_pos_neg(
            algo.buffer, y, state.task, self.task_free, jax.random.fold_in(rng, 3)
        )
        pairs = jnp.concatenate([positive, negative])  # the reference's cat((pos_x, neg_x))
        pairs_x = gather_pool(algo.buffer.items["x"], x, pairs)
        pairs_y = gather_pool(algo.buffer.items["y"], y, pairs)
        pairs_out, pairs_state = model.apply(
            params, model_state, pairs_x, train=True, rng=jax.random.fold_in(rng, 2)
        )
        model_state = jax.tree.map(
            lambda new, old: jnp.where(metric_on, new, old), pairs_state, model_state
        )
        aml = supcon_loss(
            normalize(outputs["features"]),
            y,
            valid,
            normalize(pairs_out["features"]),
            pairs_y,
            jnp.concatenate([valid, valid]),
            self.temperature,
            self.base_temperature,
        )
        incoming = jnp.where(metric_on, aml, ce)

        # Replay from the whole buffer; drawn after the previous step's insertion.
        replay_valid = algo.valid if self.task_free else algo.valid & metric_on
        replay_logits, model_state = replay_forward(
            model, params, model_state, algo.replay["x"], jax.random.fold_in(rng, 1), replay_valid
        )
        replay_ce = cross_entropy(replay_logits, algo.replay["y"], replay_valid)
        aux = {
            "model_state": model_state,
            "metrics": {
                "ce": ce,
                "aml": jnp.where(metric_on, aml, 0.0),
                "aml_anchors": jnp.where(metric_on, valid.mean(), 0.0),
                "replay_ce": replay_ce,
            },
            "outputs": outputs,
            "pairs": {"positive": positive, "negative": negative, "valid": valid},
        }
        return incoming + replay_ce, aux

    def update(self, algo, state, batch, aux, rng):
        task = jnp.broadcast_to(state.task, batch["y"].shape).astype(jnp.int32)
        return replay_add(algo, {"x": batch["x"], "y": batch["y"], "task": task}, rng)

    def end_task(self, state, task_data, rng, model):
        return state.algo
