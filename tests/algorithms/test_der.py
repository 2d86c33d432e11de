"""Dark Experience Replay (`sequax.algorithms.der`): DER and DER++ against a PyTorch reference.

The references are written here in the words of mammoth's `der.py` / `derpp.py`: one forward
per batch, `F.cross_entropy` on the current batch, `alpha * F.mse_loss` against the stored
logits of the rows the buffer returns, `beta * F.cross_entropy` on a second draw, and no
replay term while the buffer is empty.
"""

from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from batches import random_batch
from scipy import stats
from small_streams import naive_result, small_split_config
from torch_reference import torch_mlp

from sequax import algorithms
from sequax.algorithms import DER, DERPP, Naive
from sequax.algorithms.reservoir import ClassBalancedState, ReplayState, ReservoirState
from sequax.core.models import from_linen, mlp
from sequax.core.state import create_state
from sequax.engine import loop
from sequax.engine.step import make_train_step

BATCH, REPLAY, CAPACITY, CLASSES = 6, 5, 8, 10


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, size: int = BATCH, labels=None):
    return random_batch(seed, size, CLASSES, labels)


def stored_logits(seed: int, size: int):
    """Logits as if recorded on earlier steps: random, so the MSE is far from 0."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=(size, CLASSES)) * 2, jnp.float32)


def state_with_buffer(algorithm, model, filled: int, seed: int = 0):
    """A state whose buffer was offered `filled` examples (all stored: filled <= CAPACITY)."""
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0), seed=seed)
    if filled:
        aux = {"logits": stored_logits(1, filled)}
        algo = algorithm.update(state.algo, state, batch_of(1, filled), aux, jax.random.PRNGKey(5))
        state = state._replace(algo=algo)
    return state


# ---------------- The PyTorch reference ------------------------------------------------------


def as_torch(a, dtype=torch.float64):
    return torch.from_numpy(np.array(a)).to(dtype)


def mammoth_loss(net, batch, draws, valids, alpha, beta=None):
    """mammoth's `observe` up to `backward()`: the loss over the rows `get_data` returns."""
    loss = F.cross_entropy(net(as_torch(batch["x"])), as_torch(batch["y"], torch.long))
    if np.asarray(valids[0]).any():  # `if not self.buffer.is_empty()`
        rows = np.asarray(valids[0])
        buf_x, buf_logits = as_torch(draws[0]["x"][rows]), as_torch(draws[0]["logits"][rows])
        loss = loss + alpha * F.mse_loss(net(buf_x), buf_logits)
        if beta is not None:
            rows = np.asarray(valids[1])
            buf_x, buf_y = as_torch(draws[1]["x"][rows]), as_torch(draws[1]["y"][rows], torch.long)
            loss = loss + beta * F.cross_entropy(net(buf_x), buf_y)
    return loss


def draws_of(algo):
    """A DER state's pre-drawn replay batches as numpy: (batches, valid masks), one per draw."""
    count = algo.valid.shape[0]
    draws = [jax.tree.map(lambda a, i=i: np.asarray(a[i]), algo.replay) for i in range(count)]
    return draws, [np.asarray(algo.valid[i]) for i in range(count)]


@pytest.mark.parametrize("filled", [0, 3, CAPACITY])  # empty, fewer than REPLAY, full
@pytest.mark.parametrize("plus", [False, True], ids=["der", "derpp"])
def test_loss_and_gradient_match_the_torch_reference(model, filled, plus):
    algorithm = (
        DERPP(CAPACITY, REPLAY, alpha=0.7, beta=0.4) if plus else DER(CAPACITY, REPLAY, alpha=0.7)
    )
    state = state_with_buffer(algorithm, model, filled)
    batch, rng = batch_of(2), jax.random.PRNGKey(7)
    loss_and_grad = jax.value_and_grad(
        lambda p: algorithm.loss(p, state, batch, rng, model), has_aux=True
    )
    (loss, aux), grads = jax.jit(loss_and_grad)(state.params)

    draws, valids = draws_of(state.algo)  # the replay batches this step reads
    assert len(draws) == (2 if plus else 1)
    assert all(int(v.sum()) == min(filled, REPLAY) for v in valids)
    net = torch_mlp(state.params)
    reference = mammoth_loss(net, batch, draws, valids, 0.7, 0.4 if plus else None)
    reference.backward()
    np.testing.assert_allclose(float(loss), reference.item(), rtol=1e-5)

    # Gradients, layer by layer (torch's weight is the flax kernel transposed).
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        g = grads[f"Dense_{i}"]
        np.testing.assert_allclose(g["kernel"], linear.weight.grad.numpy().T, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g["bias"], linear.bias.grad.numpy(), rtol=1e-5, atol=1e-7)

    metrics = aux["metrics"]
    total = metrics["ce"] + 0.7 * metrics["distill"] + (0.4 * metrics["replay_ce"] if plus else 0)
    np.testing.assert_allclose(float(loss), float(total), rtol=1e-6)
    if filled == 0:
        assert float(metrics["distill"]) == 0.0 and (not plus or float(metrics["replay_ce"]) == 0.0)
    else:
        assert float(metrics["distill"]) > 0.1  # the reference compares a real MSE


def test_zero_weights_give_naive_gradients(model):
    """DER++ with α = β = 0 is plain cross-entropy on the current batch, buffer full or not."""
    algorithm = DERPP(CAPACITY, REPLAY, alpha=0.0, beta=0.0)
    state = state_with_buffer(algorithm, model, CAPACITY)
    batch, rng = batch_of(3), jax.random.PRNGKey(0)
    grads = jax.jit(jax.grad(lambda p: algorithm.loss(p, state, batch, rng, model)[0]))
    naive = jax.jit(jax.grad(lambda p: Naive().loss(p, state, batch, rng, model)[0]))
    chex.assert_trees_all_close(grads(state.params), naive(state.params), rtol=1e-6, atol=1e-8)


# ---------------- BatchNorm: one forward per batch, the model state threaded in order --------


class BatchNormMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
        return {"logits": nn.Dense(CLASSES)(x), "features": x}


def torch_batchnorm_mlp(params, batch_stats):
    dense_0, dense_1 = (np.asarray(params[n]["kernel"], np.float64) for n in ("Dense_0", "Dense_1"))
    net = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(16, 16),
        torch.nn.BatchNorm1d(16, eps=1e-5, momentum=0.1),
        torch.nn.ReLU(),
        torch.nn.Linear(16, CLASSES),
    ).double()
    with torch.no_grad():
        for linear, kernel, name in ((net[1], dense_0, "Dense_0"), (net[4], dense_1, "Dense_1")):
            linear.weight.copy_(torch.from_numpy(kernel.T))
            linear.bias.copy_(as_torch(params[name]["bias"]))
        net[2].weight.copy_(as_torch(params["BatchNorm_0"]["scale"]))
        net[2].bias.copy_(as_torch(params["BatchNorm_0"]["bias"]))
        net[2].running_mean.copy_(as_torch(batch_stats["BatchNorm_0"]["mean"]))
        net[2].running_var.copy_(as_torch(batch_stats["BatchNorm_0"]["var"]))
    return net.train()


@pytest.mark.parametrize("filled", [0, CAPACITY])
def test_batchnorm_statistics_follow_the_forward_passes_in_order(filled):
    model = from_linen(BatchNormMLP(), CLASSES)
    algorithm = DERPP(CAPACITY, REPLAY, alpha=0.7, beta=0.4)
    state = state_with_buffer(algorithm, model, filled)
    # Non-trivial running statistics, so the order of the three updates matters.
    stats0 = jax.tree.map(lambda a: a + 0.3, state.model_state)
    state = state._replace(model_state=stats0)
    batch, rng = batch_of(2), jax.random.PRNGKey(1)
    loss, aux = jax.jit(lambda s: algorithm.loss(s.params, s, batch, rng, model))(state)

    net = torch_batchnorm_mlp(state.params, stats0["batch_stats"])
    draws, valids = draws_of(state.algo)
    reference = mammoth_loss(net, batch, draws, valids, 0.7, 0.4)
    np.testing.assert_allclose(float(loss), reference.item(), rtol=1e-5)
    # torch's running mean after its forwards (current, then the two draws when not empty).
    # (The running variance differs by convention: torch uses the unbiased batch variance.)
    mean = aux["model_state"]["batch_stats"]["BatchNorm_0"]["mean"]
    np.testing.assert_allclose(mean, net[2].running_mean.numpy(), rtol=1e-5, atol=1e-6)
    # And the same as applying the model to the three batches in turn, here in JAX.
    expected = stats0
    xs = [batch["x"]] + ([d["x"] for d in draws] if filled else [])
    for x in xs:
        expected = model.apply(state.params, expected, jnp.asarray(x), train=True)[1]
    chex.assert_trees_all_close(aux["model_state"], expected, rtol=1e-6, atol=1e-7)


# ---------------- update: the buffer stores the batch with its pre-update logits -------------


def test_update_stores_each_example_with_the_logits_of_its_own_step(model):
    algorithm = DERPP(CAPACITY, REPLAY, alpha=0.7, beta=0.4)
    step = jax.jit(make_train_step(model, algorithm, optax.sgd(0.5)))
    state = create_state(model, algorithm, optax.sgd(0.5), batch_of(0), seed=0)
    logits_of = jax.jit(lambda p, x: model.apply(p, {}, x, train=True)[0]["logits"])

    offered = []  # (x, y, logits before that step's update)
    for seed in (1, 2, 3):  # 18 examples into 8 slots: the reservoir replaces some
        batch = batch_of(seed)
        before = np.asarray(logits_of(state.params, batch["x"]))
        offered += list(zip(np.asarray(batch["x"]), np.asarray(batch["y"]), before))
        state, _ = step(state, batch)
        after = np.asarray(logits_of(state.params, batch["x"]))
        assert np.abs(after - before).max() > 1e-3  # the test can tell pre- from post-update

    items = jax.tree.map(np.asarray, state.algo.buffer.items)
    assert set(items) == {"x", "y", "logits"} and int(state.algo.buffer.num_seen) == 18
    stored_x = np.stack([x for x, _, _ in offered]).reshape(len(offered), -1)
    steps = set()
    for slot in range(CAPACITY):
        (index,) = np.flatnonzero((stored_x == items["x"][slot].reshape(-1)).all(1))
        _, y, logits = offered[index]
        assert items["y"][slot] == y
        np.testing.assert_allclose(items["logits"][slot], logits, rtol=1e-6, atol=1e-6)
        steps.add(index // BATCH)
    assert len(steps) >= 2  # logits recorded under different parameters were checked


# ---------------- DER++: two independent draws, each without replacement ---------------------


def test_derpp_draws_two_independent_samples(model):
    algorithm = DERPP(CAPACITY, REPLAY)
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0), seed=0)
    ids = np.arange(CAPACITY)
    fill, fill_aux = batch_of(1, CAPACITY, ids), {"logits": stored_logits(1, CAPACITY)}
    full = algorithm.update(state.algo, state, fill, fill_aux, jax.random.PRNGKey(0))
    new = batch_of(2, BATCH, 100 + np.arange(BATCH))  # new ids: the buffer keeps 8 distinct ones
    aux = {"logits": stored_logits(2, BATCH)}
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    draw = jax.jit(jax.vmap(lambda k: algorithm.update(full, state, new, aux, k)))
    algo = draw(keys)
    assert algo.valid.shape == (4000, 2, REPLAY) and bool(algo.valid.all())
    y = np.asarray(algo.replay["y"])  # [keys, 2, REPLAY]
    # Each draw is without replacement.
    assert all(len(set(row)) == REPLAY for row in y.reshape(-1, REPLAY))
    # The two draws are not one sample twice...
    same = np.array([set(a) == set(b) for a, b in y])
    assert same.mean() < 0.1
    # ...but independent: their overlap is hypergeometric (5 of 8 against 5 of 8).
    overlap = np.array([len(set(a) & set(b)) for a, b in y])
    support = np.arange(2, REPLAY + 1)  # at least 5 + 5 - 8 = 2 in common
    expected = stats.hypergeom(CAPACITY, REPLAY, REPLAY).pmf(support) * len(keys)
    counts = np.array([(overlap == k).sum() for k in support])
    assert counts.sum() == len(keys)
    statistic, p_value = stats.chisquare(counts, expected)
    assert p_value > 1e-4, (counts, expected)


# ---------------- Hyper-parameters ------------------------------------------------------------


def test_alpha_and_beta_may_be_traced(model):
    """A vmapped sweep rebinds α and β to tracers: the loss takes them without control flow."""
    algorithm = DERPP(CAPACITY, REPLAY)
    state = state_with_buffer(algorithm, model, CAPACITY)
    batch, rng = batch_of(2), jax.random.PRNGKey(3)
    alphas, betas = jnp.array([0.0, 0.3, 1.0]), jnp.array([0.5, 0.0, 2.0])

    def loss_at(alpha, beta):
        swept = dataclasses.replace(algorithm, alpha=alpha, beta=beta)  # runs __post_init__
        return swept.loss(state.params, state, batch, rng, model)[0]

    swept = jax.jit(jax.vmap(loss_at))(alphas, betas)
    for i in range(3):
        concrete = DERPP(CAPACITY, REPLAY, alpha=float(alphas[i]), beta=float(betas[i]))
        np.testing.assert_allclose(
            swept[i], concrete.loss(state.params, state, batch, rng, model)[0], rtol=1e-6
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(replay_batch=0), "replay_batch"),
        (dict(replay_batch=CAPACITY + 1), "replay_batch"),
        (dict(alpha=-0.1), "alpha"),
        (dict(num_classes=0), "num_classes"),
        (dict(buffer_policy="balanced"), "buffer_policy='balanced' is unknown"),
    ],
)
@pytest.mark.parametrize("cls", [DER, DERPP])
def test_invalid_hyperparameters_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**{"capacity": CAPACITY, "replay_batch": REPLAY, **kwargs})


def test_invalid_beta_raises_and_der_has_none():
    with pytest.raises(ValueError, match="beta"):
        DERPP(beta=-1.0)
    with pytest.raises(ValueError, match="unknown hyper-parameter.*beta"):
        algorithms.make("der", beta=0.5)
    made = algorithms.make("derpp", capacity=50, alpha=0.2, beta=1.0)
    assert made == DERPP(capacity=50, alpha=0.2, beta=1.0)


def test_default_buffer_is_the_plain_reservoir(model):
    """The default state's structure is unchanged by the buffer policies (recorded runs and
    checkpoints stay valid); "class_balanced" swaps in a `ClassBalancedState` of num_classes."""
    for cls in (DER, DERPP):
        algo = create_state(model, cls(CAPACITY, REPLAY), optax.sgd(0.1), batch_of(0), seed=0).algo
        assert type(algo) is ReplayState and type(algo.buffer) is ReservoirState
        assert algo.valid.shape == (cls.draws, REPLAY)
        balanced = create_state(
            model,
            cls(CAPACITY, REPLAY, buffer_policy="class_balanced"),
            optax.sgd(0.1),
            batch_of(0),
            seed=0,
        ).algo.buffer
        assert type(balanced) is ClassBalancedState and balanced.stored.shape == (CLASSES,)
        assert jax.tree.structure(balanced.reservoir) == jax.tree.structure(algo.buffer)


def test_num_classes_must_match_the_model(model):
    algorithm = DER(CAPACITY, REPLAY, num_classes=7)
    state = create_state(model, algorithm, optax.sgd(0.1), batch_of(0), seed=0)
    with pytest.raises(ValueError, match="num_classes=10"):
        algorithm.loss(state.params, state, batch_of(1), jax.random.PRNGKey(0), model)


# ---------------- End to end -------------------------------------------------------------------


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_derpp_beats_naive_on_split_mnist(tmp_path):
    naive = naive_result("split")
    derpp = loop.run(
        small_split_config("derpp", capacity=100, replay_batch=10, alpha=0.5, beta=0.5),
        tmp_path / "derpp",
        verbose=False,
    )
    naive_acc = naive.summary["class_il"]["acc"]
    derpp_acc = derpp.summary["class_il"]["acc"]
    # Naive forgets every earlier task in class-IL (about 1/5); replay keeps them.
    assert naive_acc < 0.3
    assert derpp_acc > naive_acc + 0.3, (derpp_acc, naive_acc)
    assert derpp.class_il[-1, 0] > 0.4  # task 0 survives four later tasks (naive: 0)
