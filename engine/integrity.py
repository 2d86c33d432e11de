"""Integrity of what a run writes: checksums of arrays, atomic writes, and a full disk told
apart from other I/O errors (orbax wraps its writers' errors, so the cause is searched for)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np


def workdir_path(workdir) -> Path:
    """`workdir` with `~` and `$VARIABLE`s expanded: a path quoted on the command line, or
    given from Python, reaches sequax unexpanded, and would otherwise create a folder named
    "~" (or "$SCRATCH") in the current one. A variable that is not set is refused in one line."""
    from sequax.engine.errors import ConfigError

    text = os.path.expandvars(os.path.expanduser(os.fspath(workdir)))
    unset = re.search(r"\$\{?(\w+)", text)
    if unset and unset.group(1) not in os.environ:
        raise ConfigError(
            f"workdir {os.fspath(workdir)!r} names the environment variable ${unset.group(1)}, "
            "which is not set; set it, or give the folder's path"
        )
    return Path(text)


def array_checksums(state) -> dict[str, str]:
    """blake2b of every array's bytes (with its dtype and shape), keyed by its path in the tree."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): _array_digest(_host(leaf)) for path, leaf in leaves}


def _host(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:  # split across processes
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


def _array_digest(array: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def first_mismatch(found: dict[str, str], expected: dict[str, str]) -> str | None:
    if set(found) != set(expected):
        return next(iter(sorted(set(found) ^ set(expected))))
    return next((key for key in found if found[key] != expected[key]), None)


def write_atomic(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that a reader sees the old file or the whole new one: a
    temporary file in the same folder, fsync, rename, fsync of the folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def is_no_space(error: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception's chain (orbax wraps its writers' errors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def no_space_message(
    workdir: Path, what: str, last_good: Path | None, detail: str | None = None
) -> str:
    kept = (
        f"the last good checkpoint {last_good} is intact"
        if last_good
        else "no checkpoint was complete yet"
    )
    return (
        f"no space left on the disk of {workdir} while writing {what}"
        f"{f' ({detail})' if detail else ''}; free space or use another "
        f"--workdir (rerunning with this --workdir resumes: {kept})"
    )


def lacks_room(folder: Path, state, margin: int = 1 << 16) -> str | None:
    """ "needs up to X MB, Y MB free" when the disk under `folder` cannot hold a checkpoint of
    `state` (its arrays' bytes plus `margin` for orbax's metadata), else None. Checked before
    a save starts, so a full disk is one line instead of orbax failing in its writer threads
    (and logging each failure); a disk that fills during the write is still caught after."""
    need = sum(int(leaf.nbytes) for leaf in jax.tree.leaves(state)) + margin
    free = shutil.disk_usage(nearest_existing(folder)).free
    if free >= need:
        return None
    return f"needs up to {need / 1e6:.1f} MB, {free / 1e6:.1f} MB free"


class Unwritable(OSError):
    """A folder the run must write (its checkpoints) refuses writes: read-only, or another
    owner's. The message says what was kept and what to do."""

    def __init__(self, message: str):
        super().__init__(errno.EACCES, message)

    def __str__(self) -> str:
        return self.strerror


def is_unwritable(error: BaseException | None) -> bool:
    """A permission or read-only-filesystem error anywhere in the exception's chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return True
        error = error.__cause__ or error.__context__
    return False


def unwritable_folder(folder: Path) -> str | None:
    """Why `folder` or one of its subfolders cannot be written (a probe file in each: `os.access`
    says yes to root even on a read-only mount), or None. Removing an old checkpoint needs
    write access to it as well as to `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for place in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        error = write_probe(place)
        if error is not None:
            return f"{place} is not writable ({error.strerror or error})"
    return None


def write_probe(folder: Path) -> OSError | None:
    """The error writing a file in `folder` raises, or None: a probe file, removed at once
    (`os.access` says yes to root even on a read-only mount)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".sequax-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return error
    return None


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (where a folder to create would go)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
