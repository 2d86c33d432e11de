"""iCaRL (`sequax.algorithms.icarl`): loss, herding and class means against PyTorch references.

The references follow mammoth's `icarl.py` (the fixed version: BCE with logits over all classes,
old classes' targets from the old network's sigmoid; herding on normalised features as in its
`fill_buffer` loop; normalised, re-normalised class means), written here in float64 torch.
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
from torch_reference import torch_mlp

from sequax import algorithms
from sequax.algorithms import ICaRL
from sequax.algorithms.icarl import NO_MEAN, draw_exemplars, herding, normalize
from sequax.configs import common
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.core.task_data import gather_batch, task_arrays
from sequax.engine import loop

CLASSES, HIDDEN, BATCH, REPLAY, CAPACITY = 10, 16, 6, 5, 8


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(HIDDEN,))


def batch_of(seed: int, size: int = BATCH, labels=None):
    return random_batch(seed, size, CLASSES, labels)


def fresh_state(model, algorithm, seed=0):
    return create_state(model, algorithm, optax.sgd(0.1), batch_of(0), seed=seed)


def as_torch(a, dtype=torch.float64):
    return torch.from_numpy(np.array(a)).to(dtype)


# ---------------- The loss: BCE over all classes, old classes distilled ----------------------


def with_memory(algo, filled: int, seen: int, old_params):
    """`algo` holding `filled` exemplars in scattered slots, the first `seen` classes old."""
    memory = batch_of(9, CAPACITY)
    slots = np.random.default_rng(3).permutation(CAPACITY)[:filled]
    valid = np.zeros(CAPACITY, bool)
    valid[slots] = True
    return algo._replace(
        items={k: memory[k] for k in "xy"},
        valid=jnp.asarray(valid),
        seen=jnp.arange(CLASSES) < seen,
        old_params=old_params,
    )


@pytest.mark.parametrize("filled, seen", [(0, 0), (3, 4), (CAPACITY, 4)])  # task 0, < REPLAY, full
def test_loss_and_gradient_match_the_torch_reference(model, filled, seen):
    algorithm = ICaRL(CAPACITY, REPLAY, CLASSES, HIDDEN)
    state = fresh_state(model, algorithm)
    old_params = fresh_state(model, algorithm, seed=1).params  # a different network: the teacher
    state = state._replace(algo=with_memory(state.algo, filled, seen, old_params))
    batch, rng = batch_of(2), jax.random.PRNGKey(7)
    loss_and_grad = jax.value_and_grad(
        lambda p: algorithm.loss(p, state, batch, rng, model), has_aux=True
    )
    (loss, aux), grads = jax.jit(loss_and_grad)(state.params)

    # The exemplars this step replays (drawn with the loss's own key), valid rows only.
    replay, valid = draw_exemplars(state.algo, REPLAY, jax.random.fold_in(rng, 1))
    assert int(valid.sum()) == min(filled, REPLAY)
    inputs = torch.cat([as_torch(batch["x"]), as_torch(replay["x"])[np.asarray(valid)]])
    labels = torch.cat(
        [as_torch(batch["y"], torch.long), as_torch(replay["y"], torch.long)[np.asarray(valid)]]
    )
    net, old_net = torch_mlp(state.params), torch_mlp(old_params)
    # mammoth get_loss (fixed): targets = eye[labels], old classes from sigmoid(old_net).
    targets = torch.eye(CLASSES, dtype=torch.float64)[labels]
    if seen:
        with torch.no_grad():
            targets = torch.cat(
                [torch.sigmoid(old_net(inputs))[:, :seen], targets[:, seen:]], dim=1
            )
    reference = F.binary_cross_entropy_with_logits(net(inputs), targets)
    reference.backward()
    np.testing.assert_allclose(float(loss), reference.item(), rtol=1e-5)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        np.testing.assert_allclose(
            grads[f"Dense_{i}"]["kernel"], linear.weight.grad.numpy().T, rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(
            grads[f"Dense_{i}"]["bias"], linear.bias.grad.numpy(), rtol=1e-5, atol=1e-7
        )
    assert float(aux["metrics"]["bce"]) == float(loss)


def test_exemplar_draws_are_uniform_without_replacement(model):
    algo = with_memory(
        fresh_state(model, ICaRL(CAPACITY, REPLAY, CLASSES, HIDDEN)).algo, 6, 0, None
    )
    draws = jax.jit(jax.vmap(lambda k: draw_exemplars(algo, REPLAY, k)))(
        jax.random.split(jax.random.PRNGKey(0), 3000)
    )
    ids = np.asarray(draws[0]["x"]).reshape(3000, REPLAY, -1)[
        ..., 0
    ]  # the first pixel names the slot
    slot_of = {
        float(v): s for s, v in enumerate(np.asarray(algo.items["x"]).reshape(CAPACITY, -1)[:, 0])
    }
    slots = np.vectorize(slot_of.get)(ids)
    assert all(len(set(row)) == REPLAY for row in slots)  # without replacement
    assert set(np.unique(slots)) == set(np.flatnonzero(np.asarray(algo.valid)))  # valid slots only
    counts = np.bincount(slots.ravel(), minlength=CAPACITY)[np.asarray(algo.valid)]
    np.testing.assert_allclose(counts / counts.sum(), 1 / 6, atol=0.01)  # uniform


# ---------------- Herding: mammoth's greedy loop ------------------------------------------------


def mammoth_herding(features: np.ndarray, m: int) -> list[int]:
    """mammoth `fill_buffer` for one class: the indices it adds, in order (float64)."""
    feats = torch.from_numpy(features.copy())
    mean_feat = feats.mean(0, keepdim=True)
    running_sum = torch.zeros_like(mean_feat)
    chosen, i = [], 0
    while i < m and i < feats.shape[0]:
        cost = (mean_feat - (feats + running_sum) / (i + 1)).norm(2, 1)
        idx_min = cost.argmin().item()
        chosen.append(idx_min)
        running_sum += feats[idx_min : idx_min + 1]
        feats[idx_min] = feats[idx_min] + 1e6
        i += 1
    return chosen


@pytest.mark.parametrize("m", [1, 4, 9])  # 9: more than class 5 holds (7 examples)
def test_herding_matches_mammoth(m):
    rng = np.random.default_rng(0)
    n, dim = 40, 6
    features = rng.normal(size=(n, dim))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = rng.choice([2, 5, 7], size=n, p=[0.5, 0.2, 0.3])
    valid = np.arange(n) < 36  # the last 4 rows are padding: never herded
    classes = np.isin(np.arange(CLASSES), [2, 5])  # class 7 is not being herded
    order = np.asarray(
        herding(
            jnp.asarray(features, jnp.float32),
            jnp.asarray(labels),
            jnp.asarray(valid),
            jnp.asarray(classes),
            m,
            max_per_class=12,
        )
    )
    assert order.shape == (CLASSES, 12)
    for c in range(CLASSES):
        index = np.flatnonzero((labels == c) & valid)
        expected = [index[i] for i in mammoth_herding(features[index], m)] if classes[c] else []
        assert list(order[c][order[c] >= 0]) == expected
        assert (order[c][len(expected) :] == -1).all()


# ---------------- end_task: the memory, the class means, the teacher ----------------------------


def tiny_task(t: int, size: int, capacity: int = 48):
    rng = np.random.default_rng(t)
    x = rng.integers(0, 256, (size, 4, 4, 1), dtype=np.uint8)
    return task_arrays(x, 2 * t + rng.integers(0, 2, size), np.full(size, t), capacity), x


def test_end_task_splits_the_memory_and_stores_class_means(model):
    algorithm = ICaRL(capacity=12, replay_batch=4, num_classes=CLASSES, feature_dim=HIDDEN)
    end_task = jax.jit(lambda s, d: algorithm.end_task(s, d, jax.random.PRNGKey(0), model))
    state = fresh_state(model, algorithm)
    features = jax.jit(lambda p, x: normalize(model.apply(p, {}, x, train=False)[0]["features"]))
    history = {}
    for t, size in enumerate((37, 29)):
        data, _ = tiny_task(t, size)
        x = np.asarray(gather_batch(data, jnp.arange(48))["x"])  # padded, scaled as in the step
        params = jax.tree.map(
            lambda p, t=t: p + 0.05 * (t + 1), state.params
        )  # "trained" on task t
        algo = end_task(state._replace(params=params), data)
        m = 12 // (2 * (t + 1))  # 6 per class after task 0, 3 after task 1
        y, rank, valid = (np.asarray(a) for a in (algo.items["y"], algo.rank, algo.valid))
        assert np.bincount(y[valid], minlength=CLASSES).tolist() == [m] * (2 * t + 2) + [0] * (
            8 - 2 * t
        )
        np.testing.assert_array_equal(np.asarray(algo.seen), np.arange(CLASSES) < 2 * t + 2)
        # New classes: the herding order of the task's examples under the current network.
        order = np.asarray(
            herding(
                features(params, x),
                data.y,
                jnp.arange(48) < size,
                jnp.isin(jnp.arange(CLASSES), jnp.array([2 * t, 2 * t + 1])),
                m,
                12,
            )
        )
        for c in range(CLASSES):
            in_class = valid & (y == c)
            by_rank = np.asarray(algo.items["x"])[in_class][np.argsort(rank[in_class])]
            assert sorted(rank[in_class]) == list(range(m if c < 2 * t + 2 else 0))
            if 2 * t <= c < 2 * t + 2:  # herded now
                np.testing.assert_array_equal(by_rank, x[order[c, :m]])
            elif c < 2 * t + 2:  # old: the first m of its earlier herding order, unchanged
                np.testing.assert_array_equal(by_rank, history[c][:m])
            history[c] = by_rank
        # Class means: normalised mean of the exemplars' normalised features (numpy reference).
        feats = np.asarray(features(params, algo.items["x"]), np.float64)
        for c in range(CLASSES):
            if c < 2 * t + 2:
                mean = feats[valid & (y == c)].mean(0)
                np.testing.assert_allclose(
                    algo.means[c], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6
                )
        np.testing.assert_array_equal(np.asarray(algo.has_mean), np.arange(CLASSES) < 2 * t + 2)
        chex.assert_trees_all_equal(algo.old_params, params)  # the teacher of the next task
        state = state._replace(algo=algo)


def test_predict_is_the_nearest_mean_and_empty_classes_never_win(model):
    algorithm = ICaRL(CAPACITY, REPLAY, CLASSES, HIDDEN)
    state = fresh_state(model, algorithm)
    x = batch_of(4, 50)["x"]
    features = np.asarray(normalize(model.apply(state.params, {}, x, train=False)[0]["features"]))
    rng = np.random.default_rng(1)
    means = rng.normal(size=(CLASSES, HIDDEN))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    means[3] = features[0]  # exactly example 0's feature, but class 3 has no exemplars
    has_mean = np.ones(CLASSES, bool)
    has_mean[[3, 8]] = False
    algo = state.algo._replace(
        means=jnp.asarray(means, jnp.float32), has_mean=jnp.asarray(has_mean)
    )
    logits = np.asarray(
        jax.jit(lambda a: algorithm.predict(state.params, {}, a, x, None, model))(algo)
    )
    distances = ((features[:, None, :] - means[None]) ** 2).sum(-1)
    distances[:, ~has_mean] = np.inf
    np.testing.assert_array_equal(logits.argmax(1), distances.argmin(1))
    np.testing.assert_allclose(logits[:, has_mean], -distances[:, has_mean], rtol=1e-5, atol=1e-6)
    assert (logits[:, ~has_mean] == NO_MEAN).all() and logits[0].argmax() != 3


def test_invalid_hyperparameters_and_feature_dim_mismatch(model):
    for kwargs in (
        {"replay_batch": 0},
        {"replay_batch": CAPACITY + 1},
        {"num_classes": 0},
        {"feature_dim": 0},
    ):
        with pytest.raises(ValueError, match="ICaRL"):
            ICaRL(**{"capacity": CAPACITY, **kwargs})
    algorithm = algorithms.make("icarl", capacity=CAPACITY, replay_batch=REPLAY, feature_dim=7)
    state = fresh_state(model, algorithm)
    with pytest.raises(ValueError, match="feature_dim=16"):
        algorithm.predict(state.params, {}, state.algo, batch_of(1)["x"], None, model)


# ---------------- End to end -------------------------------------------------------------------


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_icarl_keeps_old_classes_on_split_mnist(tmp_path):
    config = common.der_config("split", "icarl", 0.1, capacity=100, replay_batch=10, feature_dim=32)
    config.data.source = "mnist_packaged"  # ships with sequax: runs anywhere
    config.data.train_per_task, config.data.test_per_task = 300, 100
    config.model.widths = (32,)
    result = loop.run(config, tmp_path, verbose=False)
    # Naive fine-tuning ends near 1/5 in class-IL with task 0 at 0 (tests/algorithms/test_der.py).
    assert result.summary["class_il"]["acc"] > 0.5, result.class_il[-1]
    assert result.class_il[-1, 0] > 0.7  # task 0 survives four later tasks
