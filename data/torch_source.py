"""A user's torch `Dataset`s as an `ImageSource`: `config.data.source = "torch"`.

`config.data.factory = "package.module:function"` names a function that returns
`(train_dataset, test_dataset)`: map-style datasets (`torch.utils.data.Dataset`, or anything
with `__len__` and `__getitem__`) whose records are `(image, label)` — the image a torch
tensor, numpy array or PIL image, [C, H, W], [H, W, C] or [H, W] with 1 or 3 channels; the
label an int. Both are read once, record by record (`sequax.data.pipelines.RecordSource`,
so any torch transform runs once per record), into the uint8 NHWC arrays every scenario cuts
into tasks; both pipelines ("device" and "stream") then train from those arrays.

    from sequax.data.torch_source import load_torch_source
    source = load_torch_source("mypkg.data:mnist_datasets")  # or a callable, or (train, test)
    print(source.train_x.shape, source.num_classes)           # (60000, 28, 28, 1) 10

Images: uint8 pixels (0..255) are kept as they are; float images must lie in [0, 1] (torch's
`ToTensor`) and are stored as `round(255 x)`, which gives back the exact pixels of any image
that `ToTensor` made from uint8. The engine scales pixels to [0, 1] inside the step, so the
model sees what `ToTensor` gave; standardise with `config.data.normalize`, not in the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sequax.data.errors import DataError
from sequax.data.factories import load_callable
from sequax.data.pipelines import RecordSource
from sequax.data.sources import ImageSource

# Records read per `RecordSource.read` call: bounds the float32 staging memory of float
# datasets (4,096 CIFAR images: 50 MB) while amortising the per-call stacking.
READ_BLOCK = 4096
# float images may exceed [0, 1] by rounding error (e.g. 1.0000001 after a resize) and no more.
FLOAT_TOLERANCE = 1e-4
SOURCE_NAME = "torch"


def load_torch_source(
    factory: str | Callable[[], Any] | tuple[Any, Any], num_classes: int = 0
) -> ImageSource:
    """The datasets `factory` returns, read into an `ImageSource` named "torch".

    Args:
      factory: "package.module:function" (`config.data.factory`), a callable, or the
        `(train_dataset, test_dataset)` pair itself. The function takes no arguments.
      num_classes: the number of classes; 0 infers it as the largest label + 1 over both
        datasets (give it when the last classes have no examples).

    Raises:
      DataError: the factory cannot be imported or called, does not return two datasets, a
        record is not (image, int label), images differ in shape or are floats outside [0, 1].
    """
    what = f"config.data.factory={factory!r}" if isinstance(factory, str) else "the torch datasets"
    datasets = (
        factory
        if isinstance(factory, tuple)
        else _call(_load_callable(factory) if isinstance(factory, str) else factory, what)
    )
    if not (isinstance(datasets, (tuple, list)) and len(datasets) == 2):
        raise DataError(
            f"{what} returned {type(datasets).__name__}; it must return (train_dataset, "
            "test_dataset)"
        )
    train_x, train_y = read_dataset(datasets[0], f"{what}: train dataset")
    test_x, test_y = read_dataset(datasets[1], f"{what}: test dataset")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{what}: train images are {train_x.shape[1:]} but test images {test_x.shape[1:]}; "
            "both datasets must give images of one shape"
        )
    inferred = int(max(train_y.max(), test_y.max())) + 1
    if num_classes and inferred > num_classes:
        raise DataError(
            f"{what}: label {inferred - 1} but num_classes={num_classes}; raise num_classes or fix "
            "the labels"
        )
    return ImageSource(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=int(num_classes or inferred),
        name=SOURCE_NAME,
    )


def read_dataset(dataset: Any, where: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    """Every record of `dataset` as (uint8 [N, H, W, C], int32 [N]), C = 1 or 3.

    Reads through `RecordSource` (its one-line errors name the record), then converts float
    images in [0, 1] to uint8 pixels.
    """
    try:
        records = RecordSource(dataset)
        parts = [
            records.read(np.arange(start, min(start + READ_BLOCK, len(records))))
            for start in range(0, len(records), READ_BLOCK)
        ]
    except DataError as error:
        raise DataError(f"{where}: {error}") from None
    except Exception as error:  # noqa: BLE001
        # the user's __getitem__ failed: name it, keep one line
        raise DataError(
            f"{where}: reading a record raised {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}; fix the dataset's __getitem__"
        ) from None
    x = np.concatenate([part["x"] for part in parts])
    y = np.concatenate([part["y"] for part in parts]).astype(np.int32)
    if y.min() < 0:
        raise DataError(f"{where}: negative label {y.min()}; labels must be class ids 0, 1, 2, ...")
    if x.shape[-1] not in (1, 3):
        raise DataError(
            f"{where}: images of shape {x.shape[1:]} (as [H, W, C]) have {x.shape[-1]} channels; "
            "give [C, H, W] or [H, W, C] images with 1 or 3 channels, or [H, W]"
        )
    return to_pixels(x, where), y


def to_pixels(x: np.ndarray, where: str = "images") -> np.ndarray:
    """uint8 images as they are; float images in [0, 1] as `round(255 x)` uint8 pixels."""
    if x.dtype == np.uint8:
        return x
    low, high = float(x.min()), float(x.max())
    if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE or not np.isfinite(low + high):
        raise DataError(
            f"{where}: float images span [{low:.3g}, {high:.3g}], not [0, 1]; return "
            "ToTensor()-style images in [0, 1] (or uint8 pixels) and standardise with "
            "config.data.normalize instead"
        )
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _load_callable(spec: str) -> Callable[[], Any]:
    return load_callable(
        spec,
        "data.factory",
        DataError,
        "a function as 'package.module:function' returning (train_dataset, test_dataset)",
    )


def _call(function: Any, what: str) -> Any:
    if not callable(function):
        raise DataError(
            f"{what} is a {type(function).__name__}; give 'package.module:function', a function "
            "or a (train_dataset, test_dataset) pair"
        )
    try:
        return function()
    except Exception as error:  # noqa: BLE001 - the user's factory failed: one line, then the fix
        raise DataError(
            f"{what}: calling it raised {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}; it must take no arguments "
            "and return (train_dataset, test_dataset)"
        ) from None
