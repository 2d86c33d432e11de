"""Reading TinyImageNet (Stanford CS231n, 200 classes of 64x64 images) from its official JPEGs.

Layout (http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzipped under a root):

    <root>/tiny-imagenet-200/wnids.txt                              200 WordNet ids, one a line
    <root>/tiny-imagenet-200/train/<wnid>/images/<wnid>_<i>.JPEG    500 images per class
    <root>/tiny-imagenet-200/val/images/val_<i>.JPEG                10,000 images, 50 per class
    <root>/tiny-imagenet-200/val/val_annotations.txt                file, wnid, box (tab-separated)

The labelled validation set serves as the test set (the official test images carry no
labels), as in the DER paper's Seq-TinyImageNet. Class ids are the wnids' line numbers in
wnids.txt (torchvision's `ImageFolder` would sort them instead). Some of the JPEGs are
grey-scale; they are converted to RGB by repeating the channel.

Decoding the 110,000 JPEGs takes 35-55 s (2,000-3,000 images/s measured on a 2-core CPU with
1-2 threads), so the decoded arrays are cached beside the data, in
`<root>/tiny-imagenet-200/sequax_decoded.npz` (1.35 GB, uncompressed, so reading it back
costs only the disk read). The cache is rebuilt when it is unreadable or lists other wnids; delete
it after changing any image. Where the folder is read-only the cache is skipped with a warning.

    from sequax.data.tiny_imagenet import load_tiny_imagenet
    source = load_tiny_imagenet("/data")   # train_x uint8 [100000, 64, 64, 3], test_x [10000, ...]
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sequax.data.errors import DataError
from sequax.data.sources import ImageSource

FOLDER = "tiny-imagenet-200"
CACHE_NAME = "sequax_decoded.npz"
IMAGE_SHAPE = (64, 64, 3)
CACHE_KEYS = ("train_x", "train_y", "test_x", "test_y", "wnids")
FIX = (
    "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it under the data root "
    "(giving <root>/tiny-imagenet-200/wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG, "
    "val/images/val_<i>.JPEG and val/val_annotations.txt); set config.data.root"
)


def load_tiny_imagenet(
    root: str | os.PathLike, cache: bool = True, workers: int | None = None
) -> ImageSource:
    """TinyImageNet from `<root>/tiny-imagenet-200/`: 100,000 train and 10,000 test images.

    Args:
      root: the data root holding the `tiny-imagenet-200` folder.
      cache: read the decoded arrays from `sequax_decoded.npz` beside the data when it is
        there and valid, and write it after decoding (see the module docstring).
      workers: threads decoding JPEGs (PIL releases the GIL while decoding); None: up to 8.

    Raises:
      DataError: a missing folder or file, an unreadable or truncated JPEG, an image that is
        not 64x64, or a malformed annotation line (the message names the file and the fix).
    """
    folder = Path(root).expanduser() / FOLDER
    wnids = read_wnids(folder / "wnids.txt")
    cache_path = folder / CACHE_NAME
    if cache and cache_path.is_file():
        arrays = _read_cache(cache_path, wnids)
        if arrays is not None:
            return _source(*arrays, num_classes=len(wnids))
    train_paths, train_y = _train_files(folder, wnids)
    test_paths, test_y = _val_files(folder, wnids)
    train_x = decode_jpegs(train_paths, workers)
    test_x = decode_jpegs(test_paths, workers)
    if cache:
        _write_cache(
            cache_path,
            train_x=train_x,
            train_y=train_y,
            test_x=test_x,
            test_y=test_y,
            wnids=np.array(wnids),
        )
    return _source(train_x, train_y, test_x, test_y, num_classes=len(wnids))


def read_wnids(path: Path) -> list[str]:
    """The class list (200 in the official file): one WordNet id per non-empty line, in order."""
    if not path.is_file():
        raise DataError(f"TinyImageNet file missing: {path}; {FIX}")
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(
            f"corrupt TinyImageNet file: {path} must list distinct wnids, one a line "
            f"(found {len(wnids)}, {len(set(wnids))} distinct); {FIX}"
        )
    return wnids


def decode_jpegs(paths: list[Path], workers: int | None = None) -> np.ndarray:
    """uint8 [len(paths), 64, 64, 3]: the images, decoded by PIL and converted to RGB."""
    try:
        from PIL import Image
    except ImportError:  # pillow comes with matplotlib, a dependency; say so if it is missing
        raise DataError("reading TinyImageNet needs pillow; pip install pillow") from None

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"TinyImageNet file missing: {path}; {FIX}") from None
        except (OSError, SyntaxError, ValueError) as error:  # truncated or not a JPEG
            message = " ".join(str(error).split()) or type(error).__name__
            raise DataError(
                f"corrupt TinyImageNet image: {path} ({message}); re-extract it, or {FIX}"
            ) from None
        if array.shape != IMAGE_SHAPE:
            raise DataError(
                f"corrupt TinyImageNet image: {path} is {array.shape[1]}x{array.shape[0]}, "
                f"expected 64x64; re-extract it, or {FIX}"
            )
        return array

    images = np.empty((len(paths), *IMAGE_SHAPE), np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for i, array in enumerate(pool.map(decode, paths)):
            images[i] = array
    return images


def _natural_key(path: Path):
    # n01443537_10.JPEG after n01443537_9.JPEG: the files' own numbering, not string order.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _train_files(folder: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        files = sorted(images.glob("*.JPEG"), key=_natural_key) if images.is_dir() else []
        if not files:
            raise DataError(
                f"TinyImageNet images missing: no {wnid}_<i>.JPEG under {images}; {FIX}"
            )
        paths += files
        labels += [label] * len(files)
    return paths, np.array(labels, np.int32)


def _val_files(folder: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(f"TinyImageNet file missing: {annotations}; {FIX}")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    paths, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(
                f"corrupt TinyImageNet file: {annotations} line {number} ({line.strip()[:60]!r}) "
                f"must be '<file>\\t<wnid listed in wnids.txt>\\t<box>'; {FIX}"
            )
        paths.append(folder / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    if not paths:
        raise DataError(f"corrupt TinyImageNet file: {annotations} lists no images; {FIX}")
    return paths, np.array(labels, np.int32)


def _read_cache(path: Path, wnids: list[str]):
    """The cached (train_x, train_y, test_x, test_y), or None when it is unusable."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            if set(CACHE_KEYS) - set(cached.files) or cached["wnids"].tolist() != wnids:
                warnings.warn(
                    f"{path} does not match wnids.txt; decoding the JPEGs again", stacklevel=3
                )
                return None
            return tuple(cached[key] for key in CACHE_KEYS[:4])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"unreadable cache {path} ({error}); decoding the JPEGs again", stacklevel=3)
        return None


def _write_cache(path: Path, **arrays: np.ndarray) -> None:
    # Written under another name and renamed, so an interrupted write never leaves a bad cache.
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as file:
            np.savez(file, **arrays)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        warnings.warn(
            f"could not write the TinyImageNet cache {path} ({error}); the next load decodes "
            f"the JPEGs again",
            stacklevel=3,
        )


def _source(train_x, train_y, test_x, test_y, num_classes: int) -> ImageSource:
    return ImageSource(
        train_x=train_x,
        train_y=train_y.astype(np.int32),
        test_x=test_x,
        test_y=test_y.astype(np.int32),
        num_classes=num_classes,
        name="tiny_imagenet",
    )
