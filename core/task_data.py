"""A training phase's examples on device, padded to a fixed capacity, and batched scans.

Tasks differ in size (Split MNIST's tasks hold 11,263 to 12,665 images), but a compiled
program needs one shape: every phase is padded to the stream's largest phase and carries
its true `size`. Padding is never trained on (the epoch draws indices among the first
`size` only) and is masked out of every reduction.

    data = task_arrays(x_uint8, y, task_ids, capacity)       # host -> device, once per task
    batch = gather_batch(data, indices)                      # float32 in [0, 1]
    total = scan_batches(fn, data, batch_size=256, init=0.)  # fn(carry, batch, valid)
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

# The mesh axes a batch is split over (`sequax.engine.sharding` builds the mesh): FSDP is
# data parallel too.
BATCH_AXES = ("data", "fsdp")


class TaskData(NamedTuple):
    """One training phase (one task, or the union for joint training) on device."""

    x: jax.Array  # uint8 [capacity, H, W, C]: raw pixels, scaled to [0, 1] when gathered
    y: jax.Array  # int32 [capacity]: global class labels
    task: jax.Array  # int32 [capacity]: the task each example belongs to
    size: jax.Array  # int32 scalar: examples actually present (the rest is padding)


def task_arrays(
    x: np.ndarray, y: np.ndarray, task: np.ndarray, capacity: int, put=jax.device_put, put_x=None
) -> TaskData:
    """Pads host arrays to `capacity` examples and places them with `put` (the default
    device, or split across a mesh's batch axes: `sequax.engine.sharding`).

    `put_x` given: `x` is [runs, n, ...], each run's own images (runs that draw their own
    permutations or angles), padded along its second axis and placed with `put_x`."""
    n = len(y)
    if n > capacity:
        raise ValueError(f"phase holds {n} examples, more than the capacity {capacity}")
    pad = capacity - n

    def padded(a, dtype, axis=0):
        a = np.asarray(a, dtype)
        if not pad:
            return a
        shape = list(a.shape)
        shape[axis] = pad
        return np.concatenate([a, np.zeros(shape, dtype)], axis=axis)

    return TaskData(
        x=put(padded(x, np.uint8)) if put_x is None else put_x(padded(x, np.uint8, axis=1)),
        y=put(padded(y, np.int32)),
        task=put(padded(task, np.int32)),
        size=put(np.int32(n)),
    )


def gather_batch(data: TaskData, indices: jax.Array) -> dict[str, jax.Array]:
    """The batch at `indices`, images as float32 in [0, 1] (the DER protocol's inputs).

    Under a mesh (`jax.set_mesh`) the batch is split across its batch axes.
    """
    batch = {"x": data.x[indices], "y": data.y[indices], "task": data.task[indices]}
    batch = constrain_batch(batch)
    return {**batch, "x": batch["x"].astype(jnp.float32) / 255.0}


_HOST_LOOPS = contextvars.ContextVar("sequax_host_loops", default=False)


@contextlib.contextmanager
def host_loops_tracing():
    """Marks a trace whose loops over a task's chunks will run from the host
    (`engine.host_loops`): each chunk's body is then a program of its own, not a `while` body."""
    token = _HOST_LOOPS.set(True)
    try:
        yield
    finally:
        _HOST_LOOPS.reset(token)


def loops_on_host() -> bool:
    """Whether the code being traced runs its chunk loops from the host (see above): a
    per-example gradient there is best one `vmap` (batched convolutions)."""
    return _HOST_LOOPS.get()


def scan_batches(
    fn: Callable[[Any, dict[str, jax.Array], jax.Array], Any],
    data: TaskData,
    batch_size: int,
    init: Any,
) -> Any:
    """Folds `fn(carry, batch, valid) -> carry` over all of `data` in fixed-size batches.

    `valid` (bool [batch_size]) marks real examples; the last batch is padded by repeating
    the final slot, so `fn` must weight its contribution by `valid`.
    """
    capacity = data.y.shape[0]
    num_batches = -(-capacity // batch_size)

    def body(carry, b):
        index = b * batch_size + jnp.arange(batch_size)
        valid = index < data.size
        batch = gather_batch(data, jnp.minimum(index, capacity - 1))
        return fn(carry, batch, valid), None

    carry, _ = lax.scan(body, init, jnp.arange(num_batches))
    return carry


def constrain_batch(batch: Any) -> Any:
    """Splits a batch's leading axis across the batch axes of the mesh in context.

    A no-op when no mesh is set (`jax.set_mesh`), when the mesh lacks the batch axes, or
    when the batch does not divide evenly, so the same traced code runs anywhere.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return batch
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if ways == 1:
        return batch

    def constrain(x):
        if x.ndim == 0 or x.shape[0] % ways:
            return x
        return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))

    return jax.tree.map(constrain, batch)
