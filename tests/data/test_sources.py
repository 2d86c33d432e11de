"""Tests for sequax.data.sources against the real files in ../shared/data (see its README)."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from sequax.data import DataError, load_fashion_mnist, load_mnist, load_packaged_mnist, load_source

# The shared data folder sits next to the repository root (parents[2] of this file).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(),
    reason=f"real MNIST files not found under {SHARED_DATA}",
)

# Per-class counts from shared/data/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def check_layout(source, num_train, num_test):
    assert source.train_x.shape == (num_train, 28, 28, 1)
    assert source.test_x.shape == (num_test, 28, 28, 1)
    assert source.train_x.dtype == source.test_x.dtype == np.uint8
    assert source.train_y.dtype == source.test_y.dtype == np.int32
    assert source.train_y.shape == (num_train,) and source.test_y.shape == (num_test,)
    assert source.num_classes == 10
    assert not source.train_x.flags.writeable and not source.train_y.flags.writeable


@needs_shared_data
def test_mnist_shapes_and_class_counts():
    source = load_mnist(SHARED_DATA)
    check_layout(source, 60_000, 10_000)
    assert source.name == "mnist"
    assert np.bincount(source.train_y).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(source.test_y).tolist() == MNIST_TEST_COUNTS
    assert source.train_x.max() == 255 and source.train_x.min() == 0
    assert source.test_y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits


@needs_shared_data
def test_fashion_mnist_shapes_and_class_counts():
    source = load_source("fashion_mnist", SHARED_DATA)
    check_layout(source, 60_000, 10_000)
    assert source.name == "fashion_mnist"
    assert np.bincount(source.train_y).tolist() == [6000] * 10
    assert np.bincount(source.test_y).tolist() == [1000] * 10
    # Fashion-MNIST's images differ from MNIST's: the loader must not mix up the folders.
    assert not np.array_equal(source.test_x[:10], load_packaged_mnist().test_x[:10])


def write_fake_root(root: Path, folder: str, num_train: int, num_test: int, compress: bool) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, (n,), dtype=np.uint8)
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            payload = (
                magic.to_bytes(4, "big")
                + b"".join(d.to_bytes(4, "big") for d in array.shape)
                + array.tobytes()
            )
            name = f"{prefix}-{kind}-ubyte"
            if compress:
                (raw / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (raw / name).write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_fake_root_gz_or_uncompressed(tmp_path, compress):
    write_fake_root(tmp_path, "FashionMNIST", 12, 5, compress)
    source = load_fashion_mnist(tmp_path)
    check_layout(source, 12, 5)


def test_missing_file_message(tmp_path):
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"MNIST file missing: {tmp_path}/MNIST/raw/train-images-idx3-ubyte.gz; expected "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (.gz or uncompressed) under <root>/MNIST/raw/"
    )
    assert message.endswith("set config.data.root")


def test_one_missing_file_is_named(tmp_path):
    write_fake_root(tmp_path, "MNIST", 4, 3, compress=True)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz;"):
        load_mnist(tmp_path)


def test_label_out_of_range_is_rejected(tmp_path):
    write_fake_root(tmp_path, "MNIST", 4, 3, compress=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1] + b"\x0c")  # label 12 in a 10-class dataset
    with pytest.raises(DataError, match="outside"):
        load_mnist(tmp_path)


def test_packaged_split_sizes_and_stratification():
    source = load_packaged_mnist()
    check_layout(source, 8000, 2000)
    assert source.name == "mnist_packaged"
    train_counts, test_counts = np.bincount(source.train_y), np.bincount(source.test_y)
    # Together the halves are exactly the official t10k set, class by class.
    assert (train_counts + test_counts).tolist() == MNIST_TEST_COUNTS
    # Each class puts 20 % (rounded) of its examples in test.
    np.testing.assert_allclose(test_counts, np.array(MNIST_TEST_COUNTS) * 0.2, atol=0.6)


def test_packaged_split_is_deterministic_and_disjoint():
    first, second = load_packaged_mnist(), load_packaged_mnist()
    np.testing.assert_array_equal(first.train_x, second.train_x)
    np.testing.assert_array_equal(first.test_y, second.test_y)
    # No test image appears in train (MNIST t10k has no exact duplicates across this split).
    train_rows = {row.tobytes() for row in first.train_x}
    assert not any(row.tobytes() in train_rows for row in first.test_x)


def test_load_source_dispatch_and_errors():
    assert load_source("mnist_packaged").name == "mnist_packaged"
    with pytest.raises(DataError, match="known: mnist, fashion_mnist, mnist_packaged, cifar10"):
        load_source("svhn", "/tmp")
    with pytest.raises(DataError, match="'cifar10' needs a data root"):
        load_source("cifar10", None)
    with pytest.raises(DataError, match="config.data.root"):
        load_source("mnist", None)
    with pytest.raises(DataError, match="unknown IDX dataset"):
        load_mnist("/tmp", dataset="kmnist")


def test_missing_root_says_so_and_names_the_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_source("mnist", tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message and "does not exist" in message
    assert "download them from https://ossci-datasets.s3.amazonaws.com/mnist/" in message


@needs_shared_data
def test_same_size_corruption_of_the_real_labels_is_refused(tmp_path):
    """A copy of the real MNIST with one test label changed (same size, valid IDX) is refused by
    the official checksum, naming the file and where to download it; the intact copy loads."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
    ):
        (raw / name).symlink_to(SHARED_DATA / "MNIST" / "raw" / name)
    labels = bytearray(
        gzip.decompress((SHARED_DATA / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    )
    (raw / "t10k-labels-idx1-ubyte").write_bytes(
        bytes(labels)
    )  # uncompressed: the content's md5 still matches
    assert load_mnist(tmp_path).test_y[0] == 7
    labels[8] = (labels[8] + 1) % 10  # the first test label, 7 -> 8
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(raw / "t10k-labels-idx1-ubyte") in message
    assert (
        "md5" in message
        and "ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz" in message
    )
