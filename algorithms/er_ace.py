"""ER-ACE: experience replay with the asymmetric cross-entropy.

The incoming batch's cross-entropy leaves out the logits of past classes that are absent
from the batch, so learning new classes does not push the old classes' logits down (the
abrupt change of the old classes' representation the paper measures at task boundaries);
the replayed batch's cross-entropy is over every logit, so old and new classes are
separated only by replay. Each step, as mammoth's `er_ace.py`:

    present = classes in the batch;  seen |= present            (seen: bool [C], in the state)
    allowed = present ∪ {c >= max(seen)} if max(seen) < C - 1 else present
    loss = CE(mask(f(x), allowed), y) + CE(f(x_r), y_r)        after the first task
    loss = CE(f(x), y)                                         during the first task

`{c >= max(seen)}` keeps the not-yet-seen classes (and the largest seen one) in the
softmax, exactly as the reference's `mask[:, seen_so_far.max():] = 1`; masked logits are
set to the most negative float (`masked_fill(..., finfo.min)`). (x_r, y_r) are
`replay_batch` examples drawn uniformly without replacement from a reservoir buffer, with
their own forward pass; during the first task there is no replay and no mask. After the
step the batch is offered to the reservoir (`reservoir.ReplayState`, as ER). "First task"
is `state.task == 0` (the reference counts `end_task` calls; the loop sets both alike).

    algorithm = ERACE(capacity=500, replay_batch=10)
    algorithm = ERACE(capacity=500, replay_batch=10, buffer_policy="class_balanced")

`buffer_policy="class_balanced"` fills the buffer by class-balancing reservoir sampling
(`reservoir.ClassBalancedState`, counting `num_classes` classes) instead of mammoth's reservoir;
the replay batch is drawn from it uniformly, as from the reservoir.

References:
  Caccia, Aljundi, Asadi, Tuytelaars, Pineau, Belilovsky, "New Insights on Reducing Abrupt
  Representation Change in Online Continual Learning", ICLR 2022.
  aimagelab/mammoth `models/er_ace.py` (the loss followed here).
  Chrysakis, Moens, "Online Continual Learning from Imbalanced Data", ICML 2020 (CBRS, the
  "class_balanced" buffer policy).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sequax.algorithms.der import replay_forward
from sequax.algorithms.losses import cross_entropy
from sequax.algorithms.lwf import labels_mask
from sequax.algorithms.reservoir import ReplayState, check_buffer_policy, replay_add, replay_init
from sequax.core.heads import mask_logits
from sequax.core.protocol import Algorithm


class ERACEState(NamedTuple):
    replay: ReplayState  # the reservoir and the next step's replay batch
    seen: jax.Array  # bool [C]: classes of every batch trained on so far


def incoming_classes(present: jax.Array, seen: jax.Array) -> jax.Array:
    """bool [C]: the logits the incoming batch's cross-entropy keeps (mammoth's mask)."""
    classes = jnp.arange(seen.shape[0])
    largest = jnp.max(jnp.where(seen, classes, -1))
    unseen = (classes >= largest) & (largest < seen.shape[0] - 1)
    return present | unseen


@dataclasses.dataclass(frozen=True)
class ERACE(Algorithm):
    """Experience replay with asymmetric cross-entropy.

    Attributes:
      capacity: buffer size in examples (the "buffer 200/500/5120" of the DER table).
      replay_batch: examples replayed per step (mammoth's `minibatch_size`); at most `capacity`.
      num_classes: width of the model's logits (the `seen` mask is allocated in `init`);
        checked when tracing. Also the classes a class-balanced buffer counts.
      buffer_policy: how the buffer is filled: "reservoir" (Algorithm R, mammoth's, the
        default) or "class_balanced" (class-balancing reservoir sampling, Chrysakis & Moens,
        ICML 2020: for imbalanced streams, where a reservoir mirrors the stream's class
        frequencies and replays the rare classes seldom).
    """

    capacity: int = 500
    replay_batch: int = 10
    num_classes: int = 10
    buffer_policy: str = "reservoir"

    def __post_init__(self):
        if not 0 < self.replay_batch <= self.capacity:
            raise ValueError(
                f"ERACE replay_batch={self.replay_batch} must be in [1, capacity={self.capacity}]"
            )
        if self.num_classes < 1:
            raise ValueError(f"ERACE num_classes={self.num_classes} must be at least 1")
        check_buffer_policy("ERACE", self.buffer_policy, self.num_classes)

    def init(self, params, model_state, example_batch, rng):
        example = {"x": example_batch["x"][0], "y": example_batch["y"][0]}
        policy = {"policy": self.buffer_policy, "num_classes": self.num_classes}
        replay = replay_init(self.capacity, self.replay_batch, example, **policy)
        return ERACEState(replay, jnp.zeros((self.num_classes,), bool))

    def loss(self, params, state, batch, rng, model):
        x, y = batch["x"], batch["y"]
        outputs, model_state = model.apply(params, state.model_state, x, train=True, rng=rng)
        logits = outputs["logits"]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"ERACE num_classes={self.num_classes} but the model has {logits.shape[-1]} "
                f"logits; set config.algorithm.num_classes={logits.shape[-1]}"
            )
        present = labels_mask(y, self.num_classes)
        first_task = state.task == 0
        allowed = incoming_classes(present, state.algo.seen | present) | first_task
        ce = cross_entropy(mask_logits(logits, allowed), y)

        # Replay from the second task on; drawn after the previous step's insertion.
        replay, valid = state.algo.replay.replay, state.algo.replay.valid & ~first_task
        replay_logits, model_state = replay_forward(
            model, params, model_state, replay["x"], jax.random.fold_in(rng, 1), valid
        )
        replay_ce = cross_entropy(replay_logits, replay["y"], valid)
        aux = {
            "model_state": model_state,
            "metrics": {"ce": ce, "replay_ce": replay_ce},
            "outputs": outputs,
        }
        return ce + replay_ce, aux

    def update(self, algo, state, batch, aux, rng):
        replay = replay_add(algo.replay, {"x": batch["x"], "y": batch["y"]}, rng)
        return ERACEState(replay, algo.seen | labels_mask(batch["y"], self.num_classes))

    def end_task(self, state, task_data, rng, model):
        return state.algo
