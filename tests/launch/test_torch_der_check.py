"""The PyTorch transcription of mammoth's loop (`sequax.launch.torch_der_check`), on tiny data.

Its oEWC Fisher is checked against ours (`algorithms/ewc.py`) on the same weights and images,
its SI step against a hand-written JAX update (clipping included), and a 3-task run of each
method on a few hundred packaged-MNIST images for shape, determinism and learning.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sequax.algorithms import EWC
from sequax.data import load_source
from sequax.data.scenarios import rotated, subsample
from sequax.engine.models import mlp
from sequax.engine.task_data import task_arrays
from sequax.launch import torch_der_check as tdc

N = 300  # examples: not a multiple of the batch (128), so mammoth's normaliser differs from N


@pytest.fixture(scope="module")
def scenario():
    return subsample(rotated(load_source("mnist_packaged"), num_tasks=3, seed=0), N, 200)


@pytest.fixture
def net_and_params():
    """A torch MNISTMLP and the same weights as our flax MLP's params (kernel = weight.T)."""
    torch.manual_seed(0)
    net = tdc.mnist_mlp()
    with torch.no_grad():  # non-zero biases, so that their Fisher is checked too
        for p in net.parameters():
            p.add_(0.02)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    params = {f"Dense_{i}": {"kernel": jnp.asarray(m.weight.detach().numpy().T),
                             "bias": jnp.asarray(m.bias.detach().numpy())} for i, m in enumerate(linears)}
    return net, params


def as_torch_layout(tree):
    """Our Fisher tree -> the torch parameter order (w0, b0, w1, b1, w2, b2), torch shapes."""
    return [np.asarray(a) for i in range(3) for a in (tree[f"Dense_{i}"]["kernel"].T, tree[f"Dense_{i}"]["bias"])]


def test_oewc_fisher_equals_ours(scenario, net_and_params):
    net, params = net_and_params
    images, labels = scenario.train(0)
    ours = EWC(lam=1.4, likelihood_weighted=True, fisher_batch=64).fisher(
        params, {}, task_arrays(images, labels, np.zeros(N), 320), jax.random.PRNGKey(0), mlp(10))
    x, y = tdc.as_tensors(images, labels)
    theirs = tdc.fisher(net, x, y, denominator=N, chunk=100)
    for a, b in zip(as_torch_layout(ours), theirs):
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    # end_task divides by len(train_loader) * batch_size = 3 * 128, and sums online (γ = 1).
    learner = tdc.Learner("oewc", net, tdc.BEST_ARGS[("pmnist", "oewc")])
    learner.end_task(x, y)
    learner.end_task(x, y)
    scale = 2 * N / (math.ceil(N / tdc.BATCH_SIZE) * tdc.BATCH_SIZE)
    for a, b in zip(as_torch_layout(ours), learner.weights):
        np.testing.assert_allclose(b.numpy(), scale * a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


def test_si_step_equals_a_hand_written_update(scenario, net_and_params):
    net, params = net_and_params
    hp = dict(lr=0.1, c=1.0, xi=1.0)
    learner = tdc.Learner("si", net, hp)
    rng = np.random.default_rng(0)
    theta = [p.detach().clone() for p in learner.params]
    omega = [torch.from_numpy(rng.random(p.shape, np.float32) * 20) for p in theta]
    anchor = [t + torch.from_numpy(rng.normal(0, 0.1, t.shape).astype(np.float32)) for t in theta]
    learner.weights, learner.checkpoint = omega, anchor
    images, labels = scenario.train(1)
    x, y = tdc.as_tensors(images[:128], labels[:128])
    learner.observe(x, y)

    def loss(ws):  # CE + c Σ Ω (θ - θ*)², forward written out in jnp
        h = jnp.asarray(x.numpy())
        for i in range(0, 6, 2):
            h = h @ ws[i].T + ws[i + 1]
            h = jax.nn.relu(h) if i < 4 else h
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), jnp.asarray(y.numpy())[:, None], 1))
        return ce + hp["c"] * sum(jnp.sum(o * (w - a) ** 2) for w, o, a in zip(ws, omega_j, anchor_j))

    omega_j, anchor_j = ([jnp.asarray(t.numpy()) for t in ts] for ts in (omega, anchor))
    grads = jax.grad(loss)([jnp.asarray(t.numpy()) for t in theta])
    assert max(float(jnp.abs(g).max()) for g in grads) > 2  # the clipping is exercised
    clipped = [np.clip(np.asarray(g), -1, 1) for g in grads]
    for p, t, g, w in zip(learner.params, theta, clipped, learner.small_omega):
        np.testing.assert_allclose(p.detach().numpy(), t.numpy() - hp["lr"] * g, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w.numpy(), hp["lr"] * g**2, rtol=1e-4, atol=1e-7)
    # end_task: Ω += ω / ((θ - θ*)² + ξ), θ* <- θ, ω <- 0.
    now = [p.detach().clone() for p in learner.params]
    small = [w.clone() for w in learner.small_omega]
    learner.end_task(x, y)
    for o, new, s, p, a in zip(omega, learner.weights, small, now, anchor):
        torch.testing.assert_close(new, o + s / ((p - a) ** 2 + hp["xi"]))
    assert all(torch.equal(c, p) for c, p in zip(learner.checkpoint, now))
    assert all(not w.any() for w in learner.small_omega)


@pytest.mark.parametrize("method", ["sgd", "oewc", "si"])
def test_tiny_run(scenario, method):
    torch.set_num_threads(1)
    hp = tdc.BEST_ARGS[("rmnist", method)]
    one, again = (tdc.run(method, scenario, seed=3, hp=hp, batch_size=16) for _ in range(2))
    assert [len(row) for row in one["matrix"]] == [1, 2, 3]
    assert one == again  # seeded: same init and batch order
    assert one["final"] == pytest.approx(np.mean(one["matrix"][-1]))
    assert one["matrix"][-1][-1] > 40  # it learns the last task (chance: about 10 %)
