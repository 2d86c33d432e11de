"""Decoded copies of data files in the user's cache (`sequax.data.decoded_cache`).

What each test shows: a second read of an IDX file returns the same read-only array from the
copy without decoding; an edited file is decoded and checked again (its md5 refusal included);
an unreadable copy is decoded again and rewritten; "off" writes nothing; an unwritable cache
folder costs nothing but time.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from sequax.data import DataError, decoded_cache, idx


def write_idx(path, images):
    header = (idx.IMAGES_MAGIC).to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in images.shape
    )
    path.write_bytes(gzip.compress(header + images.tobytes()))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(decoded_cache.CACHE_ENV, str(folder))
    return folder


def test_a_second_read_comes_from_the_copy(tmp_path, cache, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    path = tmp_path / "images-idx3-ubyte.gz"
    write_idx(path, images)
    first = idx.read_idx(path)
    assert len(list(cache.iterdir())) == 1
    monkeypatch.setattr(idx, "_decode", lambda *a: pytest.fail("decoded again"))
    second = idx.read_idx(path)
    np.testing.assert_array_equal(first, images)
    np.testing.assert_array_equal(second, images)
    assert not second.flags.writeable


def test_an_edited_file_is_decoded_and_checked_again(tmp_path, cache):
    images = np.zeros((5, 4, 4), np.uint8)
    path = tmp_path / "images-idx3-ubyte.gz"
    write_idx(path, images)
    idx.read_idx(path)
    write_idx(path, images + 7)
    os.utime(path, ns=(1, 1))  # another modification time: another copy
    np.testing.assert_array_equal(idx.read_idx(path), images + 7)
    raw_size = 16 + images.size
    with pytest.raises(DataError, match="has the official size"):  # the md5 check still runs
        idx.read_idx(path, (raw_size, "0" * 32, "https://example.org"))


def test_an_unreadable_copy_is_decoded_again(tmp_path, cache):
    images = np.arange(32, dtype=np.uint8).reshape(2, 4, 4)
    path = tmp_path / "images-idx3-ubyte.gz"
    write_idx(path, images)
    idx.read_idx(path)
    (copy,) = cache.iterdir()
    copy.write_bytes(b"not an npy file")
    np.testing.assert_array_equal(idx.read_idx(path), images)
    np.testing.assert_array_equal(np.load(copy), images)  # rewritten whole


def test_off_and_an_unwritable_folder(tmp_path, monkeypatch):
    images = np.ones((2, 4, 4), np.uint8)
    path = tmp_path / "images-idx3-ubyte.gz"
    write_idx(path, images)
    monkeypatch.setenv(decoded_cache.CACHE_ENV, "off")
    np.testing.assert_array_equal(idx.read_idx(path), images)
    assert decoded_cache.copy_path(path) is None
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(decoded_cache.CACHE_ENV, str(blocker / "cache"))  # cannot be created
    np.testing.assert_array_equal(idx.read_idx(path), images)
