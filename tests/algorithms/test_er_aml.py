"""ER-AML (`sequax.algorithms.er_aml`) against a PyTorch transcription of pclucas14/AML.

The reference keeps the AML repository's words: `ER_AML.sup_con_loss` (methods/er_aml.py)
as written, `process_inc` from the sampled positives and negatives on (the invalid anchors
dropped, `hidden_norm.repeat(2, 1)` as anchors, loss 0 when none is valid),
`Buffer.sample_pos_neg`'s masks (buffer.py) over the pool `cat(bx[:current_index], x)`,
`normalize` (model.py) and the replay cross-entropy of `ER.observe` (methods/er.py).
"""

from __future__ import annotations

import functools

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

from sequax import testing
from sequax.algorithms import Naive
from sequax.algorithms.er_aml import (
    ERAML,
    draw_uniform,
    normalize,
    pair_candidates,
    supcon_loss,
)
from sequax.algorithms.reservoir import ClassBalancedState, ReplayState, ReservoirState
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop
from sequax.engine.experiment import from_config

BATCH, REPLAY, CAPACITY, CLASSES = 6, 5, 8, 10
T, T_BASE = 0.2, 0.07


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, labels):
    return random_batch(seed, len(labels), labels=labels)


def state_with(algorithm, model, *, task, fills=()):
    """A state at task `task` whose buffer was offered each (labels, task) batch of `fills`."""
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0] * BATCH), seed=0)
    algo = state.algo
    for i, (labels, fill_task) in enumerate(fills):
        at = state._replace(task=jnp.asarray(fill_task, jnp.int32))
        algo = algorithm.update(algo, at, batch_of(10 + i, labels), {}, jax.random.PRNGKey(i))
    return state._replace(task=jnp.asarray(task, jnp.int32), algo=algo)


# ---------------- The PyTorch reference ------------------------------------------------------


def as_torch(a, dtype=torch.float64):
    return torch.from_numpy(np.array(a)).to(dtype)


def torch_normalize(x):
    """model.py `normalize`."""
    x_norm = torch.norm(x, p=2, dim=1).unsqueeze(1).expand_as(x)
    return x.div(x_norm + 0.00001)


def sup_con_loss(
    anchor_feature, features, anch_labels, labels, temperature=0.1, base_temperature=0.07
):
    """methods/er_aml.py `ER_AML.sup_con_loss` (the `labels` branch)."""
    batch_size = features.shape[0]
    labels = labels.contiguous().view(-1, 1)
    anch_labels = anch_labels.contiguous().view(-1, 1)
    mask = torch.eq(anch_labels, labels.T).double()
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_count = contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    exp_logits = torch.exp(logits)
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()


def incoming_loss(hidden, pos_hid, neg_hid, inc_y, pos_y, neg_y, invalid_idx, temperature):
    """`ER_AML.process_inc` after `self.sample(...)` and the forward passes (hidden: the
    incoming features; pos_hid, neg_hid: the positives' and negatives' normalised ones)."""
    hidden_norm = torch_normalize(hidden[~invalid_idx])
    pos_hid, neg_hid = pos_hid[~invalid_idx], neg_hid[~invalid_idx]
    if not (~invalid_idx).any():
        return torch.zeros((), dtype=torch.float64)
    inc_y, pos_y, neg_y = inc_y[~invalid_idx], pos_y[~invalid_idx], neg_y[~invalid_idx]
    hid_all = torch.cat((pos_hid, neg_hid), dim=0)
    y_all = torch.cat((pos_y, neg_y), dim=0)
    return sup_con_loss(
        labels=y_all,
        features=hid_all.unsqueeze(1),
        anch_labels=inc_y.repeat(2),
        anchor_feature=hidden_norm.repeat(2, 1),
        temperature=temperature,
    )


def sample_pos_neg_masks(by, bt, label, t, task_free):
    """buffer.py `sample_pos_neg`'s `valid_pos`, `valid_neg` [pool, batch] and `invalid_idx`,
    on the pool `cat(by[:current_index], label)` (by, bt: the filled rows)."""
    label = torch.from_numpy(np.array(label))
    by = torch.cat((torch.from_numpy(np.array(by)), label))
    task = torch.zeros_like(label).fill_(t)
    bt = torch.cat((torch.from_numpy(np.array(bt)), task))
    bidx = torch.arange(by.size(0))
    same_label = label.view(1, -1) == by.view(-1, 1)
    same_task = task.view(1, -1) == bt.view(-1, 1)
    same_ex = bidx[-label.size(0) :].view(1, -1) == bidx.view(-1, 1)
    if task_free:
        same_task = torch.zeros_like(same_task)
        for label_ in label.unique():
            same_task = same_task | (label_.view(1, -1).expand_as(same_task) == by.view(-1, 1))
    valid_pos = same_label & ~same_ex
    valid_neg = ~same_label & same_task
    invalid_idx = ~(valid_pos.sum(0) > 0) | ~(valid_neg.sum(0) > 0)
    return valid_pos.numpy(), valid_neg.numpy(), invalid_idx.numpy()


# ---------------- The metric loss: hand-checked values ---------------------------------------


def loss_of(anchor, anchor_y, positive, pos_y, negative, neg_y, valid=None, t=T, t_base=T_BASE):
    anchor, positive, negative = (jnp.asarray(a, jnp.float32) for a in (anchor, positive, negative))
    valid = jnp.ones(len(anchor_y), bool) if valid is None else jnp.asarray(valid)
    return _loss_of(anchor, anchor_y, positive, pos_y, negative, neg_y, valid, t, t_base)


@jax.jit
def _loss_of(anchor, anchor_y, positive, pos_y, negative, neg_y, valid, t, t_base):
    return supcon_loss(
        normalize(anchor),
        jnp.asarray(anchor_y),
        valid,
        normalize(jnp.concatenate([positive, negative])),
        jnp.concatenate([jnp.asarray(pos_y), jnp.asarray(neg_y)]),
        jnp.concatenate([valid, valid]),
        t,
        t_base,
    )


E1, E2 = [1.0, 0.0], [0.0, 1.0]
EPS_SCALE = 1 / (1 + 1e-5) ** 2  # cosines of unit vectors under `normalize`'s +1e-5


def test_one_anchor_one_positive_one_negative():
    # logits [1/T, 0] (times EPS_SCALE): loss = (T/T_base) log(1 + exp(-1/T))
    loss = loss_of([E1], [0], [E1], [0], [E2], [1])
    expected = (T / T_BASE) * np.log1p(np.exp(-EPS_SCALE / T))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_another_anchors_negative_of_my_class_is_a_positive():
    # Anchors e1 (class 0), e2 (class 1); contrasts [p0=e1, p1=e2, n0=e2 (1), n1=e1 (0)]:
    # each anchor has two positives with logit 1/T and two negatives with logit 0,
    # loss = (T/T_base) log(2 + 2 exp(-1/T)).
    loss = loss_of([E1, E2], [0, 1], [E1, E2], [0, 1], [E2, E1], [1, 0], t=0.5, t_base=0.25)
    expected = 2.0 * np.log(2 + 2 * np.exp(-EPS_SCALE / 0.5))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_invalid_anchors_and_their_contrasts_are_left_out():
    loss = loss_of([E1], [0], [E1], [0], [E2], [1])
    padded = loss_of(
        [E1, [3.0, -2.0]], [0, 1], [E1, [5.0, 1.0]], [0, 0], [E2, [0.3, 7.0]], [1, 0], [True, False]
    )
    np.testing.assert_allclose(float(padded), float(loss), rtol=1e-6)
    # Scale does not matter (features are normalised); no valid anchor: exactly 0, zero gradient.
    scaled = loss_of([[7.0, 0.0]], [0], [[0.5, 0.0]], [0], [[0.0, 3.0]], [1])
    np.testing.assert_allclose(float(scaled), float(loss), rtol=1e-5)
    features = jnp.array([[1.0, 2.0], [0.0, 0.0]])  # a dead (all-zero) row too

    def none_valid(f):
        return loss_of(f, [0, 1], f, [0, 1], f[::-1], [1, 0], [False, False])

    assert float(none_valid(features)) == 0.0
    grad = jax.grad(none_valid)(features)
    assert np.all(np.asarray(grad) == 0.0)


def test_loss_and_gradient_match_sup_con_loss():
    rng = np.random.default_rng(0)
    n, d = 7, 5
    hidden, pos, neg = (rng.normal(size=(n, d)) for _ in range(3))
    inc_y = np.array([0, 1, 2, 0, 1, 2, 3])
    pos_y = inc_y.copy()
    neg_y = np.array([1, 2, 0, 1, 0, 0, 2])  # some negatives share other anchors' labels
    invalid = np.array([False, False, True, False, False, False, True])
    for temperature in (0.2, 0.07, 1.0):

        def jax_loss(h, p, q, temperature=temperature):
            return loss_of(h, inc_y, p, pos_y, q, neg_y, ~invalid, temperature, T_BASE)

        value, grads = jax.value_and_grad(jax_loss, argnums=(0, 1, 2))(
            *(jnp.asarray(a, jnp.float32) for a in (hidden, pos, neg))
        )
        th, tp, tn = (as_torch(a).requires_grad_() for a in (hidden, pos, neg))
        reference = incoming_loss(
            th,
            torch_normalize(tp),
            torch_normalize(tn),
            *(as_torch(a, torch.long) for a in (inc_y, pos_y, neg_y)),
            torch.from_numpy(invalid),
            temperature,
        )
        reference.backward()
        np.testing.assert_allclose(float(value), reference.item(), rtol=1e-5)
        for g, t in zip(grads, (th, tp, tn), strict=True):
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-4, atol=1e-5)


# ---------------- Sampling ----------------------------------------------------------------------


@pytest.mark.parametrize("task_free", [False, True])
def test_candidates_are_sample_pos_negs_masks(task_free):
    rng = np.random.default_rng(1)
    filled, labels, t = 6, np.array([2, 3, 3, 4, 2, 5]), 1
    by = np.array([0, 1, 2, 3, 2, 4])
    bt = np.array([0, 0, 1, 1, 1, 0])  # label 4 stored from task 0
    stored_y = np.concatenate([by, rng.integers(0, 10, CAPACITY - filled)])  # junk past `filled`
    stored_t = np.concatenate([bt, np.full(CAPACITY - filled, t)])
    pool_y = jnp.asarray(np.concatenate([stored_y, labels]))
    pool_valid = jnp.asarray(np.arange(CAPACITY + len(labels)) >= CAPACITY).at[:filled].set(True)
    if task_free:
        same_task = jnp.asarray(np.isin(np.asarray(pool_y), labels))
    else:
        same_task = jnp.asarray(np.concatenate([stored_t, np.full(len(labels), t)]) == t)
    positive, negative = pair_candidates(
        pool_y, pool_valid, same_task, jnp.asarray(labels), CAPACITY
    )
    valid_pos, valid_neg, invalid = sample_pos_neg_masks(by, bt, labels, t, task_free)
    rows = np.r_[np.arange(filled), CAPACITY + np.arange(len(labels))]  # torch pool -> ours
    np.testing.assert_array_equal(np.asarray(positive)[:, rows], valid_pos.T)
    np.testing.assert_array_equal(np.asarray(negative)[:, rows], valid_neg.T)
    assert not np.asarray(positive | negative)[:, filled:CAPACITY].any()  # empty slots never
    has_both = np.asarray(positive.any(1) & negative.any(1))
    np.testing.assert_array_equal(has_both, ~invalid)
    assert invalid.tolist() == [False] * 5 + [True]  # class 5: no positive (4: from task 0)
    # The stored 4 (task 0) is a negative of the 2s only when the batch's labels define the task.
    assert bool(negative[0, 5]) == task_free


def test_draws_are_uniform_over_the_candidates():
    candidates = jnp.asarray(
        [[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=bool
    )
    fallback = jnp.asarray([1, 1, 0, 0, 1, 1], dtype=bool)
    keys = jax.random.split(jax.random.PRNGKey(0), 6000)
    draws = np.asarray(jax.vmap(lambda k: draw_uniform(candidates, fallback, k))(keys))
    counts = [np.bincount(draws[:, i], minlength=6) for i in range(3)]
    for count, allowed in zip(counts, [[0, 2, 3], [0, 1, 4, 5], [5]], strict=True):
        assert count.sum() == count[allowed].sum()  # only allowed columns
        expected = 6000 / len(allowed)
        sigma = np.sqrt(expected * (1 - 1 / len(allowed))) + 1e-9
        assert np.all(np.abs(count[allowed] - expected) < 5 * sigma), count


# ---------------- The whole loss against the reference step -----------------------------------

CASES = {  # name: (fills [(labels, task)], current task, batch labels, task_free)
    "second_task": ([([0, 1, 1, 0, 1, 0], 0), ([2, 3, 2, 2], 1)], 1, [2, 3, 3, 2, 2, 3], False),
    "lone_class": ([([0, 1, 1, 0, 1, 0], 0), ([2, 3, 2, 2], 1)], 1, [2, 3, 3, 2, 4, 3], False),
    "no_negative": ([([0, 1, 1, 0], 0), ([2, 2], 1)], 1, [2, 2, 2, 2, 2, 2], False),
    "partly_filled": ([([0, 1, 1], 0)], 1, [2, 3, 3, 2, 2, 3], False),
    "task_free": ([([0, 1, 1, 0, 1, 0], 0), ([2, 3, 2, 2], 0)], 0, [1, 3, 3, 2, 1, 3], True),
}


@functools.partial(jax.jit, static_argnums=(0, 1))
def loss_and_grad(algorithm, model, params, state, batch):
    def loss(p):
        return algorithm.loss(p, state, batch, jax.random.PRNGKey(0), model)

    return jax.value_and_grad(loss, has_aux=True)(params)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_gradient_match_the_reference_step(model, case):
    fills, task, labels, task_free = CASES[case]
    algorithm = ERAML(CAPACITY, REPLAY, temperature=T, task_free=task_free)
    state = state_with(algorithm, model, task=task, fills=fills)
    params = jax.tree.map(lambda p: 3.0 * p + 0.05, state.params)
    batch = batch_of(2, labels)
    (loss, aux), grads = loss_and_grad(algorithm, model, params, state, batch)

    buffer = state.algo.buffer
    filled = min(int(buffer.num_seen), CAPACITY)
    bx = np.concatenate([np.asarray(buffer.items["x"])[:filled], np.asarray(batch["x"])])
    by = np.concatenate([np.asarray(buffer.items["y"])[:filled], labels])
    bt = np.asarray(buffer.items["task"])[:filled]
    pairs = {k: np.asarray(v) for k, v in aux["pairs"].items()}
    _, _, invalid = sample_pos_neg_masks(by[:filled], bt, labels, task, task_free)
    np.testing.assert_array_equal(pairs["valid"], ~invalid)
    to_torch = {j: j for j in range(filled)} | {CAPACITY + i: filled + i for i in range(BATCH)}
    pos_idx = np.array([to_torch[j] for j in pairs["positive"]])
    neg_idx = np.array([to_torch[j] for j in pairs["negative"]])
    valid = pairs["valid"]
    np.testing.assert_array_equal(by[pos_idx][valid], np.asarray(labels)[valid])
    assert np.all(by[neg_idx][valid] != np.asarray(labels)[valid])

    net = torch_mlp(params)
    hidden = net[:-1]  # the penultimate layer: model.return_hidden
    all_hid = torch_normalize(hidden(as_torch(np.concatenate([bx[pos_idx], bx[neg_idx]]))))
    pos_hid, neg_hid = all_hid.reshape(2, BATCH, -1)
    reference = incoming_loss(
        hidden(as_torch(batch["x"])),
        pos_hid,
        neg_hid,
        *(torch.as_tensor(a, dtype=torch.long) for a in (labels, by[pos_idx], by[neg_idx])),
        torch.from_numpy(~valid),
        T,
    )
    rows = np.asarray(state.algo.valid)
    replay = jax.tree.map(lambda a: np.asarray(a)[rows], state.algo.replay)
    reference = reference + F.cross_entropy(
        net(as_torch(replay["x"])), as_torch(replay["y"], torch.long)
    )
    reference.backward()
    np.testing.assert_allclose(float(loss), reference.item(), rtol=1e-5)
    assert_mlp_grads_match(grads, net, rtol=1e-4, atol=1e-6)
    metrics = aux["metrics"]
    np.testing.assert_allclose(float(loss), float(metrics["aml"] + metrics["replay_ce"]), rtol=1e-6)
    assert (float(metrics["aml"]) == 0.0) == (not valid.any())


@pytest.mark.parametrize("task_free", [False, True])
def test_first_task_is_naive(model, task_free):
    """Cross-entropy only before the metric loss starts: task 0 with a full buffer (task-based),
    or an empty buffer (task-free)."""
    algorithm = ERAML(CAPACITY, REPLAY, task_free=task_free)
    fills = () if task_free else [([0, 1, 2, 1, 0, 2, 1, 0], 0)]
    state = state_with(algorithm, model, task=0, fills=fills)
    batch, rng = batch_of(2, [3, 3, 2, 3, 2, 2]), jax.random.PRNGKey(0)
    assert_gradient_is_naives(algorithm, Naive(), state, batch, rng, model)


def test_update_stores_the_task_and_hyperparameters_are_checked(model):
    algorithm = ERAML(CAPACITY, REPLAY)
    state = state_with(algorithm, model, task=3, fills=[([0, 1, 2], 0), ([4, 5], 2)])
    np.testing.assert_array_equal(state.algo.buffer.items["task"][:5], [0, 0, 0, 2, 2])
    assert int(state.algo.buffer.num_seen) == 5 and int(state.algo.valid.sum()) == REPLAY
    assert algorithm.end_task(state, None, None, model) is state.algo
    for kwargs in ({"replay_batch": 0}, {"replay_batch": CAPACITY + 1}):
        with pytest.raises(ValueError, match="replay_batch"):
            ERAML(CAPACITY, **kwargs)
    for name in ("temperature", "base_temperature"):
        with pytest.raises(ValueError, match=name):
            ERAML(**{name: 0.0})


# ---------------- The buffer policy -------------------------------------------------------------


def test_default_state_structure_is_unchanged(model):
    """The buffer policies leave the default ER-AML state as it was (recorded runs,
    checkpoints): a plain `ReservoirState` inside the `ReplayState`."""
    batch = batch_of(0, [0] * BATCH)
    state = create_state(model, ERAML(CAPACITY, REPLAY), optax.sgd(0.1), batch, seed=0)
    items = {
        "x": jnp.zeros((CAPACITY, *batch["x"].shape[1:]), jnp.float32),
        "y": jnp.zeros((CAPACITY,), jnp.int32),
        "task": jnp.zeros((CAPACITY,), jnp.int32),
    }
    expected = ReplayState(
        ReservoirState(items, jnp.zeros((), jnp.int32)),
        jax.tree.map(lambda b: b[:REPLAY], items),
        jnp.zeros(REPLAY, bool),
    )
    assert type(state.algo.buffer) is ReservoirState
    assert jax.tree.structure(state.algo) == jax.tree.structure(expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(state.algo, expected)


def test_buffer_policy_is_checked(model):
    with pytest.raises(ValueError, match="buffer_policy='cbrs' is unknown") as error:
        ERAML(CAPACITY, REPLAY, buffer_policy="cbrs")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="config.algorithm.buffer_classes"):
        ERAML(CAPACITY, REPLAY, buffer_policy="class_balanced")
    # A class count other than the model's logits is caught when the step is traced.
    aml = ERAML(CAPACITY, REPLAY, buffer_policy="class_balanced", buffer_classes=7)
    state = create_state(model, aml, optax.sgd(0.1), batch_of(0, [0] * BATCH), seed=0)
    assert isinstance(state.algo.buffer, ClassBalancedState)
    with pytest.raises(ValueError, match="buffer_classes=10"):
        aml.loss(state.params, state, batch_of(1, [0] * BATCH), jax.random.PRNGKey(0), model)


@pytest.mark.parametrize("task_free", [False, True])
def test_the_contract_with_a_class_balanced_buffer(task_free):
    aml = ERAML(16, 4, task_free=task_free, buffer_policy="class_balanced", buffer_classes=CLASSES)
    assert testing.check_algorithm(aml).method == "ERAML"


def test_an_imbalanced_stream_leaves_a_balanced_buffer(model):
    """90 % of the stream is class 0 (the rest classes 1-4): the class-balanced buffer holds
    20 / 5 of each, with the task it was offered in; the reservoir mirrors the stream."""
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(800) < 0.9, 0, rng.integers(1, 5, 800)).reshape(-1, 8)
    tasks = np.repeat([0, 1], len(labels) // 2)
    x = jnp.asarray(rng.random((len(labels), 8, 4, 4, 1)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), len(labels))

    def run(algorithm):
        state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0] * 8), seed=0)

        def step(algo, inputs):
            x, y, task, key = inputs
            at = state._replace(task=task)
            return algorithm.update(algo, at, {"x": x, "y": y}, {}, key), None

        return jax.lax.scan(step, state.algo, (x, labels.astype(np.int32), tasks, keys))[0]

    balanced = jax.jit(run, static_argnums=0)(
        ERAML(20, 4, buffer_policy="class_balanced", buffer_classes=CLASSES)
    )
    stored_y = np.asarray(balanced.buffer.items["y"])
    np.testing.assert_array_equal(np.bincount(stored_y, minlength=CLASSES), [4] * 5 + [0] * 5)
    np.testing.assert_array_equal(balanced.buffer.stored, np.bincount(stored_y, minlength=CLASSES))
    assert int(balanced.buffer.num_seen) == labels.size and bool(balanced.valid.all())
    assert set(np.asarray(balanced.buffer.items["task"]).tolist()) <= {0, 1}
    reservoir = jax.jit(run, static_argnums=0)(ERAML(20, 4))
    assert np.bincount(np.asarray(reservoir.buffer.items["y"]))[0] > 12


# ---------------- The contract and a short run -----------------------------------------------


# The contract suite runs over the registry (`tests/algorithms/test_contract.py`, "er_aml",
# task-based; the task-free branch is traced and run in the tests above).


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_a_short_split_mnist_run_keeps_the_first_task(tmp_path):
    """Two Split-MNIST tasks of 200 images (tests/engine/test_loop.py's tiny config): the
    metric loss on the second task leaves the first task's classes standing (naive: ~0)."""
    config = small_split_config("er", capacity=50, replay_batch=10)
    config.optimizer.lr = 0.1
    config.data.num_tasks = 2
    config.data.train_per_task = 200
    algorithm = ERAML(capacity=50, replay_batch=10)
    result = loop.run(from_config(config, algorithm=algorithm), tmp_path, verbose=False)
    assert result.class_il.shape == (2, 2)
    assert result.class_il[0, 0] > 0.9  # the first task is learned with cross-entropy
    assert result.class_il[1, 0] > 0.8, result.class_il  # and survives the second (0.97)
    assert result.class_il[1, 1] > 0.7, result.class_il  # which is learned too (0.89)
