"""ER-ACE (`sequax.algorithms.er_ace`) against a PyTorch transcription of mammoth's `ErACE.observe`.

The reference keeps mammoth's words: `present = labels.unique()`, `seen_so_far` updated
before the loss, the mask of the present classes plus `mask[:, seen_so_far.max():] = 1` when
the largest seen class is not the last one, `masked_fill(mask == 0, finfo.min)` and the
replay cross-entropy over all logits only once the first task has ended.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from batches import random_batch
from small_streams import small_split_config
from torch_reference import assert_gradient_is_naives, assert_mlp_grads_match, torch_mlp

from sequax import algorithms, testing
from sequax.algorithms import ERACE, Naive
from sequax.algorithms.er_ace import ERACEState, incoming_classes
from sequax.algorithms.reservoir import ClassBalancedState, ReplayState, ReservoirState
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop

BATCH, REPLAY, CAPACITY, CLASSES = 6, 5, 8, 10


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, labels):
    return random_batch(seed, len(labels), labels=labels)


def mask_of(classes):
    return jnp.asarray(np.isin(np.arange(CLASSES), list(classes)))


def state_with(algorithm, model, *, seen, task, filled):
    """A state whose buffer was offered `filled` examples and whose `seen` mask is `seen`."""
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0] * BATCH), seed=0)
    replay = state.algo.replay
    if filled:
        fill = batch_of(1, np.arange(filled) % CLASSES)
        replay = algorithm.update(state.algo, state, fill, {}, jax.random.PRNGKey(5)).replay
    return state._replace(task=jnp.asarray(task, jnp.int32), algo=ERACEState(replay, mask_of(seen)))


# ---------------- The PyTorch reference ------------------------------------------------------


def as_torch(a, dtype=torch.float64):
    return torch.from_numpy(np.array(a)).to(dtype)


def mammoth_loss(net, batch, seen_before, task, buf_x, buf_y, num_classes=CLASSES):
    """`ErACE.observe` up to `backward()` (`buf_x`, `buf_y`: the rows `get_data` returns)."""
    labels = as_torch(batch["y"], torch.long)
    present = labels.unique()
    seen_so_far = torch.cat([torch.tensor(sorted(seen_before), dtype=torch.long), present]).unique()
    logits = net(as_torch(batch["x"]))
    mask = torch.zeros_like(logits)
    mask[:, present] = 1
    if seen_so_far.max() < (num_classes - 1):
        mask[:, seen_so_far.max() :] = 1
    if task > 0:
        logits = logits.masked_fill(mask == 0, torch.finfo(logits.dtype).min)
    loss = F.cross_entropy(logits, labels)
    if task > 0:
        loss = loss + F.cross_entropy(net(as_torch(buf_x)), as_torch(buf_y, torch.long))
    return loss


CASES = {  # name: (classes seen before the batch, task, the batch's labels, buffer fill)
    "first_task": ([0, 1], 0, [0, 1, 1, 0, 1, 0], CAPACITY),
    "new_classes": ([0, 1], 1, [2, 3, 3, 2, 2, 3], CAPACITY),
    "old_class_present": ([0, 1, 2, 3], 1, [1, 2, 3, 3, 2, 2], CAPACITY),
    "largest_seen_absent": ([0, 1, 2, 3], 1, [0, 2, 2, 0, 2, 0], 3),  # fewer rows than REPLAY
    "last_class_seen": ([0, 1, 2, 3, 4, 5, 6, 7, 8], 4, [9, 8, 9, 9, 8, 9], CAPACITY),
    "last_class_only": ([0, 1, 2, 3, 4, 5, 6, 7, 8], 4, [9, 9, 9, 9, 9, 9], CAPACITY),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_gradient_match_mammoth(model, case):
    seen, task, labels, filled = CASES[case]
    algorithm = ERACE(CAPACITY, REPLAY)
    state = state_with(algorithm, model, seen=seen, task=task, filled=filled)
    params = jax.tree.map(lambda p: 3.0 * p + 0.05, state.params)  # confident, varied logits
    batch = batch_of(2, labels)
    value_and_grad = jax.value_and_grad(
        lambda p: algorithm.loss(p, state, batch, jax.random.PRNGKey(0), model), has_aux=True
    )
    (loss, aux), grads = jax.jit(value_and_grad)(params)

    rows = np.asarray(state.algo.replay.valid)
    assert rows.sum() == min(filled, REPLAY)
    replay = jax.tree.map(lambda a: np.asarray(a)[rows], state.algo.replay.replay)
    net = torch_mlp(params)
    reference = mammoth_loss(net, batch, seen, task, replay["x"], replay["y"])
    reference.backward()
    np.testing.assert_allclose(float(loss), reference.item(), rtol=1e-5)
    assert_mlp_grads_match(grads, net, rtol=1e-5, atol=1e-7)
    metrics = aux["metrics"]
    np.testing.assert_allclose(float(loss), float(metrics["ce"] + metrics["replay_ce"]), rtol=1e-6)
    assert (float(metrics["replay_ce"]) > 0.1) == (task > 0)


def test_first_task_is_naive(model):
    """No mask and no replay before the first task ends, however full the buffer."""
    algorithm = ERACE(CAPACITY, REPLAY)
    state = state_with(algorithm, model, seen=[0, 1, 2], task=0, filled=CAPACITY)
    batch, rng = batch_of(2, [3, 3, 2, 3, 2, 2]), jax.random.PRNGKey(0)
    assert_gradient_is_naives(algorithm, Naive(), state, batch, rng, model)


@pytest.mark.parametrize(
    "present, seen, expected",
    [
        ([2, 3], [0, 1, 2, 3], [2, 3, 4, 5, 6, 7, 8, 9]),  # the unseen classes stay in
        ([0, 2], [0, 1, 2, 3], [0, 2, 3, 4, 5, 6, 7, 8, 9]),  # and the largest seen, though absent
        ([1], [0, 1, 2, 3], [1, 3, 4, 5, 6, 7, 8, 9]),
        ([8, 9], list(range(10)), [8, 9]),  # every class seen: only the present ones
        ([8], list(range(10)), [8]),
        ([0, 1], [0, 1], list(range(10))),  # largest seen 1: every class
    ],
)
def test_incoming_classes_is_mammoths_mask(present, seen, expected):
    np.testing.assert_array_equal(
        incoming_classes(mask_of(present), mask_of(seen)), mask_of(expected)
    )


# ---------------- The state across update and end_task ---------------------------------------


def test_update_records_classes_and_fills_the_reservoir(model):
    algorithm = ERACE(CAPACITY, REPLAY)
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0] * BATCH), seed=0)
    assert not bool(state.algo.seen.any()) and int(state.algo.replay.buffer.num_seen) == 0
    algo = algorithm.update(
        state.algo, state, batch_of(1, [0, 1, 1, 0, 0, 0]), {}, jax.random.PRNGKey(0)
    )
    np.testing.assert_array_equal(algo.seen, mask_of([0, 1]))
    assert int(algo.replay.buffer.num_seen) == BATCH and int(algo.replay.valid.sum()) == REPLAY
    algo = algorithm.update(algo, state, batch_of(2, [5, 5, 5, 5, 5, 5]), {}, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(algo.seen, mask_of([0, 1, 5]))
    assert int(algo.replay.buffer.num_seen) == 2 * BATCH
    stored = set(np.asarray(algo.replay.buffer.items["y"]).tolist())
    assert stored <= {0, 1, 5} and 5 in stored
    ended = algorithm.end_task(state._replace(algo=algo), None, None, model)
    assert ended is algo  # nothing happens at a task boundary


def test_hyperparameters_are_checked_and_registered(model):
    for kwargs in ({"replay_batch": 0}, {"replay_batch": CAPACITY + 1}):
        with pytest.raises(ValueError, match="replay_batch"):
            ERACE(CAPACITY, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        ERACE(num_classes=0)
    assert algorithms.make("er_ace", capacity=50, replay_batch=5) == ERACE(50, 5)
    algorithm = ERACE(CAPACITY, REPLAY, num_classes=7)
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0] * BATCH), seed=0)
    with pytest.raises(ValueError, match="num_classes=10"):
        algorithm.loss(state.params, state, batch_of(1, [0, 1]), jax.random.PRNGKey(0), model)


# ---------------- The buffer policy -------------------------------------------------------------


def test_default_state_structure_is_unchanged(model):
    """The buffer policies leave the default ER-ACE state as it was (recorded runs,
    checkpoints): a plain `ReservoirState` inside the `ReplayState`."""
    batch = batch_of(0, [0] * BATCH)
    state = create_state(model, ERACE(CAPACITY, REPLAY), optax.sgd(0.1), batch, seed=0)
    items = {
        "x": jnp.zeros((CAPACITY, *batch["x"].shape[1:]), jnp.float32),
        "y": jnp.zeros((CAPACITY,), jnp.int32),
    }
    replay = ReplayState(
        ReservoirState(items, jnp.zeros((), jnp.int32)),
        jax.tree.map(lambda b: b[:REPLAY], items),
        jnp.zeros(REPLAY, bool),
    )
    expected = ERACEState(replay, jnp.zeros(CLASSES, bool))
    assert type(state.algo.replay.buffer) is ReservoirState
    assert jax.tree.structure(state.algo) == jax.tree.structure(expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(state.algo, expected)
    balanced = ERACE(CAPACITY, REPLAY, buffer_policy="class_balanced")
    buffer = create_state(model, balanced, optax.sgd(0.1), batch, seed=0).algo.replay.buffer
    assert type(buffer) is ClassBalancedState and buffer.stored.shape == (CLASSES,)
    with pytest.raises(ValueError, match="buffer_policy='cbrs' is unknown") as error:
        ERACE(CAPACITY, REPLAY, buffer_policy="cbrs")
    assert "\n" not in str(error.value)


def test_the_contract_with_a_class_balanced_buffer():
    algorithm = ERACE(capacity=16, replay_batch=4, buffer_policy="class_balanced")
    assert testing.check_algorithm(algorithm).method == "ERACE"


def test_an_imbalanced_stream_leaves_a_balanced_buffer(model):
    """90 % of the stream is class 0 (the rest classes 1-4): the class-balanced buffer holds
    20 / 5 of each, and replays from it; the reservoir mirrors the stream."""
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(800) < 0.9, 0, rng.integers(1, 5, 800)).reshape(-1, 8)
    x = jnp.asarray(rng.random((len(labels), 8, 4, 4, 1)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), len(labels))

    def run(algorithm):
        state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0] * 8), seed=0)

        def step(algo, inputs):
            x, y, key = inputs
            return algorithm.update(algo, state, {"x": x, "y": y}, {}, key), None

        return jax.lax.scan(step, state.algo, (x, labels.astype(np.int32), keys))[0]

    balanced = jax.jit(run, static_argnums=0)(ERACE(20, 4, buffer_policy="class_balanced"))
    buffer = balanced.replay.buffer
    stored_y = np.asarray(buffer.items["y"])
    np.testing.assert_array_equal(np.bincount(stored_y, minlength=CLASSES), [4] * 5 + [0] * 5)
    np.testing.assert_array_equal(buffer.stored, np.bincount(stored_y, minlength=CLASSES))
    assert int(buffer.num_seen) == labels.size and bool(balanced.replay.valid.all())
    np.testing.assert_array_equal(balanced.seen, mask_of(range(5)))
    reservoir = jax.jit(run, static_argnums=0)(ERACE(20, 4))
    assert np.bincount(np.asarray(reservoir.replay.buffer.items["y"]))[0] > 12


# ---------------- End to end -------------------------------------------------------------------


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_er_ace_beats_er_and_keeps_old_classes_on_split_mnist(tmp_path):
    er = loop.run(
        small_split_config("er", capacity=100, replay_batch=10), tmp_path / "er", verbose=False
    )
    ace = loop.run(
        small_split_config("er_ace", capacity=100, replay_batch=10), tmp_path / "ace", verbose=False
    )
    er_acc, ace_acc = er.summary["class_il"]["acc"], ace.summary["class_il"]["acc"]
    # The same buffer and replay: only the asymmetric incoming cross-entropy differs.
    assert ace_acc > er_acc + 0.04, (ace_acc, er_acc)
    # ER's errors lean to the newest classes; ER-ACE's old tasks fare better than ER's.
    assert ace.class_il[-1, :-1].mean() > er.class_il[-1, :-1].mean() + 0.1
    assert ace.class_il[-1, 0] > 0.8  # task 0 survives four later tasks (naive: 0)
