"""Frozen-feature caching: a frozen network's features of a task, computed once per task.

A prompt method asks a frozen copy of the pretrained ViT for each example's query feature
(L2P, DualPrompt, CODA-Prompt), and a prototype method needs a frozen backbone's features of
every example (SimpleCIL, RanPAC). Those features do not change while the task trains, so a
method computes them once, in its `start_task` (compiled, on the device, over the task's
resident examples), keeps them in its state, and reads them by each batch example's slot:

    cache = compute_features(features_fn, task_data, batch_size=256)   # [cache_examples, D]
    feats = cached_features(cache, batch, features_fn)                   # in `loss`

The method declares `example_index = True` so the engine's batches carry "index" (their
examples' slots in the task's `TaskData`). Where a batch has none (a streamed source) or
the cache is off (`cache_examples=0`), the features are computed from `batch["x"]` as usual:
same values, more work. The cache is of fixed size (the state's shapes never change), set by
the method's `cache_examples` hyper-parameter, which must hold the largest task; the engine
names the size to set when it does not (`sequax.engine.experiment`).

This does not apply to the prompted forward pass itself: prompts change every layer's
activations, so that pass runs every step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from sequax.core.task_data import TaskData, gather_batch


def compute_features(
    features_fn: Callable[[jax.Array], jax.Array],
    task_data: TaskData,
    batch_size: int,
    cache_examples: int,
) -> jax.Array:
    """float32 [cache_examples, D]: `features_fn(x)` of the task's first `cache_examples`
    slots, in fixed-size batches (slots past the task's size repeat its last example)."""
    capacity = task_data.y.shape[0]
    num_batches = -(-cache_examples // batch_size)

    def body(_, b):
        index = jnp.minimum(b * batch_size + jnp.arange(batch_size), capacity - 1)
        return None, features_fn(gather_batch(task_data, index)["x"]).astype(jnp.float32)

    _, features = lax.scan(body, None, jnp.arange(num_batches))
    return features.reshape(num_batches * batch_size, -1)[:cache_examples]


def cached_features(
    cache: jax.Array, batch: dict, features_fn: Callable[[jax.Array], jax.Array]
) -> jax.Array:
    """The batch's features: read from `cache` when the batch carries "index" and the cache
    is on (non-empty), else computed by `features_fn(batch["x"])`."""
    if "index" in batch and cache.shape[0] > 0:
        return cache[batch["index"]]
    return features_fn(batch["x"]).astype(jnp.float32)
