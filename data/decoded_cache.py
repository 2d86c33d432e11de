"""Decoded copies of data files in the user's cache, so that a rerun does not decompress and
checksum the same files again (about 0.25 s for MNIST, a tenth of a small run's wall).

    array = cached(path, decode, check)  # decode(path) on the first read, the copy after

A copy is keyed by the file's absolute path, size and modification time, and by what the
decoding checked (`check`, e.g. the official md5), so an edited or replaced file is decoded
and checked again. Copies are written atomically (a temporary name,
then a rename) and a copy that cannot be read is decoded again and rewritten. They live in
$SEQUAX_DATA_CACHE, else $XDG_CACHE_HOME/sequax/data (~/.cache/sequax/data);
SEQUAX_DATA_CACHE=off turns them off; `rm -rf ~/.cache/sequax/data` clears them. An
unwritable folder only costs the decoding time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

CACHE_ENV = "SEQUAX_DATA_CACHE"
OFF = ("off", "none", "false", "0")
FORMAT = 1  # bump when the decoding changes, so old copies are not read


def cache_root() -> Path:
    """$XDG_CACHE_HOME/sequax, or ~/.cache/sequax: where sequax keeps what it can rebuild."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sequax"


def cache_folder() -> Path | None:
    """Where decoded copies go (None: off)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in OFF:
        return None
    return Path(value).expanduser() if value else cache_root() / "data"


def copy_path(path: Path, check: str = "") -> Path | None:
    """The decoded copy's file for `path` as it is now, decoded under `check` (what the
    decoder verified, e.g. an md5: a copy made without it does not stand in for one made
    with it). None: the cache is off."""
    folder = cache_folder()
    if folder is None:
        return None
    stat = path.stat()
    key = f"{FORMAT}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{check}"
    return folder / f"{path.name}.{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}.npy"


def cached(
    path: str | os.PathLike, decode: Callable[[Path], np.ndarray], check: str = ""
) -> np.ndarray:
    """`decode(path)`, or its copy from the cache (made under the same `check`); read-only."""
    path = Path(path)
    copy = copy_path(path, check)
    if copy is not None and copy.is_file():
        try:
            array = np.load(copy, allow_pickle=False)
            array.flags.writeable = False
            return array
        except (OSError, ValueError, EOFError):
            pass  # unreadable: decode again, and write it anew
    array = decode(path)
    if copy is not None:
        _store(copy, array)
    return array


def computed(name: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()`, or its copy from the cache under `key` (a digest of everything the result
    depends on: derived data such as MNIST-360's rotated images); read-only."""
    folder = cache_folder()
    if folder is None:
        return compute()
    digest = hashlib.blake2b(f"{FORMAT}|{key}".encode(), digest_size=8).hexdigest()
    copy = folder / f"{name}.{digest}.npy"
    if copy.is_file():
        try:
            array = np.load(copy, allow_pickle=False)
            array.flags.writeable = False
            return array
        except (OSError, ValueError, EOFError):
            pass  # unreadable: compute again, and write it anew
    array = compute()
    _store(copy, array)
    return array


def _store(copy: Path, array: np.ndarray) -> None:
    try:
        copy.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=copy.parent, prefix=f".{copy.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(tmp, copy)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or full cache folder costs time, never the run
