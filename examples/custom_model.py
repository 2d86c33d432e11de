"""Your own flax network, trained by a built-in method: a small CNN on Split MNIST with DER++.

    python examples/custom_model.py
    python -m sequax.launch.train --config=configs/quickstart.py --workdir=runs/cnn \
        --config.model.name=examples.custom_model:SmallCNN
"""

import flax.linen as nn
import optax

import sequax
from sequax import algorithms, data


class SmallCNN(nn.Module):
    """Any linen module whose `__call__(x, train)` returns {"logits", "features"}; x is
    float32 [B, 28, 28, 1] in [0, 1]."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        features = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return {"logits": nn.Dense(self.num_classes)(features), "features": features}


if __name__ == "__main__":
    stream = data.make_scenario("split", data.load_source("mnist_packaged"), num_tasks=5)
    method = algorithms.DERPP(capacity=200, replay_batch=10, alpha=0.3, beta=0.5)
    sequax.train(stream, SmallCNN(10), method, optax.sgd(0.03), workdir="runs/custom_model")
