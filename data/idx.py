"""Reading IDX files (the MNIST / Fashion-MNIST format), gzipped or not.

IDX layout: a 4-byte magic (two zero bytes, a type code, the number of dimensions), then one
big-endian int32 per dimension, then the row-major payload. Only the unsigned-byte type (0x08)
is used by the benchmarks here: images have magic 2051 (3 dims), labels magic 2049 (1 dim).

    from sequax.data import read_idx
    images = read_idx("/data/MNIST/raw/train-images-idx3-ubyte.gz")  # uint8 [60000, 28, 28]
    labels = read_idx("/data/MNIST/raw/train-labels-idx1-ubyte.gz")  # uint8 [60000]
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from sequax.data.decoded_cache import cached
from sequax.data.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE_TYPE_CODE = 0x08
_FIX = "re-copy the file from the official release (see shared/data/README.md)"


def read_idx(path: str | os.PathLike, official: tuple[int, str, str] | None = None) -> np.ndarray:
    """Returns the array stored in an unsigned-byte IDX file (`.gz` or uncompressed).

    Compression is detected from the content, not the name, so a `gunzip`-ed copy that kept
    its `.gz` suffix still reads. The result is read-only: it wraps the file's bytes without
    a copy, and benchmark data should never be edited in place.

    Args:
      path: the file.
      official: (uncompressed bytes, md5 of the uncompressed bytes, where to download it) of
        the official release, or None. A file of exactly the official size whose md5 differs
        is refused: same-size corruption (flipped bits, a partly overwritten copy) passes every
        structural check. The md5 is of the uncompressed content, so a re-gzipped or
        `gunzip`-ed copy still matches; a file of another size (a subset, a test fixture) is
        not the official one and is only checked for structure. About 70 ms for MNIST's 47 MB.

    Raises:
      DataError: the file is missing, is not gzip/IDX, has an unknown magic, its payload is
        shorter or longer than its header says, or it has the official size but not its md5.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file missing: {path}; check the path (or set config.data.root)")
    # A rerun reads the decoded, checked array from the user's cache (sequax.data.decoded_cache).
    return cached(path, lambda p: _decode(p, official), check=str(official[1]) if official else "")


def _decode(path: Path, official) -> np.ndarray:
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            # BadGzipFile is an OSError; a cut-off stream is an EOFError.
            raise DataError(f"corrupt gzip file: {path} ({_one_line(error)}); {_FIX}") from None
    elif path.suffix == ".gz":
        raise DataError(f"not a gzip file: {path} (no gzip header); {_FIX}")
    if official is not None and len(raw) == official[0]:
        digest = hashlib.md5(raw).hexdigest()
        if digest != official[1]:
            raise DataError(
                f"corrupt IDX file: {path} has the official size ({official[0]:,} bytes "
                f"uncompressed) but md5 {digest}, not the official {official[1]}; re-download it "
                f"from {official[2]}"
            )
    return _parse_idx(raw, path)


def read_idx_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike, official: tuple = (None, None)
) -> tuple[np.ndarray, np.ndarray]:
    """Reads an (images, labels) file pair and checks that they are what they claim to be.

    Returns (uint8 [N, rows, cols], uint8 [N]). `official`: each file's `read_idx` checksum.

    Raises:
      DataError: as `read_idx`, or if the image file is not 3-D, the label file is not 1-D,
        or the two hold different numbers of examples.
    """
    images, labels = read_idx(images_path, official[0]), read_idx(labels_path, official[1])
    if images.ndim != 3:
        raise DataError(
            f"not an IDX image file: {images_path} (magic says {images.ndim} dims, want 3); {_FIX}"
        )
    if labels.ndim != 1:
        raise DataError(
            f"not an IDX label file: {labels_path} (magic says {labels.ndim} dims, want 1); {_FIX}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"image/label count mismatch: {images_path} has {len(images)} images but "
            f"{labels_path} has {len(labels)} labels; the files come from different releases "
            f"or splits, {_FIX}"
        )
    return images, labels


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 4:
        raise DataError(f"truncated IDX file: {path} ({len(raw)} bytes, no header); {_FIX}")
    zeros, type_code, ndim = raw[0:2], raw[2], raw[3]
    magic = int.from_bytes(raw[0:4], "big")
    if zeros != b"\x00\x00" or type_code != _UBYTE_TYPE_CODE or not 1 <= ndim <= 4:
        raise DataError(
            f"bad IDX magic in {path}: {magic} (want {IMAGES_MAGIC} for images or "
            f"{LABELS_MAGIC} for labels); the file is not an unsigned-byte IDX file, {_FIX}"
        )
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise DataError(f"truncated IDX header in {path}: {len(raw)} bytes; {_FIX}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_bytes + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        # Too long is as suspicious as too short: two files concatenated, or a wrong header.
        problem = "truncated" if len(raw) < expected else "oversized"
        raise DataError(
            f"{problem} IDX payload in {path}: header says shape {shape} = {expected} bytes, "
            f"file has {len(raw)}; {_FIX}"
        )
    return np.frombuffer(raw, np.uint8, offset=header_bytes).reshape(shape)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
