"""GDumb (`sequax.algorithms.gdumb`): the class-balanced greedy memory and the retrained model.

The memory is checked against the sampler written as a plain Python loop (the counts it keeps
are deterministic; which example of the largest class is evicted is random, tested for
uniformity); the retraining against a PyTorch float64 SGD loop over the same epoch orders.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch_reference import torch_mlp

from sequax import algorithms
from sequax.algorithms import GDumb
from sequax.algorithms.gdumb import balanced_slots
from sequax.configs import common
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop

CLASSES, HIDDEN = 10, 16


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(HIDDEN,))


def batch_of(ids, labels):
    """Examples whose every pixel is their id (so a stored image names its example)."""
    ids = np.asarray(ids, np.float32)
    return {
        "x": jnp.asarray(np.broadcast_to(ids[:, None, None, None], (len(ids), 4, 4, 1))),
        "y": jnp.asarray(labels, jnp.int32),
        "task": jnp.zeros(len(ids), jnp.int32),
    }


def fresh_state(model, algorithm, seed=0):
    return create_state(model, algorithm, optax.sgd(0.1), batch_of([0] * 4, [0] * 4), seed=seed)


def reference_counts(labels, capacity):
    """The greedy class-balanced sampler as a plain loop over the offered labels: counts after
    each."""
    counts, history = np.zeros(CLASSES, int), []
    for y in labels:
        if counts.sum() < capacity:
            counts[y] += 1
        else:
            largest = int(np.argmax(counts))
            if counts[y] < counts[largest]:
                counts[largest] -= 1
                counts[y] += 1
        history.append(counts.copy())
    return history


# ---------------- The memory ----------------------------------------------------------------------


def test_memory_follows_the_greedy_balanced_rule(model):
    capacity, batch = 12, 6
    algorithm = GDumb(capacity=capacity, num_classes=CLASSES, epochs=0, batch_size=4)
    update = jax.jit(lambda a, b, k: algorithm.update(a, None, b, {}, k))
    algo = fresh_state(model, algorithm).algo
    rng = np.random.default_rng(0)
    # Class-incremental arrivals (classes 0-1, then 2-3, then 4-6), unbalanced within each task.
    labels = np.concatenate(
        [
            rng.choice([0, 1], 30, p=[0.8, 0.2]),
            rng.choice([2, 3], 24, p=[0.3, 0.7]),
            rng.choice([4, 5, 6], 30, p=[0.6, 0.3, 0.1]),
        ]
    )
    expected = reference_counts(labels, capacity)
    for step in range(len(labels) // batch):
        ids = np.arange(step * batch, (step + 1) * batch)
        algo = update(algo, batch_of(1 + ids, labels[ids]), jax.random.PRNGKey(step))
        counts = np.asarray(algo.counts)
        np.testing.assert_array_equal(counts, expected[ids[-1]])
        filled = counts.sum()
        stored_ids = np.asarray(algo.items["x"])[:filled, 0, 0, 0].astype(int) - 1
        stored_y = np.asarray(algo.items["y"])[:filled]
        assert (
            len(set(stored_ids)) == filled
            and (stored_ids >= 0).all()
            and stored_ids.max() <= ids[-1]
        )
        np.testing.assert_array_equal(stored_y, labels[stored_ids])  # each image with its own label
        np.testing.assert_array_equal(np.bincount(stored_y, minlength=CLASSES), counts)
        if filled < capacity:  # filling: every example offered so far, in order
            np.testing.assert_array_equal(stored_ids, np.arange(filled))
    assert (
        counts[:7].max() - counts[:7].min() <= 1 and counts[7:].sum() == 0
    )  # balanced over the 7 seen


def test_a_slot_written_twice_in_a_batch_keeps_the_later_example(model):
    # Memory [1, 1] (full). Offering (0, 2): the 0 evicts a 1; the 2 then evicts the largest
    # class, which by the lowest-index tie-break is class 0: the slot the 0 was just written to.
    algorithm = GDumb(capacity=2, num_classes=CLASSES, epochs=0, batch_size=1)
    algo = fresh_state(model, algorithm).algo
    update = jax.jit(lambda a, b, k: algorithm.update(a, None, b, {}, k))
    algo = update(algo, batch_of([1, 2], [1, 1]), jax.random.PRNGKey(0))
    for seed in range(8):
        after = update(algo, batch_of([3, 4], [0, 2]), jax.random.PRNGKey(seed))
        assert sorted(np.asarray(after.items["y"]).tolist()) == [1, 2]
        assert sorted(np.asarray(after.items["x"])[:, 0, 0, 0].tolist()) in ([1, 4], [2, 4])
        assert np.asarray(after.counts)[[0, 1, 2]].tolist() == [0, 1, 1]
        # The scatter's order among duplicate indices is unspecified: the earlier write is dropped.
        slots, _ = jax.jit(balanced_slots)(
            algo.items["y"], algo.counts, jnp.array([0, 2]), jax.random.PRNGKey(seed)
        )
        assert int(slots[0]) == 2 and 0 <= int(slots[1]) < 2


def test_the_evicted_example_is_uniform_over_the_largest_class():
    stored_y = jnp.array([0, 3, 0, 0, 3, 0, 0, 0])  # class 0: slots 0, 2, 3, 5, 6, 7
    counts = jnp.zeros(CLASSES, jnp.int32).at[0].set(6).at[3].set(2)
    slots = jax.jit(jax.vmap(lambda k: balanced_slots(stored_y, counts, jnp.array([3]), k)[0][0]))(
        jax.random.split(jax.random.PRNGKey(0), 6000)
    )
    observed = np.bincount(np.asarray(slots), minlength=8)
    assert observed[[1, 4]].sum() == 0 and observed.sum() == 6000
    assert stats.chisquare(observed[[0, 2, 3, 5, 6, 7]]).pvalue > 1e-4, observed


# ---------------- The retraining: SGD on the memory alone, against torch --------------------------


def test_fit_matches_a_torch_sgd_loop(model):
    capacity, filled, size, lr = 16, 11, 4, 0.3  # 3 batches per epoch, the last of 3 examples
    algorithm = GDumb(capacity=capacity, num_classes=CLASSES, epochs=3, fit_lr=lr, batch_size=size)
    rng = np.random.default_rng(0)
    items = {
        "x": jnp.asarray(rng.random((capacity, 4, 4, 1)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, CLASSES, capacity), jnp.int32),
    }
    params, _ = model.init(jax.random.PRNGKey(1), items["x"][:1])
    key = jax.random.PRNGKey(2)
    fitted, _ = jax.jit(lambda p: algorithm.fit(p, {}, items, jnp.int32(filled), key, model))(
        params
    )

    orders = np.asarray(algorithm.memory_orders(jax.random.split(key)[0], filled))
    assert orders.shape == (3, 16) and all(
        sorted(o[:filled]) == list(range(filled)) for o in orders
    )
    net = torch_mlp(params)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    x, y = (
        torch.from_numpy(np.array(items["x"], np.float64)),
        torch.from_numpy(np.array(items["y"], np.int64)),
    )
    for order in orders:  # mammoth's fit_buffer loop: consecutive batches, the last one partial
        order = torch.from_numpy(order[:filled].astype(np.int64))
        for start in range(0, filled, size):
            index = order[start : start + size]
            opt.zero_grad()
            F.cross_entropy(net(x[index]), y[index]).backward()
            opt.step()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        np.testing.assert_allclose(
            fitted[f"Dense_{i}"]["kernel"], linear.weight.detach().numpy().T, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            fitted[f"Dense_{i}"]["bias"], linear.bias.detach().numpy(), rtol=1e-5, atol=1e-6
        )


def test_end_task_retrains_from_scratch_and_predict_uses_it(model):
    algorithm = GDumb(capacity=20, num_classes=CLASSES, epochs=30, fit_lr=0.5, batch_size=5)
    state = fresh_state(model, algorithm)
    labels = np.arange(20) % 4
    pixels = np.eye(4, 16)[labels].reshape(20, 4, 4, 1) + 0.1 * np.random.default_rng(0).random(
        (20, 4, 4, 1)
    )
    batch = {
        "x": jnp.asarray(pixels, jnp.float32),
        "y": jnp.asarray(labels),
        "task": jnp.zeros(20, jnp.int32),
    }
    state = state._replace(
        algo=algorithm.update(state.algo, state, batch, {}, jax.random.PRNGKey(0))
    )
    end_task = jax.jit(lambda s: algorithm.end_task(s, None, jax.random.PRNGKey(3), model))
    algo = end_task(state)
    # From scratch: the online parameters do not enter; the memory is untouched.
    other = end_task(state._replace(params=jax.tree.map(lambda p: p + 1.0, state.params)))
    chex.assert_trees_all_equal(algo.params, other.params)
    chex.assert_trees_all_equal(algo.items, state.algo.items)
    assert not np.allclose(algo.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
    # predict classifies with the retrained model, which has learned the memory.
    logits = algorithm.predict(state.params, {}, algo, batch["x"], batch["task"], model)
    chex.assert_trees_all_close(
        logits, model.apply(algo.params, {}, batch["x"], train=False)[0]["logits"]
    )
    assert (np.asarray(logits).argmax(1) == labels).all()
    before = algorithm.predict(
        state.params, {}, state.algo, batch["x"], batch["task"], model
    )  # the initial network
    assert (np.asarray(before).argmax(1) == labels).mean() < 0.9


def test_fit_lr_may_be_traced(model):
    algorithm = GDumb(capacity=8, num_classes=CLASSES, epochs=2, batch_size=4)
    state = fresh_state(model, algorithm)
    state = state._replace(
        algo=algorithm.update(
            state.algo, state, batch_of(np.arange(8), np.arange(8) % 3), {}, jax.random.PRNGKey(0)
        )
    )
    key = jax.random.PRNGKey(1)

    def retrained(fit_lr):
        return (
            dataclasses.replace(algorithm, fit_lr=fit_lr).end_task(state, None, key, model).params
        )

    swept = jax.jit(jax.vmap(retrained))(jnp.array([0.01, 0.2]))
    for i, lr in enumerate((0.01, 0.2)):
        concrete = (
            dataclasses.replace(algorithm, fit_lr=lr).end_task(state, None, key, model).params
        )
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], swept), concrete, rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"batch_size": 9}, {"num_classes": 0}, {"epochs": -1}, {"fit_lr": 0.0}],
)
def test_invalid_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError, match="GDumb"):
        GDumb(**{"capacity": 8, "batch_size": 4, **kwargs})
    with pytest.raises(ValueError, match="unknown hyper-parameter.*lr"):
        algorithms.make(
            "gdumb", lr=0.1
        )  # the retraining's rate is fit_lr (config.sweep.lr is the optimizer's)


# ---------------- End to end -------------------------------------------------------------------


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_gdumb_keeps_every_task_on_split_mnist(tmp_path):
    config = common.der_config(
        "split", "gdumb", 0.03, capacity=100, epochs=20, fit_lr=0.05, batch_size=16
    )
    config.data.source = "mnist_packaged"  # ships with sequax: runs anywhere
    config.data.train_per_task, config.data.test_per_task = 300, 100
    config.model.widths = (32,)
    result = loop.run(config, tmp_path, verbose=False)
    # Naive fine-tuning ends near 1/5 in class-IL with task 0 at 0 (tests/algorithms/test_der.py);
    # GDumb's model never saw the stream, only its balanced memory of 20 examples per class.
    assert result.summary["class_il"]["acc"] > 0.6, result.class_il[-1]
    assert result.class_il[-1].min() > 0.4
    assert result.class_il[0, 0] > 0.9  # the first row is the model trained on task 0's memory
