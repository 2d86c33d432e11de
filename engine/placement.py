"""The data placed on the devices once, and each task's transform applied there.

A source's raw images (uint8) go to the devices once per run. Each phase's training set and
every task's test set are then gathered from them by compiled programs, which also apply the
task's transform: a pixel map (`Scenario.pixel_maps`: Permuted, nearest-neighbour Rotated;
out.flat[i] = in.flat[map[i]], index H*W*C = black) or none (Split). No task's images are
ever transformed or copied on the host, and runs that draw their own permutations or angles
(`data.draws_per_run`) gather theirs from the same raw images in one vmapped program.

The bytes are those the host transform gives (the same gather), so results do not change.
A transform that is not a pixel map (bilinear rotation, a user's own `Scenario.transform`)
and the grain streaming path keep the host path (`engine.feed.phase_images`).

    images = DeviceImages.maybe(experiment, streaming=False)  # None: the host path
    data = images.phase(tasks, put)    # TaskData, x [capacity, ...] (or [runs, capacity, ...])
    test = images.test_sets()      # TestSets, x [T, M, ...] (or [runs, T, M, ...])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sequax.core.task_data import TaskData
from sequax.data.scenarios import IdentityTransform
from sequax.engine import sharding
from sequax.engine.evaluation import TestSets
from sequax.engine.program_cache import cached

CHUNK = 1024  # examples per gather: bounds the [chunk, H*W*C] map indices held at once


def device_transform(scenario) -> bool:
    """Whether the scenario's transform can run on the devices (a pixel map or none)."""
    return scenario.pixel_maps is not None or isinstance(scenario.transform, IdentityTransform)


class DeviceImages:
    """A run's raw images on the devices and the programs that cut tasks out of them."""

    def __init__(self, scenario, drawn, mesh, capacity: int):
        self.scenario, self.mesh, self.capacity = scenario, mesh, capacity
        replicated = sharding.replicated(mesh)
        self.put = lambda a: sharding.put(np.asarray(a), replicated)  # noqa: E731
        source = scenario.source
        self.raw_train, self.raw_test = self.put(source.train_x), self.put(source.test_x)
        if drawn is not None:  # [runs, T, H*W*C]: each run's own maps
            self.maps = self.put(np.stack([d.pixel_maps for d in drawn]).astype(np.int32))
        elif scenario.pixel_maps is not None:
            self.maps = self.put(np.asarray(scenario.pixel_maps, np.int32))
        else:
            self.maps = None  # Split: the images as they are
        per_run = drawn is not None
        x_sharding = (  # as engine.programs pins a phase's images
            sharding.examples_sharding(mesh, (len(drawn), capacity), run_axis=True)
            if per_run
            else sharding.examples_sharding(mesh, (capacity,))
        )
        gather, tests = place_examples, place_test_sets
        if per_run:
            gather = jax.vmap(place_examples, (None, None, None, 0, None, None))
            tests = jax.vmap(place_test_sets, (None, None, None, 0, None))
        self._phase = cached(jax.jit(gather, out_shardings=x_sharding), "place_examples")
        self._test = cached(jax.jit(tests, out_shardings=replicated), "place_test_sets")
        self.per_run = per_run

    @classmethod
    def maybe(cls, experiment, streaming: bool):
        """The device path for `experiment`, or None where the host path must stay."""
        scenario, drawn = experiment.scenario, experiment.drawn
        if streaming or not device_transform(scenario):
            return None
        if drawn is not None and any(d.pixel_maps is None for d in drawn):
            return None
        return cls(scenario, drawn, experiment.mesh, experiment.capacity)

    def phase(self, tasks, put) -> TaskData:
        """Phase `tasks`' training examples (padded to the capacity, zeros past its size)."""
        s = self.scenario
        index = np.concatenate([s.train_indices[t] for t in tasks]).astype(np.int32)
        task_ids = np.concatenate([np.full(len(s.train_indices[t]), t, np.int32) for t in tasks])
        n, pad = len(index), self.capacity - len(index)
        if pad < 0:
            raise ValueError(f"phase holds {n} examples, more than the capacity {self.capacity}")
        padded = lambda a: np.concatenate([a, np.zeros(pad, np.int32)])  # noqa: E731
        x = self._phase(
            self.raw_train, padded(index), padded(task_ids), self.maps, np.int32(n), None
        )
        y = s.source.train_y[index].astype(np.int32)
        return TaskData(x=x, y=put(padded(y)), task=put(padded(task_ids)), size=put(np.int32(n)))

    def test_sets(self) -> TestSets:
        """Every task's test set, stacked [T, M, ...] and zero-padded (`stack_test_sets`)."""
        s = self.scenario
        sizes = np.array([len(i) for i in s.test_indices], np.int32)
        width = int(sizes.max())
        index = np.zeros((s.num_tasks, width), np.int32)
        labels = np.zeros((s.num_tasks, width), np.int32)
        for t, rows in enumerate(s.test_indices):
            index[t, : len(rows)], labels[t, : len(rows)] = rows, s.source.test_y[rows]
        tasks = np.repeat(np.arange(s.num_tasks, dtype=np.int32)[:, None], width, axis=1)
        valid = np.arange(width)[None] < sizes[:, None]
        x = self._test(self.raw_test, index, tasks, self.maps, valid)
        return TestSets(x, self.put(labels), self.put(sizes))


def place_test_sets(raw, index, task, maps, valid):
    """[T, M, ...]: every task's test images (`index`, `task`, `valid` are [T, M])."""
    flat = place_examples(raw, index.reshape(-1), task.reshape(-1), maps, index.size,
                          valid.reshape(-1))  # fmt: skip
    return flat.reshape(*index.shape, *flat.shape[1:])


def place_examples(raw, index, task, maps, size, valid=None):
    """raw[index], each image through its task's pixel map; rows past `size` (or not
    `valid`) are zero, as the host path pads them."""
    keep = jnp.arange(index.shape[0]) < size
    if valid is not None:
        keep = keep & valid

    def one(args):
        i, t, k = args
        image = raw[i]
        if maps is not None:
            flat = jnp.concatenate([image.reshape(-1), jnp.zeros((1,), image.dtype)])
            image = flat[maps[t]].reshape(image.shape)
        return jnp.where(k, image, jnp.zeros_like(image))

    return jax.lax.map(one, (index, task, keep), batch_size=CHUNK)
