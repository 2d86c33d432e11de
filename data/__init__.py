"""sequax.data: benchmark data for continual learning, in numpy (no JAX, no torch).

Three layers: `read_idx` reads IDX files; an `ImageSource` holds a dataset in memory
(uint8 images [N, 28, 28, 1], int32 labels [N]); a `Scenario` cuts a source into a stream of
tasks (Split, Permuted, Rotated), built lazily per task. Every random draw comes from an
explicit seed. Every user-fixable problem raises `DataError` with a one-line message.

    from sequax.data import load_source, make_scenario
    scenario = make_scenario("permuted", load_source("mnist", "../shared/data"), num_tasks=20)
    images, labels = scenario.train(3)   # uint8 [60000, 28, 28, 1], int32 [60000]
"""

from sequax.data.errors import DataError
from sequax.data.idx import read_idx, read_idx_pair
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

__all__ = [
    "DataError",
    "ImageSource",
    "Scenario",
    "load_fashion_mnist",
    "load_mnist",
    "load_packaged_mnist",
    "load_source",
    "make_scenario",
    "permuted",
    "read_idx",
    "read_idx_pair",
    "rotated",
    "split",
    "subsample",
]
