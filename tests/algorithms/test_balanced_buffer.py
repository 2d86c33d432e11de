"""Class-balancing reservoir sampling (Chrysakis & Moens, ICML 2020): `ClassBalancedState`.

The batched, in-jit insertion is compared slot by slot with a plain transcription of the paper's
Algorithm 1 (one example at a time, in numpy) fed the same random numbers; then the policy's
purpose (an imbalanced stream leaves a balanced buffer, where reservoir sampling does not), the
replay state it plugs into, and ER / DER++ built with it against the algorithm contract.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sequax import testing
from sequax.algorithms import DERPP, ER
from sequax.algorithms.reservoir import (
    ClassBalancedState,
    ReplayState,
    ReservoirState,
    buffer_add,
    buffer_init,
    class_balanced_draws,
    class_balanced_slots,
    replay_add,
    replay_init,
)

CAPACITY, CLASSES, BATCH, BATCHES, RUNS = 6, 3, 8, 6, 64
EXAMPLE = {"y": jnp.int32(0), "id": jnp.int32(0)}


def algorithm_1(state, labels, ids, valid, accept, victim, branches):
    """One batch offered to the paper's Algorithm 1, example by example, with the given draws;
    returns the slot each row's write survives in (CAPACITY: dropped or overwritten later).

    `state` (numpy, updated in place): stored labels and ids per slot, m_c, n_c, the set of
    full classes and the count offered. A class is full once it is, or has been, a largest
    class after the memory filled (refreshed after every example, as the paper words it); the
    stored example to overwrite is eligible slot number floor(victim[i] * eligible slots).
    """

    def uniform_slot(eligible, v):
        slots = np.flatnonzero(eligible)
        return int(
            slots[min(int(np.floor(np.float32(v) * np.float32(len(slots)))), len(slots) - 1)]
        )

    stored_y, stored_id, m, n, full = (state[k] for k in ("y", "id", "m", "n", "full"))
    written = {}  # slot -> the row whose write it holds
    for i, (c, new_id) in enumerate(zip(labels, ids)):
        if not valid[i]:
            continue
        n[c] += 1
        if state["offered"] < CAPACITY:  # the memory is not filled: store
            slot, branch = state["offered"], "fill"
        elif not full[c]:  # overwrite an example of the largest class (any of the tied ones)
            largest = np.flatnonzero(m == m.max())
            slot = uniform_slot(np.isin(stored_y, largest), victim[i])
            branch = "steal"
        elif np.float32(accept[i]) * np.float32(n[c]) < np.float32(m[c]):  # u < m_c / n_c
            slot = uniform_slot(stored_y == c, victim[i])
            branch = "own class"
        else:
            slot, branch = None, "dropped"
        branches[branch] += 1
        if slot is not None:
            if state["offered"] >= CAPACITY:
                m[stored_y[slot]] -= 1
            m[c] += 1
            stored_y[slot], stored_id[slot] = c, new_id
            branches["slot written twice in a batch"] += slot in written
            written[slot] = i
        state["offered"] += 1
        if state["offered"] >= CAPACITY:
            full |= m == m.max()
    surviving = np.full(len(labels), CAPACITY)
    surviving[list(written.values())] = list(written)
    return surviving


def streams(seed: int, masked: bool):
    """Imbalanced labels (60/30/10 %), unique ids, and which rows are offered."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(CLASSES, (RUNS, BATCHES, BATCH), p=[0.6, 0.3, 0.1]).astype(np.int32)
    ids = 1 + np.arange(BATCHES * BATCH, dtype=np.int32).reshape(BATCHES, BATCH)
    valid = rng.random((RUNS, BATCHES, BATCH)) < (0.8 if masked else 1.0)
    return labels, np.broadcast_to(ids, labels.shape), valid


@pytest.mark.parametrize("masked", [False, True])
def test_batches_equal_the_sequential_algorithm(masked):
    labels, ids, valid = streams(seed=int(masked), masked=masked)
    keys = jax.random.split(jax.random.PRNGKey(7), RUNS)

    def one_run(key, labels, ids, valid):
        buffer = buffer_init(CAPACITY, EXAMPLE, "class_balanced", CLASSES)
        after, draws = [], []
        for b in range(BATCHES):
            batch_key = jax.random.fold_in(key, b)
            batch = {"y": labels[b], "id": ids[b]}
            offered = valid[b] if masked else None
            slots = class_balanced_slots(buffer, labels[b], batch_key, offered)[0]
            buffer = buffer_add(buffer, batch, batch_key, offered)
            after.append((buffer.items["y"], buffer.items["id"], buffer.stored, buffer.seen, slots))
            draws.append(class_balanced_draws(batch_key, BATCH))
        return jax.tree.map(lambda *a: jnp.stack(a), *after), jax.tree.map(
            lambda *a: jnp.stack(a), *draws
        )

    after, draws = jax.jit(jax.vmap(one_run))(keys, labels, ids, valid)
    after, (accept, victim) = jax.tree.map(np.asarray, (after, draws))
    branches = collections.Counter()
    for r in range(RUNS):
        state = {
            "y": np.zeros(CAPACITY, np.int32),
            "id": np.zeros(CAPACITY, np.int32),
            "m": np.zeros(CLASSES, np.int64),
            "n": np.zeros(CLASSES, np.int64),
            "full": np.zeros(CLASSES, bool),
            "offered": 0,
        }
        for b in range(BATCHES):
            state["slots"] = algorithm_1(
                state, labels[r, b], ids[r, b], valid[r, b], accept[r, b], victim[r, b], branches
            )
            for got, key in zip((a[r, b] for a in after), ("y", "id", "m", "n", "slots")):
                np.testing.assert_array_equal(got, state[key], err_msg=f"run {r} batch {b} {key}")
    # Every branch of the algorithm (and a slot drawn twice in one batch) really occurred.
    assert min(branches[k] for k in ("fill", "steal", "own class", "dropped")) > 20, branches
    assert branches["slot written twice in a batch"] > 20, branches


def test_an_imbalanced_stream_leaves_a_balanced_buffer():
    """90 % of the stream is class 0: CBRS stores 20 of each of the 5 classes; reservoir
    sampling mirrors the stream (about 90 of 100 slots for class 0)."""
    classes, capacity, batch, size = 5, 100, 10, 2000
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(size) < 0.9, 0, rng.integers(1, classes, size)).astype(np.int32)
    ids = np.arange(size, dtype=np.int32)

    def run(policy, key):
        buffer = buffer_init(capacity, EXAMPLE, policy, classes)

        def step(buffer, inputs):
            y, i, k = inputs
            return buffer_add(buffer, {"y": y, "id": i}, k), None

        keys = jax.random.split(key, size // batch)
        inputs = (labels.reshape(-1, batch), ids.reshape(-1, batch), keys)
        return jax.lax.scan(step, buffer, inputs)[0]

    balanced = jax.jit(run, static_argnums=0)("class_balanced", jax.random.PRNGKey(0))
    reservoir = jax.jit(run, static_argnums=0)("reservoir", jax.random.PRNGKey(0))
    stored_y = np.asarray(balanced.items["y"])
    np.testing.assert_array_equal(np.bincount(stored_y, minlength=classes), [20] * classes)
    np.testing.assert_array_equal(balanced.stored, np.bincount(stored_y, minlength=classes))
    np.testing.assert_array_equal(balanced.seen, np.bincount(labels, minlength=classes))
    stored_ids = np.asarray(balanced.items["id"])
    assert len(set(stored_ids.tolist())) == capacity  # each stored once, with its own label
    np.testing.assert_array_equal(labels[stored_ids], stored_y)
    assert int(balanced.num_seen) == size
    assert np.bincount(np.asarray(reservoir.items["y"]), minlength=classes)[0] > 75


def test_replay_state_and_errors():
    replay = replay_init(CAPACITY, 4, EXAMPLE, policy="class_balanced", num_classes=CLASSES)
    assert isinstance(replay.buffer, ClassBalancedState)
    assert isinstance(replay.buffer.reservoir, ReservoirState)  # what engine.sharding splits
    assert replay.buffer.items is replay.buffer.reservoir.items
    batch = {"y": jnp.asarray([2, 2, 1], jnp.int32), "id": jnp.asarray([5, 6, 7], jnp.int32)}
    # Donated, as the engine does with the state: every leaf must be an array of its own.
    replay = jax.jit(replay_add, donate_argnums=0)(replay, batch, jax.random.PRNGKey(0))
    assert isinstance(replay, ReplayState) and int(replay.buffer.num_seen) == 3
    np.testing.assert_array_equal(replay.valid, [True, True, True, False])
    assert sorted(np.asarray(replay.replay["id"][:3]).tolist()) == [5, 6, 7]
    np.testing.assert_array_equal(replay.buffer.stored, [0, 1, 2])
    with pytest.raises(ValueError, match="num_classes >= 1"):
        buffer_init(CAPACITY, EXAMPLE, "class_balanced")
    with pytest.raises(ValueError, match="label 'y'"):
        buffer_init(CAPACITY, {"x": jnp.zeros(3)}, "class_balanced", CLASSES)
    with pytest.raises(ValueError, match="unknown"):
        buffer_init(CAPACITY, EXAMPLE, "balanced")


@pytest.mark.parametrize(
    "algorithm",
    [
        ER(capacity=16, replay_batch=4, buffer_policy="class_balanced", buffer_classes=10),
        DERPP(capacity=16, replay_batch=4, buffer_policy="class_balanced"),
    ],
    ids=["er", "derpp"],
)
def test_the_contract_with_a_class_balanced_buffer(algorithm):
    report = testing.check_algorithm(algorithm)
    assert report.method == type(algorithm).__name__
