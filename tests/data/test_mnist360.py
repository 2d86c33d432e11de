"""Tests for sequax.data.mnist360: the MNIST-360 stream against a transcription of mammoth."""

from pathlib import Path

import numpy as np
import pytest

from sequax.data import DataError, ImageSource, load_mnist
from sequax.data.mnist360 import mnist_360, mnist_360_stream
from sequax.data.scenarios import (
    IdentityTransform,
    apply_pixel_map,
    describe,
    make_scenario,
    rotation_map,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(),
    reason=f"real MNIST files not found under {SHARED_DATA}",
)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974]
PAIRS = [(p, (p + 1) % 9) for p in range(9)]


# ------------------------------------------- mammoth's datasets/mnist_360.py, transcribed


class IncrementalRotation:
    """mammoth's datasets/transforms/rotation.py: returns the angle it would rotate by."""

    def __init__(self, init_deg=0, increase_per_iteration=0.006):
        self.increase_per_iteration = increase_per_iteration
        self.iteration = 0
        self.degrees = init_deg

    def __call__(self):
        degs = (self.iteration * self.increase_per_iteration + self.degrees) % 360
        self.iteration += 1
        return degs


class ChunkLoader:
    """Stands for `next(iter(loader))` on a chunk: the builder's documented deviation reads
    the chunk in a seeded permutation (without replacement) instead of random draws."""

    def __init__(self, ids, label, rotation, order):
        self.items = [ids[o] for o in order]
        self.label, self.rotation = label, rotation

    def draw(self):
        return self.label, self.items.pop(0), self.rotation()


class MNIST360Train:
    """MNIST360(is_train=True): the same state machine, one item per stream position."""

    N_CLASSES = 9

    def __init__(self, labels, batch_size, num_rounds, seed):
        self.batch_size, self.num_rounds = batch_size, num_rounds
        rng = np.random.default_rng(seed)  # the builder's draws: class by class, chunk by chunk
        self.dataset, self.remaining_training_items = [], []
        for j in range(self.N_CLASSES):
            self.dataset.append([])
            self.remaining_training_items.append([])
            ids = [i for i, y in enumerate(labels) if y == j]
            rotation = IncrementalRotation(
                init_deg=(j - 1) * 60, increase_per_iteration=360.0 / len(ids)
            )
            for k in range(self.num_rounds * 2):
                numbers_per_batch = len(ids) // (self.num_rounds * 2) + 1
                chunk = ids[k * numbers_per_batch : (k + 1) * numbers_per_batch]
                loader = ChunkLoader(chunk, j, rotation, rng.permutation(len(chunk)))
                self.dataset[-1].append(loader)
                self.remaining_training_items[-1].append(len(chunk))
        self.is_over, self.completed_rounds = False, 0
        self.train_classes = [0, 1]
        self.active_train_loaders = [self.dataset[c].pop() for c in self.train_classes]
        self.active_remaining_items = [
            self.remaining_training_items[c].pop() for c in self.train_classes
        ]

    def train_next_class(self):
        self.train_classes[0] += 1
        self.train_classes[1] += 1
        if self.train_classes[0] == self.N_CLASSES:
            self.train_classes[0] = 0
        if self.train_classes[1] == self.N_CLASSES:
            self.train_classes[1] = 0
        if self.train_classes[0] == 0:
            self.completed_rounds += 1
            if self.completed_rounds == self.num_rounds:
                self.is_over = True
        if not self.is_over:
            self.active_train_loaders = [self.dataset[c].pop() for c in self.train_classes]
            self.active_remaining_items = [
                self.remaining_training_items[c].pop() for c in self.train_classes
            ]

    def get_train_data(self):
        rem = self.active_remaining_items
        batch_size_0 = min(int(round(rem[0] / (rem[0] + rem[1]) * self.batch_size)), rem[0])
        batch_size_1 = min(self.batch_size - batch_size_0, rem[1])
        batch = [self.active_train_loaders[0].draw() for _ in range(batch_size_0)]
        batch += [self.active_train_loaders[1].draw() for _ in range(batch_size_1)]
        self.active_remaining_items[0] -= batch_size_0
        self.active_remaining_items[1] -= batch_size_1
        pair = tuple(self.train_classes)
        if self.active_remaining_items[0] <= 0 or self.active_remaining_items[1] <= 0:
            self.train_next_class()
        return pair, batch, (batch_size_0, batch_size_1)

    def run(self):
        """[(pair, batch of (class, source id, angle), (n0, n1))] until the stream is over."""
        out = []
        while not self.is_over:
            out.append(self.get_train_data())
        return out


# ---------------------------------------------------------------------------------- helpers


def synthetic_source(counts, test_counts, num_classes=10, shape=(28, 28, 1), seed=0):
    """Random images whose classes interleave in file order, with the given counts."""
    rng = np.random.default_rng(seed)
    train_y = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int32)
    test_y = rng.permutation(np.repeat(np.arange(len(test_counts)), test_counts)).astype(np.int32)
    return ImageSource(
        train_x=rng.integers(0, 256, (len(train_y), *shape), dtype=np.uint8),
        train_y=train_y,
        test_x=rng.integers(0, 256, (len(test_y), *shape), dtype=np.uint8),
        test_y=test_y,
        num_classes=num_classes,
        name="synthetic",
    )


SMALL_COUNTS = [40 + 7 * j for j in range(10)]  # class 9 is dropped
SMALL_TEST = [5 + j for j in range(10)]


@pytest.fixture(scope="module")
def small():
    return synthetic_source(SMALL_COUNTS, SMALL_TEST)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(SHARED_DATA)


@pytest.fixture(scope="module")
def mnist_scenario(mnist):
    return mnist_360(mnist)


def rotate(image, angle):
    return apply_pixel_map(image[None], rotation_map(image.shape, float(angle)))[0]


# ------------------------------------------------------------------- the stream's plan


@pytest.mark.parametrize("batch_size, rounds, seed", [(16, 3, 0), (5, 3, 1), (7, 2, 2), (1, 1, 0)])
def test_stream_matches_mammoth_position_by_position(small, batch_size, rounds, seed):
    reference = MNIST360Train(small.train_y.tolist(), batch_size, rounds, seed).run()
    plan = mnist_360_stream(small, batch_size, rounds, seed)
    items = [item for _, batch, _ in reference for item in batch]
    assert plan.train_labels.tolist() == [c for c, _, _ in items]
    assert plan.train_index.tolist() == [i for _, i, _ in items]
    assert plan.train_angles.tolist() == [a for _, _, a in items]  # bit for bit
    assert plan.batches[:, 1:].tolist() == [list(sizes) for _, _, sizes in reference]
    # Segments: runs of batches of one pair, 9 * rounds of them, in the pairs' order.
    pairs = [pair for pair, _, _ in reference]
    starts = [0] + [b for b in range(1, len(pairs)) if pairs[b] != pairs[b - 1]]
    assert [pairs[b] for b in starts] == PAIRS * rounds
    assert plan.pairs.tolist() == [list(p) for p in PAIRS * rounds]
    assert plan.batches[starts, 0].tolist() == list(range(9 * rounds))
    sizes = np.bincount(plan.batches[:, 0], plan.batches[:, 1:].sum(1), 9 * rounds)
    np.testing.assert_array_equal(np.diff(plan.segment_bounds), sizes)


def test_stream_reads_each_chunk_without_replacement(small):
    plan = mnist_360_stream(small, batch_size=16)
    assert len(set(plan.train_index.tolist())) == len(plan.train_index)
    np.testing.assert_array_equal(small.train_y[plan.train_index], plan.train_labels)
    assert plan.train_labels.max() == 8  # class 9 is not in the stream
    other = mnist_360_stream(small, batch_size=16, seed=1)
    again = mnist_360_stream(small, batch_size=16, seed=0)
    np.testing.assert_array_equal(again.train_index, plan.train_index)
    assert not np.array_equal(other.train_index, plan.train_index)  # the seed orders chunks
    np.testing.assert_array_equal(other.train_labels, plan.train_labels)  # and nothing else
    np.testing.assert_array_equal(other.train_angles, plan.train_angles)


def test_first_segment_reads_the_last_chunks(small):
    plan = mnist_360_stream(small, batch_size=16)
    for c in (0, 1):
        members = np.flatnonzero(small.train_y == c)
        size = len(members) // 6 + 1
        first = plan.train_index[: plan.segment_bounds[1]]
        read = first[small.train_y[first] == c]
        assert set(read.tolist()) <= set(members[5 * size :].tolist())  # chunk 5: list.pop()


# ------------------------------------------------------------------------- real MNIST


@needs_shared_data
def test_mnist_segments_sizes_and_batches(mnist, mnist_scenario):
    scenario = mnist_scenario
    assert scenario.name == "mnist_360" and scenario.setting == "class" and scenario.ordered
    assert scenario.num_tasks == 27 and scenario.num_classes == 9
    assert isinstance(scenario.transform, IdentityTransform) and scenario.pixel_maps is None
    assert [np.flatnonzero(row).tolist() for row in scenario.task_classes] == [
        sorted(p) for p in PAIRS * 3
    ]
    assert sum(scenario.train_sizes) == 54051  # mammoth's MNIST360.LENGTH (first commit)
    assert scenario.train_sizes[:9] == (2105, 2112, 2015, 1994, 1875, 1887, 2027, 2016, 1964)
    assert scenario.train_sizes[9:18] == scenario.train_sizes[18:] == (
        2112, 2118, 2016, 1996, 1878, 1891, 2032, 2021, 1964,
    )  # fmt: skip
    source = scenario.source
    assert source.name == "mnist_360" and source.num_classes == 9
    assert source.train_x.shape == (54051, 28, 28, 1) and source.train_x.dtype == np.uint8
    assert not source.train_x.flags.writeable
    # Each segment: its positions in stream order; batches of 16 mixing its pair by the rule,
    # from the sizes of the chunks it pops (chunk 5 first, as mammoth's list.pop()).
    plan = mnist_360_stream(mnist)
    assert len(plan.batches) == 3387
    chunks = [
        [len(range(n)[k * (n // 6 + 1) :][: n // 6 + 1]) for k in range(6)]
        for n in MNIST_TRAIN_COUNTS
    ]
    for t in range(27):
        index = scenario.train_indices[t]
        np.testing.assert_array_equal(index, np.arange(index[0], index[0] + len(index)))
        _, labels = scenario.train(t)
        first, second = PAIRS[t % 9]
        left = [chunks[first].pop(), chunks[second].pop()]
        position = 0
        for _, n0, n1 in plan.batches[plan.batches[:, 0] == t]:
            assert n0 + n1 == 16 or position + n0 + n1 == len(labels)  # short: the last only
            assert labels[position : position + n0 + n1].tolist() == [first] * n0 + [second] * n1
            expect = min(int(round(left[0] / (left[0] + left[1]) * 16)), left[0])
            assert n0 == expect and n1 == min(16 - expect, left[1])
            left = [left[0] - n0, left[1] - n1]
            position += n0 + n1
        assert position == len(labels) and min(left) == 0


@needs_shared_data
def test_mnist_angles_per_class(mnist):
    plan = mnist_360_stream(mnist)
    for j in range(9):
        angles = plan.train_angles[plan.train_labels == j]
        n = MNIST_TRAIN_COUNTS[j]
        assert angles[0] == ((j - 1) * 60) % 360  # class 0 starts at 300 degrees
        assert angles[-1] == pytest.approx(((j - 1) * 60 + (len(angles) - 1) * 360 / n) % 360)
        assert len(angles) == n  # at batch 16 no segment leaves images unseen: a full turn
        step = np.mod(np.diff(angles), 360.0)
        np.testing.assert_allclose(step, 360.0 / n, rtol=1e-9)  # one counter per class
        test_angles = plan.test_angles[mnist.test_y[plan.test_index] == j]
        assert len(test_angles) == MNIST_TEST_COUNTS[j]
        np.testing.assert_allclose(
            test_angles, np.arange(len(test_angles)) * 360 / len(test_angles)
        )


@needs_shared_data
def test_mnist_images_are_the_rotated_sources(mnist, mnist_scenario):
    plan = mnist_360_stream(mnist)
    source = mnist_scenario.source
    positions = np.random.default_rng(0).choice(len(plan.train_index), 150, replace=False)
    for p in [0, len(plan.train_index) - 1, *positions.tolist()]:
        expected = rotate(mnist.train_x[plan.train_index[p]], plan.train_angles[p])
        np.testing.assert_array_equal(source.train_x[p], expected)
    assert source.train_y.tolist() == plan.train_labels.tolist()
    positions = np.random.default_rng(1).choice(len(plan.test_index), 50, replace=False)
    for p in [0, len(plan.test_index) - 1, *positions.tolist()]:
        expected = rotate(mnist.test_x[plan.test_index[p]], plan.test_angles[p])
        np.testing.assert_array_equal(source.test_x[p], expected)


@needs_shared_data
def test_mnist_test_sets_and_pooled_accuracy(mnist_scenario):
    scenario = mnist_scenario
    test_y = scenario.source.test_y
    assert len(test_y) == sum(MNIST_TEST_COUNTS) and test_y.max() == 8
    for t in range(27):
        pair = sorted(PAIRS[t % 9])
        _, labels = scenario.test(t)
        assert sorted(set(labels.tolist())) == pair
        assert scenario.test_sizes[t] == sum(MNIST_TEST_COUNTS[c] for c in pair)
    # The test-size-weighted mean of a final row = the pooled accuracy (each class 6 times).
    correct = np.random.default_rng(0).random(len(test_y)) < 0.5 + 0.05 * test_y
    row = np.array([correct[index].mean() for index in scenario.test_indices])
    sizes = np.array(scenario.test_sizes)
    assert (row * sizes).sum() / sizes.sum() == pytest.approx(correct.mean(), abs=1e-12)


@needs_shared_data
def test_describe_and_make_scenario(mnist, mnist_scenario):
    line = describe(mnist_scenario)
    assert line.startswith("mnist_360: 27 tasks of 2 classes: [[0, 1], [1, 2]")
    assert "\n" not in line
    small = synthetic_source(SMALL_COUNTS, SMALL_TEST)
    built = make_scenario("mnist_360", small, num_tasks=9, seed=0, rounds=1)  # the config route
    assert built.num_tasks == 9 and built.ordered


# ----------------------------------------------------------------- rotation and refusals


def test_rotation_direction():
    image = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    source = synthetic_source(SMALL_COUNTS, SMALL_TEST)
    plan = mnist_360_stream(source)
    turned = rotate(image, 90.0)
    np.testing.assert_array_equal(turned, np.rot90(image))  # counter-clockwise, as torchvision
    assert plan.train_angles.min() >= 0 and plan.train_angles.max() < 360


def test_small_scenario_layout(small):
    scenario = mnist_360(small, batch_size=4, rounds=2, seed=3)
    plan = mnist_360_stream(small, batch_size=4, rounds=2, seed=3)
    assert scenario.num_tasks == 18 and scenario.ordered
    assert scenario.source.name == "synthetic_360"
    for t in range(18):
        images, labels = scenario.train(t)
        segment = slice(plan.segment_bounds[t], plan.segment_bounds[t + 1])
        np.testing.assert_array_equal(labels, plan.train_labels[segment])
        for image, i, angle in zip(images, plan.train_index[segment], plan.train_angles[segment]):
            np.testing.assert_array_equal(image, rotate(small.train_x[i], angle))
        _, test_labels = scenario.test(t)
        assert set(test_labels.tolist()) == set(PAIRS[t % 9])
        expected = sum(SMALL_TEST[c] for c in PAIRS[t % 9])
        assert scenario.test_sizes[t] == expected


@pytest.mark.parametrize(
    "kwargs, source_args, match",
    [
        ({"batch_size": 0}, {}, "batch_size=0"),
        ({"rounds": 0}, {}, "rounds=0"),
        ({}, {"num_classes": 8, "counts": SMALL_COUNTS[:8], "tests": SMALL_TEST[:8]}, "8 classes"),
        ({}, {"shape": (32, 32, 3)}, "28x28x1"),
        ({}, {"counts": [40] * 4 + [6] + [40] * 5}, "class 4"),
        ({}, {"tests": [5] * 3 + [0] + [5] * 6}, "class 3"),
        ({"rounds": 8}, {}, "use fewer rounds"),
        ({"num_tasks": 20}, {}, "set data.num_tasks=27"),
    ],
)
def test_refuses_a_source_that_does_not_fit(kwargs, source_args, match):
    source = synthetic_source(
        source_args.get("counts", SMALL_COUNTS),
        source_args.get("tests", SMALL_TEST),
        num_classes=source_args.get("num_classes", 10),
        shape=source_args.get("shape", (28, 28, 1)),
    )
    with pytest.raises(DataError, match=match) as error:
        mnist_360(source, **kwargs)
    assert "\n" not in str(error.value)


def test_rotated_images_are_kept_in_the_data_cache(small, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQUAX_DATA_CACHE", str(tmp_path))
    first = mnist_360(small)
    copies = sorted(p.name.split(".")[0] for p in tmp_path.glob("*.npy"))
    assert copies == ["mnist360_test", "mnist360_train"]
    again = mnist_360(small)  # read back: the same bytes
    np.testing.assert_array_equal(again.source.train_x, first.source.train_x)
    np.testing.assert_array_equal(again.source.test_x, first.source.test_x)
    other = mnist_360(small, seed=1)  # other training draws: another training copy (the test
    assert len(list(tmp_path.glob("*.npy"))) == 3  # images and angles do not depend on seed)
    assert not np.array_equal(other.source.train_x, first.source.train_x)
