"""Memory Aware Synapses (`sequax.algorithms.mas`): the importance against a PyTorch loop.

The reference computes, one example at a time in float64, the gradient of the squared ℓ2 norm
of the logits, takes its absolute value and averages over the task's real examples (eq. 2 of
the paper with eq. 4's global function); the penalty's gradient is the authors' optimiser term
`2 * lam * Ω * (θ - θ*)`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from small_streams import naive_result, small_permuted_config

from sequax import algorithms
from sequax.algorithms import MAS
from sequax.algorithms.quadratic_penalty import QuadraticState
from sequax.core.models import mlp
from sequax.core.state import CLState, create_state
from sequax.core.task_data import task_arrays
from sequax.engine import loop
from sequax.engine.step import make_train_step

CLASSES = 10
SIZE, CAPACITY = 37, 48  # a padded phase: 11 rows of padding that must not count


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


@pytest.fixture(scope="module")
def params(model):
    params, _ = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))
    return jax.tree.map(lambda p: 3.0 * p + 0.1, params)


@pytest.fixture(scope="module")
def task_data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (SIZE, 4, 4, 1), dtype=np.uint8)
    data = task_arrays(x, rng.integers(0, CLASSES, SIZE), np.zeros(SIZE), CAPACITY)
    padded_x = np.asarray(data.x).copy()
    padded_x[SIZE:] = 200  # padding that would change Ω if it were counted
    return data._replace(x=jnp.asarray(padded_x))


def random_like(tree, seed, positive=False):
    rng = np.random.default_rng(seed)
    draw = rng.random if positive else rng.standard_normal
    return jax.tree.map(lambda a: jnp.asarray(draw(jnp.shape(a)), jnp.float32), tree)


def fake_state(params, algo) -> CLState:
    return CLState(
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
        params,
        {},
        (),
        algo,
        jax.random.PRNGKey(0),
    )


def torch_importance(params, x):
    """Mean over examples of |d ||f(x)||^2 / d theta|, one example at a time (float64)."""
    hidden, out = params["Dense_0"], params["Dense_1"]
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, CLASSES)
    ).double()
    with torch.no_grad():
        for layer, dense in ((net[0], hidden), (net[2], out)):
            layer.weight.copy_(torch.from_numpy(np.asarray(dense["kernel"], np.float64).T))
            layer.bias.copy_(torch.from_numpy(np.asarray(dense["bias"], np.float64)))
    totals = [torch.zeros_like(p) for p in net.parameters()]
    for xi in x:
        net.zero_grad()
        (net(torch.from_numpy(xi)[None]) ** 2).sum().backward()
        for total, p in zip(totals, net.parameters()):
            total += p.grad.abs()
    w0, b0, w1, b1 = (t.numpy() / len(x) for t in totals)
    return {"Dense_0": {"kernel": w0.T, "bias": b0}, "Dense_1": {"kernel": w1.T, "bias": b1}}


@pytest.mark.parametrize(
    "importance_batch", [8, 10, 64]
)  # divides the capacity, does not, exceeds it
def test_importance_matches_torch(model, params, task_data, importance_batch):
    mas = MAS(importance_batch=importance_batch)
    omega = jax.jit(lambda p, d: mas.importance(p, {}, d, model))(params, task_data)
    x = np.asarray(task_data.x[:SIZE], np.float64).reshape(SIZE, -1) / 255.0
    expected = torch_importance(params, x)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, omega), expected, rtol=1e-5, atol=1e-6)
    # Per example, not per batch: |sum of gradients| over the task is strictly smaller somewhere.
    x = task_data.x[:SIZE] / 255.0
    batch_level = jax.grad(lambda p: jnp.sum(model.apply(p, {}, x, train=False)[0]["logits"] ** 2))(
        params
    )
    assert (
        float(
            jnp.max(omega["Dense_0"]["kernel"] - jnp.abs(batch_level["Dense_0"]["kernel"]) / SIZE)
        )
        > 1e-3
    )


def test_penalty_has_no_half_and_is_zero_on_the_first_task(model, params):
    mas = MAS(lam=0.3)
    theta = random_like(params, 1)
    state = fake_state(params, mas.init(params, {}, None, None))
    assert float(mas.penalty(theta, state, None, None, model)[0]) == 0.0
    importance, anchor = random_like(params, 2, positive=True), random_like(params, 3)
    state = fake_state(params, QuadraticState(importance, anchor))
    expected = 0.3 * sum(
        float(jnp.sum(o * (t - a) ** 2))
        for o, t, a in zip(*map(jax.tree.leaves, (importance, theta, anchor)))
    )
    np.testing.assert_allclose(
        float(mas.penalty(theta, state, None, None, model)[0]), expected, rtol=1e-5
    )
    # The authors' Weight_Regularized_SGD adds 2 * lam * omega * (theta - theta*) to the gradient.
    batch = {"x": random_like(jnp.zeros((5, 4, 4, 1)), 4, positive=True), "y": jnp.arange(5)}
    rng = jax.random.PRNGKey(0)
    grad = jax.jit(jax.grad(lambda p, s: mas.loss(p, s, batch, rng, model)[0]))
    grads = grad(theta, state)
    ce_grads = grad(
        theta, state._replace(algo=QuadraticState(jax.tree.map(jnp.zeros_like, importance), anchor))
    )
    chex.assert_trees_all_close(
        grads,
        jax.tree.map(
            lambda g, o, t, a: g + 2 * 0.3 * o * (t - a), ce_grads, importance, theta, anchor
        ),
        rtol=1e-5,
        atol=1e-6,
    )


def test_end_task_sums_importances_and_moves_the_anchor(model, params, task_data):
    mas = MAS(importance_batch=16)
    algo = mas.init(params, {}, None, None)
    end_task = jax.jit(lambda s: mas.end_task(s, task_data, jax.random.PRNGKey(0), model))
    expected = jax.tree.map(jnp.zeros_like, params)
    for seed in (5, 6):
        theta = jax.tree.map(lambda p, r: p + 0.3 * r, params, random_like(params, seed))
        algo = end_task(fake_state(theta, algo))
        expected = jax.tree.map(jnp.add, expected, mas.importance(theta, {}, task_data, model))
        chex.assert_trees_all_close(algo.importance, expected, rtol=1e-6)
        chex.assert_trees_all_equal(algo.anchor, theta)
    assert all(float(jnp.min(o)) >= 0 for o in jax.tree.leaves(algo.importance))


def test_update_leaves_the_state_alone(model, params):
    mas = MAS()
    algo = QuadraticState(random_like(params, 7, positive=True), random_like(params, 8))
    assert mas.update(algo, None, None, {"grads": params, "updates": params}, None) is algo


def test_combined_with_er(model, params, task_data):
    both = algorithms.make("er+mas", er={"capacity": 8, "replay_batch": 4}, mas={"lam": 0.5})
    batch = {"x": jnp.ones((6, 4, 4, 1)), "y": jnp.arange(6), "task": jnp.zeros(6, jnp.int32)}
    state = create_state(model, both, optax.sgd(0.1), batch, seed=0)
    algo = {**state.algo, "mas": QuadraticState(random_like(params, 11, positive=True), params)}
    state, metrics = jax.jit(make_train_step(model, both, optax.sgd(0.1)))(
        state._replace(algo=algo), batch
    )
    assert float(metrics["mas/penalty"]) > 0 and "er/ce" in metrics
    ended = jax.jit(lambda s: both.end_task(s, task_data, jax.random.PRNGKey(0), model))(state)
    omega = MAS().importance(state.params, {}, task_data, model)
    chex.assert_trees_all_close(
        ended["mas"].importance, jax.tree.map(jnp.add, algo["mas"].importance, omega), rtol=1e-5
    )
    chex.assert_trees_all_equal(ended["mas"].anchor, state.params)


def test_lam_may_be_traced(model, params, task_data):
    state = fake_state(
        params, QuadraticState(random_like(params, 9, positive=True), random_like(params, 10))
    )
    batch = {"x": jnp.ones((3, 4, 4, 1)), "y": jnp.arange(3)}
    loss = lambda lam: MAS(lam=lam).loss(params, state, batch, jax.random.PRNGKey(0), model)[0]
    traced = jax.jit(jax.vmap(loss))(jnp.array([0.1, 2.0]))
    np.testing.assert_allclose(np.asarray(traced), [float(loss(0.1)), float(loss(2.0))], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match", [({"lam": -1.0}, "lam="), ({"importance_batch": 0}, "importance_batch")]
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAS(**kwargs)
    assert algorithms.make("mas", lam=0.5) == MAS(lam=0.5)


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_mas_keeps_task_zero_better_than_naive(tmp_path):
    naive = naive_result("permuted")
    mas = loop.run(small_permuted_config("mas", lam=0.1), tmp_path / "mas", verbose=False)
    (naive_first, naive_second), (mas_first, mas_second) = naive.class_il[-1], mas.class_il[-1]
    assert abs(mas.class_il[0, 0] - naive.class_il[0, 0]) < 1e-6  # no penalty on task 0: same run
    assert mas_first > naive_first + 0.04, (mas_first, naive_first)  # less forgetting of task 0...
    assert mas_second > naive_second - 0.04, (
        mas_second,
        naive_second,
    )  # ...and task 1 still learned
