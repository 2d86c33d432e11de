"""Scenarios: a source cut into a stream of tasks (Split, Permuted, Rotated MNIST).

A `Scenario` is immutable and builds each task on demand from its source: `train(t)` and
`test(t)` select the task's examples and apply the task's transform (a pixel permutation, a
rotation, or nothing). Nothing is cached, so 20 Permuted-MNIST tasks never sit in memory at
once. Labels are always the source's global class ids (0..9), never remapped per task.

    from sequax.data import load_source, split
    scenario = split(load_source("mnist_packaged"), num_tasks=5, classes_per_task=2)
    images, labels = scenario.train(0)   # uint8 [n, 28, 28, 1], int32 [n] with labels in {0, 1}

Settings: "class" (Split: class-IL over one shared head, task-IL numbers come from the same
run by masking the logits with `task_classes[t]`) and "domain" (Permuted/Rotated: every task
has all classes, shared head). Protocol references: Buzzega et al. 2020 (DER, mammoth code)
and Mirzadeh et al. 2020 (Stable SGD); see shared/PROTOCOLS.md §A and §B.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sequax.data.errors import DataError
from sequax.data.sources import ImageSource

# (task id, uint8 images [n, H, W, C]) -> uint8 images [n, H, W, C]
Transform = Callable[[int, np.ndarray], np.ndarray]

ROTATION_PROTOCOLS = ("uniform", "step", "stratified")
# torchvision's rotate defaults to nearest, and the DER code uses that default.
INTERPOLATION_ORDERS = {"nearest": 0, "bilinear": 1}


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario:
    """A stream of `num_tasks` tasks over one source, built lazily per task.

    Attributes:
      name: e.g. "split_mnist", "permuted_mnist", "rotated_mnist_packaged".
      setting: "class" (Split) or "domain" (Permuted, Rotated).
      num_tasks: number of tasks.
      num_classes: width of the single shared head (10 for MNIST).
      task_classes: bool [num_tasks, num_classes]; row t marks the labels of task t (all True
        in the domain setting). Task-IL evaluation masks logits with it.
      train_sizes: examples per task, train.
      test_sizes: examples per task, test.
      source: the dataset the tasks are cut from.
      transform: the per-task image transform (identity for Split).
      train_indices: per task, sorted indices into `source.train_x` (file order is kept).
      test_indices: per task, sorted indices into `source.test_x`.
      permutations: int [num_tasks, H*W*C] for Permuted scenarios, else None.
      angles: float [num_tasks] in degrees for Rotated scenarios, else None.
      pixel_maps: int32 [num_tasks, H*W*C] when each task's transform only moves pixels
        (Permuted; Rotated with nearest interpolation), else None: out.flat[i] =
        in.flat[pixel_maps[t, i]], where the index H*W*C stands for a black (0) pixel. The
        engine applies these maps on device, per batch (`sequax.core.task_data`), which
        lets vmapped runs each draw their own permutations or angles.
    """

    name: str
    setting: str
    num_tasks: int
    num_classes: int
    task_classes: np.ndarray
    train_sizes: tuple[int, ...]
    test_sizes: tuple[int, ...]
    source: ImageSource
    transform: Transform
    train_indices: tuple[np.ndarray, ...]
    test_indices: tuple[np.ndarray, ...]
    permutations: np.ndarray | None = None
    angles: np.ndarray | None = None
    pixel_maps: np.ndarray | None = None

    def train(self, t: int, transformed: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Task t's training set: (uint8 [n, 28, 28, 1], int32 [n]), transform applied unless
        `transformed=False` (the source's images, for a consumer that applies `pixel_maps`)."""
        self._check_task(t)
        index = self.train_indices[t]
        x = self.source.train_x[index]
        return (self.transform(t, x) if transformed else x), self.source.train_y[index]

    def test(self, t: int, transformed: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Task t's test set: (uint8 [n, 28, 28, 1], int32 [n]); `transformed` as in `train`."""
        self._check_task(t)
        index = self.test_indices[t]
        x = self.source.test_x[index]
        return (self.transform(t, x) if transformed else x), self.source.test_y[index]

    def _check_task(self, t: int) -> None:
        if not 0 <= t < self.num_tasks:
            raise IndexError(f"task {t} out of range for {self.name} ({self.num_tasks} tasks)")


@dataclasses.dataclass(frozen=True)
class IdentityTransform:
    """Leaves images unchanged (Split scenarios)."""

    def __call__(self, t: int, images: np.ndarray) -> np.ndarray:
        return images


@dataclasses.dataclass(frozen=True, eq=False)
class PermuteTransform:
    """Task t reorders the flattened pixels: out.flat[i] = in.flat[permutations[t, i]]."""

    permutations: np.ndarray

    def __call__(self, t: int, images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1)
        return flat[:, self.permutations[t]].reshape(images.shape)


@dataclasses.dataclass(frozen=True, eq=False)
class RotateTransform:
    """Task t rotates every image by angles[t] degrees about the image centre.

    Positive angles turn the image counter-clockwise as displayed (row 0 at the top), the
    same direction as torchvision's `rotate`; at 90° this equals `np.rot90(image)`. Corners
    uncovered by the rotation are filled with 0 (black) and the image keeps its size.
    """

    angles: np.ndarray
    order: int

    def __call__(self, t: int, images: np.ndarray) -> np.ndarray:
        if self.order == 0:  # nearest: the same pixels as scipy's rotate, by one gather
            return apply_pixel_map(images, rotation_map(images.shape[1:], float(self.angles[t])))
        # One call over the whole [n, H, W] batch: about 1 s for 60k MNIST images on one core.
        import scipy.ndimage  # on first use: a third of a second to import

        rotated = scipy.ndimage.rotate(
            images[..., 0],
            float(self.angles[t]),
            axes=(1, 2),
            reshape=False,
            order=self.order,
            mode="constant",
            cval=0,
        )
        return rotated[..., None]


def rotation_map(shape: Sequence[int], angle: float) -> np.ndarray:
    """int32 [H*W*C]: the pixel map of a nearest-neighbour rotation by `angle` degrees.

    Rotates an image of pixel indices (1-based, 0 = outside) with the same call as
    `RotateTransform` at order 0, which copies values without interpolating them, so the
    map reproduces that rotation exactly; uncovered pixels get the fill index H*W*C.
    """
    h, w, c = shape
    size = h * w * c
    index = np.arange(1, size + 1, dtype=np.float64).reshape(h, w, c)
    import scipy.ndimage

    moved = scipy.ndimage.rotate(
        index, angle, axes=(0, 1), reshape=False, order=0, mode="constant", cval=0
    )
    moved = np.rint(moved).astype(np.int64).reshape(-1) - 1
    return np.where(moved < 0, size, moved).astype(np.int32)


def apply_pixel_map(images: np.ndarray, pixel_map: np.ndarray) -> np.ndarray:
    """Host-side `out.flat[i] = in.flat[pixel_map[i]]` per image, index H*W*C = black."""
    flat = images.reshape(len(images), -1)
    flat = np.concatenate([flat, np.zeros((len(images), 1), images.dtype)], axis=1)
    return flat[:, pixel_map].reshape(images.shape)


def split(
    source: ImageSource,
    num_tasks: int = 5,
    classes_per_task: int = 2,
    class_order: None | str | Sequence[int] = None,
    seed: int = 0,
) -> Scenario:
    """Split scenario (class-IL): task t holds classes class_order[t*k:(t+1)*k], k=classes_per_task.

    Args:
      source: the dataset.
      num_tasks: number of tasks; num_tasks * classes_per_task must be <= source.num_classes.
      classes_per_task: classes per task (2 for Split MNIST).
      class_order: None for 0, 1, 2, ... (DER's Seq-MNIST); "shuffle" for a permutation of the
        classes drawn from `seed`; or an explicit sequence of distinct class ids.
      seed: used only by class_order="shuffle".
    """
    num_classes = source.num_classes
    needed = num_tasks * classes_per_task
    if num_tasks < 1 or classes_per_task < 1 or needed > num_classes:
        raise DataError(
            f"split: {num_tasks} tasks x {classes_per_task} classes = {needed} classes, but "
            f"{source.name} has {num_classes}; use num_tasks * classes_per_task <= "
            f"{num_classes} (both >= 1)"
        )
    order = _class_order(class_order, num_classes, needed, seed)
    task_classes = np.zeros((num_tasks, num_classes), bool)
    for t in range(num_tasks):
        task_classes[t, order[t * classes_per_task : (t + 1) * classes_per_task]] = True
    train_indices = tuple(np.flatnonzero(row[source.train_y]) for row in task_classes)
    test_indices = tuple(np.flatnonzero(row[source.test_y]) for row in task_classes)
    return _scenario(
        f"split_{source.name}",
        "class",
        source,
        task_classes,
        IdentityTransform(),
        train_indices,
        test_indices,
    )


def permuted(
    source: ImageSource, num_tasks: int, seed: int = 0, first_task_identity: bool = False
) -> Scenario:
    """Permuted scenario (domain-IL): each task applies its own fixed random pixel permutation.

    Args:
      source: the dataset; every task uses all of it.
      num_tasks: number of tasks (20 in both protocols).
      seed: seeds `np.random.default_rng`; permutation t is the t-th draw.
      first_task_identity: True for the Mirzadeh protocol (task 0 is the plain dataset);
        False for the DER protocol (every task, the first included, is permuted).
    """
    _check_num_tasks(num_tasks, "permuted")
    num_pixels = int(np.prod(source.train_x.shape[1:]))
    rng = np.random.default_rng(seed)
    permutations = np.stack([rng.permutation(num_pixels) for _ in range(num_tasks)])
    if first_task_identity:
        # Overwrite rather than skip the draw, so tasks 1.. are the same with or without it.
        permutations[0] = np.arange(num_pixels)
    return _domain_scenario(
        f"permuted_{source.name}",
        source,
        num_tasks,
        PermuteTransform(permutations),
        permutations=permutations,
        pixel_maps=permutations.astype(np.int32),
    )


def rotated(
    source: ImageSource,
    num_tasks: int,
    seed: int = 0,
    protocol: str = "uniform",
    max_angle: float = 180.0,
    step: float = 10.0,
    jitter: float = 10.0,
    interpolation: str = "nearest",
) -> Scenario:
    """Rotated scenario (domain-IL): each task rotates all its images by one fixed angle.

    Args:
      source: the dataset; every task uses all of it.
      num_tasks: number of tasks (20 in both protocols).
      seed: seeds `np.random.default_rng`, which draws all angles at construction.
      protocol: "uniform" (DER): angle_t ~ U[0, max_angle). "step" (Mirzadeh): with 0-based
        t, angle_t = t * step - U[0, jitter), i.e. the paper's (t-1)*10° - U[0, 10) with
        1-based t; so task 0 is a small negative (clockwise) angle in (-jitter, 0].
        "stratified" (GEM's `mnist_rotations.py`, used by La-MAML): task t's angle is drawn
        from its own bin, U[t, t + 1) * max_angle / num_tasks.
      max_angle: upper bound of the "uniform" protocol, degrees.
      step: per-task increment of the "step" protocol, degrees.
      jitter: width of the random offset subtracted in the "step" protocol, degrees.
      interpolation: "nearest" (torchvision's default, used by the DER code) or "bilinear".
        Nearest rotations are pixel maps (`Scenario.pixel_maps`), applied on device.

    Positive angles rotate counter-clockwise as displayed, like torchvision (see
    `RotateTransform`).
    """
    _check_num_tasks(num_tasks, "rotated")
    if protocol not in ROTATION_PROTOCOLS:
        raise DataError(
            f"rotated: unknown protocol {protocol!r}; use one of {', '.join(ROTATION_PROTOCOLS)}"
        )
    if interpolation not in INTERPOLATION_ORDERS:
        raise DataError(
            f"rotated: unknown interpolation {interpolation!r}; use one of "
            f"{', '.join(INTERPOLATION_ORDERS)}"
        )
    rng = np.random.default_rng(seed)
    if protocol == "uniform":
        angles = rng.uniform(0.0, max_angle, size=num_tasks)
    elif protocol == "stratified":
        angles = (
            (np.arange(num_tasks) + rng.uniform(0.0, 1.0, size=num_tasks)) * max_angle / num_tasks
        )
    else:
        angles = np.arange(num_tasks) * step - rng.uniform(0.0, jitter, size=num_tasks)
    transform = RotateTransform(angles, INTERPOLATION_ORDERS[interpolation])
    maps = None
    if interpolation == "nearest":
        shape = source.train_x.shape[1:]
        maps = np.stack([rotation_map(shape, float(a)) for a in angles])
    return _domain_scenario(
        f"rotated_{source.name}", source, num_tasks, transform, angles=angles, pixel_maps=maps
    )


def subsample(
    scenario: Scenario,
    train_per_task: int | None = None,
    test_per_task: int | None = None,
    seed: int = 0,
) -> Scenario:
    """Keeps a random `train_per_task` / `test_per_task` examples of each task (None: all).

    Used by `:local` configs to shrink runs. Deterministic: task t's train subset is drawn
    from `np.random.default_rng((seed, 0, t))` (test: `(seed, 1, t)`) and kept in file order; a
    task smaller than the request keeps all its examples. Transforms, permutations and angles
    are unchanged.
    """
    for label, count in (("train_per_task", train_per_task), ("test_per_task", test_per_task)):
        if count is not None and count < 1:
            raise DataError(f"subsample: {label}={count}; use a positive count or None (all)")
    train_indices = _subsample_indices(scenario.train_indices, train_per_task, seed, 0)
    test_indices = _subsample_indices(scenario.test_indices, test_per_task, seed, 1)
    return dataclasses.replace(
        scenario,
        train_indices=train_indices,
        test_indices=test_indices,
        train_sizes=tuple(len(i) for i in train_indices),
        test_sizes=tuple(len(i) for i in test_indices),
    )


SCENARIO_BUILDERS: dict[str, Callable[..., Scenario]] = {
    "split": split,
    "permuted": permuted,
    "rotated": rotated,
}


def make_scenario(name: str, source: ImageSource, **kwargs: Any) -> Scenario:
    """Builds a scenario by name ("split", "permuted", "rotated") with that builder's kwargs."""
    if name not in SCENARIO_BUILDERS:
        raise DataError(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_BUILDERS)}")
    builder = SCENARIO_BUILDERS[name]
    accepted = [p for p in inspect.signature(builder).parameters if p != "source"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise DataError(
            f"scenario {name!r} got unknown arguments {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted)}"
        )
    try:
        return builder(source, **kwargs)
    except TypeError as error:  # a required argument (e.g. num_tasks) is missing
        raise DataError(f"scenario {name!r}: {error}; accepted: {', '.join(accepted)}") from None


def _class_order(
    class_order: None | str | Sequence[int], num_classes: int, needed: int, seed: int
) -> np.ndarray:
    if class_order is None:
        return np.arange(num_classes)
    if isinstance(class_order, str):
        if class_order != "shuffle":
            raise DataError(
                f"split: class_order={class_order!r}; use None, 'shuffle' or a "
                f"sequence of class ids"
            )
        return np.random.default_rng(seed).permutation(num_classes)
    order = np.asarray(class_order)
    if (
        order.ndim != 1
        or len(order) < needed
        or len(set(order.tolist())) != len(order)
        or not np.issubdtype(order.dtype, np.integer)
        or not np.all((0 <= order) & (order < num_classes))
    ):
        raise DataError(
            f"split: class_order={list(class_order)} is invalid; give at least "
            f"{needed} distinct class ids in [0, {num_classes})"
        )
    return order


def _check_num_tasks(num_tasks: int, builder: str) -> None:
    if num_tasks < 1:
        raise DataError(f"{builder}: num_tasks={num_tasks}; use num_tasks >= 1")


def _domain_scenario(
    name: str, source: ImageSource, num_tasks: int, transform: Transform, **extras: np.ndarray
) -> Scenario:
    task_classes = np.ones((num_tasks, source.num_classes), bool)
    # Every task shares the same index arrays: they are read-only, so sharing is safe.
    train_all, test_all = np.arange(len(source.train_y)), np.arange(len(source.test_y))
    return _scenario(
        name,
        "domain",
        source,
        task_classes,
        transform,
        (train_all,) * num_tasks,
        (test_all,) * num_tasks,
        **extras,
    )


def _scenario(
    name: str,
    setting: str,
    source: ImageSource,
    task_classes: np.ndarray,
    transform: Transform,
    train_indices: tuple[np.ndarray, ...],
    test_indices: tuple[np.ndarray, ...],
    **extras: np.ndarray,
) -> Scenario:
    extras = {k: v for k, v in extras.items() if v is not None}
    for array in (task_classes, *train_indices, *test_indices, *extras.values()):
        array.setflags(write=False)  # a frozen scenario must not change under its users
    return Scenario(
        name=name,
        setting=setting,
        num_tasks=len(task_classes),
        num_classes=source.num_classes,
        task_classes=task_classes,
        train_sizes=tuple(len(i) for i in train_indices),
        test_sizes=tuple(len(i) for i in test_indices),
        source=source,
        transform=transform,
        train_indices=train_indices,
        test_indices=test_indices,
        **extras,
    )


def _subsample_indices(
    indices: tuple[np.ndarray, ...], count: int | None, seed: int, stream: int
) -> tuple[np.ndarray, ...]:
    if count is None:
        return indices
    kept = []
    for t, index in enumerate(indices):
        if len(index) <= count:
            kept.append(index)
            continue
        # (seed, stream, t): train and test subsets and each task draw independently.
        rng = np.random.default_rng((seed, stream, t))
        chosen = index[np.sort(rng.choice(len(index), size=count, replace=False))]
        chosen.setflags(write=False)
        kept.append(chosen)
    return tuple(kept)
