"""Riemannian Walk (`sequax.algorithms.rwalk`) against a PyTorch reference of the paper's rules.

The reference (float64) takes, every step, the unregularised cross-entropy's gradient with a
separate backward pass (as the authors' `vanilla_gradients_vars` and FACIL's `unreg_grads`),
steps SGD on the regularised loss, then updates the EWC++ Fisher and the KL-normalised path
score; at each task's end it applies the ReLU, the first-task rule, the averaging and the
min-max normalisation of the authors' code.
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
from sequax.algorithms import ER, RWalk, combine
from sequax.algorithms.quadratic_penalty import QuadraticState
from sequax.algorithms.rwalk import minmax
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop
from sequax.engine.step import make_train_step

CLASSES, LR, MOMENTUM = 10, 0.1, 0.9


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, size: int = 6):
    return random_batch(seed, size, CLASSES)


def random_like(tree, seed, positive=False):
    rng = np.random.default_rng(seed)
    draw = rng.random if positive else rng.standard_normal
    return jax.tree.map(lambda a: jnp.asarray(draw(jnp.shape(a)), jnp.float32), tree)


# ---------------- The PyTorch reference ----------------------------------------------------------


def as_tree(tensors):
    w0, b0, w1, b1 = (t.detach().numpy() for t in tensors)
    return {"Dense_0": {"kernel": w0.T, "bias": b0}, "Dense_1": {"kernel": w1.T, "bias": b1}}


class ReferenceRWalk:
    def __init__(self, params, lam, alpha, epsilon):
        self.net = []
        for name in ("Dense_0", "Dense_1"):  # torch's weight is the flax kernel transposed
            self.net.append(
                torch.tensor(np.asarray(params[name]["kernel"], np.float64).T, requires_grad=True)
            )
            self.net.append(
                torch.tensor(np.asarray(params[name]["bias"], np.float64), requires_grad=True)
            )
        self.lam, self.alpha, self.epsilon = lam, alpha, epsilon
        zeros = lambda: [torch.zeros_like(p) for p in self.net]
        self.anchor = [p.detach().clone() for p in self.net]
        self.importance, self.fisher, self.path, self.score, self.tasks = (
            zeros(),
            zeros(),
            zeros(),
            zeros(),
            0,
        )
        self.momentum = zeros()

    def observe(self, batch):
        w0, b0, w1, b1 = self.net
        x = torch.from_numpy(np.asarray(batch["x"], np.float64)).reshape(len(batch["y"]), -1)
        logits = torch.relu(x @ w0.T + b0) @ w1.T + b1
        ce = F.cross_entropy(logits, torch.from_numpy(np.asarray(batch["y"], np.int64)))
        vanilla = torch.autograd.grad(ce, self.net, retain_graph=True)
        penalty = sum(
            (o * (p - a) ** 2).sum() for o, p, a in zip(self.importance, self.net, self.anchor)
        )
        grads = torch.autograd.grad(ce + self.lam * penalty, self.net)
        with torch.no_grad():
            for p, g, m, f, s, v in zip(
                self.net, grads, self.momentum, self.fisher, self.path, vanilla
            ):
                m.copy_(
                    MOMENTUM * m + g
                )  # torch.optim.SGD(momentum=MOMENTUM), as optax.sgd's trace
                delta = -LR * m
                p += delta
                f.copy_(self.alpha * v**2 + (1 - self.alpha) * f)
                s -= v * delta / (0.5 * f * delta**2 + self.epsilon)

    def end_task(self):
        for s, r in zip(self.score, self.path):
            s.copy_(r.clamp(min=0) if self.tasks == 0 else 0.5 * (s + r.clamp(min=0)))

        def normalised(tensors):
            low, high = min(t.min() for t in tensors), max(t.max() for t in tensors)
            return [(t - low) / (high - low + 1e-32) for t in tensors]

        self.importance = [f + s for f, s in zip(normalised(self.fisher), normalised(self.score))]
        self.anchor = [p.detach().clone() for p in self.net]
        self.path = [torch.zeros_like(p) for p in self.net]
        self.tasks += 1


def test_two_tasks_match_the_reference(model):
    rwalk, tx = (
        RWalk(lam=0.8, alpha=0.6, epsilon=1e-2),
        optax.sgd(LR, momentum=MOMENTUM),
    )  # Δθ ≠ -lr g
    state = create_state(model, rwalk, tx, batch_of(0), seed=0)
    reference = ReferenceRWalk(state.params, rwalk.lam, rwalk.alpha, rwalk.epsilon)
    step = jax.jit(make_train_step(model, rwalk, tx))
    end_task = jax.jit(lambda s: rwalk.end_task(s, None, jax.random.PRNGKey(0), model))
    close = lambda tree, tensors, atol=1e-6: chex.assert_trees_all_close(
        jax.tree.map(np.asarray, tree), as_tree(tensors), rtol=1e-5, atol=atol
    )
    negative = False
    for task in range(3):
        for i in range(5):
            batch = batch_of(10 * task + i)
            state, metrics = step(state, batch)
            reference.observe(batch)
        close(state.params, reference.net)
        close(state.algo.fisher, reference.fisher, atol=1e-9)
        close(state.algo.path, reference.path, atol=1e-5)
        negative = negative or any(float(s.min()) < 0 for s in reference.path)
        state = state._replace(algo=end_task(state))
        reference.end_task()
        close(state.algo.penalty.importance, reference.importance)
        close(state.algo.penalty.anchor, reference.anchor)
        close(state.algo.score, reference.score, atol=1e-5)
        assert int(state.algo.tasks) == task + 1
    assert float(metrics["penalty"]) > 0
    assert negative  # some path scores were negative: the ReLU mattered


def test_end_task_rules(model):
    """ReLU, first task taken whole, later tasks averaged, Fisher kept, [0, 1] normalisation."""
    rwalk = RWalk()
    state = create_state(model, rwalk, optax.sgd(LR), batch_of(0), seed=0)
    fisher = random_like(state.params, 1, positive=True)
    paths = [random_like(state.params, 2), random_like(state.params, 3)]  # both signs
    score = jax.tree.map(lambda r: jnp.maximum(r, 0), paths[0])
    algo = state.algo._replace(fisher=fisher)
    end_task = jax.jit(lambda s: rwalk.end_task(s, None, None, model))
    for t, path in enumerate(paths):
        theta = random_like(state.params, 10 + t)
        algo = end_task(state._replace(params=theta, algo=algo._replace(path=path)))
        if t == 1:
            score = jax.tree.map(lambda s, r: 0.5 * (s + jnp.maximum(r, 0)), score, path)
        chex.assert_trees_all_close(algo.score, score, rtol=1e-6)
        chex.assert_trees_all_equal(algo.fisher, fisher)  # the running Fisher is never reset
        chex.assert_trees_all_equal(algo.path, jax.tree.map(jnp.zeros_like, path))
        chex.assert_trees_all_equal(algo.penalty.anchor, theta)
        normalised = [minmax(fisher), minmax(score)]
        for part in normalised:
            leaves = jax.tree.leaves(part)
            assert min(float(jnp.min(x)) for x in leaves) == 0.0
            np.testing.assert_allclose(max(float(jnp.max(x)) for x in leaves), 1.0, rtol=1e-6)
        chex.assert_trees_all_close(
            algo.penalty.importance, jax.tree.map(jnp.add, *normalised), rtol=1e-6
        )
        assert int(algo.tasks) == t + 1


def test_penalty_has_no_half_and_is_zero_on_the_first_task(model):
    rwalk = RWalk(lam=2.5)
    state = create_state(model, rwalk, optax.sgd(LR), batch_of(0), seed=0)
    theta = random_like(state.params, 4)
    assert float(rwalk.penalty(theta, state, None, None, model)[0]) == 0.0
    importance, anchor = random_like(state.params, 5, positive=True), random_like(state.params, 6)
    state = state._replace(algo=state.algo._replace(penalty=QuadraticState(importance, anchor)))
    expected = 2.5 * sum(
        float(jnp.sum(o * (t - a) ** 2))
        for o, t, a in zip(*map(jax.tree.leaves, (importance, theta, anchor)))
    )
    np.testing.assert_allclose(
        float(rwalk.penalty(theta, state, None, None, model)[0]), expected, rtol=1e-5
    )


def test_combined_with_er_the_fisher_sees_er_loss_only(model):
    """Under combine, g = the combined gradient minus RWalk's own penalty: ER's loss gradient."""
    er, rwalk = ER(capacity=8, replay_batch=4), RWalk(lam=3.0, alpha=0.7)
    both = combine(er, rwalk)
    state = create_state(model, both, optax.sgd(LR), batch_of(0), seed=0)
    penalty = QuadraticState(
        random_like(state.params, 7, positive=True), jax.tree.map(lambda p: p + 0.05, state.params)
    )
    algo = {
        "er": er.update(state.algo["er"], state, batch_of(1, 8), {}, jax.random.PRNGKey(1)),
        "rwalk": state.algo["rwalk"]._replace(penalty=penalty),
    }
    state = state._replace(algo=algo)
    batch = batch_of(2)
    er_grads = jax.jit(
        jax.grad(lambda p, s: er.loss(p, s, batch, jax.random.PRNGKey(0), model)[0])
    )(state.params, state._replace(algo=algo["er"]))
    new_state, metrics = jax.jit(make_train_step(model, both, optax.sgd(LR)))(state, batch)
    assert float(metrics["rwalk/penalty"]) > 0  # the penalty was in the step's gradient...
    # ...but not in the Fisher: F = alpha * g_ER^2 from F = 0.
    chex.assert_trees_all_close(
        new_state.algo["rwalk"].fisher,
        jax.tree.map(lambda g: 0.7 * g**2, er_grads),
        rtol=1e-4,
        atol=1e-9,
    )


def test_hyperparameters_may_be_traced(model):
    """A vmapped sweep rebinds lam, alpha and epsilon to tracers: nothing may branch on them."""
    state = create_state(model, RWalk(), optax.sgd(LR), batch_of(0), seed=0)

    def run(lam, alpha, epsilon):
        rwalk = RWalk(lam=lam, alpha=alpha, epsilon=epsilon)
        step = make_train_step(model, rwalk, optax.sgd(LR))
        s, _ = step(state, batch_of(1))
        s = s._replace(algo=rwalk.end_task(s, None, None, model))
        s, metrics = step(s, batch_of(2))
        return s.algo, metrics["loss"]

    traced = jax.jit(jax.vmap(run))(
        jnp.array([0.5, 2.0]), jnp.array([0.9, 0.2]), jnp.array([1e-3, 1e-1])
    )
    for i, values in enumerate([(0.5, 0.9, 1e-3), (2.0, 0.2, 1e-1)]):
        concrete = jax.jit(run, static_argnums=(0, 1, 2))(
            *values
        )  # Python floats, as a plain run has
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], traced), concrete, rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": -1.0}, "lam="),
        ({"alpha": 0.0}, "alpha="),
        ({"alpha": 1.5}, "alpha="),
        ({"epsilon": 0.0}, "epsilon="),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RWalk(**kwargs)
    assert algorithms.make("rwalk", lam=0.5) == RWalk(lam=0.5)


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_rwalk_keeps_task_zero_better_than_naive(tmp_path):
    naive = naive_result("permuted")
    rwalk = loop.run(small_permuted_config("rwalk", lam=1.0), tmp_path / "rwalk", verbose=False)
    (naive_first, naive_second), (rwalk_first, rwalk_second) = (
        naive.class_il[-1],
        rwalk.class_il[-1],
    )
    assert abs(rwalk.class_il[0, 0] - naive.class_il[0, 0]) < 1e-6  # no penalty on task 0: same run
    assert rwalk_first > naive_first + 0.04, (
        rwalk_first,
        naive_first,
    )  # less forgetting of task 0...
    assert rwalk_second > naive_second - 0.04, (
        rwalk_second,
        naive_second,
    )  # ...and task 1 still learned
