"""A tiny class-incremental stream built in memory: what the contract trains a method on.

Random uint8 images (28x28x1 by default) and labels, two tasks of different sizes padded to
one capacity as the engine pads a real stream, placed on the device once. No files, no
download: a few batches per task, enough to reach every hook of a method twice.

    stream = synthetic_stream(num_classes=10)     # 2 tasks: classes {0, 1}, then {2, 3}
    stream.tasks[1].size                          # 29 examples, padded to stream.capacity
    batch = stream.first_batch(0)                 # {"x": float32 [8, 28, 28, 1], "y", "task"}
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sequax.core.task_data import TaskData, gather_batch, task_arrays
from sequax.engine.step import steps_per_epoch


class SyntheticStream(NamedTuple):
    """Tasks on the device, each padded to `capacity`; task t holds the classes
    `[t * classes_per_task, (t + 1) * classes_per_task)` (class-incremental)."""

    tasks: tuple[TaskData, ...]
    sizes: tuple[int, ...]  # true examples per task (the rest of `capacity` is padding)
    capacity: int
    batch_size: int
    num_classes: int
    classes_per_task: int

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def steps(self, task: int) -> int:
        """Full batches in one epoch of `task` (the engine drops the last partial one)."""
        return steps_per_epoch(self.sizes[task], self.batch_size)

    def first_batch(self, task: int) -> dict:
        """The first `batch_size` examples of `task`, as the train step sees a batch."""
        data = self.tasks[task]
        return jax.device_put(gather_batch(data, jnp.arange(self.batch_size)), data.y.sharding)


def synthetic_stream(
    *,
    num_classes: int = 10,
    sizes: tuple[int, ...] = (43, 29),
    classes_per_task: int = 2,
    image_shape: tuple[int, ...] = (28, 28, 1),
    batch_size: int = 8,
    seed: int = 0,
) -> SyntheticStream:
    """Builds the stream: one task per entry of `sizes` (different sizes, so a program that
    depends on a task's size shows up as a retrace), `batch_size` examples per step."""
    if len(sizes) * classes_per_task > num_classes:
        raise ValueError(
            f"{len(sizes)} tasks of {classes_per_task} classes need num_classes >= "
            f"{len(sizes) * classes_per_task}, got {num_classes}"
        )
    if min(sizes) < batch_size:
        raise ValueError(f"every task needs at least batch_size={batch_size} examples: {sizes}")
    rng = np.random.default_rng(seed)
    # Committed to one device, so every state the programs return is, as a restored one is.
    device = jax.devices()[0]
    put = lambda a: jax.device_put(a, device)  # noqa: E731
    capacity = -(-max(sizes) // batch_size) * batch_size
    tasks = []
    for t, size in enumerate(sizes):
        x = rng.integers(0, 256, (size, *image_shape), dtype=np.uint8)
        y = t * classes_per_task + rng.integers(0, classes_per_task, size)
        tasks.append(task_arrays(x, y, np.full(size, t), capacity, put=put))
    return SyntheticStream(
        tasks=tuple(tasks),
        sizes=tuple(int(n) for n in sizes),
        capacity=capacity,
        batch_size=batch_size,
        num_classes=num_classes,
        classes_per_task=classes_per_task,
    )
