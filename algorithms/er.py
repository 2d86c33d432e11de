"""Experience Replay (ER) with a reservoir buffer.

Each step trains on the current batch concatenated with `replay_batch` examples drawn
uniformly without replacement from the buffer (one forward pass, one mean cross-entropy
over both, as in the reference code), then offers the current batch to the reservoir.
Sampling and insertion run inside the compiled step; the replay batch is drawn right after
the previous insertion (`reservoir.ReplayState`), which is the same buffer state the
reference code samples from at the start of the step.

    algorithm = ER(capacity=500, replay_batch=10)

References:
  Riemer et al., "Learning to Learn without Forgetting by Maximizing Transfer and
  Minimizing Interference", ICLR 2019 (ER with reservoir sampling);
  Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019;
  Buzzega et al., NeurIPS 2020 (the mammoth `er.py` whose loss this follows).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sequax.algorithms.losses import forward_cross_entropy
from sequax.algorithms.reservoir import replay_add, replay_init
from sequax.core.protocol import Algorithm


@dataclasses.dataclass(frozen=True)
class ER(Algorithm):
    """Experience replay.

    Attributes:
      capacity: buffer size in examples (the "buffer 200/500/5120" of the DER table).
      replay_batch: examples replayed per step ("minibatch size" mb in mammoth); at most
        `capacity`.
    """

    capacity: int = 500
    replay_batch: int = 10

    def __post_init__(self):
        if not 0 < self.replay_batch <= self.capacity:
            raise ValueError(
                f"ER replay_batch={self.replay_batch} must be in [1, capacity={self.capacity}]"
            )

    def init(self, params, model_state, example_batch, rng):
        example = jax.tree.map(lambda a: a[0], example_batch)
        return replay_init(self.capacity, self.replay_batch, example)

    def loss(self, params, state, batch, rng, model):
        replay = state.algo.replay  # drawn after the previous step's insertion (see reservoir)
        x = jnp.concatenate([batch["x"], replay["x"]])
        y = jnp.concatenate([batch["y"], replay["y"]])
        weights = jnp.concatenate([jnp.ones_like(batch["y"], bool), state.algo.valid])
        _, model_state, loss = forward_cross_entropy(model, params, state, x, y, rng, weights)
        return loss, {"model_state": model_state, "metrics": {"ce": loss}}

    def update(self, algo, state, batch, aux, rng):
        return replay_add(algo, batch, rng)

    def end_task(self, state, task_data, rng, model):
        return state.algo
