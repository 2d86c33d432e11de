"""Tests for sequax.data.tiny_imagenet on small folders written in the official layout
(wnids.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt), JPEGs by PIL."""

from __future__ import annotations

import numpy as np
import pytest
from fake_image_datasets import quadrant_image, write_jpeg, write_tiny_imagenet

from sequax.data import DataError, load_source, split
from sequax.data.tiny_imagenet import CACHE_NAME, load_tiny_imagenet

# JPEG at quality 95 without chroma subsampling: solid 32x32 blocks decode within a few levels.
JPEG_TOLERANCE = 4


def close(a, b):
    return np.abs(a.astype(int) - b.astype(int)).max() <= JPEG_TOLERANCE


def test_arrays_labels_counts_and_file_order(tmp_path):
    wnids, train_x, train_y, val_x, val_y = write_tiny_imagenet(
        tmp_path, num_classes=3, train_per_class=11
    )
    source = load_tiny_imagenet(tmp_path, cache=False)
    assert source.name == "tiny_imagenet" and source.num_classes == 3
    assert source.train_x.shape == (33, 64, 64, 3) and source.train_x.dtype == np.uint8
    assert source.test_x.shape == (3, 64, 64, 3) and source.test_y.dtype == np.int32
    # Labels are wnids.txt line numbers (the file is not sorted), val labels from the annotations;
    # training files in their numbering (_10 after _9), so the arrays match what was written.
    assert wnids != sorted(wnids)
    np.testing.assert_array_equal(source.train_y, train_y)
    np.testing.assert_array_equal(source.test_y, val_y)
    assert close(source.train_x, train_x) and close(source.test_x, val_x)
    assert not close(source.train_x[9], source.train_x[10])  # would fail with string order
    assert not (tmp_path / "tiny-imagenet-200" / CACHE_NAME).exists()


def test_a_known_pixel_lands_at_its_row_column_and_channel(tmp_path):
    write_tiny_imagenet(tmp_path, num_classes=2, train_per_class=1)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (128, 128, 128)]
    write_jpeg(
        tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_1.JPEG", quadrant_image(colours)
    )
    image = load_tiny_imagenet(tmp_path, cache=False).test_x[1]
    assert close(image[8, 8], np.array(colours[0]))  # top-left: red
    assert close(image[8, 56], np.array(colours[1]))  # top-right (row 8, column 56): green
    assert close(image[56, 8], np.array(colours[2]))  # bottom-left: blue
    assert image[8, 56, 1] > 190 and image[8, 56, 0] < 40  # channel order is RGB


def test_greyscale_jpegs_become_rgb(tmp_path):
    wnids, *_ = write_tiny_imagenet(tmp_path, num_classes=2, train_per_class=1)
    write_jpeg(
        tmp_path / "tiny-imagenet-200" / "train" / wnids[1] / "images" / f"{wnids[1]}_0.JPEG",
        np.full((64, 64), 100, np.uint8),
    )
    image = load_tiny_imagenet(tmp_path, cache=False).train_x[1]
    assert image.shape == (64, 64, 3) and close(image, np.full((64, 64, 3), 100, np.uint8))


def test_the_cache_is_written_reused_and_rebuilt(tmp_path):
    write_tiny_imagenet(tmp_path, num_classes=3, train_per_class=2)
    folder = tmp_path / "tiny-imagenet-200"
    first = load_source("tiny_imagenet", tmp_path)
    assert (folder / CACHE_NAME).is_file() and not (folder / (CACHE_NAME + ".partial")).exists()
    # With the cache in place the JPEGs are not read: deleting them changes nothing.
    for path in folder.glob("train/*/images/*.JPEG"):
        path.unlink()
    second = load_tiny_imagenet(tmp_path)
    np.testing.assert_array_equal(second.train_x, first.train_x)
    np.testing.assert_array_equal(second.test_y, first.test_y)
    # A cut-off cache is not trusted: it warns and decodes again (which now fails: no JPEGs).
    cache = folder / CACHE_NAME
    cache.write_bytes(cache.read_bytes()[:1000])
    with (
        pytest.warns(UserWarning, match="unreadable cache"),
        pytest.raises(DataError, match="images missing"),
    ):
        load_tiny_imagenet(tmp_path)


def test_a_cache_for_other_wnids_is_rebuilt(tmp_path):
    write_tiny_imagenet(tmp_path / "a", num_classes=3)
    write_tiny_imagenet(tmp_path / "b", num_classes=2, seed=1)
    load_tiny_imagenet(tmp_path / "a")
    (tmp_path / "a" / "tiny-imagenet-200" / CACHE_NAME).rename(
        tmp_path / "b" / "tiny-imagenet-200" / CACHE_NAME
    )
    with pytest.warns(UserWarning, match="does not match wnids.txt"):
        source = load_tiny_imagenet(tmp_path / "b")
    assert source.num_classes == 2 and len(source.train_y) == 4


def test_split_tiny_imagenet_is_ten_tasks_of_twenty_classes(tmp_path):
    write_tiny_imagenet(tmp_path, num_classes=200, train_per_class=1, val_per_class=1)
    source = load_tiny_imagenet(tmp_path, cache=False)
    scenario = split(source, num_tasks=10, classes_per_task=20)
    assert source.num_classes == 200 and scenario.task_classes.shape == (10, 200)
    assert set(scenario.train_sizes) == {20} and set(scenario.test_sizes) == {20}
    assert set(scenario.train(3)[1].tolist()) == set(range(60, 80))


def assert_one_line(info, *fragments):
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_files_name_the_file_and_the_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_tiny_imagenet(tmp_path)
    assert_one_line(
        info, "missing", "tiny-imagenet-200/wnids.txt", "tiny-imagenet-200.zip", "config.data.root"
    )
    wnids, *_ = write_tiny_imagenet(tmp_path, num_classes=2)
    folder = tmp_path / "tiny-imagenet-200"
    (folder / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DataError) as info:
        load_tiny_imagenet(tmp_path, cache=False)
    assert_one_line(info, "missing", "val/images/val_1.JPEG")
    for path in (folder / "train" / wnids[0] / "images").glob("*"):
        path.unlink()
    with pytest.raises(DataError) as info:
        load_tiny_imagenet(tmp_path, cache=False)
    assert_one_line(info, "images missing", f"train/{wnids[0]}/images")


def test_truncated_or_wrong_images_are_data_errors(tmp_path):
    wnids, *_ = write_tiny_imagenet(tmp_path, num_classes=2)
    path = tmp_path / "tiny-imagenet-200" / "train" / wnids[1] / "images" / f"{wnids[1]}_1.JPEG"
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError) as info:
        load_tiny_imagenet(tmp_path, cache=False)
    assert_one_line(info, "corrupt TinyImageNet image", str(path), "re-extract")
    write_jpeg(path, np.zeros((32, 64, 3), np.uint8))
    with pytest.raises(DataError) as info:
        load_tiny_imagenet(tmp_path, cache=False)
    assert_one_line(info, str(path), "64x32", "expected 64x64")


def test_malformed_annotations_are_data_errors(tmp_path):
    write_tiny_imagenet(tmp_path, num_classes=2)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError) as info:
        load_tiny_imagenet(tmp_path, cache=False)
    assert_one_line(info, str(annotations), "line 3", "wnid listed in wnids.txt")
