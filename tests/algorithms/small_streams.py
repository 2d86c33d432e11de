"""The short streams of the methods' end-to-end tests, and naive's result on each (run once).

config = small_split_config("gem", capacity=100, num_tasks=5)   # Split MNIST, 300 images/task
naive = naive_result("split")                                      # cached per test session
"""

from __future__ import annotations

import functools
import tempfile

from sequax.configs import common
from sequax.engine import loop


def small_split_config(algorithm: str, **algorithm_kwargs):
    """Split MNIST on the packaged images: 5 tasks of 300 examples, a 32-unit MLP, lr 0.05."""
    config = common.der_config("split", algorithm, 0.05, **algorithm_kwargs)
    config.data.source = "mnist_packaged"  # ships with sequax: runs anywhere
    config.data.train_per_task = 300
    config.data.test_per_task = 100
    config.model.widths = (32,)
    return config


def small_permuted_config(algorithm: str, **algorithm_kwargs):
    """Two permuted tasks of 1,000 examples, 3 epochs each: task 1 overwrites task 0."""
    config = common.der_config("permuted", algorithm, 0.1, **algorithm_kwargs)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 2
    config.data.train_per_task = 1000
    config.data.test_per_task = 1000
    config.model.widths = (100,)
    config.training.batch_size = 10
    config.training.epochs = 3
    return config


@functools.cache
def naive_result(stream: str) -> loop.RunResult:
    """Naive fine-tuning on `small_split_config` ("split") or `small_permuted_config`
    ("permuted")."""
    config = {"split": small_split_config, "permuted": small_permuted_config}[stream]("naive")
    with tempfile.TemporaryDirectory() as workdir:
        return loop.run(config, workdir, verbose=False)
