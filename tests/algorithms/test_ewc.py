"""EWC (`sequax.algorithms.ewc`) and its quadratic penalty: the math, and parity with PyTorch.

The Fisher is checked against a per-example loop written in PyTorch (float64) over the same
weights: flax Dense kernels are [in, out], so torch's weight is the kernel transposed. The
dense-layer path (`algorithms.fisher`) is also checked against the `vmap(grad)` path it
replaces, which the test forces by disproving the dense path.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sequax.algorithms import EWC, fisher
from sequax.algorithms.quadratic_penalty import (
    QuadraticState,
    consolidate_online,
    consolidate_separate,
    quadratic_init,
    quadratic_penalty,
)
from sequax.core.models import mlp
from sequax.core.state import CLState
from sequax.core.task_data import task_arrays

NUM_CLASSES = 10
SIZE, CAPACITY = 37, 48  # a padded phase: 11 rows of padding that must not count


@pytest.fixture(scope="module")
def model():
    return mlp(NUM_CLASSES, widths=(16,))


@pytest.fixture(scope="module")
def params(model):
    params, _ = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))
    # Larger weights than the init so that predictions are confident and varied.
    return jax.tree.map(lambda p: 3.0 * p + 0.1, params)


@pytest.fixture(scope="module")
def task_data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (SIZE, 4, 4, 1), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, SIZE)
    data = task_arrays(x, y, np.zeros(SIZE), CAPACITY)
    # Padding that would change the Fisher if it were counted (non-zero images, labels 3).
    padded_x = np.asarray(data.x).copy()
    padded_x[SIZE:] = 200
    padded_y = np.asarray(data.y).copy()
    padded_y[SIZE:] = 3
    return data._replace(x=jnp.asarray(padded_x), y=jnp.asarray(padded_y))


def random_like(tree, seed, scale=1.0, positive=False):
    """A tree of float32 draws shaped like `tree` (numpy: no per-shape compiles)."""
    rng = np.random.default_rng(seed)
    draw = rng.random if positive else rng.standard_normal
    return jax.tree.map(lambda a: jnp.asarray(scale * draw(jnp.shape(a)), jnp.float32), tree)


def fake_state(params, algo) -> CLState:
    return CLState(
        step=jnp.zeros((), jnp.int32),
        task=jnp.zeros((), jnp.int32),
        params=params,
        model_state={},
        opt_state=(),
        algo=algo,
        key=jax.random.PRNGKey(0),
    )


# ---------------- The quadratic penalty ----------------------------------------------------


def test_penalty_is_zero_at_the_anchor_and_on_task_zero(model, params):
    importance = random_like(params, 1, positive=True)
    at_anchor = QuadraticState(importance=importance, anchor=params)
    assert float(quadratic_penalty(params, at_anchor, 100.0)) == 0.0
    elsewhere = random_like(params, 2)
    assert float(quadratic_penalty(elsewhere, at_anchor, 100.0)) > 0.0

    ewc = EWC(lam=100.0)
    algo = ewc.init(params, {}, None, jax.random.PRNGKey(0))  # importance zeros before task 1
    chex.assert_trees_all_equal(algo.importance, jax.tree.map(jnp.zeros_like, params))
    state = fake_state(params, algo)
    batch = {"x": jnp.ones((4, 4, 4, 1)), "y": jnp.arange(4)}
    loss, aux = jax.jit(lambda p, s: ewc.loss(p, s, batch, jax.random.PRNGKey(0), model))(
        elsewhere, state
    )
    assert float(aux["metrics"]["penalty"]) == 0.0
    assert float(loss) == float(aux["metrics"]["ce"])


def test_penalty_value_and_gradient(params):
    lam = 7.0
    importance = random_like(params, 3, positive=True)
    anchor = random_like(params, 4)
    theta = random_like(params, 5)
    state = QuadraticState(importance, anchor)
    expected = (
        0.5
        * lam
        * sum(
            float(jnp.sum(f * (t - a) ** 2))
            for f, t, a in zip(
                jax.tree.leaves(importance), jax.tree.leaves(theta), jax.tree.leaves(anchor)
            )
        )
    )
    np.testing.assert_allclose(float(quadratic_penalty(theta, state, lam)), expected, rtol=1e-5)
    grads = jax.grad(quadratic_penalty)(theta, state, lam)
    chex.assert_trees_all_close(
        grads, jax.tree.map(lambda f, t, a: lam * f * (t - a), importance, theta, anchor), rtol=1e-6
    )


def test_init_anchor_is_a_copy_of_params(params):
    state = quadratic_init(params)
    chex.assert_trees_all_equal(state.anchor, params)
    for anchor, p in zip(jax.tree.leaves(state.anchor), jax.tree.leaves(params)):
        assert anchor is not p  # distinct buffers: params are donated, the anchor must survive


# ---------------- The Fisher against a PyTorch per-example loop ----------------------------


def torch_mlp(params) -> torch.nn.Module:
    hidden, out = params["Dense_0"], params["Dense_1"]
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, NUM_CLASSES)
    ).double()
    with torch.no_grad():
        for layer, dense in ((net[0], hidden), (net[2], out)):
            layer.weight.copy_(torch.from_numpy(np.asarray(dense["kernel"], np.float64).T))
            layer.bias.copy_(torch.from_numpy(np.asarray(dense["bias"], np.float64)))
    return net


def torch_fisher(params, x, labels, weighted: bool):
    """Mean over examples of (p(y|x) if weighted) * (d log p(y|x) / d theta)^2, one at a time."""
    net = torch_mlp(params)
    totals = [torch.zeros_like(p) for p in net.parameters()]
    for xi, yi in zip(x, labels):
        net.zero_grad()
        log_probs = torch.log_softmax(net(torch.from_numpy(xi)[None]), -1)[0]
        log_probs[yi].backward()
        weight = log_probs[yi].exp().item() if weighted else 1.0
        for total, p in zip(totals, net.parameters()):
            total += weight * p.grad**2
    w0, b0, w1, b1 = (t.numpy() / len(labels) for t in totals)
    return {"Dense_0": {"kernel": w0.T, "bias": b0}, "Dense_1": {"kernel": w1.T, "bias": b1}}


def real_examples(task_data):
    x = np.asarray(task_data.x[:SIZE], np.float64).reshape(SIZE, -1) / 255.0
    return x, np.asarray(task_data.y[:SIZE])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("fisher_batch", [8, 10, 64])  # divides the capacity, does not, exceeds it
def test_empirical_fisher_matches_torch(model, params, task_data, weighted, fisher_batch):
    ewc = EWC(fisher_labels="empirical", likelihood_weighted=weighted, fisher_batch=fisher_batch)
    fisher = jax.jit(lambda p, d, k: ewc.fisher(p, {}, d, k, model))(
        params, task_data, jax.random.PRNGKey(0)
    )
    x, y = real_examples(task_data)
    expected = torch_fisher(params, x, y, weighted)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, fisher), expected, rtol=1e-5, atol=1e-7)
    assert all(float(jnp.max(f)) > 0 for f in jax.tree.leaves(fisher))


def test_sampled_fisher(model, params, task_data):
    ewc = EWC(fisher_labels="sampled")
    fisher = jax.jit(lambda k: ewc.fisher(params, {}, task_data, k, model))
    one, same, other = (jax.tree.map(np.asarray, fisher(jax.random.PRNGKey(s))) for s in (1, 1, 2))
    chex.assert_trees_all_equal_shapes_and_dtypes(one, params)
    chex.assert_trees_all_equal(one, same)  # deterministic for a key
    assert not np.array_equal(one["Dense_1"]["kernel"], other["Dense_1"]["kernel"])
    empirical = jax.tree.map(
        np.asarray, EWC().fisher(params, {}, task_data, jax.random.PRNGKey(1), model)
    )
    assert not np.allclose(one["Dense_1"]["kernel"], empirical["Dense_1"]["kernel"])

    # Its mean over keys is the true Fisher: E_{y ~ p(.|x)} g_y^2, summed exactly over classes.
    x, _ = real_examples(task_data)
    # Weighting by p(c|x) and summing over every label c gives exactly that expectation.
    per_label = [torch_fisher(params, x, np.full(SIZE, c), True) for c in range(NUM_CLASSES)]
    true = jax.tree.map(lambda *fs: sum(fs), *per_label)
    keys = jax.random.split(jax.random.PRNGKey(3), 1000)
    draws = jax.jit(jax.vmap(fisher))(keys)
    for layer in ("Dense_0", "Dense_1"):
        for name in ("kernel", "bias"):
            # Each key's trace (sum of the entries) is an unbiased draw around the true trace.
            traces = np.asarray(draws[layer][name], np.float64).reshape(len(keys), -1).sum(1)
            standard_error = traces.std() / np.sqrt(len(keys))
            true_trace = true[layer][name].sum()
            assert abs(traces.mean() - true_trace) < 5 * standard_error, (layer, name)
            assert standard_error < 0.05 * true_trace  # the check above is a tight one
            # ...and the empirical Fisher, with these mostly wrong labels, is far from it.
            assert abs(empirical[layer][name].sum() - true_trace) > 20 * standard_error, (
                layer,
                name,
            )


# ---------------- The dense-layer path equals the per-example path ------------------------


@pytest.fixture(scope="module")
def deep_model():
    return mlp(NUM_CLASSES, widths=(16, 8))  # three dense layers, as the DER MLP


@pytest.fixture(scope="module")
def deep_params(deep_model):
    params, _ = deep_model.init(jax.random.PRNGKey(1), jnp.zeros((1, 4, 4, 1)))
    return jax.tree.map(lambda p: 3.0 * p + 0.1, params)


def fisher_by_path(ewc, model, dense: bool, monkeypatch, *args, runs: bool = False):
    """`ewc.fisher(params, {}, data, key)` jitted (vmapped over params and keys if `runs`),
    by the dense path or, with it disproved, the per-example one (chosen at trace time)."""
    with monkeypatch.context() as patch:
        if not dense:
            patch.setattr(fisher, "dense_layers", lambda *args: None)
        one = lambda p, d, k: ewc.fisher(p, {}, d, k, model)
        value = jax.jit(jax.vmap(one, (0, None, 0)) if runs else one)(*args)
        return jax.tree.map(np.asarray, value)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("labels", ["empirical", "sampled"])
def test_dense_fisher_equals_the_per_example_fisher(
    deep_model, deep_params, task_data, labels, weighted, monkeypatch
):
    # Chunks of 10 over 48 slots: the fourth chunk is part real, part padding (37 real), the
    # fifth is all padding and runs past the capacity (repeated last slot).
    ewc = EWC(fisher_labels=labels, likelihood_weighted=weighted, fisher_batch=10)
    x = jnp.zeros((10, 4, 4, 1))
    layers = fisher.dense_layers(deep_model, deep_params, {}, x)
    assert layers == {("Dense_0",): 16, ("Dense_1",): 8, ("Dense_2",): 10}  # the dense path
    key = jax.random.PRNGKey(4)
    dense = fisher_by_path(ewc, deep_model, True, monkeypatch, deep_params, task_data, key)
    per_example = fisher_by_path(ewc, deep_model, False, monkeypatch, deep_params, task_data, key)
    chex.assert_trees_all_close(dense, per_example, rtol=1e-6, atol=0)
    assert all(f.max() > 0 for f in jax.tree.leaves(dense))


def test_dense_fisher_equals_the_per_example_fisher_over_vmapped_runs(
    deep_model, deep_params, task_data, monkeypatch
):
    ewc = EWC(fisher_labels="sampled", likelihood_weighted=True, fisher_batch=10)
    two = jax.tree.map(lambda a, b: jnp.stack([a, b]), deep_params, random_like(deep_params, 30))
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    dense = fisher_by_path(ewc, deep_model, True, monkeypatch, two, task_data, keys, runs=True)
    reference = fisher_by_path(ewc, deep_model, False, monkeypatch, two, task_data, keys, runs=True)
    # 1e-5: under the runs vmap the reference's images are batched like the parameters
    # (fisher.batched_like_params), so its matmuls sum in another float32 order (2e-6 seen).
    chex.assert_trees_all_close(dense, reference, rtol=1e-5, atol=0)
    # Each run its own: the first run's row is the unvmapped Fisher of the first parameters
    # (to float32 rounding: batched and single matmuls sum in different orders).
    alone = fisher_by_path(ewc, deep_model, True, monkeypatch, deep_params, task_data, keys[0])
    chex.assert_trees_all_close(jax.tree.map(lambda f: f[0], dense), alone, rtol=1e-5, atol=0)
    assert not np.allclose(dense["Dense_0"]["kernel"][0], dense["Dense_0"]["kernel"][1])


# ---------------- Consolidation ------------------------------------------------------------


def test_online_consolidation(model, params, task_data):
    gamma = 0.5
    ewc = EWC(lam=1.0, online=True, gamma=gamma)
    old = QuadraticState(random_like(params, 6, positive=True), random_like(params, 7))
    trained = random_like(params, 8, scale=0.3)
    key = jax.random.PRNGKey(0)
    algo = ewc.end_task(fake_state(trained, old), task_data, key, model)
    new = ewc.fisher(trained, {}, task_data, key, model)
    chex.assert_trees_all_close(
        algo.importance, jax.tree.map(lambda o, n: gamma * o + n, old.importance, new), rtol=1e-6
    )
    chex.assert_trees_all_equal(algo.anchor, trained)
    # consolidate_online itself, on arbitrary trees.
    direct = consolidate_online(old, new, trained, gamma)
    chex.assert_trees_all_close(direct.importance, algo.importance)


def test_normalized_fisher_is_rescaled_to_unit_range_over_all_tensors_and_replaces_the_old(
    model, params, task_data
):
    """The A-GEM codebase's EWC: (F − min) / (max − min) over every tensor, kept alone (gamma 0)."""
    ewc = EWC(lam=1.0, online=True, gamma=0.0, normalize=True)
    old = QuadraticState(random_like(params, 6, positive=True), random_like(params, 7))
    trained = random_like(params, 8, scale=0.3)
    key = jax.random.PRNGKey(0)
    algo = ewc.end_task(fake_state(trained, old), task_data, key, model)
    raw = ewc.fisher(trained, {}, task_data, key, model)
    low = min(float(f.min()) for f in jax.tree.leaves(raw))
    high = max(float(f.max()) for f in jax.tree.leaves(raw))
    assert high > 10 * max(low, 1e-12)  # a real range to rescale
    chex.assert_trees_all_close(
        algo.importance, jax.tree.map(lambda f: (f - low) / (high - low), raw), rtol=1e-5
    )
    values = np.concatenate([np.ravel(f) for f in jax.tree.leaves(algo.importance)])
    assert values.min() == 0.0 and abs(values.max() - 1.0) < 1e-6


def test_separate_consolidation_equals_the_sum_over_tasks(model, params, task_data):
    """Folded (importance, anchor) give the gradient of sum_t (lam/2) F_t (theta - theta_t)^2."""
    lam = 3.0
    ewc = EWC(lam=lam, online=False)
    algo = ewc.init(params, {}, None, jax.random.PRNGKey(0))
    fisher = jax.jit(lambda p, k: ewc.fisher(p, {}, task_data, k, model))
    end_task = jax.jit(lambda s, k: ewc.end_task(s, task_data, k, model))
    anchors, fishers = [], []
    for t in range(3):
        theta_t = random_like(params, 10 + t)
        fishers.append(fisher(theta_t, jax.random.PRNGKey(t)))
        anchors.append(theta_t)
        algo = end_task(fake_state(theta_t, algo), jax.random.PRNGKey(t))
    # Some importances are exactly zero (dead ReLUs): the anchor must stay finite there.
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(algo.anchor))

    def explicit(theta):
        return sum(
            0.5
            * lam
            * sum(
                jnp.sum(f * (p - a) ** 2)
                for f, p, a in zip(*map(jax.tree.leaves, (fisher, theta, anchor)))
            )
            for fisher, anchor in zip(fishers, anchors)
        )

    for seed in (20, 21):
        theta = random_like(params, seed)
        chex.assert_trees_all_close(
            jax.grad(quadratic_penalty)(theta, algo, lam),
            jax.grad(explicit)(theta),
            rtol=1e-5,
            atol=1e-6,
        )
    # The values differ by a constant only (not reported in the loss).
    offsets = [
        float(explicit(th) - quadratic_penalty(th, algo, lam))
        for th in (random_like(params, 22), random_like(params, 23))
    ]
    np.testing.assert_allclose(offsets[0], offsets[1], rtol=1e-4)
    # consolidate_separate from the empty state reproduces the first task exactly.
    first = consolidate_separate(quadratic_init(params), fishers[0], anchors[0])
    chex.assert_trees_all_close(first.anchor, anchors[0])
