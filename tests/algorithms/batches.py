"""The random batches of the algorithms' unit tests: 4x4 one-channel images in [0, 1).

batch = random_batch(seed=0, size=6)                  # labels drawn from 10 classes
batch = random_batch(seed=1, size=4, labels=[0, 1, 1, 0])
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def random_batch(seed: int, size: int, classes: int = 10, labels=None) -> dict:
    """{"x": float32 [size, 4, 4, 1], "y": int32 [size], "task": zeros}; `labels` (if given)
    replaces the drawn labels. The images are drawn first, so a seed's images do not depend
    on whether labels were given."""
    rng = np.random.default_rng(seed)
    x = rng.random((size, 4, 4, 1))
    y = rng.integers(0, classes, size) if labels is None else np.asarray(labels)
    return {
        "x": jnp.asarray(x, jnp.float32),
        "y": jnp.asarray(y, jnp.int32),
        "task": jnp.zeros(size, jnp.int32),
    }
