"""Blurry task boundaries (`sequax.data.blurry`): avalanche's linear decay and i-Blurry-N-M."""

from __future__ import annotations

import numpy as np
import pytest

from sequax.data import DataError, blurry, load_source, permuted, split


@pytest.fixture(scope="module")
def split_mnist():
    return split(load_source("mnist_packaged"), num_tasks=5, classes_per_task=2)


def avalanche_probs(iters, tasks, task_id, beta):
    """avalanche benchmarks/scenarios/online.py `_create_task_probs`, transcribed with lists."""

    def line(start, end, up):
        return [(i - start) / (end - start) if up else 1 - (i - start) / (end - start)
                for i in range(start, end)]  # fmt: skip

    if beta <= 1:
        start = peak_start = int((task_id / tasks) * iters)
        end = peak_end = int(((task_id + 1) / tasks) * iters)
    else:
        start = max(int(((beta * task_id - 1) * iters) / (beta * tasks)), 0)
        peak_start = int(((beta * task_id + 1) * iters) / (beta * tasks))
        peak_end = int(((beta * task_id + (beta - 1)) * iters) / (beta * tasks))
        end = min(int(((beta * task_id + (beta + 1)) * iters) / (beta * tasks)), iters)
    probs = [0.0] * iters
    probs[start:peak_start] = (
        [1.0] * (peak_start - start) if task_id == 0 else line(start, peak_start, True)
    )
    probs[peak_start:peak_end] = [1.0] * (peak_end - peak_start)
    probs[peak_end:end] = (
        [1.0] * (end - peak_end) if task_id == tasks - 1 else line(peak_end, end, False)
    )
    return np.array(probs)


@pytest.mark.parametrize("beta", [0.5, 2.0, 4.0])
def test_task_probabilities_are_avalanches(beta):
    for t in range(5):
        np.testing.assert_allclose(
            blurry._task_probabilities(50, 5, t, beta), avalanche_probs(50, 5, t, beta)
        )
    # By hand, 2 tasks x 4 iterations, beta 4: task 0 spans [0, 5) with its ramp down over
    # [3, 5); task 1 spans [3, 8) with its ramp up over [3, 5) (so iteration 4 is shared).
    np.testing.assert_allclose(blurry._task_probabilities(8, 2, 0, 4.0), [1, 1, 1, 1, 0.5, 0, 0, 0])
    np.testing.assert_allclose(blurry._task_probabilities(8, 2, 1, 4.0), [0, 0, 0, 0, 0.5, 1, 1, 1])


def test_linear_decay_mixes_neighbours_only(split_mnist):
    stream = blurry.linear_decay(split_mnist, beta=4.0, iterations=10, seed=0)
    assert stream.ordered and stream.num_tasks == 5
    assert sum(stream.train_sizes) <= sum(split_mnist.train_sizes)
    mix = blurry.mixture(stream)
    np.testing.assert_allclose(mix.sum(axis=1), 1.0)
    assert (np.diag(mix) > 0.8).all() and (mix[np.abs(np.subtract.outer(range(5), range(5))) > 1]
                                           == 0).all()  # fmt: skip
    assert mix[0, 1] > 0 and mix[4, 3] > 0  # the ramps reach the neighbours
    # Every example of a segment is an example of the source, and the test sets are unchanged.
    assert all(np.isin(s, np.concatenate(split_mnist.train_indices)).all()
               for s in stream.train_indices)  # fmt: skip
    assert stream.test_indices == split_mnist.test_indices
    again = blurry.linear_decay(split_mnist, beta=4.0, iterations=10, seed=0)
    assert all((a == b).all() for a, b in zip(stream.train_indices, again.train_indices))


def test_sharp_linear_decay_keeps_tasks_apart(split_mnist):
    mix = blurry.mixture(blurry.linear_decay(split_mnist, beta=1.0, iterations=4, seed=1))
    np.testing.assert_allclose(mix, np.eye(5))


def test_iblurry_keeps_disjoint_classes_home_and_moves_m_percent(split_mnist):
    stream = blurry.iblurry(split_mnist, disjoint=0.4, moved=0.2, seed=3)
    labels = split_mnist.source.train_y
    assert stream.ordered and stream.name.endswith("_iblurry40-20")
    assert sorted(np.concatenate(stream.train_indices)) == sorted(
        np.concatenate(split_mnist.train_indices)
    )  # every example exactly once
    moved_classes = 0
    for before, after in zip(split_mnist.train_indices, stream.train_indices):
        for c in np.unique(labels[before]):
            n = int((labels[before] == c).sum())
            stayed = int((labels[after] == c).sum())
            if stayed == n:
                continue
            moved_classes += 1
            assert stayed == n - round(0.2 * n)
    assert moved_classes == 6  # 60 % of the 10 classes are blurry
    with pytest.raises(DataError, match="fractions in"):
        blurry.iblurry(split_mnist, disjoint=1.5)


def test_blur_refuses_transformed_streams_and_unknown_kinds(split_mnist):
    with pytest.raises(DataError, match="not a class-incremental split"):
        blurry.blur(permuted(load_source("mnist_packaged"), 2), "iblurry")
    with pytest.raises(DataError, match="unknown"):
        blurry.blur(split_mnist, "fog")
    assert blurry.blur(split_mnist, "none") is split_mnist
