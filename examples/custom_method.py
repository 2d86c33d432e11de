"""A method of your own, in your own file: replay whose memory loss has its own weight.

    python examples/custom_method.py    # checks it with sequax.testing, then trains it
    python -m sequax.launch.train --config=configs/quickstart.py --workdir=runs/weighted \
        --config.algorithm.name=examples.custom_method:WeightedReplay --config.algorithm.weight=2
"""

import dataclasses

import jax.numpy as jnp
import optax

import sequax
from sequax import data, testing
from sequax.algorithms.reservoir import replay_add, replay_init


@dataclasses.dataclass(frozen=True)
class WeightedReplay(sequax.Algorithm):
    """CE(batch) + weight * CE(replay) with a reservoir memory (ER, Chaudhry et al. 2019, its
    memory term weighted). capacity: memory size in examples; replay_batch: examples replayed
    per step; weight: the memory term's weight."""

    capacity: int = 200
    replay_batch: int = 10
    weight: float = 1.0

    def init(self, params, model_state, example_batch, rng):  # the reservoir, at full size
        return replay_init(self.capacity, self.replay_batch, {k: v[0] for k, v in example_batch.items()})

    def loss(self, params, state, batch, rng, model):
        memory, valid, n = state.algo.replay, state.algo.valid, batch["y"].shape[0]
        outputs, model_state = model.apply(
            params, state.model_state, jnp.concatenate([batch["x"], memory["x"]]), train=True, rng=rng)
        ce = optax.softmax_cross_entropy_with_integer_labels(
            outputs["logits"], jnp.concatenate([batch["y"], memory["y"]]))
        replay = (ce[n:] * valid).sum() / jnp.maximum(valid.sum(), 1)
        return ce[:n].mean() + self.weight * replay, {"model_state": model_state, "metrics": {"replay_ce": replay}}

    def update(self, algo, state, batch, aux, rng):  # insert the batch, draw the next replay
        return replay_add(algo, batch, rng)


if __name__ == "__main__":
    print(testing.check_algorithm(WeightedReplay(capacity=32, replay_batch=4, weight=2.0)))
    stream = data.make_scenario("split", data.load_source("mnist_packaged"), num_tasks=5)
    sequax.train(stream, "mlp", WeightedReplay(weight=2.0), optax.sgd(0.1), workdir="runs/custom_method", epochs=2)
