"""GEM (`sequax.algorithms.gem`, `projection.gem_project`, the in-jit QP) against references.

The QP solver is checked against scipy (NNLS after a change of variables) in float64; the
projection against `project2cone2` as the reference code writes it (numpy, float64), solved
by quadprog (the reference's own solver) and by scipy; the whole step against mammoth's
`Gem.observe` in PyTorch float64: one gradient per stored task's memory, the current
gradient, the constraint check, the projection and one SGD step.
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
from scipy import optimize
from small_streams import naive_result, small_split_config
from torch_reference import torch_mlp

from sequax import algorithms
from sequax.algorithms import GEM
from sequax.algorithms.gem import GEMState
from sequax.algorithms.losses import cross_entropy, forward_cross_entropy
from sequax.algorithms.projection import gem_project, solve_nonnegative_qp
from sequax.core.models import from_linen, mlp
from sequax.core.state import create_state
from sequax.core.task_data import task_arrays
from sequax.engine import loop
from sequax.engine.step import make_train_step

CLASSES, LR, PER_TASK = 10, 0.1, 6


# ---------------- References -------------------------------------------------------------------


def scipy_nonnegative_qp(P, c):
    """argmin_{u >= 0} u'Pu/2 + c'u as NNLS: with P = LL', it is |L'u + L^-1 c|^2/2 + const."""
    L = np.linalg.cholesky(P)
    return optimize.nnls(L.T, -np.linalg.solve(L, c), maxiter=100 * len(c))[0]


def scipy_solve_qp(P, a, C, b):
    """quadprog.solve_qp's contract (min v'Pv/2 - a'v s.t. C'v >= b) for C = I, by scipy."""
    assert np.array_equal(C, np.eye(len(a)))
    return (scipy_nonnegative_qp(P, P @ b - a) + b,)


def quadprog_solve_qp(P, a, C, b):
    quadprog = pytest.importorskip(
        "quadprog", reason="quadprog (the reference's solver) is in the test extra"
    )
    return quadprog.solve_qp(P, a, C, b)


def project2cone2(gradient, memories, margin, eps, solve_qp):
    """The reference code's `project2cone2` (numpy, float64); memories: [tasks, p]."""
    memories_np = np.asarray(memories, np.float64)
    gradient_np = np.asarray(gradient, np.float64).reshape(-1)
    n_rows = memories_np.shape[0]
    self_prod = np.dot(memories_np, memories_np.transpose())
    self_prod = 0.5 * (self_prod + self_prod.transpose()) + np.eye(n_rows) * eps
    grad_prod = np.dot(memories_np, gradient_np) * -1
    G = np.eye(n_rows)
    h = np.zeros(n_rows) + margin
    v = solve_qp(self_prod, grad_prod, G, h)[0]
    return np.dot(v, memories_np) + gradient_np


SOLVERS = {"quadprog": quadprog_solve_qp, "scipy": scipy_solve_qp}


# ---------------- The QP solver ----------------------------------------------------------------


def random_qp(rng, n: int, p: int, scale: float, margin: float = 0.5):
    """GEM's QP after v = margin + u: P = MM' + 1e-3 I, c = Mg + P margin."""
    M = scale * rng.normal(size=(n, p))
    g = rng.normal(size=p)
    P = M @ M.T + 1e-3 * np.eye(n)
    return P, M @ g + P @ np.full(n, margin), M, g


MAX_N = 20


def padded(P, c, dtype=np.float64):
    """An n-variable problem inside a MAX_N one, the rest masked out (one compiled solver)."""
    n = len(c)
    P_full, c_full = np.eye(MAX_N), np.zeros(MAX_N)
    P_full[:n, :n], c_full[:n] = P, c
    return jnp.asarray(P_full, dtype), jnp.asarray(c_full, dtype), jnp.arange(MAX_N) < n


def test_solver_matches_scipy_up_to_twenty_constraints():
    """Exact (float64) on random problems, well and badly conditioned (p < n: rank-deficient)."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        solve = jax.jit(solve_nonnegative_qp)
        uncapped = jax.jit(lambda P, c, m: solve_nonnegative_qp(P, c, m, max_iterations=10_000))
        mixed = 0
        for trial in range(200):
            n = 1 + trial % MAX_N
            P, c, _, _ = random_qp(
                rng, n, int(rng.choice([3, 30, 300])), float(rng.choice([0.01, 1.0, 10.0]))
            )
            problem = padded(P, c)
            u = np.asarray(solve(*problem))
            expected = scipy_nonnegative_qp(P, c)
            np.testing.assert_allclose(
                u[:n], expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max())
            )
            assert np.all(u >= 0) and np.all(u[n:] == 0)
            np.testing.assert_array_equal(u, np.asarray(uncapped(*problem)))  # the cap never binds
            mixed += int(0 < (u[:n] > 0).sum() < n)
        assert mixed > 50  # many answers have variables both at and off their bound


def test_solver_leaves_masked_variables_out():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        solve = jax.jit(solve_nonnegative_qp)
        for _trial in range(20):
            P, c, _, _ = random_qp(rng, MAX_N, 100, 1.0)
            mask = rng.random(MAX_N) < 0.6
            u = np.asarray(solve(P, c, mask))
            assert np.all(u[~mask] == 0)
            sub = scipy_nonnegative_qp(P[np.ix_(mask, mask)], c[mask])
            np.testing.assert_allclose(u[mask], sub, rtol=1e-5, atol=1e-7)
        assert np.all(np.asarray(solve(P, c, np.zeros(MAX_N, bool))) == 0)


def test_solver_in_float32_gives_the_projection_to_1e5():
    """The step's precision: with many more parameters than tasks, g + M'v to ~1e-7 relative."""
    rng = np.random.default_rng(2)
    solve = jax.jit(solve_nonnegative_qp)
    for trial in range(40):
        n = 1 + trial % MAX_N
        P, c, M, g = random_qp(rng, n, 2000, float(rng.choice([0.01, 1.0, 10.0])))
        u = np.asarray(solve(*padded(P, c, np.float32)), np.float64)[:n]
        x, expected = g + M.T @ (u + 0.5), g + M.T @ (scipy_nonnegative_qp(P, c) + 0.5)
        assert np.linalg.norm(x - expected) <= 1e-5 * np.linalg.norm(g)


# ---------------- The projection against project2cone2 ----------------------------------------


SHAPES = {"Dense_0": {"bias": (7,), "kernel": (12, 7)}, "Dense_1": {"bias": (3,), "kernel": (7, 3)}}


def tree_of(flat, leading=()):
    """A two-layer pytree filled from a flat vector (or [tasks, p] matrix), in leaf order."""
    flat = np.asarray(flat)
    out, start = {}, 0
    for layer, leaves in SHAPES.items():
        out[layer] = {}
        for name, shape in leaves.items():
            size = int(np.prod(shape))
            out[layer][name] = jnp.asarray(
                flat[..., start : start + size].reshape(*leading, *shape), jnp.float32
            )
            start += size
    return out


def flat_of(tree, leading: int = 0):
    """The inverse of `tree_of` (jax.tree.leaves orders the keys as SHAPES does)."""
    leaves = jax.tree.leaves(tree)
    return np.concatenate(
        [np.asarray(a, np.float64).reshape(*np.shape(a)[:leading], -1) for a in leaves], -1
    )


P_SIZE = 12 * 7 + 7 + 7 * 3 + 3


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("seed", range(5))
def test_projection_matches_project2cone2(solver, seed):
    rng = np.random.default_rng(seed)
    tasks = 6
    seen = np.arange(tasks) < 1 + seed  # 1..5 stored tasks; the last row never
    memories = rng.normal(size=(tasks, P_SIZE))
    # Conflicts with the first stored task, agrees with the others: some dual variables sit on
    # their bound (the margin), the others above it.
    g = -memories[0] + memories[1:].sum(0) / 4 + 0.5 * rng.normal(size=P_SIZE)
    memories_tree = tree_of(memories, (tasks,))  # unseen rows hold garbage: the mask must drop it
    margin, eps = 0.5, 1e-3
    projected, violated = jax.jit(gem_project)(
        tree_of(g), memories_tree, jnp.asarray(seen), margin, eps
    )
    assert bool(violated)
    expected = project2cone2(g, memories[seen], margin, eps, SOLVERS[solver])
    np.testing.assert_allclose(flat_of(projected), expected, atol=1e-5 * np.linalg.norm(g))
    # The dual's optimality conditions: v >= margin, and the primal constraints hold up to
    # the ridge, M x + eps v >= 0 (exactly M x >= 0 where v > margin, complementarity).
    x = flat_of(projected)
    v = np.linalg.lstsq(memories[seen].T, x - g, rcond=None)[0]
    assert np.all(v >= margin - 1e-4)
    slack = memories[seen] @ x + eps * v
    assert np.all(slack >= -1e-4) and np.all(np.minimum(slack, v - margin) < 1e-3)
    assert v[0] > margin + 0.1  # the conflicting task's constraint is active
    if seen.sum() > 2:
        assert np.any(np.abs(v - margin) < 1e-4)  # and some bound too: the margin matters


def test_no_violation_leaves_the_gradient_unchanged():
    rng = np.random.default_rng(7)
    memories = rng.normal(size=(4, P_SIZE))
    seen = np.array([True, True, False, False])
    g = memories[:2].sum(0)  # <g, g_k> > 0 for both stored tasks
    memories[2] = -10 * g  # an unstored task's row: ignored
    assert np.all(memories[:2] @ g > 0) and memories[2] @ g < 0
    projected, violated = jax.jit(gem_project)(
        tree_of(g), tree_of(memories, (4,)), jnp.asarray(seen), 0.5, 1e-3
    )
    assert not bool(violated)
    chex.assert_trees_all_equal(projected, tree_of(g))


# ---------------- The step against mammoth's Gem.observe ----------------------------------------


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, size: int = PER_TASK):
    return random_batch(seed, size, CLASSES)


def state_with_tasks(algorithm, model, tasks):
    """A state whose memory holds `tasks` (a list of {"x", "y"} of PER_TASK rows) in order."""
    state = create_state(model, algorithm, optax.sgd(LR), batch_of(0), seed=0)
    memory, valid = state.algo.memory, state.algo.valid
    for t, task in enumerate(tasks):
        memory = jax.tree.map(lambda m, new, t=t: m.at[t].set(new), memory, task)
        valid = valid.at[t].set(True)
    return state._replace(algo=GEMState(memory, valid, jnp.asarray(len(tasks), jnp.int32)))


def torch_order(tree, leading: int = 0):
    """A flax MLP tree flattened in torch's parameter order (weight = kernel transposed, bias)."""
    out = []
    for name in sorted(tree, key=lambda n: int(n.split("_")[1])):
        kernel = np.asarray(tree[name]["kernel"], np.float64)
        out += [
            np.swapaxes(kernel, -1, -2).reshape(*kernel.shape[:leading], -1),
            np.asarray(tree[name]["bias"], np.float64).reshape(*kernel.shape[:leading], -1),
        ]
    return np.concatenate(out, -1)


def flat_grad(net, x, y):
    net.zero_grad()
    loss = F.cross_entropy(
        net(torch.from_numpy(np.array(x, np.float64))), torch.from_numpy(np.array(y, np.int64))
    )
    loss.backward()
    return loss.item(), torch.cat([p.grad.reshape(-1) for p in net.parameters()]).numpy().copy()


def mammoth_observe(params, batch, tasks, gamma):
    """Gem.observe in float64: (loss, grads_cs, g, projected?, parameters after SGD)."""
    net = torch_mlp(params)
    grads_cs = [flat_grad(net, task["x"], task["y"])[1] for task in tasks]
    loss, g = flat_grad(net, batch["x"], batch["y"])
    if not grads_cs:  # `if not self.buffer.is_empty()`
        return loss, None, False, torch_order(params) - LR * g
    grads_cs = np.stack(grads_cs)
    projected = bool((g @ grads_cs.T < 0).sum() != 0)
    if projected:
        g = project2cone2(g, grads_cs, gamma, 1e-3, quadprog_solve_qp)
    return loss, grads_cs, projected, torch_order(params) - LR * g


@pytest.mark.parametrize(
    "memory_kind, conflict", [("one_conflicts", True), ("both_conflict", True), ("same", False)]
)
def test_step_matches_mammoth_observe(model, memory_kind, conflict):
    """Two of three tasks stored. A memory holding the batch's images under shifted labels
    conflicts with the batch (asserted on the reference's dot products); "same": every
    memory is the batch itself (g_k = g, never projected)."""
    batch = batch_of(1)
    shifted = lambda k: {"x": batch["x"], "y": (batch["y"] + k) % CLASSES}
    tasks = {
        "one_conflicts": [shifted(1), {k: batch_of(2)[k] for k in ("x", "y")}],
        "both_conflict": [shifted(1), shifted(2)],
        "same": [shifted(0), shifted(0)],
    }[memory_kind]
    algorithm = GEM(capacity=3 * PER_TASK, num_tasks=3, gamma=0.5)
    state = state_with_tasks(algorithm, model, tasks)
    _, aux = jax.jit(lambda s: algorithm.loss(s.params, s, batch, jax.random.PRNGKey(3), model))(
        state
    )
    stepped, metrics = jax.jit(make_train_step(model, algorithm, optax.sgd(LR)))(state, batch)

    loss, grads_cs, projected, expected = mammoth_observe(state.params, batch, tasks, 0.5)
    assert projected is conflict
    g = flat_grad(torch_mlp(state.params), batch["x"], batch["y"])[1]
    assert (grads_cs @ g < 0).sum() == {"one_conflicts": 1, "both_conflict": 2, "same": 0}[
        memory_kind
    ]
    memories = torch_order(aux["tx_args"]["memories"], leading=1)
    np.testing.assert_allclose(memories[:2], grads_cs, rtol=1e-5, atol=1e-7)
    assert np.all(memories[2] == 0) and list(np.asarray(aux["tx_args"]["seen"])) == [
        True,
        True,
        False,
    ]
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(torch_order(stepped.params), expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(stepped.algo, state.algo)  # nothing is stored during a task


def test_empty_memory_trains_as_sgd(model):
    algorithm = GEM(capacity=3 * PER_TASK, num_tasks=3)
    state = state_with_tasks(algorithm, model, [])
    batch = batch_of(4)
    stepped, metrics = jax.jit(make_train_step(model, algorithm, optax.sgd(LR)))(state, batch)
    _, _, _, expected = mammoth_observe(state.params, batch, [], 0.5)
    np.testing.assert_allclose(torch_order(stepped.params), expected, rtol=1e-5, atol=1e-6)
    assert float(metrics["memory_ce"]) == 0.0


def test_gamma_and_eps_may_be_traced(model):
    """A vmapped sweep rebinds γ and eps to tracers: the step takes them without control flow."""
    batch = batch_of(1)
    tasks = [
        {"x": batch["x"], "y": (batch["y"] + 1) % CLASSES},
        {k: batch_of(2)[k] for k in ("x", "y")},
    ]
    algorithm = GEM(capacity=3 * PER_TASK, num_tasks=3)
    state = state_with_tasks(algorithm, model, tasks)
    gammas, epss = jnp.array([0.0, 2.0]), jnp.array([1e-3, 1e-2])

    def step_at(gamma, eps):
        swept = dataclasses.replace(algorithm, gamma=gamma, eps=eps)  # runs __post_init__
        return make_train_step(model, swept, optax.sgd(LR))(state, batch)[0].params

    swept = jax.jit(jax.vmap(step_at))(gammas, epss)
    step = jax.jit(
        lambda s, a: make_train_step(model, a, optax.sgd(LR))(s, batch)[0].params, static_argnums=1
    )
    results = [
        step(state, GEM(3 * PER_TASK, 3, float(gammas[i]), float(epss[i]))) for i in range(2)
    ]
    for i in range(2):
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], swept), results[i], rtol=1e-5, atol=1e-7
        )
    assert not np.allclose(torch_order(results[0]), torch_order(results[1]))  # γ matters


# ---------------- Memory gradients for the stored rows only ----------------------------------


class AllRowsGEM(GEM):
    """GEM as it was before `first_rows`: one gradient per row of the memory, all `num_tasks`
    rows vmapped (the rows not stored computed, then masked). The reference for the loop."""

    def loss(self, params, state, batch, rng, model):
        outputs, model_state, ce = forward_cross_entropy(
            model, params, state, batch["x"], batch["y"], rng
        )
        memory, valid = state.algo.memory, state.algo.valid

        def task_loss(p, x, y, rows, key):
            out, _ = model.apply(p, model_state, x, train=True, rng=key)
            return cross_entropy(out["logits"], y, rows)

        keys = jax.random.split(jax.random.fold_in(rng, 1), self.num_tasks)
        task_grad = jax.vmap(jax.value_and_grad(task_loss), in_axes=(None, 0, 0, 0, 0))
        task_ce, memories = task_grad(
            jax.lax.stop_gradient(params), memory["x"], memory["y"], valid, keys
        )
        seen = valid.any(axis=1)
        memory_ce = (task_ce * seen).sum() / jnp.maximum(seen.sum(), 1)
        aux = {
            "model_state": model_state,
            "metrics": {"ce": ce, "memory_ce": memory_ce},
            "outputs": outputs,
            "tx_args": {"memories": memories, "seen": seen},
        }
        return ce, aux


ROWS = 4  # tasks in these tests' memories


@pytest.fixture(scope="module")
def dropout_model():
    """Dropout makes every memory gradient depend on its row's key."""
    return mlp(CLASSES, widths=(16,), dropout=0.5)


def filled_state(algorithm, model, stored: int, seed: int = 0):
    """`stored` tasks of random memory (the last one half full); past num_tasks, none more."""
    state = create_state(model, algorithm, optax.sgd(LR), batch_of(0), seed=seed)
    memory, valid = state.algo.memory, state.algo.valid
    for t in range(min(stored, algorithm.num_tasks)):
        task = batch_of(100 * seed + t + 10)
        memory = {k: memory[k].at[t].set(task[k]) for k in ("x", "y")}
        size = PER_TASK // 2 if t == stored - 1 else PER_TASK
        valid = valid.at[t].set(np.arange(PER_TASK) < size)
    return state._replace(algo=GEMState(memory, valid, jnp.asarray(stored, jnp.int32)))


def loss_and_aux(algorithm, model):
    def loss(state, rng):
        ce, aux = algorithm.loss(state.params, state, batch_of(1), rng, model)
        return ce, aux["metrics"], aux["tx_args"]

    return loss


@pytest.mark.parametrize("stored", [0, 1, 2, ROWS, ROWS + 1])
def test_stored_rows_equal_all_rows(dropout_model, stored):
    """The loop over the stored rows gives the all-rows computation's loss, metrics and
    memory gradients (to float round-off), at every fill level and past num_tasks."""
    gem = GEM(capacity=ROWS * PER_TASK, num_tasks=ROWS)
    state = filled_state(gem, dropout_model, stored)
    rng = jax.random.PRNGKey(5)
    new = jax.jit(loss_and_aux(gem, dropout_model))(state, rng)
    old = jax.jit(loss_and_aux(AllRowsGEM(gem.capacity, ROWS), dropout_model))(state, rng)
    chex.assert_trees_all_close(new, old, rtol=1e-6, atol=1e-6)
    rows = min(stored, ROWS)
    memories = torch_order(new[2]["memories"], leading=1)
    assert np.all(memories[rows:] == 0) and np.all(np.abs(memories[:rows]).max(1) > 0)
    if stored:  # each row's dropout key matters, so the loop uses the same keys as before
        other = jax.jit(loss_and_aux(gem, dropout_model))(state, jax.random.PRNGKey(6))
        assert not np.allclose(memories[0], torch_order(other[2]["memories"], leading=1)[0])


def test_stored_rows_equal_all_rows_under_vmap(dropout_model):
    """Two runs vmapped as the engine does, holding 1 and 3 tasks: the loop runs to the larger
    count and the other run's extra row stays 0. Then one state shared by two keys (an
    unbatched count), and the whole train step, projection included."""
    gem = GEM(capacity=ROWS * PER_TASK, num_tasks=ROWS, gamma=0.5)
    old_gem = AllRowsGEM(gem.capacity, ROWS, gamma=0.5)
    states = [filled_state(gem, dropout_model, stored, seed) for seed, stored in ((0, 1), (1, 3))]
    runs = jax.tree.map(lambda *a: jnp.stack(a), *states)
    rngs = jax.random.split(jax.random.PRNGKey(7), 2)
    new = jax.jit(jax.vmap(loss_and_aux(gem, dropout_model)))(runs, rngs)
    old = jax.jit(jax.vmap(loss_and_aux(old_gem, dropout_model)))(runs, rngs)
    chex.assert_trees_all_close(new, old, rtol=1e-6, atol=1e-6)
    memories = torch_order(new[2]["memories"], leading=2)
    assert np.all(memories[0, 1:] == 0) and np.all(memories[1, 3:] == 0)
    assert np.all(np.abs(memories[0, :1]).max(-1) > 0)
    assert np.all(np.abs(memories[1, :3]).max(-1) > 0)

    shared = filled_state(gem, dropout_model, 2)
    new = jax.jit(jax.vmap(loss_and_aux(gem, dropout_model), in_axes=(None, 0)))(shared, rngs)
    old = jax.jit(jax.vmap(loss_and_aux(old_gem, dropout_model), in_axes=(None, 0)))(shared, rngs)
    chex.assert_trees_all_close(new, old, rtol=1e-6, atol=1e-6)

    batches = jax.tree.map(lambda *a: jnp.stack(a), batch_of(1), batch_of(2))
    new_state, new_metrics = jax.jit(jax.vmap(make_train_step(dropout_model, gem, optax.sgd(LR))))(
        runs, batches
    )
    old_state, old_metrics = jax.jit(
        jax.vmap(make_train_step(dropout_model, old_gem, optax.sgd(LR)))
    )(runs, batches)
    chex.assert_trees_all_close(new_metrics, old_metrics, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(new_state.params, old_state.params, rtol=1e-6, atol=1e-6)
    assert not np.allclose(new_state.params["Dense_0"]["kernel"], runs.params["Dense_0"]["kernel"])


class BatchNormMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        hidden = nn.Dense(16)(x.reshape(x.shape[0], -1))
        features = nn.relu(nn.BatchNorm(use_running_average=not train)(hidden))
        return {"logits": nn.Dense(CLASSES)(features), "features": features}


def test_a_model_state_takes_no_tangent_into_the_loop():
    """BatchNorm's statistics after the batch's forward depend on the parameters; the memory
    forwards read that model state, stopped, or the step's reverse mode would have to go
    through the loop (which it cannot). The step equals the all-rows one."""
    model = from_linen(BatchNormMLP(), CLASSES)
    gem = GEM(capacity=ROWS * PER_TASK, num_tasks=ROWS, gamma=0.5)
    state = filled_state(gem, model, 2)
    assert jax.tree.leaves(state.model_state)
    new_state, new_metrics = jax.jit(make_train_step(model, gem, optax.sgd(LR)))(state, batch_of(1))
    old_gem = AllRowsGEM(gem.capacity, ROWS, gamma=0.5)
    old_state, old_metrics = jax.jit(make_train_step(model, old_gem, optax.sgd(LR)))(
        state, batch_of(1)
    )
    chex.assert_trees_all_close(new_metrics, old_metrics, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(
        (new_state.params, new_state.model_state),
        (old_state.params, old_state.model_state),
        rtol=1e-6,
        atol=1e-6,
    )


# ---------------- The episodic memory --------------------------------------------------------


def task_of(t: int, size: int, capacity: int = 48):
    """A padded task whose images identify their example (pixel 0 = index + 1, 0 in padding)."""
    x = np.zeros((size, 4, 4, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(size) + 1
    return task_arrays(x, np.full(size, 2 * t), np.full(size, t), capacity)


def ids(x):
    return sorted(round(float(v) * 255) - 1 for v in np.asarray(x)[:, 0, 0, 0])


def test_end_task_stores_one_row_per_task(model):
    algorithm = GEM(capacity=3 * PER_TASK + 2, num_tasks=3)  # PER_TASK per task, 2 slots unused
    state = create_state(model, algorithm, optax.sgd(LR), batch_of(0), seed=0)
    assert algorithm.init(state.params, {}, batch_of(0), None).memory["x"].shape == (
        3,
        PER_TASK,
        4,
        4,
        1,
    )
    end_task = jax.jit(lambda s, d, k: algorithm.end_task(s, d, k, model))
    algo = state.algo
    for t, size in enumerate((43, 29, 4, 40)):  # the fourth task is past num_tasks: not stored
        algo = end_task(state._replace(algo=algo), task_of(t, size), jax.random.PRNGKey(t))
        assert int(algo.stored) == t + 1
    valid = np.asarray(algo.valid)
    assert valid[:2].all() and list(valid[2]) == [True] * 4 + [False] * (PER_TASK - 4)
    for t, size in enumerate((43, 29)):
        stored = ids(algo.memory["x"][t])
        assert len(set(stored)) == PER_TASK and all(0 <= i < size for i in stored)
        assert np.all(np.asarray(algo.memory["y"][t]) == 2 * t)
    assert ids(algo.memory["x"][2][:4]) == [0, 1, 2, 3]  # a small task stores all it has
    assert float(jnp.abs(algo.memory["x"][2][4:]).max()) == 0.0  # and no padding


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_tasks": 0}, "num_tasks"),
        ({"num_tasks": 19}, "num_tasks"),
        ({"gamma": -0.1}, "gamma"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GEM(**{"capacity": 18, "num_tasks": 3, **kwargs})
    assert algorithms.make("gem", capacity=50, num_tasks=5, gamma=1.0) == GEM(50, 5, 1.0)


# ---------------- End to end -------------------------------------------------------------------


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_gem_beats_naive_on_split_mnist(tmp_path):
    naive = naive_result("split")
    gem = loop.run(
        small_split_config("gem", capacity=100, num_tasks=5, gamma=0.5),
        tmp_path / "gem",
        verbose=False,
    )
    naive_acc, gem_acc = naive.summary["class_il"]["acc"], gem.summary["class_il"]["acc"]
    # Naive forgets every earlier task in class-IL (about 1/5); GEM's projections keep each
    # stored task's loss from rising, so the earlier tasks survive.
    assert naive_acc < 0.3 and naive.class_il[-1, 0] < 0.05
    assert gem_acc > naive_acc + 0.4, (gem_acc, naive_acc)
    assert gem.class_il[-1, 0] > 0.6
