"""Learning without Forgetting (`sequax.algorithms.lwf`) against a PyTorch reference.

The reference is mammoth's `Lwf.observe` written out here: the cross-entropy over the logits
of the classes seen so far (`outputs[:, mask]`), plus alpha times `modified_kl_div` between
`smooth(softmax(old_logits[:, prev]), T)` and `smooth(softmax(outputs[:, prev]), T)` with
mammoth's own `smooth` (p^(1/T) renormalised), the old logits from the snapshot network.
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
from torch_reference import torch_mlp

from sequax import algorithms
from sequax.algorithms import ER, LwF, combine
from sequax.configs import common
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop

BATCH, CLASSES = 6, 10


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, labels):
    return random_batch(seed, len(labels), labels=labels)


def scaled(params, seed, scale):
    """Parameters moved away from `params` (so old and new networks differ clearly)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: p + scale * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params
    )


def state_in_task_one(algorithm, model):
    """Task 0 (classes 0, 1) trained and ended at `old`; task 1 (classes 2, 3) begun at `new`."""
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0, 1] * 3), seed=0)
    old = scaled(state.params, 1, 0.5)
    algo = algorithm.update(state.algo, state, batch_of(1, [0, 1, 1, 0, 1, 1]), {}, None)
    state = state._replace(params=old, algo=algo)
    state = state._replace(algo=algorithm.end_task(state, None, None, model))
    algo = algorithm.update(state.algo, state, batch_of(2, [2, 3, 3, 2, 2, 2]), {}, None)
    return state._replace(params=scaled(old, 2, 0.3), algo=algo), old


# ---------------- The PyTorch reference ------------------------------------------------------


def smooth(probs, temp, dim):  # mammoth's
    log = probs ** (1 / temp)
    return log / torch.sum(log, dim).unsqueeze(1)


def modified_kl_div(old, new):  # mammoth's
    return -torch.mean(torch.sum(old * torch.log(new), 1))


def mammoth_loss(net, old_net, batch, seen, prev, alpha, temperature):
    """`Lwf.observe` up to `backward()`; `seen`, `prev` are mammoth's `eye[...]` class prefixes."""
    x = torch.from_numpy(np.array(batch["x"])).double()
    y = torch.from_numpy(np.array(batch["y"])).long()
    outputs = net(x)
    loss = F.cross_entropy(outputs[:, :seen], y)
    if prev:
        with torch.no_grad():
            logits = old_net(x)
        loss = loss + alpha * modified_kl_div(
            smooth(torch.softmax(logits[:, :prev], 1), temperature, 1),
            smooth(torch.softmax(outputs[:, :prev], 1), temperature, 1),
        )
    return loss


def assert_grads_match(grads, net):
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        g = grads[f"Dense_{i}"]
        np.testing.assert_allclose(g["kernel"], linear.weight.grad.numpy().T, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g["bias"], linear.bias.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha, temperature", [(1.0, 2.0), (0.7, 3.0), (2.0, 1.0)])
def test_loss_and_gradient_match_mammoth(model, alpha, temperature):
    algorithm = LwF(alpha=alpha, temperature=temperature)
    state, old = state_in_task_one(algorithm, model)
    batch = batch_of(3, [2, 3, 2, 2, 3, 3])
    value_and_grad = jax.value_and_grad(
        lambda p: algorithm.loss(p, state, batch, None, model), has_aux=True
    )
    (loss, aux), grads = jax.jit(value_and_grad)(state.params)

    net = torch_mlp(state.params)
    reference = mammoth_loss(
        net, torch_mlp(old), batch, seen=4, prev=2, alpha=alpha, temperature=temperature
    )
    reference.backward()
    np.testing.assert_allclose(float(loss), reference.item(), rtol=1e-5)
    assert_grads_match(grads, net)
    metrics = aux["metrics"]
    np.testing.assert_allclose(
        float(loss), float(metrics["ce"] + alpha * metrics["distill"]), rtol=1e-6
    )
    assert float(metrics["distill"]) > 0.1


def test_first_task_is_the_masked_cross_entropy_only(model):
    """Before any task ends there is no old model: CE over the classes seen (0, 1) only."""
    algorithm = LwF()
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0, 1] * 3), seed=0)
    state = state._replace(params=scaled(state.params, 4, 0.5))
    batch = batch_of(3, [0, 1, 1, 0, 0, 1])
    value_and_grad = jax.value_and_grad(
        lambda p: algorithm.loss(p, state, batch, None, model), has_aux=True
    )
    (loss, aux), grads = jax.jit(value_and_grad)(state.params)
    assert float(aux["metrics"]["distill"]) == 0.0
    net = torch_mlp(state.params)
    reference = mammoth_loss(net, None, batch, seen=2, prev=0, alpha=1.0, temperature=2.0)
    reference.backward()
    np.testing.assert_allclose(float(loss), reference.item(), rtol=1e-5)
    assert_grads_match(grads, net)


# ---------------- The state across update and end_task ---------------------------------------


def test_state_tracks_classes_and_snapshots_at_end_task(model):
    algorithm = LwF()
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0, 1] * 3), seed=0)
    algo = state.algo
    assert not bool(algo.old_classes.any()) and not bool(algo.seen.any())
    chex.assert_trees_all_equal(algo.old_params, state.params)
    for copy, p in zip(jax.tree.leaves(algo.old_params), jax.tree.leaves(state.params)):
        assert copy is not p  # distinct buffers: params are donated, the snapshot must survive

    algo = algorithm.update(algo, state, batch_of(1, [0, 1, 1, 0, 1, 1]), {}, None)
    np.testing.assert_array_equal(algo.seen, np.arange(CLASSES) < 2)
    assert not bool(algo.old_classes.any())  # the first task has not ended yet

    trained = scaled(state.params, 5, 0.2)
    ended = algorithm.end_task(state._replace(params=trained, algo=algo), None, None, model)
    chex.assert_trees_all_equal(ended.old_params, trained)
    np.testing.assert_array_equal(ended.old_classes, np.arange(CLASSES) < 2)

    algo = algorithm.update(ended, state, batch_of(2, [3, 2, 3, 3, 2, 3]), {}, None)
    np.testing.assert_array_equal(algo.seen, np.arange(CLASSES) < 4)
    np.testing.assert_array_equal(
        algo.old_classes, np.arange(CLASSES) < 2
    )  # until the next end_task


def test_penalty_gradient_is_zero_at_the_snapshot(model):
    """At theta = theta_old the soft cross-entropy is at its minimum (its value is the targets'
    entropy)."""
    algorithm = LwF(alpha=1.0, temperature=2.0)
    state, old = state_in_task_one(algorithm, model)
    batch = batch_of(3, [2, 3, 2, 2, 3, 3])
    penalty = jax.jit(
        jax.value_and_grad(lambda p: algorithm.penalty(p, state, batch, None, model)[0])
    )
    value, grads = penalty(old)
    assert float(value) > 0.1
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-6
    _, moved = penalty(state.params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(moved)) > 1e-3


def test_penalty_reuses_given_outputs_and_combines_with_er(model):
    lwf = LwF(alpha=0.8)
    state, _ = state_in_task_one(lwf, model)
    batch, rng = batch_of(3, [2, 3, 2, 2, 3, 3]), jax.random.PRNGKey(0)
    outputs, _ = model.apply(state.params, {}, batch["x"], train=True)
    given = lwf.penalty(state.params, state, batch, rng, model, outputs)[0]
    computed = lwf.penalty(state.params, state, batch, rng, model, None)[0]
    np.testing.assert_allclose(float(given), float(computed), rtol=1e-6)

    combined = combine(ER(8, 4), lwf)
    combined_state = create_state(model, combined, optax.sgd(0.1), batch, seed=0)
    combined_state = combined_state._replace(
        params=state.params, algo={**combined_state.algo, "lwf": state.algo}
    )
    total, aux = combined.loss(state.params, combined_state, batch, rng, model)
    er_loss, _ = ER(8, 4).loss(
        state.params,
        combined_state._replace(algo=combined_state.algo["er"]),
        batch,
        jax.random.fold_in(rng, 0),
        model,
    )
    np.testing.assert_allclose(float(total), float(er_loss + given), rtol=1e-6)
    assert "lwf/distill" in aux["metrics"]


# ---------------- Hyper-parameters ------------------------------------------------------------


def test_alpha_and_temperature_may_be_traced(model):
    algorithm = LwF()
    state, _ = state_in_task_one(algorithm, model)
    batch = batch_of(3, [2, 3, 2, 2, 3, 3])
    alphas, temperatures = jnp.array([0.0, 0.5, 2.0]), jnp.array([1.0, 2.0, 4.0])

    def loss_at(alpha, temperature):
        swept = dataclasses.replace(
            algorithm, alpha=alpha, temperature=temperature
        )  # runs __post_init__
        return swept.loss(state.params, state, batch, None, model)[0]

    swept = jax.jit(jax.vmap(loss_at))(alphas, temperatures)
    for i in range(3):
        concrete = LwF(alpha=float(alphas[i]), temperature=float(temperatures[i]))
        np.testing.assert_allclose(
            swept[i], concrete.loss(state.params, state, batch, None, model)[0], rtol=1e-6
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -0.1}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LwF(**kwargs)


def test_registered_and_num_classes_must_match_the_model(model):
    assert algorithms.make("lwf", alpha=0.3, temperature=1.5) == LwF(alpha=0.3, temperature=1.5)
    algorithm = LwF(num_classes=7)
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0, [0, 1] * 3), seed=0)
    with pytest.raises(ValueError, match="num_classes=10"):
        algorithm.loss(state.params, state, batch_of(1, [0, 1]), None, model)


# ---------------- End to end -------------------------------------------------------------------


def small_permuted_config(algorithm: str, **algorithm_kwargs):
    """Domain-IL (all ten classes in every task): the old model's outputs carry every class."""
    config = common.der_config("permuted", algorithm, 0.05, **algorithm_kwargs)
    config.data.source = "mnist_packaged"  # ships with sequax: runs anywhere
    config.data.num_tasks = 3
    config.data.train_per_task = 1000
    config.data.test_per_task = 200
    config.model.widths = (64,)
    config.training.batch_size = 10
    return config


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_lwf_keeps_the_first_task_on_permuted_mnist(tmp_path):
    naive = loop.run(small_permuted_config("naive"), tmp_path / "naive", verbose=False)
    lwf = loop.run(small_permuted_config("lwf", alpha=3.0), tmp_path / "lwf", verbose=False)
    # Naive SGD forgets the first permutation; distilling the old outputs keeps it.
    naive_forgetting = naive.class_il[0, 0] - naive.class_il[-1, 0]
    lwf_forgetting = lwf.class_il[0, 0] - lwf.class_il[-1, 0]
    assert naive_forgetting > 0.06, naive.class_il
    assert lwf_forgetting < naive_forgetting / 2, (lwf.class_il, naive.class_il)
