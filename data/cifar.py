"""Reading CIFAR-10 and CIFAR-100 from the official "python version" files.

Layout (the tarballs of https://www.cs.toronto.edu/~kriz/cifar.html, extracted under a root;
torchvision's `CIFAR10(root)` / `CIFAR100(root)` leave the same folders):

    <root>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
    <root>/cifar-100-python/train, test, meta

Each data file is a pickled dict (written by Python 2, so its keys are bytes): b"data" is
uint8 [N, 3072], each row a 32x32 image stored as three row-major planes, red then green then
blue (row r, column c of channel k sits at k*1024 + r*32 + c); CIFAR-10 has b"labels",
CIFAR-100 b"fine_labels" (100 classes) and b"coarse_labels" (20 superclasses). The meta
files hold the class names (b"label_names"; b"fine_label_names", b"coarse_label_names").

    from sequax.data.cifar import load_cifar10
    source = load_cifar10("/data")   # train_x uint8 [50000, 32, 32, 3] (NHWC), train_y int32

The files are unpickled with an unpickler that only accepts the numpy array constructors
they contain, so a file that is not CIFAR cannot run code when it is read.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from sequax.data.errors import DataError
from sequax.data.sources import ImageSource

IMAGE_SHAPE = (32, 32, 3)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FIX = (
    "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it "
    "under the data root (giving <root>/cifar-10-batches-py/data_batch_1..5, test_batch, "
    "batches.meta); set config.data.root"
)
# md5 of each official file (the values torchvision checks) and the images it holds; a file
# holding exactly that many images is the official one and must match (`read_batch`).
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
}
OFFICIAL_IMAGES = {
    **dict.fromkeys((*CIFAR10_TRAIN_FILES, "test_batch"), 10000),
    "train": 50000,
    "test": 10000,
}
CIFAR100_FIX = (
    "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
    "under the data root (giving <root>/cifar-100-python/train, test, meta); set "
    "config.data.root"
)

# The only globals a CIFAR pickle refers to: numpy's array reconstruction under its numpy 1 and
# numpy 2 names (protocols 2 and 5), and the bytes constructor of Python 3's protocol 2.
_ALLOWED_GLOBALS = {
    *(
        (f"numpy.{core}.multiarray", name)
        for core in ("core", "_core")
        for name in ("_reconstruct", "scalar")
    ),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path, fix: str) -> dict:
    """The dict in one CIFAR file, keys decoded to str (the files' own keys are bytes).

    Raises:
      DataError: the file is missing, truncated, not a pickle, or not a dict.
    """
    if not path.is_file():
        raise DataError(f"CIFAR file missing: {path}; {fix}")
    try:
        with path.open("rb") as file:
            content = _ArrayUnpickler(file, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        ImportError,
    ) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"corrupt CIFAR file: {path} ({message}); {fix}") from None
    if not isinstance(content, dict):
        raise DataError(
            f"corrupt CIFAR file: {path} holds a {type(content).__name__}, not a dict; {fix}"
        )
    return {
        key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()
    }


def read_batch(path: Path, label_key: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 32, 32, 3] NHWC images, int32 [N] labels) of one CIFAR data file.

    A file holding the official number of images (`OFFICIAL_IMAGES`) must have the official
    md5: same-size corruption unpickles without complaint. Smaller files (subsets, test
    fixtures) are only checked for structure.
    """
    content = read_pickle(path, fix)
    if "data" not in content or label_key not in content:
        raise DataError(
            f"corrupt CIFAR file: {path} lacks the key "
            f"{'data' if 'data' not in content else label_key!r}; {fix}"
        )
    data, labels = np.asarray(content["data"]), np.asarray(content[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"corrupt CIFAR file: {path}: data is {data.dtype} {data.shape}, expected uint8 "
            f"[N, 3072]; {fix}"
        )
    if labels.shape != (len(data),):
        raise DataError(
            f"corrupt CIFAR file: {path}: {len(data)} images but labels of shape "
            f"{labels.shape}; {fix}"
        )
    if len(data) == OFFICIAL_IMAGES.get(path.name) and path.name in OFFICIAL_MD5:
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "md5").hexdigest()
        if digest != OFFICIAL_MD5[path.name]:
            raise DataError(
                f"corrupt CIFAR file: {path} holds the official {len(data):,} images but has md5 "
                f"{digest}, not the official {OFFICIAL_MD5[path.name]}; {fix}"
            )
    # Rows are [3 planes, 32 rows, 32 columns]; NHWC puts the channel last.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def read_label_names(path: Path, key: str, fix: str) -> list[str]:
    """Class names from a meta file ("label_names", "fine_label_names", "coarse_label_names")."""
    content = read_pickle(path, fix)
    if key not in content:
        raise DataError(f"corrupt CIFAR file: {path} lacks the key {key!r}; {fix}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in content[key]]


def load_cifar10(root: str | os.PathLike) -> ImageSource:
    """CIFAR-10 from `<root>/cifar-10-batches-py/`: 50,000 train and 10,000 test images, 10 classes.

    Training images are data_batch_1..5 concatenated in that order. About 0.5 s.

    Raises:
      DataError: a missing, truncated or malformed file (the message names it and the fix).
    """
    folder = Path(root).expanduser() / CIFAR10_FOLDER
    train = [read_batch(folder / name, "labels", CIFAR10_FIX) for name in CIFAR10_TRAIN_FILES]
    test_x, test_y = read_batch(folder / "test_batch", "labels", CIFAR10_FIX)
    return _source(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test_x,
        test_y,
        10,
        "cifar10",
        folder,
        CIFAR10_FIX,
    )


def load_cifar100(root: str | os.PathLike, labels: str = "fine") -> ImageSource:
    """CIFAR-100 from `<root>/cifar-100-python/`: 50,000 train and 10,000 test images.

    Args:
      root: the data root.
      labels: "fine" (the 100 classes, the Split CIFAR-100 benchmark) or "coarse" (the 20
        superclasses).

    Raises:
      DataError: a missing, truncated or malformed file, or an unknown `labels`.
    """
    if labels not in ("fine", "coarse"):
        raise DataError(
            f"load_cifar100: labels={labels!r}; use 'fine' (100 classes) or 'coarse' (20)"
        )
    folder = Path(root).expanduser() / CIFAR100_FOLDER
    key = f"{labels}_labels"
    train_x, train_y = read_batch(folder / "train", key, CIFAR100_FIX)
    test_x, test_y = read_batch(folder / "test", key, CIFAR100_FIX)
    name = "cifar100" if labels == "fine" else "cifar100_coarse"
    return _source(
        train_x,
        train_y,
        test_x,
        test_y,
        100 if labels == "fine" else 20,
        name,
        folder,
        CIFAR100_FIX,
    )


def _source(train_x, train_y, test_x, test_y, num_classes, name, folder, fix) -> ImageSource:
    for split, y in (("train", train_y), ("test", test_y)):
        if y.size and not 0 <= y.min() <= y.max() < num_classes:
            raise DataError(
                f"corrupt CIFAR file under {folder}: {split} labels outside [0, {num_classes}); "
                f"{fix}"
            )
    return ImageSource(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        name=name,
    )
