"""sequax.data: benchmark data for continual learning, in numpy (no JAX, no torch).

Three layers: readers of the official files (`read_idx` for MNIST, `load_cifar10`,
`load_cifar100`, `load_tiny_imagenet`); an `ImageSource` holds a dataset in memory (uint8
images [N, H, W, C], int32 labels [N]); a `Scenario` cuts a source into a stream of tasks
(Split, Permuted, Rotated), built lazily per task. The jittable augmentations are the one
JAX module, imported explicitly: `from sequax.data.augment import with_augmentation`. Every random
draw comes from an explicit seed. Every user-fixable problem raises `DataError` with a one-line
message.

    from sequax.data import load_source, make_scenario
    scenario = make_scenario("permuted", load_source("mnist", "../shared/data"), num_tasks=20)
    images, labels = scenario.train(3)   # uint8 [60000, 28, 28, 1], int32 [60000]
"""

from sequax.data.cifar import load_cifar10, load_cifar100
from sequax.data.errors import DataError
from sequax.data.idx import read_idx, read_idx_pair
from sequax.data.mnist360 import mnist_360
from sequax.data.scenarios import (
    Scenario,
    make_scenario,
    permuted,
    rotated,
    split,
    subsample,
)
from sequax.data.sources import (
    ImageSource,
    load_fashion_mnist,
    load_mnist,
    load_packaged_mnist,
    load_source,
)
from sequax.data.tiny_imagenet import load_tiny_imagenet

__all__ = [
    "DataError",
    "ImageSource",
    "Scenario",
    "load_cifar10",
    "load_cifar100",
    "load_fashion_mnist",
    "load_mnist",
    "load_packaged_mnist",
    "load_source",
    "load_tiny_imagenet",
    "make_scenario",
    "mnist_360",
    "permuted",
    "read_idx",
    "read_idx_pair",
    "rotated",
    "split",
    "subsample",
]
