"""Synaptic Intelligence (`sequax.algorithms.si`) against mammoth's `si.py`, written in PyTorch.

The reference reproduces mammoth's `observe` and `end_task` step by step in float64: loss
`CE + c * sum(Ω (θ - θ*)^2)`, `clip_grad_value_(params, clip)`, an SGD step, then
`small_omega += lr * grad^2` with the clipped gradient; at the task's end
`big_omega += small_omega / ((θ - checkpoint)^2 + xi)` and the checkpoint moves to θ.
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
from small_streams import naive_result, small_permuted_config

from sequax import algorithms
from sequax.algorithms import ER, SI, combine
from sequax.algorithms.quadratic_penalty import QuadraticState
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop
from sequax.engine.step import make_train_step

CLASSES, LR = 10, 0.1


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, size: int = 6):
    return random_batch(seed, size, CLASSES)


def initial_state(model, algorithm, tx=None, scale: float = 3.0):
    """A state whose parameters are scaled up (large gradients: clipping is exercised)."""
    tx = tx or optax.sgd(LR)
    state = create_state(model, algorithm, tx, batch_of(0), seed=0)
    params = jax.tree.map(lambda p: scale * p + 0.1, state.params)
    return state._replace(
        params=params, opt_state=tx.init(params), algo=algorithm.init(params, {}, None, None)
    )


def random_like(tree, seed, positive=False):
    rng = np.random.default_rng(seed)
    draw = rng.random if positive else rng.standard_normal
    return jax.tree.map(lambda a: jnp.asarray(draw(jnp.shape(a)), jnp.float32), tree)


# ---------------- The PyTorch reference (mammoth's SI) ------------------------------------------


def torch_params(params):
    """[w0, b0, w1, b1] as float64 leaf tensors (torch's weight is the flax kernel transposed)."""
    out = []
    for name in ("Dense_0", "Dense_1"):
        out.append(
            torch.tensor(np.asarray(params[name]["kernel"], np.float64).T, requires_grad=True)
        )
        out.append(torch.tensor(np.asarray(params[name]["bias"], np.float64), requires_grad=True))
    return out


def as_tree(tensors):
    w0, b0, w1, b1 = (t.detach().numpy() for t in tensors)
    return {"Dense_0": {"kernel": w0.T, "bias": b0}, "Dense_1": {"kernel": w1.T, "bias": b1}}


class MammothSI:
    """mammoth `models/si.py`, parameter by parameter instead of one flat vector."""

    def __init__(self, params, c, xi, clip):
        self.net = torch_params(params)
        self.c, self.xi, self.clip = c, xi, clip
        self.checkpoint = [p.detach().clone() for p in self.net]
        self.big_omega = None
        self.small_omega = [torch.zeros_like(p) for p in self.net]
        self.clipped = 0  # gradient entries the clipping changed

    def forward(self, x):
        w0, b0, w1, b1 = self.net
        return torch.relu(x.reshape(len(x), -1) @ w0.T + b0) @ w1.T + b1

    def observe(self, batch):
        for p in self.net:
            p.grad = None
        outputs = self.forward(torch.from_numpy(np.asarray(batch["x"], np.float64)))
        penalty = 0.0
        if self.big_omega is not None:
            penalty = sum(
                (o * (p - c) ** 2).sum()
                for o, p, c in zip(self.big_omega, self.net, self.checkpoint)
            )
        loss = (
            F.cross_entropy(outputs, torch.from_numpy(np.asarray(batch["y"], np.int64)))
            + self.c * penalty
        )
        loss.backward()
        self.clipped += sum(int((p.grad.abs() > self.clip).sum()) for p in self.net)
        torch.nn.utils.clip_grad_value_(self.net, self.clip)
        with torch.no_grad():
            for p in self.net:
                p -= LR * p.grad  # SGD step
        for w, p in zip(self.small_omega, self.net):
            w += LR * p.grad.data**2
        return loss.item()

    def end_task(self):
        if self.big_omega is None:
            self.big_omega = [torch.zeros_like(p) for p in self.net]
        for o, w, p, c in zip(self.big_omega, self.small_omega, self.net, self.checkpoint):
            o += w / ((p.data - c) ** 2 + self.xi)
        self.checkpoint = [p.detach().clone() for p in self.net]
        self.small_omega = [torch.zeros_like(p) for p in self.net]


def assert_close_to(tree, tensors, rtol=1e-5, atol=1e-6):
    chex.assert_trees_all_close(
        jax.tree.map(np.asarray, tree), as_tree(tensors), rtol=rtol, atol=atol
    )


@pytest.mark.parametrize("clip", [1.0, float("inf")])
def test_two_tasks_match_mammoth(model, clip):
    si = SI(c=0.7, xi=0.3, clip=clip)
    state = initial_state(model, si)
    reference = MammothSI(state.params, si.c, si.xi, clip)
    step = jax.jit(make_train_step(model, si, optax.sgd(LR)))
    end_task = jax.jit(lambda s: si.end_task(s, None, jax.random.PRNGKey(0), model))
    for task in range(2):
        for i in range(4):
            batch = batch_of(10 * task + i)
            state, metrics = step(state, batch)
            np.testing.assert_allclose(float(metrics["loss"]), reference.observe(batch), rtol=1e-5)
        assert_close_to(state.params, reference.net)
        assert_close_to(state.algo.path, reference.small_omega, atol=1e-7)  # ω = lr g² = -g Δθ
        state = state._replace(algo=end_task(state))
        reference.end_task()
        assert_close_to(state.algo.penalty.importance, reference.big_omega)
        assert_close_to(state.algo.penalty.anchor, reference.checkpoint)
        chex.assert_trees_all_equal(state.algo.path, jax.tree.map(jnp.zeros_like, state.params))
    if clip == 1.0:
        assert reference.clipped > 0  # the clipping mattered in this run...
    assert float(metrics["penalty"]) > 0  # ...and so did the penalty on the second task


def test_path_integral_is_minus_gradient_times_displacement_under_momentum(model):
    """With momentum Δθ ≠ -lr g: ω sums -g_t Δθ_t, g the total loss's gradient at θ_t."""
    si = SI(c=2.0, xi=0.5, clip=float("inf"))
    tx = optax.sgd(LR, momentum=0.9)
    state = initial_state(model, si, tx, scale=1.0)
    state = state._replace(
        algo=state.algo._replace(
            penalty=QuadraticState(
                random_like(state.params, 1, positive=True), random_like(state.params, 2)
            )
        )
    )
    step = jax.jit(make_train_step(model, si, tx))
    grad = jax.jit(jax.grad(lambda p, s, b: si.loss(p, s, b, jax.random.PRNGKey(0), model)[0]))
    expected = jax.tree.map(jnp.zeros_like, state.params)
    for i in range(5):
        batch = batch_of(i)
        g = grad(state.params, state, batch)
        new_state, _ = step(state, batch)
        expected = jax.tree.map(
            lambda w, g, new, old: w - g * (new - old), expected, g, new_state.params, state.params
        )
        state = new_state
    chex.assert_trees_all_close(state.algo.path, expected, rtol=1e-4, atol=1e-8)


def test_penalty_has_no_half_and_is_zero_on_the_first_task(model):
    si = SI(c=3.0)
    state = initial_state(model, si, scale=1.0)
    theta = random_like(state.params, 3)
    assert float(si.penalty(theta, state, None, None, model)[0]) == 0.0  # Ω zeros before task 1
    importance, anchor = random_like(state.params, 4, positive=True), random_like(state.params, 5)
    state = state._replace(algo=state.algo._replace(penalty=QuadraticState(importance, anchor)))
    value = si.penalty(theta, state, None, None, model)[0]
    expected = 3.0 * sum(
        float(jnp.sum(o * (t - a) ** 2))
        for o, t, a in zip(*map(jax.tree.leaves, (importance, theta, anchor)))
    )
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    grads = jax.grad(lambda p: si.penalty(p, state, None, None, model)[0])(theta)
    chex.assert_trees_all_close(
        grads, jax.tree.map(lambda o, t, a: 6.0 * o * (t - a), importance, theta, anchor), rtol=1e-5
    )


def test_loss_gradient_is_clipped_entrywise_and_its_value_is_not(model):
    state = initial_state(model, SI(), scale=3.0)
    batch, rng = batch_of(7), jax.random.PRNGKey(0)
    loss = lambda clip: jax.value_and_grad(
        lambda p: SI(c=1.0, clip=clip).loss(p, state, batch, rng, model)[0]
    )(state.params)
    free_value, free = loss(float("inf"))
    value, clipped = loss(0.05)
    assert float(value) == float(free_value)
    chex.assert_trees_all_close(clipped, jax.tree.map(lambda g: jnp.clip(g, -0.05, 0.05), free))
    assert any(float(jnp.max(jnp.abs(g))) > 0.05 for g in jax.tree.leaves(free))


def test_end_task_accumulates_importance_and_moves_the_anchor(model):
    si = SI(xi=0.25)
    state = initial_state(model, si, scale=1.0)
    start = state.params
    omegas, ends = (
        [random_like(start, 10, positive=True), random_like(start, 11)],
        [random_like(start, 12), random_like(start, 13)],
    )
    expected = jax.tree.map(jnp.zeros_like, start)
    for omega, end in zip(omegas, ends):
        algo = state.algo._replace(path=omega)
        algo = si.end_task(state._replace(params=end, algo=algo), None, None, model)
        expected = jax.tree.map(
            lambda big, w, e, s: big + w / ((e - s) ** 2 + 0.25), expected, omega, end, start
        )
        chex.assert_trees_all_close(algo.penalty.importance, expected, rtol=1e-6)
        chex.assert_trees_all_equal(algo.penalty.anchor, end)
        chex.assert_trees_all_equal(algo.path, jax.tree.map(jnp.zeros_like, start))
        state, start = state._replace(params=end, algo=algo), end  # the next task starts here


def test_combined_with_er_uses_the_combined_gradient(model):
    both = combine(ER(capacity=8, replay_batch=4), SI(c=1.0))
    state = create_state(model, both, optax.sgd(LR), batch_of(0), seed=0)
    step = jax.jit(make_train_step(model, both, optax.sgd(LR)))
    for i in range(3):  # the buffer fills: ER's replay enters the gradient
        old = state
        state, metrics = step(state, batch_of(i))
    assert "si/penalty" in metrics
    rng = jax.random.PRNGKey(0)  # no dropout: the loss does not depend on it
    grads = jax.jit(jax.grad(lambda p, s: both.loss(p, s, batch_of(2), rng, model)[0]))(
        old.params, old
    )
    delta = jax.tree.map(jnp.subtract, state.params, old.params)
    expected = jax.tree.map(lambda w, g, d: w - g * d, old.algo["si"].path, grads, delta)
    chex.assert_trees_all_close(state.algo["si"].path, expected, rtol=1e-4, atol=1e-9)


def test_hyperparameters_may_be_traced(model):
    """A vmapped sweep rebinds c, xi and clip to tracers: nothing may branch on them."""
    state = initial_state(model, SI(), scale=1.0)
    batch = batch_of(1)

    def run(c, xi, clip):
        si = SI(c=c, xi=xi, clip=clip)
        step = make_train_step(model, si, optax.sgd(LR))
        s, _ = step(state, batch)
        s = s._replace(algo=si.end_task(s, None, None, model))
        s, metrics = step(s, batch)
        return s.algo, metrics["loss"]

    traced = jax.jit(jax.vmap(run))(
        jnp.array([0.5, 2.0]), jnp.array([0.9, 0.1]), jnp.array([1.0, 0.01])
    )
    for i, (c, xi, clip) in enumerate([(0.5, 0.9, 1.0), (2.0, 0.1, 0.01)]):
        concrete = jax.jit(run, static_argnums=(0, 1, 2))(
            c, xi, clip
        )  # Python floats, as a plain run has
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], traced), concrete, rtol=1e-5, atol=1e-8
        )


@pytest.mark.parametrize(
    "kwargs, match", [({"c": -1.0}, "c="), ({"xi": 0.0}, "xi="), ({"clip": 0.0}, "clip=")]
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SI(**kwargs)
    assert algorithms.make("si", c=0.5, xi=1.0) == SI(c=0.5, xi=1.0)


# ---------------- End to end ---------------------------------------------------------------------


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_si_keeps_task_zero_better_than_naive(tmp_path):
    naive = naive_result("permuted")
    si = loop.run(small_permuted_config("si", c=1.0, xi=1.0), tmp_path / "si", verbose=False)
    (naive_first, naive_second), (si_first, si_second) = naive.class_il[-1], si.class_il[-1]
    assert abs(si.class_il[0, 0] - naive.class_il[0, 0]) < 1e-6  # no penalty on task 0: same run
    assert si_first > naive_first + 0.04, (si_first, naive_first)  # less forgetting of task 0...
    assert si_second > naive_second - 0.04, (si_second, naive_second)  # ...and task 1 still learned
