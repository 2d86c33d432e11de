"""`config.data.source = "torch"`: a user's torch Datasets read once into an `ImageSource`.

What each test shows:
  * ToTensor-style float [C, H, W] records come back as exactly the uint8 pixels they were
    made from; uint8 [H, W] numpy records and RGB [3, H, W] records keep their values; the
    number of classes is inferred (largest label + 1) or taken as given;
  * through the config (`build_scenario`) the factory's datasets give the same Split
    scenario as the packaged MNIST source they wrap, and `loop.run` on them gives the same
    accuracy matrix as that source, on the on-device and on the streaming pipeline;
  * every bad factory or dataset (not importable, not callable, raising, returning one
    dataset, records that are not (image, int label), wrong image rank or channels, floats
    outside [0, 1], shapes that change between records) is one `DataError` line with the fix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sequax.configs import common
from sequax.data import DataError, load_packaged_mnist
from sequax.data.torch_source import load_torch_source, read_dataset, to_pixels
from sequax.engine import loop
from sequax.engine.build import build_scenario

MNIST = load_packaged_mnist()


class Records(torch.utils.data.Dataset):
    """A map-style dataset over a list of records, whatever they are."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


class ToTensorDigits(torch.utils.data.Dataset):
    """MNIST as torchvision's `ToTensor` gives it: float [1, 28, 28] in [0, 1], int labels."""

    def __init__(self, split: str, n: int | None = None):
        self.x = getattr(MNIST, f"{split}_x")[:n]
        self.y = getattr(MNIST, f"{split}_y")[:n]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.tensor(self.x[i]).permute(2, 0, 1).float() / 255, int(self.y[i])


def digits():  # a config factory: config.data.factory = f"{__name__}:digits"
    return ToTensorDigits("train"), ToTensorDigits("test")


def one_dataset():
    return ToTensorDigits("test", 10)


def broken():
    raise OSError("no such file: /data/mine")


def test_float_records_come_back_as_their_exact_pixels():
    x, y = read_dataset(ToTensorDigits("train", 300))
    assert x.dtype == np.uint8 and x.shape == (300, 28, 28, 1) and y.dtype == np.int32
    np.testing.assert_array_equal(x, MNIST.train_x[:300])
    np.testing.assert_array_equal(y, MNIST.train_y[:300])
    # Other floats round to the nearest pixel (a floor would give 0, 0, 254).
    np.testing.assert_array_equal(to_pixels(np.float32([0.4, 0.6, 254.6]) / 255), [0, 1, 255])


def test_uint8_and_rgb_records_keep_their_values_and_classes_are_inferred():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)  # [H, W] numpy records
    rgb = rng.integers(0, 256, (6, 3, 5, 7), dtype=np.uint8)  # [3, H, W] torch records
    labels = [0, 3, 1, 3, 2, 0]
    source = load_torch_source(
        (
            Records([(g, y) for g, y in zip(gray, labels)]),
            Records([(g, np.int64(y)) for g, y in zip(gray[:2], labels)]),
        )
    )
    np.testing.assert_array_equal(source.train_x[..., 0], gray)
    assert source.num_classes == 4 and source.test_y.tolist() == [0, 3] and source.name == "torch"
    source = load_torch_source(
        lambda: (
            Records([(torch.tensor(r), torch.tensor(y)) for r, y in zip(rgb, labels)]),
            Records([(torch.tensor(rgb[0]), 1)]),
        ),
        num_classes=10,
    )
    np.testing.assert_array_equal(source.train_x, rgb.transpose(0, 2, 3, 1))
    assert source.num_classes == 10


def test_config_factory_builds_the_scenario_of_the_wrapped_source():
    config = common.base_config().data
    config.update(
        source="torch", factory=f"{__name__}:digits", num_tasks=5, options={"classes_per_task": 2}
    )
    scenario = build_scenario(config)
    reference = build_scenario(_packaged(config))
    assert scenario.name == "split_torch" and scenario.num_classes == 10
    assert (
        scenario.train_sizes == reference.train_sizes
        and scenario.test_sizes == reference.test_sizes
    )
    for t in range(5):
        for a, b in zip(scenario.train(t), reference.train(t)):
            np.testing.assert_array_equal(a, b)


def _packaged(data_config):
    config = data_config.copy_and_resolve_references()
    config.source = "mnist_packaged"
    return config


def small_run_config(source: str, pipeline: str):
    config = common.der_config("split", "er", 0.1, capacity=50, replay_batch=10)
    config.data.update(
        source=source,
        factory=f"{__name__}:digits",
        train_per_task=100,
        test_per_task=50,
        pipeline=pipeline,
    )
    config.model.widths = (32,)
    config.training.steps_per_dispatch = 10
    return config


def test_loop_on_torch_datasets_equals_the_packaged_source_on_both_pipelines(tmp_path):
    packaged = loop.run(
        small_run_config("mnist_packaged", "device"), tmp_path / "packaged", verbose=False
    )
    assert np.mean(packaged.class_il[-1]) > 0.15  # it learned: the equalities below are not vacuous
    for pipeline in ("device", "stream"):
        result = loop.run(small_run_config("torch", pipeline), tmp_path / pipeline, verbose=False)
        np.testing.assert_array_equal(result.class_il, packaged.class_il)
        np.testing.assert_array_equal(result.task_il, packaged.task_il)


class Bad(torch.utils.data.Dataset):
    """Record 0 is good; record `bad_at` is `bad` (problems that only show past record 0)."""

    def __init__(self, bad, bad_at=3, n=8):
        self.bad, self.bad_at, self.n = bad, bad_at, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad_at:
            if isinstance(self.bad, Exception):
                raise self.bad
            return self.bad
        return torch.zeros(1, 4, 4), 1


@pytest.mark.parametrize(
    "factory, message",
    [
        ("mypkg.nowhere:datasets", "cannot import 'mypkg.nowhere' (ModuleNotFoundError"),
        ("sequax.data", "must name a function as 'package.module:function'"),
        ("", "must name a function as 'package.module:function'"),
        (f"{__name__}:MNIST", "has no callable 'MNIST'"),
        (
            f"{__name__}:broken",
            "calling it raised OSError: no such file: /data/mine; it must take no arguments",
        ),
        (
            f"{__name__}:one_dataset",
            "returned ToTensorDigits; it must return (train_dataset, test_dataset)",
        ),
    ],
)
def test_bad_factories_fail_in_one_line_with_the_fix(factory, message):
    config = common.base_config().data
    config.update(source="torch", factory=factory)
    with pytest.raises(DataError) as error:
        build_scenario(config)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert "config.data.factory=" in str(error.value)


@pytest.mark.parametrize(
    "records, message",
    [
        (Records([torch.zeros(1, 4, 4)]), "returned Tensor; it must return (image, label)"),
        (Records([(torch.zeros(1, 4, 4), 1.5)]), "label 1.5 is not one integer"),
        (Records([(torch.zeros(1, 4, 4), "cat")]), "label 'cat' is not one integer"),
        (Records([(torch.zeros(2, 1, 4, 4), 1)]), "images must be [H, W], [H, W, C] or [C, H, W]"),
        (
            Records([(np.zeros((4, 4, 2), np.uint8), 1)]),
            "have 2 channels; give [C, H, W] or [H, W, C] images with 1 or 3",
        ),
        (Records([(torch.full((1, 4, 4), 2.5), 1)]), "float images span [2.5, 2.5], not [0, 1]"),
        (Records([(torch.zeros(1, 4, 4), -1)]), "negative label -1"),
        (Records([]), "is empty"),
        (Bad((torch.zeros(1, 5, 5), 1)), "cannot be batched"),
        (Bad((torch.zeros(1, 4, 4), 2.0)), "cannot be batched"),
        (
            Bad(KeyError("missing.png")),
            "reading a record raised KeyError: 'missing.png'; fix the dataset's __getitem__",
        ),
    ],
)
def test_bad_datasets_fail_in_one_line_with_the_fix(records, message):
    good = Records([(torch.zeros(1, 4, 4), 0)])
    with pytest.raises(DataError) as error:
        load_torch_source((records, good))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("the torch datasets: train dataset: ")


def test_train_and_test_images_must_share_a_shape():
    with pytest.raises(
        DataError, match=r"train images are \(4, 4, 1\) but test images \(5, 5, 1\)"
    ):
        load_torch_source(
            (Records([(torch.zeros(1, 4, 4), 0)]), Records([(torch.zeros(1, 5, 5), 0)]))
        )


def test_labels_beyond_the_given_number_of_classes_are_refused():
    pair = (Records([(torch.zeros(1, 4, 4), 7)]), Records([(torch.zeros(1, 4, 4), 0)]))
    assert load_torch_source(pair).num_classes == 8
    with pytest.raises(
        DataError, match=r"label 7 but num_classes=5; raise num_classes or fix the labels"
    ):
        load_torch_source(pair, num_classes=5)
