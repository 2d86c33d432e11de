"""Dark Experience Replay (DER) and DER++: replay that matches the logits stored with each example.

The reservoir keeps, with every example it holds, the logits the network produced for it on
the step it was trained on. Replay then pulls the network back towards those stored logits
(knowledge distillation from its own past, the "dark knowledge" along the whole trajectory);
DER++ also trains on the stored labels of a second replay sample. Each step, as mammoth's
`der.py` and `derpp.py`:

    loss = CE(f(x), y) + alpha * MSE(f(x1), z1)                  # DER
    loss = CE(f(x), y) + alpha * MSE(f(x1), z1) + beta * CE(f(x2), y2)   # DER++

(x, y) is the current batch; (x1, z1) and, for DER++, (x2, y2) are independent draws of
`replay_batch` buffered examples, each without replacement. Every batch has its own forward
pass, in that order, with the model state (BatchNorm statistics) threaded through them. The
MSE is torch's `F.mse_loss` (a mean over rows and logits) over the rows that hold examples;
while the buffer is empty the replay terms are 0 and leave the model state unchanged, as the
reference skips them. After the optimiser step the current batch is offered to the reservoir
with the logits of this step's forward pass (before the update); the replay batches are drawn
right after that insertion (`reservoir.ReplayState`), from the buffer state the reference
code samples from at the start of the next step.

    algorithm = DER(capacity=500, replay_batch=10, alpha=1.0)
    algorithm = DERPP(capacity=500, replay_batch=10, alpha=1.0, beta=0.5)

One departure: while the buffer holds fewer than `replay_batch` examples, the replay forward
still runs over `replay_batch` rows (shapes are fixed), the empty ones zero images weighted
out of the loss. Without BatchNorm this is exact; with it, those rows would enter the batch
statistics, which the reference (returning fewer rows) does not. It lasts only the first
few steps of a run (until `replay_batch` examples have been offered).

`buffer_policy="class_balanced"` fills the buffer by class-balancing reservoir sampling instead
of mammoth's reservoir (each stored example keeps its logits either way).

References:
  Buzzega et al., "Dark Experience for General Continual Learning: a Strong, Simple
  Baseline", NeurIPS 2020 (the mammoth `models/der.py`, `models/derpp.py` this follows).
  Chrysakis, Moens, "Online Continual Learning from Imbalanced Data", ICML 2020 (CBRS, the
  "class_balanced" buffer policy; `reservoir.ClassBalancedState`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from sequax.algorithms.losses import cross_entropy
from sequax.algorithms.reservoir import check_buffer_policy, replay_add, replay_init
from sequax.core.protocol import Algorithm, is_number


def mean_squared_error(outputs: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """torch's `F.mse_loss` over the rows whose weight is 1 (mean over rows and entries).

    Zero-weight rows change neither the value nor the gradient; with none left it is 0.
    """
    per_row = jnp.mean(jnp.square(outputs - targets), axis=-1)
    weights = weights.astype(per_row.dtype)
    return (per_row * weights).sum() / jnp.maximum(weights.sum(), 1e-12)


def replay_forward(model, params, model_state, x, rng, valid):
    """A train-mode forward pass over a replay batch: (logits, model_state).

    While no row is valid (empty buffer) the model state is returned unchanged: the reference
    runs no replay forward then, so BatchNorm statistics must not see the empty slots.
    """
    outputs, new_state = model.apply(params, model_state, x, train=True, rng=rng)
    replayed = valid.any()
    new_state = jax.tree.map(lambda new, old: jnp.where(replayed, new, old), new_state, model_state)
    return outputs["logits"], new_state


def _draw(replay_state, index: int):
    """The `index`-th pre-drawn replay batch and its validity mask."""
    return jax.tree.map(lambda a: a[index], replay_state.replay), replay_state.valid[index]


@dataclasses.dataclass(frozen=True)
class DER(Algorithm):
    """Dark Experience Replay.

    Attributes:
      capacity: buffer size in examples (the "buffer 200/500/5120" of the DER table).
      replay_batch: examples per replay draw ("minibatch size" mb in mammoth); at most
        `capacity`.
      alpha: weight α of the logit-matching MSE (≥ 0). May be a traced scalar (a vmapped
        sweep): it is only multiplied, never branched on.
      num_classes: width of the model's logits, the shape of the logits stored per example
        (the buffer is allocated in `init`, before any forward pass); checked when tracing.
        Also the classes a class-balanced buffer counts.
      buffer_policy: how the buffer is filled: "reservoir" (Algorithm R, mammoth's, the
        default) or "class_balanced" (class-balancing reservoir sampling, Chrysakis & Moens,
        ICML 2020: for imbalanced streams; `reservoir.ClassBalancedState`).

    Defaults: buffer 500 on Seq-MNIST in mammoth's best-args (DER α 1.0, though with replay
    batch 128; DER++ α 1.0, β 0.5, replay batch 10).
    """

    capacity: int = 500
    replay_batch: int = 10
    alpha: float = 1.0
    num_classes: int = 10
    buffer_policy: str = "reservoir"

    draws: ClassVar[int] = 1  # independent replay batches per step (not a hyper-parameter)

    def __post_init__(self):
        name = type(self).__name__
        if not 0 < self.replay_batch <= self.capacity:
            raise ValueError(
                f"{name} replay_batch={self.replay_batch} must be in [1, capacity={self.capacity}]"
            )
        if self.num_classes < 1:
            raise ValueError(f"{name} num_classes={self.num_classes} must be at least 1")
        if is_number(self.alpha) and self.alpha < 0:
            raise ValueError(f"{name} alpha={self.alpha} must be >= 0")
        check_buffer_policy(name, self.buffer_policy, self.num_classes)

    def init(self, params, model_state, example_batch, rng):
        example = {
            "x": example_batch["x"][0],
            "y": example_batch["y"][0],
            "logits": jnp.zeros((self.num_classes,), jnp.float32),
        }
        return replay_init(
            self.capacity,
            self.replay_batch,
            example,
            draws=self.draws,
            policy=self.buffer_policy,
            num_classes=self.num_classes,
        )

    def loss(self, params, state, batch, rng, model):
        x, y = batch["x"], batch["y"]
        outputs, model_state = model.apply(params, state.model_state, x, train=True, rng=rng)
        logits = outputs["logits"]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} num_classes={self.num_classes} but the model has "
                f"{logits.shape[-1]} logits; set config.algorithm.num_classes={logits.shape[-1]}"
            )
        ce = cross_entropy(logits, y)

        # Drawn after the previous step's insertion (see reservoir); its own dropout key.
        replay, valid = _draw(state.algo, 0)
        replay_logits, model_state = replay_forward(
            model, params, model_state, replay["x"], jax.random.fold_in(rng, 1), valid
        )
        distill = mean_squared_error(replay_logits, replay["logits"], valid)

        aux = {
            "model_state": model_state,
            "metrics": {"ce": ce, "distill": distill},
            "logits": jax.lax.stop_gradient(logits),  # stored with the batch in `update`
        }
        return ce + self.alpha * distill, aux

    def update(self, algo, state, batch, aux, rng):
        return replay_add(algo, {"x": batch["x"], "y": batch["y"], "logits": aux["logits"]}, rng)

    def end_task(self, state, task_data, rng, model):
        return state.algo


@dataclasses.dataclass(frozen=True)
class DERPP(DER):
    """DER++: DER plus cross-entropy on the labels of a second, independent replay draw.

    Attributes (besides DER's):
      beta: weight β of the replay cross-entropy (≥ 0); may be a traced scalar, like alpha.
    """

    beta: float = 0.5

    draws: ClassVar[int] = 2

    def __post_init__(self):
        super().__post_init__()
        if is_number(self.beta) and self.beta < 0:
            raise ValueError(f"DERPP beta={self.beta} must be >= 0")

    def loss(self, params, state, batch, rng, model):
        loss, aux = super().loss(params, state, batch, rng, model)
        replay, valid = _draw(state.algo, 1)
        replay_logits, model_state = replay_forward(
            model, params, aux["model_state"], replay["x"], jax.random.fold_in(rng, 2), valid
        )
        replay_ce = cross_entropy(replay_logits, replay["y"], valid)
        metrics = {**aux["metrics"], "replay_ce": replay_ce}
        aux = {**aux, "model_state": model_state, "metrics": metrics}
        return loss + self.beta * replay_ce, aux
