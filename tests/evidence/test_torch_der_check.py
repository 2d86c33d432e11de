"""The PyTorch transcription of mammoth's loop (`evidence/torch_der_check.py`), on tiny data.

Its oEWC Fisher is checked against ours (`algorithms/ewc.py`) on the same weights and images,
its SI step against a hand-written JAX update (clipping included), the reservoir against a hand
computation, an ER step against CE on the concatenated batch, LwF's loss against a hand-written
formula (and its distillation against ours, `algorithms/lwf.py`), LwF's warm-up against a hand
step on the new classes' rows, and a run of each method on a few hundred packaged-MNIST images
for shape, determinism and learning.
"""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from evidence import torch_der_check as tdc
from sequax.algorithms import EWC
from sequax.algorithms.lwf import soft_cross_entropy
from sequax.core.models import mlp
from sequax.core.task_data import task_arrays
from sequax.data import load_source
from sequax.data.scenarios import rotated, split, subsample

N = 300  # examples: not a multiple of the batch (128), so mammoth's normaliser differs from N


@pytest.fixture(scope="module")
def scenario():
    return subsample(rotated(load_source("mnist_packaged"), num_tasks=3, seed=0), N, 200)


@pytest.fixture(scope="module")
def split_scenario():
    return subsample(split(load_source("mnist_packaged"), num_tasks=5, classes_per_task=2), 100, 50)


@pytest.fixture
def net_and_params():
    """A torch MNISTMLP and the same weights as our flax MLP's params (kernel = weight.T)."""
    torch.manual_seed(0)
    net = tdc.mnist_mlp()
    with torch.no_grad():  # non-zero biases, so that their Fisher is checked too
        for p in net.parameters():
            p.add_(0.02)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    params = {
        f"Dense_{i}": {
            "kernel": jnp.asarray(m.weight.detach().numpy().T),
            "bias": jnp.asarray(m.bias.detach().numpy()),
        }
        for i, m in enumerate(linears)
    }
    return net, params


def as_torch_layout(tree):
    """Our Fisher tree -> the torch parameter order (w0, b0, w1, b1, w2, b2), torch shapes."""
    return [
        np.asarray(a)
        for i in range(3)
        for a in (tree[f"Dense_{i}"]["kernel"].T, tree[f"Dense_{i}"]["bias"])
    ]


def test_oewc_fisher_equals_ours(scenario, net_and_params):
    net, params = net_and_params
    images, labels = scenario.train(0)
    ours = EWC(lam=1.4, likelihood_weighted=True, fisher_batch=64).fisher(
        params, {}, task_arrays(images, labels, np.zeros(N), 320), jax.random.PRNGKey(0), mlp(10)
    )
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
        np.testing.assert_allclose(
            b.numpy(), scale * a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max())
        )


def test_si_step_equals_a_hand_written_update(scenario, net_and_params):
    net, _ = net_and_params
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
        ce = -jnp.mean(
            jnp.take_along_axis(jax.nn.log_softmax(h), jnp.asarray(y.numpy())[:, None], 1)
        )
        return ce + hp["c"] * sum(
            jnp.sum(o * (w - a) ** 2) for w, o, a in zip(ws, omega_j, anchor_j)
        )

    omega_j, anchor_j = ([jnp.asarray(t.numpy()) for t in ts] for ts in (omega, anchor))
    grads = jax.grad(loss)([jnp.asarray(t.numpy()) for t in theta])
    assert max(float(jnp.abs(g).max()) for g in grads) > 2  # the clipping is exercised
    clipped = [np.clip(np.asarray(g), -1, 1) for g in grads]
    for p, t, g, w in zip(learner.params, theta, clipped, learner.small_omega):
        np.testing.assert_allclose(
            p.detach().numpy(), t.numpy() - hp["lr"] * g, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(w.numpy(), hp["lr"] * g**2, rtol=1e-4, atol=1e-7)
    # end_task: Ω += ω / ((θ - θ*)² + ξ), θ* <- θ, ω <- 0.
    now = [p.detach().clone() for p in learner.params]
    small = [w.clone() for w in learner.small_omega]
    learner.end_task(x, y)
    for o, new, s, p, a in zip(omega, learner.weights, small, now, anchor):
        torch.testing.assert_close(new, o + s / ((p - a) ** 2 + hp["xi"]))
    assert all(torch.equal(c, p) for c, p in zip(learner.checkpoint, now))
    assert all(not w.any() for w in learner.small_omega)


def test_reservoir_matches_a_hand_computation():
    # RandomState(3).randint(0, n + 1) for n = 3..7 draws 2, 0, 1, 3, 0: examples 3, 4, 5 and 7
    # go to slots 2, 0, 1 and 0; example 6 (draw 3 >= size 3) is dropped.
    buffer = tdc.Buffer(3, np.random.RandomState(3))
    x = torch.arange(8.0)[:, None].repeat(1, 4)
    buffer.add_data(x[:5], torch.arange(5))  # one batch or two: the rule runs per example
    buffer.add_data(x[5:], torch.arange(5, 8))
    assert buffer.num_seen_examples == 8
    assert buffer.labels.tolist() == [7, 5, 3]
    assert buffer.examples.tolist() == [[7.0] * 4, [5.0] * 4, [3.0] * 4]
    # The state's next choice(3, size=2, replace=False) is [1, 2]; a request over 3 is capped.
    examples, labels = buffer.get_data(2)
    assert labels.tolist() == [5, 3] and examples[:, 0].tolist() == [5.0, 3.0]
    assert sorted(buffer.get_data(128)[1].tolist()) == [3, 5, 7]
    # Below capacity: slot = number seen, no draw; replay only from the filled slots.
    rng = np.random.RandomState(0)
    assert tdc.reservoir(2, 3, rng) == 2 and rng.randint(10**9) == np.random.RandomState(0).randint(
        10**9
    )
    small = tdc.Buffer(10, np.random.RandomState(0))
    small.add_data(x[:4], torch.arange(4))
    assert sorted(small.get_data(128)[1].tolist()) == [0, 1, 2, 3]
    # Uniform: each of 6 examples offered to 2 slots is kept with probability 2/6 (3000 streams,
    # one sd = 0.009); an off-by-one in the draw keeps example 2 always.
    rng, counts = np.random.RandomState(0), np.zeros(6)
    for _ in range(3000):
        buffer = tdc.Buffer(2, rng)
        buffer.add_data(x[:6], torch.arange(6))
        counts[buffer.labels.numpy()] += 1
    np.testing.assert_allclose(counts / 3000, 1 / 3, atol=0.04)


def test_er_step_replays_then_stores_the_current_batch(scenario, net_and_params):
    net, _ = net_and_params
    learner = tdc.Learner("er", net, dict(lr=0.2, minibatch_size=4, buffer_size=6), seed=1)
    x, y = tdc.as_tensors(*(a[:10] for a in scenario.train(0)))
    learner.observe(x[:5], y[:5])  # empty buffer: no replay; slots 0-4 filled after the step
    assert learner.buffer.num_seen_examples == 5 and torch.equal(learner.buffer.labels[:5], y[:5])
    rng, before = copy.deepcopy(learner.buffer.rng), copy.deepcopy(net)
    choice = rng.choice(5, size=4, replace=False)  # drawn before the current batch is stored
    batch_x, batch_y = torch.cat((x[5:], x[:5][choice])), torch.cat((y[5:], y[:5][choice]))
    grads = torch.autograd.grad(
        torch.nn.functional.cross_entropy(before(batch_x), batch_y), list(before.parameters())
    )
    learner.observe(x[5:], y[5:])
    for p, q, g in zip(net.parameters(), before.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - 0.2 * g)
    slots = [5] + [tdc.reservoir(n, 6, rng) for n in range(6, 10)]  # the reservoir goes on
    expected = y[:6].clone()
    for i, slot in enumerate(slots):
        if slot >= 0:
            expected[slot] = y[5 + i]
    assert torch.equal(learner.buffer.labels, expected) and learner.buffer.num_seen_examples == 10


def log_softmax(z):
    return (
        z
        - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        - z.max(1, keepdims=True)
    )


def test_lwf_loss_equals_a_hand_written_formula(net_and_params):
    net, _ = net_and_params
    hp = dict(lr=0.03, alpha=0.7, wd_reg=5e-4)
    learner = tdc.Learner("lwf", net, hp)
    rng = np.random.default_rng(0)
    outputs, old = (rng.normal(0, 3, (6, 10)).astype(np.float32) for _ in range(2))
    y = np.array([2, 3, 2, 0, 3, 1])
    wd = hp["wd_reg"] * sum(float((p.detach().double() ** 2).sum()) for p in net.parameters())
    # Second task (current_task 2 after begin_task): CE over classes 0-3, distillation over 0-1,
    # targets softmax(old / 2) (mammoth's smooth(softmax(old), 2)), no T² factor.
    learner.current_task = 2
    loss = learner.lwf_loss(torch.from_numpy(outputs), torch.from_numpy(y), torch.from_numpy(old))
    ce = -log_softmax(outputs[:, :4].astype(float))[np.arange(6), y].mean()
    targets = np.exp(log_softmax(old[:, :2].astype(float) / 2))
    distill = -(targets * log_softmax(outputs[:, :2].astype(float) / 2)).sum(1).mean()
    assert loss.item() == pytest.approx(ce + hp["alpha"] * distill + wd, rel=1e-5)
    ours = soft_cross_entropy(jnp.asarray(outputs), jnp.asarray(old), jnp.arange(10) < 2, 2.0)
    assert float(ours) == pytest.approx(distill, rel=1e-5)
    # First task: CE over classes 0-1; and without begin_task (current_task 0): all 10 classes.
    for task, width in ((1, 2), (0, 10)):
        learner.current_task = task
        loss = learner.lwf_loss(torch.from_numpy(outputs), torch.from_numpy(y % width), None)
        ce = -log_softmax(outputs[:, :width].astype(float))[np.arange(6), y % width].mean()
        assert loss.item() == pytest.approx(ce + wd, rel=1e-5)


def test_lwf_warm_up_moves_only_the_new_classes_rows(split_scenario, net_and_params):
    net, _ = net_and_params
    learner = tdc.Learner("lwf", net, dict(lr=0.5, alpha=1.0, wd_reg=5e-4))
    learner.begin_task(*tdc.as_tensors(*split_scenario.train(0)), batch_size=10)  # first task
    assert learner.current_task == 1 and learner.old_logits is None
    x, y = tdc.as_tensors(*split_scenario.train(1))  # classes 2, 3
    before = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        feats = net[:-1](x).double()
    learner.begin_task(x, y, batch_size=len(y))  # one batch: one hand-checkable step
    w, b = before[4].double(), before[5].double()
    probs = torch.softmax(feats @ w[2:4].T + b[2:4], 1)
    g = (probs - torch.nn.functional.one_hot(y - 2, 2)) / len(y)  # d mean-CE / d logits
    after = [p.detach() for p in net.parameters()]
    assert all(torch.equal(a, c) for a, c in zip(after[:4], before[:4]))  # features frozen
    rest = torch.tensor([c not in (2, 3) for c in range(10)])
    assert torch.equal(after[4][rest], before[4][rest]) and torch.equal(
        after[5][rest], before[5][rest]
    )
    torch.testing.assert_close(
        after[4][2:4].double(), w[2:4] - 0.5 * g.T @ feats, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        after[5][2:4].double(), b[2:4] - 0.5 * g.sum(0), rtol=1e-5, atol=1e-6
    )
    assert learner.current_task == 2
    torch.testing.assert_close(learner.old_logits, net(x))  # after the warm-up, whole network


def test_tiny_lwf_run(split_scenario):
    torch.set_num_threads(1)
    hp = tdc.BEST_ARGS[("smnist", "lwf")]
    one, again = (tdc.run("lwf", split_scenario, seed=3, hp=hp, batch_size=10) for _ in range(2))
    assert one == again
    assert [len(row) for row in one["matrix_task_il"]] == [1, 2, 3, 4, 5]
    # Masking other tasks' logits never turns a right answer wrong.
    assert all(
        t >= c for rt, rc in zip(one["matrix_task_il"], one["matrix"]) for t, c in zip(rt, rc)
    )
    assert one["final_task_il"] == pytest.approx(np.mean(one["matrix_task_il"][-1]))
    assert one["final_task_il"] > 70  # it learns the tasks (task-IL chance: 50 %)
    unhooked = tdc.run("lwf", split_scenario, seed=3, hp=hp, batch_size=10, begin_task=False)
    assert unhooked["matrix"] != one["matrix"]


@pytest.mark.parametrize("method", ["sgd", "oewc", "si", "er"])
def test_tiny_run(scenario, method):
    torch.set_num_threads(1)
    hp = dict(tdc.BEST_ARGS[("rmnist", method)], buffer_size=50)
    one, again = (tdc.run(method, scenario, seed=3, hp=hp, batch_size=16) for _ in range(2))
    assert [len(row) for row in one["matrix"]] == [1, 2, 3]
    assert one == again  # seeded: same init and batch order
    assert one["final"] == pytest.approx(np.mean(one["matrix"][-1]))
    assert one["matrix"][-1][-1] > 40  # it learns the last task (chance: about 10 %)
