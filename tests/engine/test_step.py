"""The train step's on-device path (`sequax.engine.step`) and batched scans (`task_data`)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sequax import algorithms
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.core.task_data import gather_batch, scan_batches, task_arrays
from sequax.engine.step import epoch_order, make_run_steps, make_train_step, steps_per_epoch

BATCH_SIZE = 4


def tiny_data(size: int, capacity: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (size, 4, 4, 1), dtype=np.uint8)
    return task_arrays(x, rng.integers(0, 10, size), np.zeros(size), capacity)


def test_epoch_order_is_a_permutation_then_padding():
    order_fn = jax.jit(epoch_order, static_argnums=3)
    key = jax.random.PRNGKey(0)
    for size in (1, 17, 30):
        order = np.asarray(order_fn(key, jnp.int32(5), jnp.int32(size), 30))
        assert order.dtype == np.int32 and order.shape == (30,)
        np.testing.assert_array_equal(np.sort(order[:size]), np.arange(size))
        np.testing.assert_array_equal(order[size:], np.arange(size, 30))  # padding last, in order
    same = order_fn(key, jnp.int32(5), jnp.int32(30), 30)
    again = order_fn(key, jnp.int32(5), jnp.int32(30), 30)
    np.testing.assert_array_equal(same, again)  # same (key, step): same order
    later = order_fn(key, jnp.int32(6), jnp.int32(30), 30)
    other_key = order_fn(jax.random.PRNGKey(1), jnp.int32(5), jnp.int32(30), 30)
    assert not np.array_equal(same, later) and not np.array_equal(same, other_key)
    assert not np.array_equal(np.asarray(same), np.arange(30))  # shuffled


def test_steps_per_epoch_drops_the_last_partial_batch():
    assert (
        steps_per_epoch(10, 4) == 2 and steps_per_epoch(12, 4) == 3 and steps_per_epoch(3, 4) == 0
    )


def test_run_steps_in_chunks_equals_one_call_bit_for_bit():
    er = algorithms.make("er", capacity=8, replay_batch=3)
    model = mlp(10, widths=(16,))
    tx = optax.sgd(0.1, momentum=0.9)
    data = tiny_data(37, 40)
    init = jax.jit(lambda b: create_state(model, er, tx, b, 0))
    example = gather_batch(data, jnp.arange(BATCH_SIZE))
    run_steps = make_run_steps(make_train_step(model, er, tx), BATCH_SIZE)
    state = init(example)
    order = epoch_order(state.key, state.step, data.size, 40)
    whole, whole_means = run_steps(state, data, order, np.int32(0), np.int32(9))
    chunked, _ = run_steps(init(example), data, order, np.int32(0), np.int32(4))
    chunked, _ = run_steps(chunked, data, order, np.int32(4), np.int32(9))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, whole), jax.tree.map(np.asarray, chunked))
    assert int(whole.step) == 9 and int(whole.algo.buffer.num_seen) == 9 * BATCH_SIZE
    assert set(whole_means) >= {"loss", "ce"} and np.isfinite(float(whole_means["loss"]))
    assert run_steps._cache_size() == 1


def test_run_steps_metrics_are_means_over_the_steps():
    """A fake step whose 'loss' is the batch's first index: the mean is checkable by hand."""

    def fake_step(state, batch):
        return state._replace(step=state.step + 1), {"loss": batch["y"][0].astype(jnp.float32)}

    size = 12
    data = task_arrays(np.zeros((size, 1, 1, 1), np.uint8), np.arange(size), np.zeros(size), size)
    state = create_state(
        mlp(2, widths=()), algorithms.Naive(), optax.sgd(0.1), gather_batch(data, jnp.arange(2)), 0
    )
    order = jnp.arange(size, dtype=jnp.int32)
    state, means = make_run_steps(fake_step, 3)(state, data, order, np.int32(1), np.int32(4))
    assert int(state.step) == 3
    np.testing.assert_allclose(float(means["loss"]), np.mean([3, 6, 9]))


@pytest.mark.parametrize(("size", "capacity", "batch_size"), [(19, 23, 5), (20, 20, 5), (3, 23, 7)])
def test_scan_batches_counts_each_valid_example_once(size, capacity, batch_size):
    ids = np.arange(size)
    data = task_arrays(np.zeros((size, 2, 2, 1), np.uint8), ids, np.zeros(size), capacity)

    def fn(histogram, batch, valid):
        return histogram + jnp.zeros(capacity, jnp.int32).at[batch["y"]].add(
            valid.astype(jnp.int32)
        )

    histogram = jax.jit(lambda d: scan_batches(fn, d, batch_size, jnp.zeros(capacity, jnp.int32)))(
        data
    )
    np.testing.assert_array_equal(histogram, (np.arange(capacity) < size).astype(np.int32))


def test_task_arrays_pads_and_gather_scales():
    x = np.full((3, 2, 2, 1), 255, np.uint8)
    data = task_arrays(x, np.array([1, 2, 3]), np.array([0, 0, 1]), 5)
    assert data.x.shape == (5, 2, 2, 1) and data.x.dtype == jnp.uint8 and int(data.size) == 3
    np.testing.assert_array_equal(data.y, [1, 2, 3, 0, 0])
    batch = gather_batch(data, jnp.array([0, 4]))
    assert batch["x"].dtype == jnp.float32
    np.testing.assert_array_equal(batch["x"][:, 0, 0, 0], [1.0, 0.0])
    with pytest.raises(ValueError, match="capacity"):
        task_arrays(x, np.array([1, 2, 3]), np.zeros(3), 2)
