"""Streaming examples through grain: the host side of `config.data.pipeline = "stream"`.

A source — our arrays, a torch `TensorDataset`, or any torch-style `Dataset` whose items are
`(image, label)` — becomes a grain pipeline of *chunks*: K consecutive training batches
stacked `[K, b, ...]`, the unit the engine trains on in one dispatch
(`sequax.engine.stream` turns each chunk into global sharded device arrays, prefetched).
A batch is read in one of two ways:

  index-batch-then-gather  array-backed sources (`ArraySource`): the batch's indices come
                           first, then one numpy fancy-index reads the whole batch;
  per-record               any map-style `Dataset` (`RecordSource`): each record is read
                           with `dataset[i]` (its decoding and torch transforms included),
                           then a chunk's images are stacked at once and converted to numpy.

The example order is a permutation per epoch (`ShuffledOrder`, seeded), or any given
orders (`FixedOrder`: the engine passes the on-device path's `epoch_order` so that both
paths train on the same batches). Each epoch drops its last partial batch, as the
on-device path does. Worker processes (grain `mp_prefetch`) read chunks in parallel and
hand them back in order, so any number of workers yields the same chunks. This module
imports numpy and grain only: worker processes unpickle it, and importing JAX or torch
there would cost each worker seconds.

    source = as_source(my_torch_dataset)                      # or ArraySource(x, y, task)
    plan = ChunkPlan(ShuffledOrder(len(source), seed=(0,)), batch_size=32, steps=len(source) // 32,
                     epochs=2, chunk=50)
    for chunk in chunk_dataset(source, plan, workers=2):      # {"x": [50, 32, H, W, C], "y",
        ...                                                   #  "task": [50, 32], "count": int}
"""

from __future__ import annotations

import dataclasses
import math
import operator
import signal
import sys
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from sequax.data.errors import DataError
from sequax.data.sources import ImageSource

# How a record's 3-D image is laid out: "auto" reads [C, H, W] (torch's layout) when the
# first axis has 1 or 3 entries and the last does not; the engine's layout is [H, W, C].
CHANNEL_LAYOUTS = ("auto", "first", "last")


# ---------------- Sources -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
    """Examples held in host arrays, read a whole batch at a time (index-batch-then-gather).

    Attributes:
      x: images [N, H, W, C], uint8 (scaled to [0, 1] inside the step, as on the on-device
        path) or float32 (used as they are).
      y: int32 [N] class labels.
      task: int32 [N], the task each example belongs to.
    """

    x: np.ndarray
    y: np.ndarray
    task: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", np.asarray(self.x))
        n = len(self.x)
        if self.x.dtype not in (np.uint8, np.float32) or self.x.ndim < 2:
            raise DataError(
                f"ArraySource: x must be uint8 or float32 [N, ...], got {self.x.dtype} "
                f"{self.x.shape}; convert the images first"
            )
        for name in ("y", "task"):
            value = np.asarray(getattr(self, name))
            if value.shape != (n,) or not np.issubdtype(value.dtype, np.integer):
                raise DataError(
                    f"ArraySource: {name} must be integers [{n}] (one per image), got "
                    f"{value.dtype} {value.shape}"
                )
            object.__setattr__(self, name, value.astype(np.int32, copy=False))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def element_spec(self) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of one image."""
        return tuple(self.x.shape[1:]), self.x.dtype

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The examples at `indices` (any shape), one fancy-index per array."""
        return {"x": self.x[indices], "y": self.y[indices], "task": self.task[indices]}

    @classmethod
    def from_image_source(
        cls, source: ImageSource, split: str = "train", task: int = 0
    ) -> ArraySource:
        """A split ("train" or "test") of an `ImageSource`, every example in task `task`."""
        x, y = getattr(source, f"{split}_x"), getattr(source, f"{split}_y")
        return cls(x, y, np.full(len(y), task, np.int32))


class RecordSource:
    """A map-style dataset read record by record (the per-record path).

    `dataset[i]` must return `(image, label)`: the image a torch tensor, a numpy array or a
    PIL image, [H, W], [H, W, C] or [C, H, W]; the label an integer (a Python int, a numpy
    integer or a 0-d tensor). Images become numpy [H, W, C]: uint8 stays uint8 (scaled to
    [0, 1] inside the step), any float becomes float32 (used as it is, e.g. after torch's
    `ToTensor` and `Normalize`). The first record is read once here, so a dataset that
    returns something else fails now, with the fix, rather than in a worker process.

    Args:
      dataset: anything with `__len__` and `__getitem__` (a torch `Dataset`, a torchvision
        dataset, a list); it is pickled into each worker process.
      task: the task of every example (an int), or int [len(dataset)] per example.
      channels: "auto", "first" ([C, H, W] images) or "last" ([H, W, C]); see CHANNEL_LAYOUTS.
    """

    def __init__(self, dataset: Any, task: int | np.ndarray = 0, channels: str = "auto"):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise DataError(
                f"RecordSource: {type(dataset).__name__} has no __len__/__getitem__; give a "
                "map-style dataset (torch.utils.data.Dataset), not an iterable one"
            )
        if channels not in CHANNEL_LAYOUTS:
            raise DataError(
                f"RecordSource: channels={channels!r}; use one of {', '.join(CHANNEL_LAYOUTS)}"
            )
        self.dataset = dataset
        self.channels = channels
        n = len(dataset)
        if n == 0:
            raise DataError(
                f"RecordSource: {type(dataset).__name__} is empty; give a dataset with examples"
            )
        task = np.asarray(task)
        if task.ndim == 0:
            task = np.full(n, int(task), np.int32)
        if task.shape != (n,):
            raise DataError(
                f"RecordSource: task must be an int or [{n}] ints, got shape {task.shape}"
            )
        self.task = task.astype(np.int32)
        # Record 0 is read with every check; its layout then serves every record (the hot path
        # below does no per-record inspection: ~3 µs per MNIST record instead of ~25 µs).
        image, _ = self.record(0)
        self.element_spec = (image.shape, image.dtype)
        self._channels_first = _channels_first(np.shape(_to_numpy(self.dataset[0][0])), channels)

    def __len__(self) -> int:
        return len(self.task)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One record as numpy: {"x": [H, W, C], "y": int32, "task": int32} (a grain source
        item)."""
        image, label = self.record(index)
        return {"x": image, "y": np.int32(label), "task": self.task[index]}

    def record(self, index: int) -> tuple[np.ndarray, int]:
        """Record `index`, converted and checked (`to_image`, `to_label`)."""
        item = self.dataset[int(index)]
        where = f"{type(self.dataset).__name__}[{index}]"
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise DataError(
                f"RecordSource: {where} returned {type(item).__name__}; it must return (image, "
                "label)"
            )
        return to_image(item[0], self.channels, where=where), to_label(item[1], where=where)

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The examples at `indices` (any shape), read one record at a time and stacked at once
        (torch tensors by one `torch.stack`, as the DataLoader's collate does)."""
        flat = np.asarray(indices).reshape(-1)
        shape, dtype = self.element_spec
        name = type(self.dataset).__name__
        items = [self.dataset[index] for index in flat.tolist()]
        try:
            images = [item[0] for item in items]
            if hasattr(images[0], "detach"):  # torch tensors; torch is imported, since they exist
                batch = sys.modules["torch"].stack(images).detach().cpu().numpy()
            else:
                batch = np.stack([np.asarray(image) for image in images])
            labels = np.fromiter((operator.index(item[1]) for item in items), np.int64, len(items))
        except (
            RuntimeError,
            ValueError,
            TypeError,
        ) as error:  # shapes differ, a label is not an int
            raise DataError(
                f"RecordSource: {name}'s records cannot be batched ({error}); every record "
                f"must be (image, int label) with images of one shape, like {name}[0]"
            ) from None
        batch = (
            batch[..., None]
            if batch.ndim == 3
            else batch.transpose(0, 2, 3, 1)
            if self._channels_first
            else batch
        )
        if batch.shape[1:] != shape or (batch.dtype == np.uint8) != (dtype == np.uint8):
            raise DataError(
                f"RecordSource: {name} has images {batch.dtype} {batch.shape[1:]} in this batch, "
                f"the first record had {dtype} {shape}; every image must have one shape and kind"
            )
        lead = np.shape(indices)
        return {
            "x": batch.astype(dtype, copy=False).reshape(*lead, *shape),
            "y": labels.astype(np.int32).reshape(lead),
            "task": self.task[flat].reshape(lead),
        }


def _channels_first(shape: tuple[int, ...], channels: str) -> bool:
    """Whether a 3-D image of `shape` is [C, H, W] under the layout rule `channels`."""
    if len(shape) != 3:
        return False
    return channels == "first" or (
        channels == "auto" and shape[0] in (1, 3) and shape[-1] not in (1, 3)
    )


def _to_numpy(image: Any) -> Any:
    if hasattr(image, "detach"):  # a torch tensor (torch is not imported here)
        return image.detach().cpu().numpy()
    return image


def to_image(image: Any, channels: str = "auto", where: str = "image") -> np.ndarray:
    """A record's image as numpy [H, W, C], uint8 or float32 (see `RecordSource`)."""
    image = np.asarray(_to_numpy(image))  # numpy arrays, PIL images (array interface)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise DataError(
            f"{where}: image of shape {image.shape}; images must be [H, W], [H, W, C] or [C, H, W]"
        )
    if _channels_first(image.shape, channels):
        image = np.moveaxis(image, 0, -1)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        return np.ascontiguousarray(image, np.float32)
    raise DataError(f"{where}: image dtype {image.dtype}; use uint8 pixels (0..255) or floats")


def to_label(label: Any, where: str = "label") -> int:
    """A record's label as a Python int (ints, numpy integers, 0-d integer tensors)."""
    value = np.asarray(label.item() if hasattr(label, "item") else label)
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer):
        raise DataError(
            f"{where}: label {label!r} is not one integer; return the class id as an int"
        )
    return int(value)


def as_source(
    dataset: Any, task: int | np.ndarray = 0, channels: str = "auto"
) -> ArraySource | RecordSource:
    """The right reader for `dataset`: array-backed sources are gathered a batch at a time.

    `ArraySource` is returned as is; an `ImageSource` gives its training split; a torch
    `TensorDataset` (its `.tensors` hold (images, labels)) becomes an `ArraySource` of the
    same arrays; anything else map-style is read record by record (`RecordSource`).
    """
    if isinstance(dataset, (ArraySource, RecordSource)):
        return dataset
    if isinstance(dataset, ImageSource):
        return ArraySource.from_image_source(dataset, "train", int(task))
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, (tuple, list)) and len(tensors) >= 2:
        x = np.asarray(
            tensors[0].detach().cpu().numpy() if hasattr(tensors[0], "detach") else tensors[0]
        )
        y = np.asarray(
            tensors[1].detach().cpu().numpy() if hasattr(tensors[1], "detach") else tensors[1]
        )
        x = x[..., None] if x.ndim == 3 else x
        if x.ndim == 4 and _channels_first(x.shape[1:], channels):
            x = np.moveaxis(x, 1, -1)  # torch's [N, C, H, W] -> [N, H, W, C]
        x = np.ascontiguousarray(x if x.dtype == np.uint8 else x.astype(np.float32))
        task = np.full(len(y), int(task), np.int32) if np.ndim(task) == 0 else np.asarray(task)
        return ArraySource(x, y, task)
    return RecordSource(dataset, task, channels)


def as_map_dataset(
    dataset: Any, task: int | np.ndarray = 0, channels: str = "auto"
) -> grain.MapDataset:
    """A torch-style dataset as a per-record grain `MapDataset` of numpy records
    {"x": [H, W, C], "y", "task"}, for users composing their own grain pipelines
    (`.shuffle(seed).map(...).batch(b)`); the engine reads through `chunk_dataset`."""
    source = dataset if isinstance(dataset, RecordSource) else RecordSource(dataset, task, channels)
    return grain.MapDataset.source(source)


# ---------------- Orders ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ShuffledOrder:
    """Epoch e visits the examples in `np.random.default_rng([*seed, e]).permutation(size)`.

    A numpy permutation costs 5 ms per 60,000 examples; grain's own `MapDataset.shuffle`
    (`index_shuffle`, O(1) memory) costs about 10 µs per index from Python, 0.5-0.9 s per
    such epoch, as much as training it, so the order is drawn here and held per epoch
    (8 bytes per example).
    """

    size: int
    seed: tuple[int, ...] = (0,)

    def epoch(self, e: int) -> np.ndarray:
        return np.random.default_rng([*map(int, self.seed), int(e)]).permutation(self.size)


@dataclasses.dataclass(frozen=True, eq=False)
class FixedOrder:
    """Given orders: epoch e visits `orders[e]` (int [epochs, >= steps * batch_size])."""

    orders: np.ndarray

    def epoch(self, e: int) -> np.ndarray:
        return self.orders[e]


# ---------------- Chunks ------------------------------------------------------------------
class ChunkPlan(Sequence):
    """The chunks of a phase, as a random-access sequence (the head of the grain pipeline).

    Epoch e's batch s holds `order.epoch(e)[s * batch_size:(s + 1) * batch_size]`; an epoch
    runs `steps` full batches, cut into chunks of `chunk` batches (the last one shorter).
    Chunk c is {"indices": int64 [chunk, b], "count": number of real batches}; rows past
    `count` hold index 0, are read as zeros and never trained on (one shape, one program).

    Args:
      order: `ShuffledOrder` or `FixedOrder`.
      batch_size: the global batch size B.
      steps: full batches per epoch (at most len(order's epoch) // batch_size).
      epochs: epochs of the phase.
      chunk: batches per chunk (the engine's steps per dispatch).
      shard: which part of every global batch this process reads (grain's `ShardOptions`;
        `ShardByJaxProcess()` on several hosts): the b = B / shard_count consecutive rows
        from `shard_index * b`. Slicing inside each batch, rather than the example stream,
        keeps the global batches the same for any number of processes.
    """

    def __init__(
        self,
        order,
        *,
        batch_size: int,
        steps: int,
        epochs: int,
        chunk: int,
        shard: grain.sharding.ShardOptions | None = None,
    ):
        shard = shard or grain.sharding.NoSharding()
        if batch_size % shard.shard_count:
            raise DataError(
                f"batch size {batch_size} does not split over {shard.shard_count} processes; "
                f"use a multiple of {shard.shard_count}"
            )
        if min(steps, epochs, chunk, batch_size) < 1:
            raise DataError(
                f"ChunkPlan: steps={steps}, epochs={epochs}, chunk={chunk}, "
                f"batch_size={batch_size} must all be >= 1"
            )
        self.order, self.batch_size, self.steps, self.epochs, self.chunk = (
            order,
            batch_size,
            steps,
            epochs,
            chunk,
        )
        self.local_batch = batch_size // shard.shard_count
        self.first_row = shard.shard_index * self.local_batch
        self.per_epoch = math.ceil(steps / chunk)
        self._cache: tuple[int, np.ndarray] | None = (
            None  # (epoch, its order): chunks come in order
        )

    def __len__(self) -> int:
        return self.epochs * self.per_epoch

    def count(self, c: int) -> int:
        """Real batches in chunk c."""
        start = (c % self.per_epoch) * self.chunk
        return min(self.chunk, self.steps - start)

    def __getitem__(self, c: int) -> dict[str, Any]:
        if not 0 <= c < len(self):
            raise IndexError(f"chunk {c} of {len(self)}")
        epoch, j = divmod(c, self.per_epoch)
        cached = self._cache  # one read: reader threads may replace it meanwhile
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.asarray(self.order.epoch(epoch)))
            if len(cached[1]) < self.steps * self.batch_size:
                raise DataError(
                    f"the order of epoch {epoch} has {len(cached[1])} indices, fewer than "
                    f"{self.steps} batches of {self.batch_size}"
                )
            self._cache = cached
        order = cached[1]
        count = self.count(c)
        start = j * self.chunk
        batches = order[start * self.batch_size : (start + count) * self.batch_size].reshape(
            count, self.batch_size
        )
        indices = np.zeros((self.chunk, self.local_batch), np.int64)
        indices[:count] = batches[:, self.first_row : self.first_row + self.local_batch]
        return {"indices": indices, "count": count}


@dataclasses.dataclass(frozen=True, eq=False)
class ReadChunk(grain.transforms.Map):
    """grain map: a chunk's indices -> its examples {"x": [K, b, ...], "y", "task", "count"};
    rows past `count` are zeros."""

    source: ArraySource | RecordSource

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        indices, count = element["indices"], element["count"]
        real = self.source.read(indices[:count])
        out = {}
        for key, value in real.items():
            full = np.zeros((len(indices), *value.shape[1:]), value.dtype)
            full[:count] = value
            out[key] = full
        return {**out, "count": count}


def chunk_dataset(
    source,
    plan: ChunkPlan,
    *,
    workers: int = 0,
    worker_buffer: int = 2,
    read_threads: int = 1,
    read_ahead: int = 2,
) -> grain.IterDataset:
    """The grain pipeline: `plan`'s chunks read from `source`, in `workers` processes.

    grain's `mp_prefetch` gives worker i the chunks i, i + workers, ... and interleaves them
    back in order, so the chunks do not depend on `workers`; each worker keeps up to
    `worker_buffer` chunks ready. Within a process (each worker, or the main process with
    no workers) `read_threads` threads read up to `read_ahead` chunks ahead. grain's defaults
    (16 threads, 500 elements ahead) suit small records: with chunks as elements they would
    read whole epochs ahead (gigabytes) and, per-record reading being bound by Python's GIL,
    16 threads only contend (the first chunk took 12 s instead of 1 s on 2 cores). The
    iterator's `get_state()`/`set_state()` resume mid-phase at a chunk boundary (a state
    is tied to its number of workers).
    """
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_ahead)
    ds = grain.MapDataset.source(plan).map(ReadChunk(source)).to_iter_dataset(read)
    if workers > 0:
        mark_flags_parsed()
        options = grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=worker_buffer
        )
        ds = ds.mp_prefetch(options, worker_init_fn=_init_worker)
    return ds


def mark_flags_parsed() -> None:
    """grain's multiprocessing reads absl flags (its debug and profiling options) in the
    parent and in each worker; a program that never ran absl's `app.run` (pytest, a notebook,
    a spawned worker) has them unparsed and fails with `UnparsedFlagAccessError`. Marks them
    parsed, keeping every flag's default, when nothing parsed them."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _init_worker(index: int, count: int) -> None:  # runs first in every worker process
    mark_flags_parsed()
    # Ctrl-C reaches every process of the terminal's group: the run's own process stops its
    # workers (closing the stream) after saving; a worker stopping by itself would leave the
    # run waiting for its chunks, and print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
