"""Tests for sequax.data.scenarios: Split, Permuted, Rotated, subsample and the dispatcher."""

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage

from sequax.data import (
    DataError,
    ImageSource,
    load_mnist,
    load_packaged_mnist,
    make_scenario,
    permuted,
    rotated,
    split,
    subsample,
)
from sequax.data.scenarios import apply_pixel_map, describe, new_instances, rotation_map

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(),
    reason=f"real MNIST files not found under {SHARED_DATA}",
)

# Per-class counts from shared/data/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist() -> ImageSource:
    return load_mnist(SHARED_DATA)


@pytest.fixture(scope="module")
def packaged() -> ImageSource:
    return load_packaged_mnist()


def tiny_source(num_train: int = 6, num_test: int = 4) -> ImageSource:
    rng = np.random.default_rng(0)
    return ImageSource(
        train_x=rng.integers(0, 256, (num_train, 28, 28, 1), dtype=np.uint8),
        train_y=np.arange(num_train, dtype=np.int32) % 10,
        test_x=rng.integers(0, 256, (num_test, 28, 28, 1), dtype=np.uint8),
        test_y=np.arange(num_test, dtype=np.int32) % 10,
        num_classes=10,
        name="tiny",
    )


# ---------------------------------------------------------------------------------- split


@needs_shared_data
def test_split_mnist_classes_sizes_and_global_labels(mnist):
    scenario = split(mnist)
    assert scenario.name == "split_mnist" and scenario.setting == "class"
    assert scenario.num_tasks == 5 and scenario.num_classes == 10
    assert scenario.task_classes.dtype == bool and scenario.task_classes.shape == (5, 10)
    assert scenario.train_sizes[0] == 5923 + 6742
    for t in range(5):
        classes = [2 * t, 2 * t + 1]
        assert np.flatnonzero(scenario.task_classes[t]).tolist() == classes
        assert scenario.train_sizes[t] == sum(MNIST_TRAIN_COUNTS[c] for c in classes)
        assert scenario.test_sizes[t] == sum(MNIST_TEST_COUNTS[c] for c in classes)
    images, labels = scenario.train(3)
    assert images.shape == (scenario.train_sizes[3], 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    assert sorted(set(labels.tolist())) == [6, 7]  # global ids, not remapped to {0, 1}
    in_task = np.isin(mnist.train_y, [6, 7])
    np.testing.assert_array_equal(images, mnist.train_x[in_task])  # untransformed, file order
    test_images, test_labels = scenario.test(4)
    assert len(test_images) == 974 + 1009 and sorted(set(test_labels.tolist())) == [8, 9]


def test_split_class_orders(packaged):
    shuffled = split(packaged, class_order="shuffle", seed=3)
    again = split(packaged, class_order="shuffle", seed=3)
    other = split(packaged, class_order="shuffle", seed=4)
    np.testing.assert_array_equal(shuffled.task_classes, again.task_classes)
    assert not np.array_equal(shuffled.task_classes, other.task_classes)
    assert shuffled.task_classes.sum(axis=0).tolist() == [1] * 10  # each class in one task

    explicit = split(packaged, num_tasks=2, classes_per_task=3, class_order=[9, 0, 4, 2, 7, 1])
    assert np.flatnonzero(explicit.task_classes[0]).tolist() == [0, 4, 9]
    assert np.flatnonzero(explicit.task_classes[1]).tolist() == [1, 2, 7]
    assert sorted(set(explicit.test(1)[1].tolist())) == [1, 2, 7]


def test_split_errors(packaged):
    with pytest.raises(DataError, match="num_tasks \\* classes_per_task <= 10") as info:
        split(packaged, num_tasks=6, classes_per_task=2)
    assert "\n" not in str(info.value)
    for bad_order in (
        [0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
        [0, 1, 2],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 10],
        "random",
    ):
        with pytest.raises(DataError, match="class_order"):
            split(packaged, class_order=bad_order)


# ------------------------------------------------------------------------------- permuted


def test_permuted_applies_the_permutation(packaged):
    scenario = permuted(packaged, num_tasks=3, seed=0)
    assert scenario.setting == "domain" and scenario.task_classes.all()
    assert scenario.permutations.shape == (3, 784)
    assert scenario.train_sizes == (8000,) * 3 and scenario.test_sizes == (2000,) * 3
    for t in range(3):
        assert sorted(scenario.permutations[t].tolist()) == list(range(784))
        images, labels = scenario.test(t)
        original = packaged.test_x.reshape(2000, 784)
        # out.flat[i] = in.flat[permutation[i]]
        np.testing.assert_array_equal(
            images.reshape(2000, 784), original[:, scenario.permutations[t]]
        )
        np.testing.assert_array_equal(labels, packaged.test_y)
    # The DER protocol permutes the first task too.
    assert not np.array_equal(scenario.permutations[0], np.arange(784))


def test_permuted_first_task_identity(packaged):
    scenario = permuted(packaged, num_tasks=3, seed=0, first_task_identity=True)
    np.testing.assert_array_equal(scenario.permutations[0], np.arange(784))
    np.testing.assert_array_equal(scenario.test(0)[0], packaged.test_x)
    # Later tasks are those of the run without the identity task.
    np.testing.assert_array_equal(
        scenario.permutations[1:], permuted(packaged, num_tasks=3, seed=0).permutations[1:]
    )


def test_permuted_seeds(packaged):
    first = permuted(packaged, num_tasks=4, seed=7)
    np.testing.assert_array_equal(first.permutations, permuted(packaged, 4, seed=7).permutations)
    assert not np.array_equal(first.permutations, permuted(packaged, 4, seed=8).permutations)
    assert len({row.tobytes() for row in first.permutations}) == 4  # tasks differ


# -------------------------------------------------------------------------------- rotated


def test_rotation_by_90_is_rot90_counter_clockwise():
    # Positive angles turn the image counter-clockwise as displayed (like torchvision):
    # a pixel at the top right moves to the top left.
    source = tiny_source()
    scenario = rotated(source, num_tasks=3, protocol="step", step=90.0, jitter=0.0)
    np.testing.assert_array_equal(scenario.angles, [0.0, 90.0, 180.0])
    np.testing.assert_array_equal(scenario.train(0)[0], source.train_x)
    np.testing.assert_array_equal(scenario.train(1)[0], np.rot90(source.train_x, 1, axes=(1, 2)))
    np.testing.assert_array_equal(scenario.test(2)[0], np.rot90(source.test_x, 2, axes=(1, 2)))

    marker = np.zeros((1, 28, 28, 1), np.uint8)
    marker[0, 0, 27, 0] = 255
    marked = ImageSource(marker, np.zeros(1, np.int32), marker, np.zeros(1, np.int32), 10, "dot")
    turned = rotated(marked, 2, protocol="step", step=90.0, jitter=0.0).train(1)[0]
    assert turned[0, 0, 0, 0] == 255 and turned.sum() == 255


def test_rotated_uniform_angles_and_content(packaged):
    scenario = subsample(rotated(packaged, num_tasks=20, seed=1), 300, 100)
    assert scenario.angles.shape == (20,)
    assert np.all((0.0 <= scenario.angles) & (scenario.angles < 180.0))
    assert len(set(scenario.angles.tolist())) == 20
    np.testing.assert_array_equal(scenario.angles, rotated(packaged, 20, seed=1).angles)
    assert not np.array_equal(scenario.angles, rotated(packaged, 20, seed=2).angles)
    images, labels = scenario.train(5)
    assert images.shape == (300, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    # Nearest-neighbour rotation only moves pixels: no new grey values appear.
    original = packaged.train_x[scenario.train_indices[5]]
    assert set(np.unique(images).tolist()) <= set(np.unique(original).tolist())
    assert not np.array_equal(images, original)


def test_rotated_step_protocol_angles(packaged):
    scenario = rotated(packaged, num_tasks=20, seed=0, protocol="step")
    steps = np.arange(20) * 10.0
    # task t: t * 10 - U[0, 10), so task 0 is a small clockwise angle in (-10, 0].
    assert np.all((steps - 10.0 < scenario.angles) & (scenario.angles <= steps))


def test_rotated_bilinear(packaged):
    nearest = rotated(packaged, num_tasks=2, seed=0)
    bilinear = rotated(packaged, num_tasks=2, seed=0, interpolation="bilinear")
    small_nearest, small_bilinear = subsample(nearest, 50, 10), subsample(bilinear, 50, 10)
    x_nearest, x_bilinear = small_nearest.train(1)[0], small_bilinear.train(1)[0]
    assert x_bilinear.dtype == np.uint8 and x_bilinear.shape == x_nearest.shape
    assert not np.array_equal(x_nearest, x_bilinear)
    with pytest.raises(DataError, match="interpolation"):
        rotated(packaged, 2, interpolation="bicubic")
    with pytest.raises(DataError, match="protocol"):
        rotated(packaged, 2, protocol="gaussian")


@needs_shared_data
def test_rotated_full_mnist_test_set(mnist):
    scenario = rotated(mnist, num_tasks=20, seed=0)
    images, labels = scenario.test(19)
    assert images.shape == (10_000, 28, 28, 1) and labels.shape == (10_000,)
    assert scenario.train_sizes == (60_000,) * 20


# ------------------------------------------------------------------------------ subsample


def test_subsample_sizes_and_determinism(packaged):
    base = split(packaged)
    small = subsample(base, train_per_task=100, test_per_task=1000, seed=0)
    assert small.train_sizes == (100,) * 5
    # Tasks smaller than the request keep everything.
    assert small.test_sizes == tuple(min(1000, n) for n in base.test_sizes)
    again = subsample(base, train_per_task=100, test_per_task=1000, seed=0)
    other = subsample(base, train_per_task=100, test_per_task=1000, seed=1)
    for t in range(5):
        np.testing.assert_array_equal(small.train(t)[0], again.train(t)[0])
        assert not np.array_equal(small.train_indices[t], other.train_indices[t])
        assert np.isin(small.train_indices[t], base.train_indices[t]).all()
        assert np.all(np.diff(small.train_indices[t]) > 0)  # file order kept
        assert set(small.train(t)[1].tolist()) <= set(np.flatnonzero(base.task_classes[t]))
    untouched = subsample(base)
    assert untouched.train_sizes == base.train_sizes
    with pytest.raises(DataError, match="positive"):
        subsample(base, train_per_task=0)


def test_subsample_keeps_the_transform(packaged):
    base = permuted(packaged, num_tasks=2, seed=0)
    small = subsample(base, train_per_task=10)
    np.testing.assert_array_equal(small.permutations, base.permutations)
    expected = base.train(1)[0][small.train_indices[1]]
    np.testing.assert_array_equal(small.train(1)[0], expected)
    assert small.test_sizes == base.test_sizes


# ----------------------------------------------------------------------- dispatch, errors


def test_make_scenario(packaged):
    built = make_scenario("permuted", packaged, num_tasks=3, seed=5)
    np.testing.assert_array_equal(built.permutations, permuted(packaged, 3, seed=5).permutations)
    assert make_scenario("split", packaged).num_tasks == 5
    assert make_scenario("rotated", packaged, num_tasks=2).angles.shape == (2,)
    with pytest.raises(DataError, match="known: split, permuted, rotated"):
        make_scenario("shuffled", packaged)
    with pytest.raises(DataError, match="unknown arguments num_task;") as info:
        make_scenario("permuted", packaged, num_task=3)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="num_tasks"):
        make_scenario("rotated", packaged)


def test_task_index_out_of_range(packaged):
    scenario = split(packaged)
    with pytest.raises(IndexError):
        scenario.train(5)
    with pytest.raises(IndexError):
        scenario.test(-1)


def test_scenario_arrays_are_read_only(packaged):
    scenario = permuted(packaged, num_tasks=2)
    with pytest.raises(ValueError):
        scenario.permutations[0, 0] = 1
    with pytest.raises(ValueError):
        scenario.task_classes[0, 0] = False


@pytest.mark.parametrize("angle", [0.0, 10.0, 33.3, 90.0, 127.5, 179.9, -7.2])
def test_rotation_map_reproduces_scipys_nearest_rotation_exactly(angle):
    images = np.random.default_rng(0).integers(1, 256, (50, 28, 28, 1)).astype(np.uint8)
    expected = scipy.ndimage.rotate(
        images[..., 0], angle, axes=(1, 2), reshape=False, order=0, mode="constant", cval=0
    )[..., None]
    np.testing.assert_array_equal(
        apply_pixel_map(images, rotation_map((28, 28, 1), angle)), expected
    )


def test_pixel_maps_of_permuted_and_rotated_streams(packaged):
    for scenario in (
        permuted(packaged, num_tasks=3, seed=1),
        rotated(packaged, num_tasks=3, seed=1),
    ):
        assert scenario.pixel_maps.shape == (3, 28 * 28) and scenario.pixel_maps.dtype == np.int32
        for t in range(3):
            raw, labels = scenario.train(t, transformed=False)
            np.testing.assert_array_equal(raw, packaged.train_x)
            np.testing.assert_array_equal(
                apply_pixel_map(raw, scenario.pixel_maps[t]), scenario.train(t)[0]
            )
            np.testing.assert_array_equal(labels, scenario.train(t)[1])
    # Split has no transform; bilinear rotation interpolates, so it is not a pixel map.
    assert split(packaged).pixel_maps is None
    assert rotated(packaged, num_tasks=2, interpolation="bilinear").pixel_maps is None


# ------------------------------------------- class-incremental protocols, new instances


@pytest.mark.parametrize(
    "kwargs, groups",
    [
        (dict(num_tasks=4, base=4, increment=2), [4, 2, 2, 2]),  # B4-Inc2
        (dict(num_tasks=5, base=0, increment=2), [2, 2, 2, 2, 2]),  # B0-Inc2
        (dict(num_tasks=3, increments=(5, 3, 2)), [5, 3, 2]),  # unequal
    ],
)
def test_a_base_task_plus_increments(packaged, kwargs, groups):
    scenario = split(packaged, **kwargs)
    assert scenario.task_classes.sum(axis=1).tolist() == groups
    assert scenario.task_classes.sum(axis=0).tolist() == [1] * 10  # each class in one task
    first = np.flatnonzero(scenario.task_classes[0]).tolist()
    assert first == list(range(groups[0]))  # the default order: 0, 1, 2, ...
    assert sorted(set(scenario.train(0)[1].tolist())) == first
    assert scenario.train_sizes[0] == int(np.isin(packaged.train_y, first).sum())


def test_the_seed_1993_order_is_the_class_il_literatures(packaged):
    np.random.seed(1993)  # PyCIL utils/data_manager.py: np.random.seed(seed); permutation
    order = np.random.permutation(10)
    scenario = split(packaged, num_tasks=5, base=0, increment=2, class_order="seed1993")
    for t in range(5):
        assert np.flatnonzero(scenario.task_classes[t]).tolist() == sorted(order[2 * t : 2 * t + 2])


def test_protocol_mistakes_are_one_line(packaged):
    cases = [
        (
            dict(num_tasks=5, base=4, increment=2),
            "make 4 tasks of 10 classes; set data.num_tasks=4",
        ),
        (dict(num_tasks=4, base=3, increment=2), "do not divide 10 classes"),
        (dict(num_tasks=4, base=4), "give both"),
        (dict(num_tasks=2, increments=(4, 2, 2)), "set data.num_tasks=3"),
        (dict(num_tasks=2, increments=(8, 4)), "12 classes, but mnist_packaged has 10"),
        (dict(num_tasks=4, increments=(4, 2, 2, 2), base=4, increment=2), "not both"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DataError, match=message) as info:
            split(packaged, **kwargs)
        assert "\n" not in str(info.value)


def test_new_instances_deal_each_class_into_disjoint_balanced_tasks(packaged):
    scenario = make_scenario("new_instances", packaged, num_tasks=4, seed=3)
    assert scenario.setting == "domain" and scenario.task_classes.all()
    seen = np.concatenate(scenario.train_indices)
    assert len(seen) == len(set(seen.tolist())) == len(packaged.train_y)  # disjoint, complete
    for c in range(10):
        per_task = [int((packaged.train_y[i] == c).sum()) for i in scenario.train_indices]
        assert max(per_task) - min(per_task) <= 1, (c, per_task)
    assert scenario.test_sizes == (len(packaged.test_y),) * 4  # the whole test set each time
    again = new_instances(packaged, num_tasks=4, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again.train_indices, scenario.train_indices))
    other = new_instances(packaged, num_tasks=4, seed=4)
    assert not np.array_equal(other.train_indices[0], scenario.train_indices[0])


def test_each_scenario_says_what_it_built_in_one_line(packaged):
    b4 = describe(split(packaged, num_tasks=4, base=4, increment=2))
    assert b4 == (
        "split_mnist_packaged: 4 tasks of 4+2+2+2 classes: [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]"
    )
    assert describe(split(packaged)).startswith("split_mnist_packaged: 5 tasks of 2 classes: ")
    ni = describe(new_instances(packaged, num_tasks=4))
    assert ni.startswith("ni_mnist_packaged: 4 tasks, every class in each, ") and "\n" not in ni
