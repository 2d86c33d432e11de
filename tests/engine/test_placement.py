"""Data on the devices (engine.placement): raw images placed once, each task's transform
applied by a compiled program.

What each test shows:
  * for Split, Permuted, nearest Rotated and runs drawing their own permutations, the phases
    and test sets gathered on the device are byte for byte those the host path builds (so no
    result changes);
  * during a whole run the host transforms only the first batch (the state's shapes), never a
    task's images;
  * bilinear rotation (not a pixel map) and the grain stream keep the host path.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sequax.configs import common
from sequax.core.task_data import task_arrays
from sequax.data import scenarios
from sequax.engine import loop, placement
from sequax.engine.evaluation import stack_run_test_sets, stack_test_sets
from sequax.engine.experiment import from_config
from sequax.engine.feed import Feed, phase_images


def small(scenario: str, **data):
    config = common.der_config(scenario, "naive", 0.1)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 3
    config.data.train_per_task = 200
    config.data.test_per_task = 50
    config.model.widths = (16,)
    config.checkpoint.enabled = False
    for key, value in data.items():
        setattr(config.data, key, value)
    return config


@pytest.mark.parametrize(
    "scenario,data,runs",
    [
        ("split", {}, 1),
        ("permuted", {}, 1),
        ("rotated", {}, 1),
        ("permuted", {"draws_per_run": True}, 2),
    ],  # fmt: skip
)
def test_device_phases_and_test_sets_equal_the_host_ones(scenario, data, runs):
    config = small(scenario, **data)
    config.runs = runs
    exp = from_config(config)
    feed = Feed(exp)
    assert feed.images is not None
    per_run = exp.drawn is not None
    with jax.set_mesh(exp.mesh):
        for tasks in exp.phases:
            device = feed.images.phase(tasks, jax.device_put)
            x, y, task_ids = phase_images(exp.scenario, exp.drawn, tasks)
            host = task_arrays(x, y, task_ids, exp.capacity,
                               put_x=np.asarray if per_run else None)  # fmt: skip
            for a, b in zip(device, host, strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        device_test = feed.images.test_sets()
    host_test = (stack_run_test_sets(exp.drawn, put=np.asarray) if per_run
                 else stack_test_sets(exp.scenario, put=np.asarray))  # fmt: skip
    for a, b in zip(device_test, host_test, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_run_transforms_only_its_first_batch_on_the_host(tmp_path, monkeypatch):
    sizes = []
    real = scenarios.PermuteTransform.__call__

    def counting(self, t, images):
        sizes.append(len(images))
        return real(self, t, images)

    monkeypatch.setattr(scenarios.PermuteTransform, "__call__", counting)
    config = small("permuted")
    device = loop.run(config, tmp_path / "device", verbose=False).class_il
    assert sizes == [config.training.batch_size], sizes  # the init batch, nothing else
    # The same run on the host path (every task permuted by numpy) gives the same matrix.
    monkeypatch.setattr(placement.DeviceImages, "maybe", classmethod(lambda *a, **k: None))
    host = loop.run(config, tmp_path / "host", verbose=False).class_il
    assert len(sizes) > 1 + config.data.num_tasks  # the host path did transform every task
    np.testing.assert_array_equal(device, host)


def test_bilinear_rotation_and_the_stream_keep_the_host_path():
    bilinear = small("rotated", options={"interpolation": "bilinear"})
    assert Feed(from_config(bilinear)).images is None
    stream = small("permuted", pipeline="stream")
    assert Feed(from_config(stream)).images is None
