"""MNIST-360: the general-continual-learning stream of DER (Buzzega et al. 2020), as a Scenario.

Buzzega, Boschini, Porrello, Abati, Calderara, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline", NeurIPS 2020, §4 (MNIST-360). Reference code: mammoth
(github.com/aimagelab/mammoth), `datasets/mnist_360.py` and `datasets/transforms/rotation.py`
(`IncrementalRotation`); the first commit (7ab9db9, Oct 2020) is the paper's code.

The stream shows the digits 0-8 (9 classes) two at a time, each turning slowly:

  * each class j's training examples (file order, n_j of them) are cut into 2*rounds = 6
    consecutive chunks of n_j // 6 + 1 examples (the last one shorter);
  * `rounds` = 3 rounds of the 9 pairs (0,1), (1,2), ..., (7,8), (8,0): 27 segments. A pair
    takes the next unused chunk of each of its classes, from the END of the class's list
    (mammoth's `list.pop()`): the pair (0,1) of round 1 reads chunk 5 of both classes;
  * a segment is a run of batches of `batch_size` (16) examples; a batch holds
    b0 = min(round(r0 / (r0 + r1) * B), r0) examples of the pair's first class, then
    b1 = min(B - b0, r1) of the second, where r0, r1 are the examples the two chunks have
    left (Python's round: half to even). When r0 or r1 reaches 0 the stream moves to the
    next pair; what the other chunk had left is never seen (rare: the mix empties both
    chunks together unless rounding ends one early). Real MNIST at B = 16 leaves nothing:
    all 54051 training images of 0-8, once each, in 3387 batches (`LENGTH = 54051` in
    mammoth's first commit);
  * the k-th training image of class j in the whole stream (k = 0, 1, ...: one counter per
    class, shared by its 6 chunks) is rotated by ((j - 1) * 60 + k * 360 / n_j) mod 360
    degrees, so each digit turns once round over the run, each starting at its own angle;
  * the k-th test image of class j is rotated by k * 360 / n_j^test degrees (init 0).

Rotations are torchvision's `F.rotate` with its default nearest interpolation: positive
angles counter-clockwise, about the image centre, corners filled with 0; each image gets
`sequax.data.scenarios.rotation_map` of its own angle (scipy's order-0 `rotate`, the
convention `RotateTransform` documents), rendered once at construction (about 3 s for MNIST).

The Scenario: setting "class" over a 9-way head, `ordered=True`. Its source is a derived
`ImageSource` (name "<source>_360") whose `train_x` holds the stream itself, pre-rotated, one
image per stream position, and whose `test_x` holds the rotated test images of classes 0-8
(file order); the transform is the identity. Task t is segment t: `train_indices[t]` are its
positions in the stream, in the stream's order (its batches end to end: an engine batching
each task by `batch_size` from its start reproduces mammoth's batches exactly);
`task_classes[t]` marks its two classes; `test_indices[t]` are the test images of those two
classes. Every class is in 2 * rounds segments, so the test-size-weighted mean of a row of
final accuracies, sum_t test_sizes[t] * acc[t] / sum_t test_sizes[t], counts every test
image 2 * rounds times: it equals the pooled accuracy over the whole test set, which is
what mammoth reports for MNIST-360.

Deviations from mammoth, all deliberate:

  * mammoth draws each training image with `next(iter(loader))` from a shuffled batch-1
    loader over the chunk, i.e. WITH replacement: an image can come twice, others never.
    Here each chunk is read WITHOUT replacement, in a permutation drawn from `seed` (class
    by class, chunk by chunk); the stream's classes, batch sizes and angles are unchanged.
  * Test set: the paper's code draws each of a class's ceil(n/B) test batches with
    `next(iter(loader))` from a shuffled loader (a fresh random batch each time, images
    repeat); since Dec 2023 (commit f028c0e, shuffle=False) it re-reads the class's FIRST B
    test images every time, at increasing angles. Here every test image is used exactly
    once, the k-th of class j (file order) at k * 360 / n_j: the same angles, each image once.
  * mammoth's `--validation` split is not reproduced (use a source cut for validation).
  * The head: num_classes is 9; the paper's code built `MNISTMLP(28 * 28, 10)`, a 10-way
    head whose tenth output is never a target (current mammoth sizes it from N_CLASSES = 9).

    from sequax.data import load_source
    from sequax.data.mnist360 import mnist_360
    scenario = mnist_360(load_source("mnist", "../shared/data"))   # 27 tasks, 54051 images
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from sequax.data import decoded_cache
from sequax.data.errors import DataError
from sequax.data.scenarios import (
    SCENARIO_BUILDERS,
    IdentityTransform,
    Scenario,
    _scenario,
    rotation_map,
)
from sequax.data.sources import ImageSource

NUM_CLASSES = 9  # digits 0-8; MNIST's 9s are dropped
IMAGE_SHAPE = (28, 28, 1)
START_STEP = 60.0  # class j's first training angle is (j - 1) * 60 degrees
_IMAGES_PER_GATHER = 4096  # pixel maps held at once: 4096 * 784 int32 = 13 MB
ROTATION_VERSION = 1  # bump when `_rotate` changes, so cached rotations are not read


@dataclasses.dataclass(frozen=True, eq=False)
class Stream360:
    """Where each image of the MNIST-360 stream comes from (the plan `mnist_360` renders).

    Attributes:
      train_index: int64 [L]: per stream position, the index into the source's `train_x`.
      train_labels: int32 [L]: its class (0-8).
      train_angles: float64 [L]: its rotation, degrees in [0, 360).
      segment_bounds: int64 [S + 1]: segment s is stream positions
        segment_bounds[s]:segment_bounds[s + 1] (S = 9 * rounds).
      pairs: int [S, 2]: the two classes of each segment, in batch order (first, second).
      batches: int64 [num_batches, 3]: per batch, (segment, images of the first class,
        images of the second class); a batch lists its first-class images first.
      test_index: int64 [M]: the source's test images of classes 0-8, file order.
      test_angles: float64 [M]: their rotations, degrees in [0, 360).
    """

    train_index: np.ndarray
    train_labels: np.ndarray
    train_angles: np.ndarray
    segment_bounds: np.ndarray
    pairs: np.ndarray
    batches: np.ndarray
    test_index: np.ndarray
    test_angles: np.ndarray


def mnist_360(
    source: ImageSource,
    batch_size: int = 16,
    rounds: int = 3,
    seed: int = 0,
    num_tasks: int | None = None,
) -> Scenario:
    """MNIST-360 (DER, NeurIPS 2020) as an ordered class-IL Scenario of 9 * rounds segments.

    See the module docstring for the stream, the Scenario's layout and the deviations from
    mammoth (chunks read without replacement; each test image used once).

    Args:
      source: MNIST: 28x28x1 images, classes 0-8 used (others dropped); each of those
        classes needs enough training images for 2 * rounds non-empty chunks and at least
        one test image.
      batch_size: the stream's batch size B (mammoth's default for MNIST-360: 16); it fixes
        how the two classes of a segment mix and hence the segments' lengths.
      rounds: passes over the 9 class pairs (3 in the paper); each class is cut into
        2 * rounds chunks.
      seed: seeds `np.random.default_rng`, which draws the order in which each chunk's images
        are read (mammoth's shuffled loaders).
      num_tasks: None, or the 9 * rounds segments (27): a check only, for the config route
        (`make_scenario` gets `config.data.num_tasks` for every scenario).

    Returns:
      A Scenario named "mnist_360", setting "class", num_classes 9, `ordered=True`, whose
      source holds the pre-rotated stream (see the module docstring); `mnist_360_stream`
      gives the source index and angle of every image.

    Raises:
      DataError: a source that does not fit (fewer than 9 classes, images other than
        28x28x1, a class too small) or batch_size / rounds below 1.
    """
    if num_tasks is not None and num_tasks != NUM_CLASSES * rounds:
        raise DataError(
            f"mnist_360: num_tasks={num_tasks}, but {rounds} rounds of {NUM_CLASSES} class "
            f"pairs make {NUM_CLASSES * rounds} segments; set data.num_tasks="
            f"{NUM_CLASSES * rounds} (or data.options.rounds)"
        )
    plan = mnist_360_stream(source, batch_size, rounds, seed)
    train_x = _rotated(source.train_x[plan.train_index], plan.train_angles, "mnist360_train")
    test_x = _rotated(source.test_x[plan.test_index], plan.test_angles, "mnist360_test")
    test_y = source.test_y[plan.test_index]
    derived = ImageSource(
        train_x=train_x,
        train_y=plan.train_labels.copy(),
        test_x=test_x,
        test_y=test_y.astype(np.int32),
        num_classes=NUM_CLASSES,
        name=f"{source.name}_360",
    )
    num_segments = len(plan.pairs)
    task_classes = np.zeros((num_segments, NUM_CLASSES), bool)
    task_classes[np.arange(num_segments)[:, None], plan.pairs] = True
    bounds = plan.segment_bounds
    train_indices = tuple(np.arange(bounds[s], bounds[s + 1]) for s in range(num_segments))
    test_indices = tuple(np.flatnonzero(row[derived.test_y]) for row in task_classes)
    scenario = _scenario(
        "mnist_360",
        "class",
        derived,
        task_classes,
        IdentityTransform(),
        train_indices,
        test_indices,
    )
    return dataclasses.replace(scenario, ordered=True)


def mnist_360_stream(
    source: ImageSource, batch_size: int = 16, rounds: int = 3, seed: int = 0
) -> Stream360:
    """The MNIST-360 plan of `source` (arguments as `mnist_360`), without rendering images."""
    counts = _check(source, batch_size, rounds)
    rng = np.random.default_rng(seed)
    # chunks[j]: class j's chunks in file order, each read in its own seeded permutation.
    chunks: list[list[np.ndarray]] = []
    for j in range(NUM_CLASSES):
        members = np.flatnonzero(source.train_y == j)
        size = len(members) // (2 * rounds) + 1
        cut = [members[k * size : (k + 1) * size] for k in range(2 * rounds)]
        chunks.append([chunk[rng.permutation(len(chunk))] for chunk in cut])
    index: list[np.ndarray] = []
    batches: list[tuple[int, int, int]] = []
    bounds, pairs = [0], []
    seen = [0] * NUM_CLASSES  # images of each class read so far: its rotation counter
    counter: list[np.ndarray] = []
    for s in range(NUM_CLASSES * rounds):
        pair = (s % NUM_CLASSES, (s + 1) % NUM_CLASSES)
        active = [chunks[c].pop() for c in pair]  # from the end, like mammoth's list.pop()
        left = [len(a) for a in active]
        read = [0, 0]
        length = 0
        while left[0] > 0 and left[1] > 0:
            first = min(int(round(left[0] / (left[0] + left[1]) * batch_size)), left[0])
            second = min(batch_size - first, left[1])
            for side, take in enumerate((first, second)):
                c = pair[side]
                index.append(active[side][read[side] : read[side] + take])
                counter.append(np.arange(seen[c], seen[c] + take))
                read[side] += take
                left[side] -= take
                seen[c] += take
            batches.append((s, first, second))
            length += first + second
        bounds.append(bounds[-1] + length)
        pairs.append(pair)
    train_index = np.concatenate(index).astype(np.int64)
    train_labels = source.train_y[train_index].astype(np.int32)
    k = np.concatenate(counter).astype(np.float64)
    step = 360.0 / counts[train_labels]
    start = (train_labels.astype(np.float64) - 1.0) * START_STEP
    test_index = np.flatnonzero(source.test_y < NUM_CLASSES)
    test_labels = source.test_y[test_index]
    test_counts = np.bincount(test_labels, minlength=NUM_CLASSES)
    rank = np.zeros(len(test_index), np.int64)  # position of each test image within its class
    for j in range(NUM_CLASSES):
        rank[test_labels == j] = np.arange(test_counts[j])
    return Stream360(
        train_index=train_index,
        train_labels=train_labels,
        train_angles=np.mod(k * step + start, 360.0),
        segment_bounds=np.asarray(bounds, np.int64),
        pairs=np.asarray(pairs),
        batches=np.asarray(batches, np.int64).reshape(-1, 3),
        test_index=test_index.astype(np.int64),
        test_angles=np.mod(rank * (360.0 / test_counts[test_labels]), 360.0),
    )


def _check(source: ImageSource, batch_size: int, rounds: int) -> np.ndarray:
    """The training counts of classes 0-8, after refusing a source or argument that does
    not fit."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise DataError(f"mnist_360: batch_size={batch_size}; use an integer >= 1 (16 in DER)")
    if int(rounds) != rounds or rounds < 1:
        raise DataError(f"mnist_360: rounds={rounds}; use an integer >= 1 (3 in DER)")
    for split, images in (("train", source.train_x), ("test", source.test_x)):
        if tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise DataError(
                f"mnist_360: {source.name} has {split} images of shape {images.shape[1:]}; "
                "MNIST-360 needs 28x28x1 images (use the mnist source)"
            )
    if source.num_classes < NUM_CLASSES:
        raise DataError(
            f"mnist_360: {source.name} has {source.num_classes} classes; MNIST-360 needs "
            f"at least {NUM_CLASSES} (digits 0-8; use the mnist source)"
        )
    counts = np.bincount(source.train_y, minlength=NUM_CLASSES)[:NUM_CLASSES]
    test_counts = np.bincount(source.test_y, minlength=NUM_CLASSES)[:NUM_CLASSES]
    for j in range(NUM_CLASSES):
        n, parts = int(counts[j]), 2 * rounds
        if n - (parts - 1) * (n // parts + 1) < 1 or test_counts[j] < 1:
            raise DataError(
                f"mnist_360: class {j} of {source.name} has {n} training and "
                f"{test_counts[j]} test images; its {parts} chunks of {n // parts + 1} "
                "need one image in the last chunk and one test image; use fewer rounds "
                "or a larger source"
            )
    return counts


def _rotated(images: np.ndarray, angles: np.ndarray, name: str) -> np.ndarray:
    """`_rotate(images, angles)`, kept in the decoded-data cache under a digest of the images
    and the angles (a rerun loads the 42 MB in a tenth of a second instead of 3-5 s)."""
    digest = hashlib.blake2b(np.ascontiguousarray(images).data, digest_size=16)
    digest.update(np.ascontiguousarray(angles, np.float64).data)
    key = f"{digest.hexdigest()}|{images.shape}|{ROTATION_VERSION}"
    return decoded_cache.computed(name, key, lambda: _rotate(images, angles))


def _rotate(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Each image turned by its own angle: `RotateTransform`'s nearest rotation (one
    `rotation_map` per image, about 50 us each: 3 s for MNIST's 63042 images)."""
    out = np.empty_like(images)
    shape = images.shape[1:]
    for start in range(0, len(images), _IMAGES_PER_GATHER):
        part = slice(start, start + _IMAGES_PER_GATHER)
        maps = np.stack([rotation_map(shape, float(a)) for a in angles[part]])
        flat = images[part].reshape(len(maps), -1)
        flat = np.concatenate([flat, np.zeros((len(maps), 1), images.dtype)], axis=1)
        out[part] = np.take_along_axis(flat, maps, axis=1).reshape(out[part].shape)
    return out


SCENARIO_BUILDERS["mnist_360"] = mnist_360
