"""Experience Replay (ER) with a reservoir buffer (or a class-balancing one).

Each step trains on the current batch concatenated with `replay_batch` examples drawn
uniformly without replacement from the buffer (one forward pass, one mean cross-entropy
over both, as in the reference code), then offers the current batch to the reservoir.
Sampling and insertion run inside the compiled step; the replay batch is drawn right after
the previous insertion (`reservoir.ReplayState`), which is the same buffer state the
reference code samples from at the start of the step.

    algorithm = ER(capacity=500, replay_batch=10)
    algorithm = ER(capacity=500, replay_batch=10, buffer_policy="class_balanced", buffer_classes=10)

References:
  Riemer et al., "Learning to Learn without Forgetting by Maximizing Transfer and
  Minimizing Interference", ICLR 2019 (ER with reservoir sampling);
  Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019;
  Buzzega et al., NeurIPS 2020 (the mammoth `er.py` whose loss this follows);
  Chrysakis, Moens, "Online Continual Learning from Imbalanced Data", ICML 2020 (CBRS, the
  "class_balanced" buffer policy; `reservoir.ClassBalancedState`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sequax.algorithms.losses import forward_cross_entropy
from sequax.algorithms.reservoir import (
    check_buffer_classes,
    check_buffer_policy,
    replay_add,
    replay_init,
)
from sequax.core.protocol import Algorithm


@dataclasses.dataclass(frozen=True)
class ER(Algorithm):
    """Experience replay.

    Attributes:
      capacity: buffer size in examples (the "buffer 200/500/5120" of the DER table).
      replay_batch: examples replayed per step ("minibatch size" mb in mammoth); at most
        `capacity`.
      buffer_policy: how the buffer is filled: "reservoir" (Algorithm R, the default) or
        "class_balanced" (class-balancing reservoir sampling, Chrysakis & Moens, ICML 2020:
        for imbalanced streams).
      buffer_classes: the number of classes the class-balanced buffer counts (the model's
        logits; checked when tracing); unused by "reservoir". Not named `num_classes`, which
        `engine.validate` requires to equal the stream's classes on every method that has it.
    """

    capacity: int = 500
    replay_batch: int = 10
    buffer_policy: str = "reservoir"
    buffer_classes: int = 0

    def __post_init__(self):
        if not 0 < self.replay_batch <= self.capacity:
            raise ValueError(
                f"ER replay_batch={self.replay_batch} must be in [1, capacity={self.capacity}]"
            )
        check_buffer_policy("ER", self.buffer_policy, self.buffer_classes, "buffer_classes")

    def init(self, params, model_state, example_batch, rng):
        example = jax.tree.map(lambda a: a[0], example_batch)
        policy = {"policy": self.buffer_policy, "num_classes": self.buffer_classes}
        return replay_init(self.capacity, self.replay_batch, example, **policy)

    def loss(self, params, state, batch, rng, model):
        replay = state.algo.replay  # drawn after the previous step's insertion (see reservoir)
        x = jnp.concatenate([batch["x"], replay["x"]])
        y = jnp.concatenate([batch["y"], replay["y"]])
        weights = jnp.concatenate([jnp.ones_like(batch["y"], bool), state.algo.valid])
        outputs, model_state, loss = forward_cross_entropy(model, params, state, x, y, rng, weights)
        check_buffer_classes("ER", state.algo.buffer, outputs["logits"].shape[-1], "buffer_classes")
        return loss, {"model_state": model_state, "metrics": {"ce": loss}}

    def update(self, algo, state, batch, aux, rng):
        return replay_add(algo, batch, rng)

    def end_task(self, state, task_data, rng, model):
        return state.algo
