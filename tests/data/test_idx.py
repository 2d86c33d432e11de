"""Tests for sequax.data.idx: IDX round trips and one-line errors on every malformed file."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from sequax.data import DataError, read_idx, read_idx_pair


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encodes a uint8 array as IDX (what the official files contain)."""
    if magic is None:
        magic = 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def assert_one_line_error(path: Path, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


IMAGES = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
LABELS = np.random.default_rng(1).integers(0, 10, (7,), dtype=np.uint8)


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_images_and_labels(tmp_path, compress):
    suffix = ".gz" if compress else ""
    images = read_idx(write(tmp_path / f"i{suffix}", idx_bytes(IMAGES), compress))
    labels = read_idx(write(tmp_path / f"l{suffix}", idx_bytes(LABELS), compress))
    assert images.dtype == np.uint8 and images.shape == (7, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (7,)
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, LABELS)


def test_magic_numbers_are_the_official_ones():
    assert idx_bytes(IMAGES)[:4] == (2051).to_bytes(4, "big")
    assert idx_bytes(LABELS)[:4] == (2049).to_bytes(4, "big")


def test_compression_is_detected_from_content(tmp_path):
    # A gzip file without the .gz suffix still reads.
    path = write(tmp_path / "labels-no-suffix", idx_bytes(LABELS), compress=True)
    np.testing.assert_array_equal(read_idx(path), LABELS)


def test_result_is_read_only(tmp_path):
    array = read_idx(write(tmp_path / "l", idx_bytes(LABELS), compress=False))
    with pytest.raises(ValueError):
        array[0] = 1


def test_missing_file(tmp_path):
    assert_one_line_error(tmp_path / "nope.gz", "missing")


def test_bad_magic(tmp_path):
    path = write(tmp_path / "bad.gz", idx_bytes(IMAGES, magic=2052 + 0x1000), compress=True)
    assert_one_line_error(path, "bad IDX magic")


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_payload(tmp_path, compress):
    path = write(tmp_path / ("t.gz" if compress else "t"), idx_bytes(IMAGES)[:-5], compress)
    assert_one_line_error(path, "truncated")


def test_oversized_payload(tmp_path):
    path = write(tmp_path / "o", idx_bytes(LABELS) + b"\x00", compress=False)
    assert_one_line_error(path, "oversized")


def test_truncated_header(tmp_path):
    path = write(tmp_path / "h", idx_bytes(IMAGES)[:10], compress=False)
    assert_one_line_error(path, "truncated")


def test_non_gzip_garbage_with_gz_suffix(tmp_path):
    path = write(tmp_path / "garbage.gz", b"<html>not found</html>", compress=False)
    assert_one_line_error(path, "not a gzip file")


def test_cut_off_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(IMAGES))[:200])
    assert_one_line_error(path, "corrupt gzip")


def test_pair_count_mismatch(tmp_path):
    images = write(tmp_path / "i", idx_bytes(IMAGES), compress=False)
    labels = write(tmp_path / "l", idx_bytes(LABELS[:5]), compress=False)
    with pytest.raises(DataError, match="count mismatch") as info:
        read_idx_pair(images, labels)
    assert str(images) in str(info.value) and str(labels) in str(info.value)
    assert "\n" not in str(info.value)


def test_pair_swapped_files(tmp_path):
    images = write(tmp_path / "i", idx_bytes(IMAGES), compress=False)
    labels = write(tmp_path / "l", idx_bytes(LABELS), compress=False)
    with pytest.raises(DataError, match="not an IDX image file"):
        read_idx_pair(labels, images)


# The official checksum (docs/errors.md): a file of the official size must have the official md5.
def official_of(array: np.ndarray) -> tuple[int, str, str]:
    import hashlib

    payload = idx_bytes(array)
    return len(payload), hashlib.md5(payload).hexdigest(), "https://example.org/mnist/"


@pytest.mark.parametrize("compress", [True, False])
def test_official_checksum_accepts_any_compression_of_the_content(tmp_path, compress):
    path = write(tmp_path / ("images.gz" if compress else "images"), idx_bytes(IMAGES), compress)
    assert np.array_equal(read_idx(path, official_of(IMAGES)), IMAGES)


def test_same_size_corruption_is_refused_by_checksum(tmp_path):
    corrupt = IMAGES.copy()
    corrupt[3, 14, 14] ^= 0xFF  # one flipped pixel: every structural check still passes
    path = write(tmp_path / "images.gz", idx_bytes(corrupt), True)
    assert np.array_equal(read_idx(path), corrupt)  # without the checksum it reads
    with pytest.raises(DataError) as info:
        read_idx(path, official_of(IMAGES))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "official size" in message and official_of(IMAGES)[1] in message
    assert "re-download it from https://example.org/mnist/" in message


def test_a_file_of_another_size_is_only_checked_for_structure(tmp_path):
    path = write(tmp_path / "images.gz", idx_bytes(IMAGES[:5]), True)  # a subset, e.g. a fixture
    assert read_idx(path, official_of(IMAGES)).shape == (5, 28, 28)
