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
      ordered: False: each task's `train_indices` are a set (sorted), which the engine
        shuffles every epoch. True: they are the stream's order (blurry boundaries,
        MNIST-360), which the engine keeps: every epoch reads them in that order.
      validation: the tasks' held-out training examples as a scenario whose test sets they
        are (`sequax.data.validation.hold_out`), or None.
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
    ordered: bool = False
    validation: Scenario | None = None

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
    increments: Sequence[int] | None = None,
    base: int | None = None,
    increment: int | None = None,
) -> Scenario:
    """Split scenario (class-IL): task t holds classes class_order[t*k:(t+1)*k], k=classes_per_task,
    or the next `increments[t]` classes of the order (a base task plus increments).

    Args:
      source: the dataset.
      num_tasks: number of tasks; num_tasks * classes_per_task must be <= source.num_classes.
      classes_per_task: classes per task (2 for Split MNIST).
      class_order: None for 0, 1, 2, ... (DER's Seq-MNIST); "shuffle" for a permutation of the
        classes drawn from `seed`; "seed1993" for the class-IL literature's order
        (`np.random.seed(1993); np.random.permutation(C)`: iCaRL's and PyCIL's
        utils/data_manager.py); or an explicit sequence of distinct class ids.
      seed: used only by class_order="shuffle".
      increments: classes of each task, possibly unequal (e.g. (4, 2, 2, 2)); its length must
        be num_tasks. Replaces classes_per_task.
      base, increment: the "B{base}-Inc{increment}" protocols (PyCIL's init_cls and
        increment): a first task of `base` classes (base=0: of `increment`), then tasks of
        `increment` classes until every class is used; num_tasks must be that count.
    """
    num_classes = source.num_classes
    sizes = _increments(num_tasks, classes_per_task, increments, base, increment, num_classes)
    needed = sum(sizes)
    if num_tasks < 1 or min(sizes) < 1 or needed > num_classes:
        raise DataError(
            f"split: {num_tasks} tasks of {'+'.join(map(str, sizes))} = {needed} classes, but "
            f"{source.name} has {num_classes}; use num_tasks * classes_per_task <= {num_classes} "
            "(or increments summing to at most that; each task >= 1)"
        )
    order = _class_order(class_order, num_classes, needed, seed)
    task_classes = np.zeros((num_tasks, num_classes), bool)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for t in range(num_tasks):
        task_classes[t, order[starts[t] : starts[t + 1]]] = True
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
    """Builds a scenario by name (`SCENARIO_BUILDERS`: "split", "permuted", "rotated",
    "new_instances", "mnist_360") with that builder's kwargs."""
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
        if class_order == "seed1993":  # iCaRL's and PyCIL's order: np.random.seed(1993)
            return np.random.RandomState(1993).permutation(num_classes)
        if class_order != "shuffle":
            raise DataError(
                f"split: class_order={class_order!r}; use None, 'shuffle', 'seed1993' or a "
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


def _increments(num_tasks, classes_per_task, increments, base, increment, num_classes):
    """Each task's number of classes, from one of the three ways `split` takes them."""
    if base is not None or increment is not None:
        if increments is not None:
            raise DataError("split: give increments or base and increment, not both")
        if increment is None or base is None or increment < 1 or base < 0 or base > num_classes:
            raise DataError(
                f"split: base={base}, increment={increment}; give both, increment >= 1 and "
                f"0 <= base <= {num_classes}"
            )
        first = base or increment
        rest, left = divmod(num_classes - first, increment)
        if left:
            raise DataError(
                f"split: base={base}, increment={increment} do not divide {num_classes} "
                f"classes ({num_classes - first} after the first task); choose another increment"
            )
        sizes = [first] + [increment] * rest
        if len(sizes) != num_tasks:
            raise DataError(
                f"split: base={base}, increment={increment} make {len(sizes)} tasks of "
                f"{num_classes} classes; set data.num_tasks={len(sizes)}"
            )
        return sizes
    if increments is not None:
        sizes = [int(k) for k in increments]
        if len(sizes) != num_tasks:
            raise DataError(
                f"split: increments={sizes} list {len(sizes)} tasks; set data.num_tasks="
                f"{len(sizes)}"
            )
        return sizes
    return [classes_per_task] * num_tasks


def new_instances(source: ImageSource, num_tasks: int = 5, seed: int = 0) -> Scenario:
    """New-instance (NI) stream: every task holds every class, each with its own examples.

    Each class's training examples are shuffled (`seed`) and dealt into `num_tasks` parts of
    (near) equal size, so tasks are disjoint and balanced per class (Lomonaco & Maltoni,
    "CORe50", CoRL 2017; Avalanche's `ni_benchmark`). Every task is tested on the whole test
    set. Setting "domain": one shared head, all classes in every task.
    """
    _check_num_tasks(num_tasks, "new_instances")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_tasks)]
    for c in range(source.num_classes):
        members = rng.permutation(np.flatnonzero(source.train_y == c))
        if 0 < len(members) < num_tasks:
            raise DataError(
                f"new_instances: class {c} of {source.name} has {len(members)} training "
                f"examples, fewer than the {num_tasks} tasks; use fewer tasks"
            )
        for t, part in enumerate(np.array_split(members, num_tasks)):
            parts[t].append(part)
    train = tuple(np.sort(np.concatenate(p)) for p in parts)
    test_all = np.arange(len(source.test_y))
    return _scenario(
        f"ni_{source.name}",
        "domain",
        source,
        np.ones((num_tasks, source.num_classes), bool),
        IdentityTransform(),
        train,
        (test_all,) * num_tasks,
    )


SCENARIO_BUILDERS["new_instances"] = new_instances


def describe(scenario: Scenario) -> str:
    """One line saying what a scenario built: its tasks' classes (class-IL) or sizes; for a
    stream read in its own order (`ordered`), how much each segment holds of its own task."""
    line = _describe_tasks(scenario)
    if not scenario.ordered:
        return line
    labels = scenario.source.train_y
    own = np.array([scenario.task_classes[s][labels[index]].mean()
                    for s, index in enumerate(scenario.train_indices)])  # fmt: skip
    share = f"{100 * own.min():.0f}" if own.min() == own.max() else (
        f"{100 * own.min():.0f}-{100 * own.max():.0f}")  # fmt: skip
    return f"{line}; read in the stream's order, each segment {share} % its own task's classes"


def _describe_tasks(scenario: Scenario) -> str:
    if scenario.setting == "class":
        groups = [np.flatnonzero(row).tolist() for row in scenario.task_classes]
        sizes = [len(g) for g in groups]
        counts = "+".join(map(str, sizes)) if len(set(sizes)) > 1 else f"{sizes[0]}"
        shown = groups if scenario.num_classes <= 20 else f"{groups[0]}, {groups[1:2]}..."
        return f"{scenario.name}: {scenario.num_tasks} tasks of {counts} classes: {shown}"
    sizes = sorted(set(scenario.train_sizes))
    shown = sizes[0] if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    return (f"{scenario.name}: {scenario.num_tasks} tasks, every class in each, {shown} "
            "training examples per task")  # fmt: skip


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
