"""Tests for sequax.data.cifar on small files written in the official python-pickle format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from fake_image_datasets import cifar_rows, write_cifar10, write_cifar100, write_pickle

from sequax.data import DataError, load_source, split
from sequax.data.cifar import load_cifar10, load_cifar100, read_label_names


def test_cifar10_arrays_counts_and_labels(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path, per_batch=20, test=30)
    source = load_source("cifar10", tmp_path)
    assert source.name == "cifar10" and source.num_classes == 10
    assert source.train_x.shape == (100, 32, 32, 3) and source.test_x.shape == (30, 32, 32, 3)
    assert source.train_x.dtype == np.uint8 and source.train_y.dtype == np.int32
    np.testing.assert_array_equal(source.train_x, train_x)  # batches 1..5, in order
    np.testing.assert_array_equal(source.train_y, train_y)
    np.testing.assert_array_equal(source.test_x, test_x)
    np.testing.assert_array_equal(source.test_y, test_y)
    assert not source.train_x.flags.writeable
    assert read_label_names(tmp_path / "cifar-10-batches-py" / "batches.meta", "label_names", "")[
        :2
    ] == ["airplane", "automobile"]


def test_a_known_pixel_lands_at_its_row_column_and_channel(tmp_path):
    write_cifar10(tmp_path, per_batch=10, test=10)
    # Row layout: channel k, row r, column c at k*1024 + r*32 + c. Put 77 at (k=2, r=3, c=30)
    # of test image 4 and 99 at (k=0, r=31, c=0): NHWC must hold them at [3, 30, 2] and [31, 0, 0].
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with path.open("rb") as file:
        content = pickle.load(file, encoding="bytes")
    content[b"data"][4] = 0
    content[b"data"][4, 2 * 1024 + 3 * 32 + 30] = 77
    content[b"data"][4, 0 * 1024 + 31 * 32 + 0] = 99
    write_pickle(path, content)
    image = load_cifar10(tmp_path).test_x[4]
    assert image[3, 30, 2] == 77 and image[31, 0, 0] == 99
    assert image.sum() == 77 + 99


def test_cifar100_fine_and_coarse_labels(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar100(tmp_path, train=200, test=100)
    source = load_source("cifar100", tmp_path)
    assert source.name == "cifar100" and source.num_classes == 100
    np.testing.assert_array_equal(source.train_x, train_x)
    np.testing.assert_array_equal(source.train_y, train_y)
    np.testing.assert_array_equal(source.test_x, test_x)
    np.testing.assert_array_equal(source.test_y, test_y)
    assert np.bincount(source.train_y, minlength=100).tolist() == [2] * 100
    coarse = load_cifar100(tmp_path, labels="coarse")
    assert coarse.num_classes == 20
    np.testing.assert_array_equal(coarse.train_y, train_y // 5)
    with pytest.raises(DataError, match="labels='medium'"):
        load_cifar100(tmp_path, labels="medium")


def test_split_cifar_scenarios(tmp_path):
    write_cifar10(tmp_path / "c10", per_batch=20, test=20)
    write_cifar100(tmp_path / "c100", train=200, test=100)
    scenario = split(load_source("cifar10", tmp_path / "c10"), num_tasks=5, classes_per_task=2)
    images, labels = scenario.train(2)
    assert images.shape[1:] == (32, 32, 3) and set(labels.tolist()) == {4, 5}
    assert scenario.name == "split_cifar10" and sum(scenario.train_sizes) == 100
    scenario = split(load_source("cifar100", tmp_path / "c100"), num_tasks=10, classes_per_task=10)
    assert scenario.task_classes.shape == (10, 100) and set(scenario.train_sizes) == {20}
    assert set(scenario.test(9)[1].tolist()) <= set(range(90, 100))


def assert_one_line(error_info, *fragments):
    message = str(error_info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file_names_it_and_the_download(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        load_source("cifar10", tmp_path)
    assert_one_line(info, "missing", "data_batch_3", "cifar-10-python.tar.gz", "config.data.root")
    with pytest.raises(DataError) as info:
        load_source("cifar100", tmp_path / "nowhere")
    assert_one_line(info, "missing", "cifar-100-python/train", "cifar-100-python.tar.gz")


def test_truncated_file_is_a_data_error(tmp_path):
    write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "test"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError) as info:
        load_cifar100(tmp_path)
    assert_one_line(info, "corrupt CIFAR file", str(path), "cifar-100-python.tar.gz")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ({b"data": np.zeros((4, 3072), np.uint8)}, "lacks the key 'labels'"),
        ({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}, "expected uint8 [N, 3072]"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "4 images but labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels outside [0, 10)"),
        ([1, 2, 3], "holds a list"),
    ],
)
def test_malformed_content_is_a_data_error(tmp_path, content, fragment):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_pickle(path, content)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(info, fragment)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"

    class Exploit:
        def __reduce__(self):
            return (print, ("ran",))

    path.write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(info, "corrupt CIFAR file", "unexpected object", ".print")


def test_rows_helper_matches_the_format():
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 1, 2, 1] = 5  # row 1, column 2, green
    assert np.flatnonzero(cifar_rows(image)[0]).tolist() == [1024 + 1 * 32 + 2]


def test_a_pickle_without_the_data_key_is_named(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    write_pickle(path, {b"labels": [0] * 4, b"batch_label": b"x"})
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(
        info, "corrupt CIFAR file", str(path), "lacks the key 'data'", "cifar-10-python.tar.gz"
    )


def test_a_file_with_the_official_image_count_must_have_the_official_md5(tmp_path):
    """10,000 images is an official test_batch's count, so its md5 is checked: a same-size
    corruption unpickles without complaint. The fixtures' smaller files are not checked."""
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_pickle(
        path,
        {b"data": np.zeros((10000, 3072), np.uint8), b"labels": [i % 10 for i in range(10000)]},
    )
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert_one_line(
        info,
        "corrupt CIFAR file",
        str(path),
        "official 10,000 images",
        "40351d587109b95175f43aff81a1287e",
        "cifar-10-python.tar.gz",
    )
