"""Image sources: a dataset's train and test arrays, loaded from its files into memory.

An `ImageSource` is the raw material of a scenario: uint8 images [N, H, W, C] (channels
last, C = 1 or 3, pixel values 0..255, not scaled; the model scales to [0, 1]) and int32
labels [N]. MNIST and Fashion-MNIST come from IDX files (here), CIFAR-10/100 from the python
pickles (`sequax.data.cifar`), TinyImageNet from its JPEG folders (`sequax.data.tiny_imagenet`).

    from sequax.data import load_source
    source = load_source("mnist", root="../shared/data")    # reads <root>/MNIST/raw/*.gz
    print(source.train_x.shape, source.test_y[:5])          # (60000, 28, 28, 1) [7 2 1 0 4]
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path

import numpy as np

from sequax.data.errors import DataError
from sequax.data.idx import read_idx_pair

# dataset name -> folder under the root, as torchvision lays it out (<root>/<ClassName>/raw/).
DATASET_FOLDERS: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SOURCE_NAMES = ("mnist", "fashion_mnist", "mnist_packaged", "cifar10", "cifar100", "tiny_imagenet")
# name -> (module, loader) of the RGB sources; imported on demand, since they import ImageSource.
RGB_SOURCES = {
    "cifar10": ("cifar", "load_cifar10"),
    "cifar100": ("cifar", "load_cifar100"),
    "tiny_imagenet": ("tiny_imagenet", "load_tiny_imagenet"),
}
NUM_CLASSES = 10
# Where the official files are (torchvision's mirrors), and (uncompressed bytes, md5 of the
# uncompressed content) of each: `read_idx` refuses a file of the official size with another md5.
DOWNLOADS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
OFFICIAL_CONTENT = {
    "mnist": (
        (47040016, "6bbc9ace898e44ae57da46a324031adb"),
        (60008, "a25bea736e30d166cdddb491f175f624"),
        (7840016, "2646ac647ad5339dbf082846283269ea"),
        (10008, "27ae3e4e09519cfbb04c329615203637"),
    ),
    "fashion_mnist": (
        (47040016, "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        (60008, "9018921c3c673c538a1fc5bad174d6f9"),
        (7840016, "8181f5470baa50b63fa0f6fddb340f0a"),
        (10008, "15d484375f8d13e6eb1aabb0c3f46965"),
    ),
}

ASSETS_DIR = Path(__file__).parent / "assets"
# The packaged subset is the official t10k split re-split 80/20 per class with this seed;
# changing it changes every `mnist_packaged` result, so it is a constant, not an argument.
PACKAGED_SPLIT_SEED = 0
PACKAGED_TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSource:
    """A dataset held in memory. Arrays are read-only so that no consumer can corrupt them.

    Attributes:
      train_x: uint8 [N_train, H, W, C], pixel values 0..255 (C = 1: MNIST, 3: RGB).
      train_y: int32 [N_train], class ids in [0, num_classes).
      test_x: uint8 [N_test, H, W, C].
      test_y: int32 [N_test].
      num_classes: number of classes (10 for MNIST, Fashion-MNIST and CIFAR-10, 100 for
        CIFAR-100, 200 for TinyImageNet).
      name: one of `SOURCE_NAMES`.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
                raise DataError(
                    f"ImageSource {self.name!r}: {split}_x must be uint8 [N, H, W, 1 or 3], got "
                    f"{images.dtype} {images.shape}; build sources with load_source"
                )
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise DataError(
                    f"ImageSource {self.name!r}: {split}_y must be int32 [{len(images)}], got "
                    f"{labels.dtype} {labels.shape}; build sources with load_source"
                )
            if labels.size and not 0 <= labels.min() <= labels.max() < self.num_classes:
                raise DataError(
                    f"ImageSource {self.name!r}: {split}_y has labels outside "
                    f"[0, {self.num_classes}); the label file is corrupt, re-copy it"
                )
            images.setflags(write=False)
            labels.setflags(write=False)


def load_mnist(root: str | os.PathLike, dataset: str = "mnist") -> ImageSource:
    """Loads MNIST (or Fashion-MNIST with dataset="fashion_mnist") from `root`.

    Files are looked up as `<root>/MNIST/raw/<name>.gz`, then `<root>/MNIST/raw/<name>`
    (`FashionMNIST/raw/` for Fashion-MNIST). Takes about 0.3 s (MNIST) to 0.6 s (Fashion).

    Raises:
      DataError: unknown dataset, a missing file, or a malformed file.
    """
    if dataset not in DATASET_FOLDERS:
        raise DataError(f"unknown IDX dataset {dataset!r}; known: {', '.join(DATASET_FOLDERS)}")
    raw_dir = Path(root).expanduser() / DATASET_FOLDERS[dataset] / "raw"
    paths = [_find_file(raw_dir, name, dataset) for name in FILE_NAMES]
    official = [
        (*content, DOWNLOADS[dataset] + name + ".gz")
        for content, name in zip(OFFICIAL_CONTENT[dataset], FILE_NAMES)
    ]
    train_x, train_y = read_idx_pair(paths[0], paths[1], official[0:2])
    test_x, test_y = read_idx_pair(paths[2], paths[3], official[2:4])
    return _make_source(train_x, train_y, test_x, test_y, dataset)


def load_fashion_mnist(root: str | os.PathLike) -> ImageSource:
    """Loads Fashion-MNIST from `<root>/FashionMNIST/raw/`; see `load_mnist`."""
    return load_mnist(root, dataset="fashion_mnist")


def load_packaged_mnist() -> ImageSource:
    """The MNIST t10k images shipped in the package, split 8000 train / 2000 test.

    Needs no data root, so tests and `:local` configs run anywhere. The split is stratified
    (each class 80 % / 20 %, rounded by largest remainder so the totals are exact) with the
    fixed seed `PACKAGED_SPLIT_SEED`; both halves keep the file order. See assets/README.md.
    """
    # The assets are the official t10k files: a damaged installation is refused by checksum.
    official = [(*content, "a reinstall of sequax") for content in OFFICIAL_CONTENT["mnist"][2:4]]
    images, labels = read_idx_pair(
        ASSETS_DIR / "t10k-images-idx3-ubyte.gz", ASSETS_DIR / "t10k-labels-idx1-ubyte.gz", official
    )
    train_index, test_index = stratified_split(labels, PACKAGED_TEST_FRACTION, PACKAGED_SPLIT_SEED)
    return _make_source(
        images[train_index],
        labels[train_index],
        images[test_index],
        labels[test_index],
        "mnist_packaged",
    )


def load_source(name: str, root: str | os.PathLike | None = None) -> ImageSource:
    """Loads a source by name: "mnist_packaged", or from the files under `root`: "mnist",
    "fashion_mnist", "cifar10", "cifar100" (fine labels), "tiny_imagenet"."""
    if name == "mnist_packaged":
        return load_packaged_mnist()
    if name in RGB_SOURCES:
        if root is None:
            raise DataError(
                f"data source {name!r} needs a data root, got None; set config.data.root"
            )
        module, loader = RGB_SOURCES[name]
        return getattr(importlib.import_module(f"sequax.data.{module}"), loader)(root)
    if name not in DATASET_FOLDERS:
        raise DataError(f"unknown data source {name!r}; known: {', '.join(SOURCE_NAMES)}")
    if root is None:
        raise DataError(
            f"data source {name!r} needs a data root, got None; set config.data.root to the "
            f"folder holding {DATASET_FOLDERS[name]}/raw/ (or use 'mnist_packaged')"
        )
    return load_mnist(root, name)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns sorted (train, test) index arrays with `test_fraction` of each class in test.

    Per-class test counts are rounded by largest remainder (ties to the lower class id), so
    the test total is exactly round(test_fraction * N) when that is reachable.
    """
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * test_fraction
    test_counts = np.floor(quotas).astype(np.int64)
    missing = int(round(test_fraction * len(labels))) - int(test_counts.sum())
    # Stable sort on the negated remainders: the largest remainders get the missing examples.
    order = np.argsort(-(quotas - test_counts), kind="stable")
    test_counts[order[: max(missing, 0)]] += 1
    rng = np.random.default_rng(seed)
    test_parts = []
    for label, test_count in zip(classes, test_counts):
        members = np.flatnonzero(labels == label)
        test_parts.append(rng.permutation(members)[:test_count])
    test_index = np.sort(np.concatenate(test_parts))
    is_test = np.zeros(len(labels), bool)
    is_test[test_index] = True
    return np.flatnonzero(~is_test), test_index


def _find_file(raw_dir: Path, name: str, dataset: str) -> Path:
    for candidate in (raw_dir / f"{name}.gz", raw_dir / name):
        if candidate.is_file():
            return candidate
    root = raw_dir.parent.parent
    folder = DATASET_FOLDERS[dataset]
    label = "MNIST" if dataset == "mnist" else "Fashion-MNIST"
    expected = ", ".join(f"{file_name}.gz" for file_name in FILE_NAMES)
    where = "" if root.is_dir() else f" (the root {root} does not exist)"
    raise DataError(
        f"{label} file missing: {raw_dir / name}.gz{where}; expected {expected} "
        f"(.gz or uncompressed) under <root>/{folder}/raw/ with root={root}; download them from "
        f"{DOWNLOADS[dataset]} into {raw_dir}, or set config.data.root"
    )


def _make_source(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, name: str
) -> ImageSource:
    # A trailing channel axis so that MNIST and later RGB sources share the NHWC layout.
    return ImageSource(
        train_x=train_x[..., None],
        train_y=train_y.astype(np.int32),
        test_x=test_x[..., None],
        test_y=test_y.astype(np.int32),
        num_classes=NUM_CLASSES,
        name=name,
    )
