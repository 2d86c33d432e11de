"""Reservoir sampling (`sequax.algorithms.reservoir`): exact slots, uniform inclusion, sampling.

(The class-balancing policy of the same module is tested in test_balanced_buffer.py.)

Statistical tests use 4,000 independent keys and fixed seeds, so they are deterministic; the
bounds (every frequency within 5 standard deviations, chi-square p-values above 1e-4) would
fail a correct implementation with probability below 1e-3 if the seeds were redrawn.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sequax.algorithms.reservoir import (
    ReservoirState,
    buffer_add,
    replay_add,
    replay_init,
    reservoir_add,
    reservoir_init,
    reservoir_sample,
    reservoir_slots,
)

NUM_KEYS = 4000
SIGMAS = 5.0
MIN_P_VALUE = 1e-4


def keys(seed: int, count: int = NUM_KEYS) -> jax.Array:
    return jax.random.split(jax.random.PRNGKey(seed), count)


def assert_uniform_inclusion(counts: np.ndarray, trials: int, k: int):
    """`counts[i]`: how often item i was among k of len(counts) items chosen in `trials` runs.

    Uniform inclusion gives Binomial(trials, p = k / N) per item; the vector is that of
    `trials` uniform k-subsets, whose covariance is N/(N-1) times a projection of rank N-1,
    so `(N-1)/N * sum (c - E)^2 / (trials p (1-p))` is chi-square with N-1 degrees of freedom.
    """
    n = len(counts)
    p = k / n
    expected = trials * p
    sd = np.sqrt(trials * p * (1 - p))
    assert counts.sum() == trials * k
    assert np.all(np.abs(counts - expected) < SIGMAS * sd), (counts, expected, sd)
    statistic = (n - 1) / n * np.sum((counts - expected) ** 2) / sd**2
    p_value = stats.chi2.sf(statistic, n - 1)
    assert p_value > MIN_P_VALUE, (statistic, p_value)


def id_buffer(capacity: int, ids=(), num_seen: int | None = None):
    """A buffer of int32 ids whose first slots hold `ids` (the rest is empty, -1)."""
    buffer = reservoir_init(capacity, {"id": jnp.int32(0)})
    items = np.full(capacity, -1, np.int32)
    items[: len(ids)] = ids
    seen = len(ids) if num_seen is None else num_seen
    return buffer._replace(items={"id": jnp.asarray(items)}, num_seen=jnp.asarray(seen, jnp.int32))


# ---------------- (a) while filling, example n goes to slot n ------------------------------


def test_filling_example_n_goes_to_slot_n():
    slots = jax.jit(reservoir_slots, static_argnums=(1, 2))
    for seed in range(5):
        key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(slots(jnp.int32(0), 8, 8, key), np.arange(8))
        np.testing.assert_array_equal(slots(jnp.int32(2), 4, 8, key), np.arange(2, 6))
    buffer = reservoir_init(8, {"id": jnp.int32(0), "x": jnp.zeros((2, 3), jnp.float32)})
    assert buffer.items["x"].shape == (8, 2, 3) and buffer.items["id"].dtype == jnp.int32
    add = jax.jit(reservoir_add)
    for b in range(2):
        ids = np.arange(4 * b, 4 * b + 4, dtype=np.int32)
        batch = {"id": ids, "x": np.broadcast_to(ids[:, None, None], (4, 2, 3)).astype(np.float32)}
        buffer = add(buffer, batch, jax.random.PRNGKey(b))
    np.testing.assert_array_equal(buffer.items["id"], np.arange(8))
    np.testing.assert_array_equal(buffer.items["x"][:, 0, 0], np.arange(8))
    assert int(buffer.num_seen) == 8


# ---------------- (b) uniform inclusion, and the same distribution as mammoth's loop --------

STREAM, CAPACITY, BATCH = 40, 8, 4


def jax_reservoirs(seed: int) -> np.ndarray:
    """int [NUM_KEYS, CAPACITY]: the ids held after streaming 0..STREAM-1 in batches of 4."""

    def one_run(key):
        buffer = reservoir_init(CAPACITY, {"id": jnp.int32(0)})
        for b in range(STREAM // BATCH):
            ids = jnp.arange(b * BATCH, (b + 1) * BATCH, dtype=jnp.int32)
            buffer = reservoir_add(buffer, {"id": ids}, jax.random.fold_in(key, b))
        return buffer.items["id"], buffer.num_seen

    items, seen = jax.jit(jax.vmap(one_run))(keys(seed))
    assert np.all(np.asarray(seen) == STREAM)
    return np.asarray(items)


def mammoth_reservoirs(seed: int) -> np.ndarray:
    """The sequential reference (mammoth's `reservoir`), one example at a time, in numpy."""
    rng = np.random.default_rng(seed)
    buffers = np.full((NUM_KEYS, CAPACITY), -1)
    runs = np.arange(NUM_KEYS)
    for n in range(STREAM):
        if n < CAPACITY:
            buffers[:, n] = n
        else:
            j = rng.integers(0, n + 1, NUM_KEYS)
            kept = j < CAPACITY
            buffers[runs[kept], j[kept]] = n
    return buffers


def inclusion_counts(buffers: np.ndarray) -> np.ndarray:
    return np.bincount(buffers.ravel(), minlength=STREAM)


def test_inclusion_is_uniform():
    buffers = jax_reservoirs(seed=0)
    assert buffers.min() >= 0
    # A reservoir never holds an example twice (later-wins keeps one copy per slot).
    assert all(len(set(row)) == CAPACITY for row in buffers.tolist())
    assert_uniform_inclusion(inclusion_counts(buffers), NUM_KEYS, CAPACITY)
    # The bound is sharp enough to see a biased reservoir: one that never stores the last
    # batch (ids 36..39 replaced by id 0) must fail it.
    biased = np.where(buffers >= STREAM - BATCH, 0, buffers)
    with pytest.raises(AssertionError):
        assert_uniform_inclusion(inclusion_counts(biased), NUM_KEYS, CAPACITY)


def test_same_distribution_as_the_sequential_reference():
    ours, reference = jax_reservoirs(seed=1), mammoth_reservoirs(seed=1)
    assert_uniform_inclusion(inclusion_counts(reference), NUM_KEYS, CAPACITY)
    # Per item: the two inclusion frequencies agree within 5 sd of their difference.
    difference = inclusion_counts(ours) - inclusion_counts(reference)
    p = CAPACITY / STREAM
    assert np.all(np.abs(difference) < SIGMAS * np.sqrt(2 * NUM_KEYS * p * (1 - p)))
    # Per slot: which item occupies it has the same distribution (a two-sample chi-square
    # test of homogeneity; this sees slot-level effects such as which duplicate wins).
    for slot in range(CAPACITY):
        table = np.stack([np.bincount(b[:, slot], minlength=STREAM) for b in (ours, reference)])
        table = table[:, table.sum(0) > 0]
        rare = table.sum(0) < 20  # pool sparse cells so the chi-square approximation holds
        if rare.any():
            table = np.concatenate([table[:, ~rare], table[:, rare].sum(1, keepdims=True)], axis=1)
        p_value = stats.chi2_contingency(table).pvalue
        assert p_value > MIN_P_VALUE / CAPACITY, (slot, p_value)


# ---------------- (c) duplicate slots within one batch: the later example wins -------------


@pytest.mark.parametrize("num_seen", [2, 20])
def test_batch_insert_equals_the_sequential_loop(num_seen):
    """reservoir_add on one batch equals mammoth's loop fed the same uniform draws.

    The draws are reproduced with the call reservoir_slots makes
    (`randint(key, (batch,), 0, n + 1)` for example indices n), so the comparison is exact.
    """
    capacity, batch = 4, 16
    start = id_buffer(capacity, [100 + i for i in range(min(num_seen, capacity))], num_seen)
    ids = jnp.arange(batch, dtype=jnp.int32)
    seen = num_seen + np.arange(batch)

    def one_key(key):
        added = reservoir_add(start, {"id": ids}, key)
        draws = jax.random.randint(key, (batch,), 0, jnp.asarray(seen, jnp.int32) + 1)
        return added.items["id"], draws

    added, draws = jax.jit(jax.vmap(one_key))(keys(2, 500))
    added, draws = np.asarray(added), np.asarray(draws)
    duplicates = 0
    for row, draw in zip(added, draws):
        expected = np.asarray(start.items["id"]).copy()
        slots = []
        for i, n in enumerate(seen):
            slot = n if n < capacity else draw[i]
            if slot < capacity:
                expected[slot] = i
                slots.append(slot)
        duplicates += len(slots) != len(set(slots))
        np.testing.assert_array_equal(row, expected)
    assert duplicates > 50  # the case under test really occurred, often


# ---------------- (d) reservoir_sample ------------------------------------------------------


def sample_ids(buffer, size: int, seed: int):
    def one_key(key):
        items, valid = reservoir_sample(buffer, size, key)
        return items["id"], valid

    ids, valid = jax.jit(jax.vmap(one_key))(keys(seed))
    return np.asarray(ids), np.asarray(valid)


def test_sample_while_partly_filled_returns_only_filled_rows_first():
    ids, valid = sample_ids(id_buffer(8, [10, 11, 12]), 5, seed=3)
    np.testing.assert_array_equal(valid, np.tile([True, True, True, False, False], (NUM_KEYS, 1)))
    assert all(sorted(row[:3]) == [10, 11, 12] for row in ids.tolist())


@pytest.mark.parametrize(("filled", "size"), [(8, 3), (5, 2)])
def test_sample_is_uniform_without_replacement(filled, size):
    ids, valid = sample_ids(id_buffer(8, list(range(filled))), size, seed=4 + filled)
    assert valid.all()
    assert all(len(set(row)) == size for row in ids.tolist())  # distinct
    assert ids.min() >= 0 and ids.max() < filled  # never an empty slot
    assert_uniform_inclusion(np.bincount(ids.ravel(), minlength=filled), NUM_KEYS, size)


# ---------------- (e) buffer_add: the reservoir policy, with padding rows --------------------


def test_buffer_add_offers_only_valid_rows():
    """`buffer_add` without `valid` is `reservoir_add`; with it, the sequential loop over the
    valid rows only, fed the draws `randint(key, (batch,), 0, n + 1)` (n: each valid row's
    index in the stream), as padded task samples (A-GEM's) need."""
    capacity, batch = 4, 16
    start = id_buffer(capacity, [100, 101], num_seen=2)  # filling, then full
    ids = jnp.arange(batch, dtype=jnp.int32)
    rng = np.random.default_rng(0)
    valid = rng.random((500, batch)) < 0.7

    def one_key(key, valid):
        plain = buffer_add(start, {"id": ids}, key).items["id"]
        same = reservoir_add(start, {"id": ids}, key).items["id"]
        masked = buffer_add(start, {"id": ids}, key, valid)
        seen = start.num_seen + jnp.cumsum(valid) - 1
        draws = jax.random.randint(key, (batch,), 0, jnp.maximum(seen, 0) + 1)
        return plain, same, masked.items["id"], masked.num_seen, draws

    plain, same, masked, num_seen, draws = jax.jit(jax.vmap(one_key))(keys(5, 500), valid)
    np.testing.assert_array_equal(plain, same)
    np.testing.assert_array_equal(num_seen, 2 + valid.sum(1))
    for row, draw, offered in zip(np.asarray(masked), np.asarray(draws), valid):
        expected = np.asarray(start.items["id"]).copy()
        for n, i in enumerate(np.flatnonzero(offered), start=2):
            slot = n if n < capacity else draw[i]
            if slot < capacity:
                expected[slot] = i
        np.testing.assert_array_equal(row, expected)


def test_replay_add_on_a_reservoir_is_insert_then_sample():
    """The default policy's `replay_add`: `reservoir_add` on the first split key, then
    `reservoir_sample` on the second (the definition recorded runs were made with)."""
    state = replay_init(8, 3, {"id": jnp.int32(0)})
    for b in range(4):
        key = jax.random.PRNGKey(b)
        batch = {"id": jnp.arange(5 * b, 5 * b + 5, dtype=jnp.int32)}
        insert_key, sample_key = jax.random.split(key)
        buffer = reservoir_add(state.buffer, batch, insert_key)
        replay, valid = reservoir_sample(buffer, 3, sample_key)
        state = replay_add(state, batch, key)
        assert type(state.buffer) is ReservoirState
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves((buffer, replay, valid))):
            np.testing.assert_array_equal(got, want)
