"""Less-Forgetting Learning (`sequax.algorithms.lfl`) against a PyTorch reference.

The reference is the paper's objective written out in PyTorch (float64): cross-entropy over
all logits plus lam times the batch mean of the squared Euclidean distance between the last
hidden layer's features of the current network and of the snapshot (not differentiated).
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
from batches import random_batch

from sequax import algorithms
from sequax.algorithms import ER, LFL, Naive, combine
from sequax.configs import common
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop
from sequax.engine.build import build_model, build_scenario

BATCH, CLASSES = 6, 10


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, size: int = BATCH):
    return random_batch(seed, size, CLASSES)


def moved(params, seed, scale):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: p + scale * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params
    )


def state_after_first_task(algorithm, model):
    """A task ended at `old`; the current parameters have moved away from it."""
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0), seed=0)
    old = moved(state.params, 1, 0.5)
    state = state._replace(params=old)
    state = state._replace(algo=algorithm.end_task(state, None, None, model))
    return state._replace(params=moved(old, 2, 0.3)), old


# ---------------- The PyTorch reference ------------------------------------------------------


def torch_layers(params):
    """(hidden, head) float64 torch layers of the flax MLP `Dense_0 -> relu -> Dense_1`."""
    layers = []
    for name in ("Dense_0", "Dense_1"):
        kernel = np.asarray(params[name]["kernel"], np.float64)
        linear = torch.nn.Linear(*kernel.shape).double()
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T))
            linear.bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"], np.float64)))
        layers.append(linear)
    return layers


def reference_loss(layers, old_layers, batch, lam, has_old=True):
    x = torch.from_numpy(np.array(batch["x"])).double().flatten(1)
    y = torch.from_numpy(np.array(batch["y"])).long()
    features = torch.relu(layers[0](x))
    loss = F.cross_entropy(layers[1](features), y)
    if has_old:
        with torch.no_grad():
            old_features = torch.relu(old_layers[0](x))
        loss = loss + lam * ((features - old_features) ** 2).sum(1).mean()
    return loss


def assert_grads_match(grads, layers):
    for i, linear in enumerate(layers):
        g = grads[f"Dense_{i}"]
        np.testing.assert_allclose(g["kernel"], linear.weight.grad.numpy().T, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g["bias"], linear.bias.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("lam", [0.1, 2.5])
def test_loss_and_gradient_match_the_torch_reference(model, lam):
    algorithm = LFL(lam=lam)
    state, old = state_after_first_task(algorithm, model)
    batch = batch_of(3)
    value_and_grad = jax.value_and_grad(
        lambda p: algorithm.loss(p, state, batch, None, model), has_aux=True
    )
    (loss, aux), grads = jax.jit(value_and_grad)(state.params)

    layers = torch_layers(state.params)
    reference = reference_loss(layers, torch_layers(old), batch, lam)
    reference.backward()
    np.testing.assert_allclose(float(loss), reference.item(), rtol=1e-5)
    assert_grads_match(grads, layers)
    metrics = aux["metrics"]
    np.testing.assert_allclose(
        float(loss), float(metrics["ce"] + lam * metrics["feature_distance"]), rtol=1e-6
    )
    assert float(metrics["feature_distance"]) > 0.1


def test_before_the_first_task_ends_it_is_naive(model):
    algorithm = LFL(lam=5.0)
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0), seed=0)
    state = state._replace(params=moved(state.params, 4, 0.5))  # far from the initial snapshot
    batch = batch_of(3)
    _, aux = algorithm.loss(state.params, state, batch, None, model)
    assert float(aux["metrics"]["feature_distance"]) == 0.0
    grads = jax.jit(jax.grad(lambda p: algorithm.loss(p, state, batch, None, model)[0]))(
        state.params
    )
    naive = jax.jit(jax.grad(lambda p: Naive().loss(p, state, batch, None, model)[0]))(state.params)
    chex.assert_trees_all_close(grads, naive, rtol=1e-6, atol=1e-8)


# ---------------- The state across update and end_task ---------------------------------------


def test_snapshot_is_taken_at_end_task_only(model):
    algorithm = LFL()
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0), seed=0)
    algo = state.algo
    assert not bool(algo.has_old)
    chex.assert_trees_all_equal(algo.old_params, state.params)
    for copy, p in zip(jax.tree.leaves(algo.old_params), jax.tree.leaves(state.params)):
        assert copy is not p  # distinct buffers: params are donated, the snapshot must survive
    assert algorithm.update(algo, state, batch_of(1), {}, None) is algo

    trained = moved(state.params, 5, 0.2)
    ended = algorithm.end_task(state._replace(params=trained), None, None, model)
    assert bool(ended.has_old)
    chex.assert_trees_all_equal(ended.old_params, trained)
    # At the snapshot the penalty and its gradient vanish.
    at_old = state._replace(params=trained, algo=ended)
    value, grads = jax.value_and_grad(
        lambda p: algorithm.penalty(p, at_old, batch_of(2), None, model)[0]
    )(trained)
    assert float(value) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_penalty_reuses_given_outputs_and_combines_with_er(model):
    lfl = LFL(lam=0.4)
    state, _ = state_after_first_task(lfl, model)
    batch, rng = batch_of(3), jax.random.PRNGKey(0)
    outputs, _ = model.apply(state.params, {}, batch["x"], train=True)
    given = lfl.penalty(state.params, state, batch, rng, model, outputs)[0]
    np.testing.assert_allclose(
        float(given), float(lfl.penalty(state.params, state, batch, rng, model)[0]), rtol=1e-6
    )

    combined = combine(ER(8, 4), lfl)
    combined_state = create_state(model, combined, optax.sgd(0.1), batch, seed=0)
    combined_state = combined_state._replace(
        params=state.params, algo={**combined_state.algo, "lfl": state.algo}
    )
    total, aux = combined.loss(state.params, combined_state, batch, rng, model)
    er_state = combined_state._replace(algo=combined_state.algo["er"])
    er_loss, _ = ER(8, 4).loss(state.params, er_state, batch, jax.random.fold_in(rng, 0), model)
    np.testing.assert_allclose(float(total), float(er_loss + given), rtol=1e-6)
    assert "lfl/feature_distance" in aux["metrics"]


# ---------------- Hyper-parameters ------------------------------------------------------------


def test_lam_may_be_traced(model):
    algorithm = LFL()
    state, _ = state_after_first_task(algorithm, model)
    batch, lams = batch_of(3), jnp.array([0.0, 0.3, 2.0])

    def loss_at(lam):
        return dataclasses.replace(algorithm, lam=lam).loss(
            state.params, state, batch, None, model
        )[0]

    swept = jax.jit(jax.vmap(loss_at))(lams)
    for i in range(3):
        concrete = LFL(lam=float(lams[i])).loss(state.params, state, batch, None, model)[0]
        np.testing.assert_allclose(swept[i], concrete, rtol=1e-6)


def test_invalid_lam_raises_and_is_registered():
    with pytest.raises(ValueError, match="lam"):
        LFL(lam=-1.0)
    assert algorithms.make("lfl", lam=0.5) == LFL(lam=0.5)


# ---------------- End to end -------------------------------------------------------------------


def small_split_config(num_tasks: int, lam: float):
    config = common.der_config("split", "lfl", 0.05, lam=lam)
    config.data.source = "mnist_packaged"  # ships with sequax: runs anywhere
    config.data.num_tasks = num_tasks
    config.data.train_per_task = 500
    config.data.test_per_task = 200
    config.model.widths = (32,)
    return config


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_lfl_keeps_the_first_tasks_features_on_split_mnist(tmp_path):
    """After task 1, task 0's test images have nearly the features they had after task 0."""
    first = loop.run(small_split_config(1, 0.0), tmp_path / "first", verbose=False)
    naive = loop.run(small_split_config(2, 0.0), tmp_path / "naive", verbose=False)  # lam 0: naive
    lfl = loop.run(small_split_config(2, 0.1), tmp_path / "lfl", verbose=False)
    config = small_split_config(2, 0.1)
    model = build_model(config.model, 10)
    x = jnp.asarray(build_scenario(config.data).test(0)[0], jnp.float32) / 255.0

    def features(params):
        return model.apply(params, {}, x, train=False)[0]["features"]

    def drift(result):
        return float(
            jnp.sum((features(result.state.params) - features(first.state.params)) ** 2, -1).mean()
        )

    # Task 0 has no penalty: the three runs share its solution (and the snapshot's features).
    assert first.class_il[0, 0] == naive.class_il[0, 0] == lfl.class_il[0, 0]
    scale = float(jnp.sum(features(first.state.params) ** 2, -1).mean())
    assert drift(naive) > 0.3 * scale  # naive SGD rewrites the representation...
    assert drift(lfl) < 0.05 * drift(naive), (drift(lfl), drift(naive))  # ...LFL keeps it
    assert lfl.class_il[1, 1] > 0.9  # while learning the new task
