"""A-GEM (`sequax.algorithms.agem`, `projection.agem_project`) against a PyTorch reference.

The reference is mammoth's `AGem.observe` in float64: backward on the current batch, store
g; backward on the memory batch, store g_ref; if g . g_ref < 0 overwrite the gradient with
g - (g . g_ref / g_ref . g_ref) g_ref; one SGD step. Flax Dense kernels are [in, out], so
torch's weight is the kernel transposed. A-GEM-R (`memory="reservoir"`) is checked against
`AGemr.observe` (mammoth `models/agem_r.py`), whose reservoir buffer is filled after every step.
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
from small_streams import naive_result, small_split_config
from torch_reference import torch_mlp

from sequax import algorithms, testing
from sequax.algorithms import AGEM, EWC, combine
from sequax.algorithms.projection import agem_project, tree_vdot
from sequax.algorithms.reservoir import (
    ReplayState,
    ReservoirState,
    reservoir_add,
    reservoir_init,
    reservoir_sample,
)
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.core.task_data import task_arrays
from sequax.engine import loop
from sequax.engine.build import ConfigError
from sequax.engine.step import make_train_step

BATCH, CAPACITY, CLASSES, LR = 6, 8, 10, 0.1
LOSS_KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, size: int = BATCH):
    return random_batch(seed, size, CLASSES)


def state_with_memory(algorithm, model, memory=None):
    """A state whose buffer holds `memory` ({"x", "y"}, at most CAPACITY rows) in its first
    slots."""
    state = create_state(model, algorithm, optax.sgd(LR), batch_of(0), seed=0)
    if memory is None:
        return state
    n = memory["y"].shape[0]
    items = jax.tree.map(lambda b, m: b.at[:n].set(m), state.algo.items, memory)
    return state._replace(algo=ReservoirState(items, jnp.asarray(n, jnp.int32)))


# ---------------- The PyTorch reference ------------------------------------------------------


def flat_grad(net, x, y):
    """(mean cross-entropy, its gradient over all parameters as one vector), in float64."""
    net.zero_grad()
    loss = F.cross_entropy(
        net(torch.from_numpy(np.array(x, np.float64))), torch.from_numpy(np.array(y, np.int64))
    )
    loss.backward()
    return loss.item(), torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def mammoth_observe(params, batch, memory):
    """AGem.observe on a torch copy of `params`: (loss, g, g_ref, projected?, new parameters)."""
    net = torch_mlp(params)
    loss, g = flat_grad(net, batch["x"], batch["y"])
    _, g_ref = flat_grad(net, memory["x"], memory["y"])
    dot = torch.dot(g, g_ref)
    final = g - torch.dot(g, g_ref) / torch.dot(g_ref, g_ref) * g_ref if dot.item() < 0 else g
    with torch.no_grad():  # opt.step() of plain SGD
        params_after = torch.cat([p.reshape(-1) for p in net.parameters()]) - LR * final
    return loss, g, g_ref, dot.item() < 0, params_after.numpy()


def as_flat(tree):
    """A flax MLP pytree in torch's parameter order (weight = kernel transposed, then bias)."""
    out = []
    for name in sorted(tree, key=lambda n: int(n.split("_")[1])):
        out += [
            np.asarray(tree[name]["kernel"], np.float64).T.reshape(-1),
            np.asarray(tree[name]["bias"], np.float64),
        ]
    return np.concatenate(out)


@pytest.mark.parametrize(
    "memory_kind, stored, conflict",
    [("relabelled", CAPACITY, True), ("relabelled", 5, True), ("same", BATCH, False)],
)
def test_step_matches_mammoth_observe(model, memory_kind, stored, conflict):
    """One train step (reference gradient, projection, SGD) against mammoth in float64.

    "relabelled": the memory holds images of the batch under other labels (their gradients
    conflict); "same": the memory is the batch itself (g_ref = g, never projected). With 5
    stored, fewer than replay_batch rows are real: the reference uses exactly those.
    """
    batch = batch_of(1)
    source = batch_of(2, CAPACITY) if memory_kind == "relabelled" else batch
    memory = {"x": source["x"][:stored], "y": source["y"][:stored]}
    if memory_kind == "relabelled":
        memory["y"] = (memory["y"] + 3) % CLASSES
    algorithm = AGEM(capacity=CAPACITY, replay_batch=CAPACITY, num_tasks=2)
    state = state_with_memory(algorithm, model, memory)
    _, aux = jax.jit(lambda s: algorithm.loss(s.params, s, batch, jax.random.PRNGKey(3), model))(
        state
    )
    stepped, metrics = jax.jit(make_train_step(model, algorithm, optax.sgd(LR)))(state, batch)

    loss, g, g_ref, projected, expected = mammoth_observe(state.params, batch, memory)
    assert projected is conflict
    np.testing.assert_allclose(
        as_flat(aux["tx_args"]["reference"]), g_ref.numpy(), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(as_flat(stepped.params), expected, rtol=1e-5, atol=1e-6)
    # The update differs from plain SGD exactly when mammoth projected.
    naive = as_flat(state.params) - LR * g.numpy()
    assert np.allclose(as_flat(stepped.params), naive, atol=1e-6) is not conflict


def random_tree(seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(scale * rng.normal(size=(16, 5)), jnp.float32),
            "bias": jnp.asarray(scale * rng.normal(size=5), jnp.float32),
        },
        "Dense_1": {
            "kernel": jnp.asarray(scale * rng.normal(size=(5, 3)), jnp.float32),
            "bias": jnp.asarray(scale * rng.normal(size=3), jnp.float32),
        },
    }


@pytest.mark.parametrize("seed", range(6))
def test_projection_on_the_flat_vector(seed):
    """g~ = g - (g.r / r.r) r over all leaves at once (not per layer), only when g.r < 0."""
    g, r = random_tree(seed), random_tree(100 + seed, scale=0.3)
    projected, violated = jax.jit(agem_project)(g, r)
    g64, r64 = as_flat(g), as_flat(r)
    dot = g64 @ r64
    expected = g64 - dot / (r64 @ r64) * r64 if dot < 0 else g64
    assert bool(violated) == (dot < 0)
    np.testing.assert_allclose(as_flat(projected), expected, rtol=1e-5, atol=1e-6)
    if dot < 0:  # the memory's loss no longer increases to first order
        assert abs(float(tree_vdot(projected, r))) < 1e-5 * np.linalg.norm(g64) * np.linalg.norm(
            r64
        )
    else:
        chex.assert_trees_all_equal(projected, g)
    # An empty memory's reference is exactly zero: the gradient passes unchanged.
    zero = jax.tree.map(jnp.zeros_like, r)
    unchanged, violated = agem_project(g, zero)
    chex.assert_trees_all_equal(unchanged, g)
    assert not bool(violated)


def test_projection_happens_in_both_signs():
    """The seeds above cover both branches (a test of the test)."""
    signs = {bool(agem_project(random_tree(s), random_tree(100 + s, 0.3))[1]) for s in range(6)}
    assert signs == {True, False}


def test_empty_memory_trains_as_sgd(model):
    algorithm = AGEM(capacity=CAPACITY, replay_batch=4, num_tasks=2)
    state = state_with_memory(algorithm, model)
    batch = batch_of(4)
    _, aux = jax.jit(lambda s: algorithm.loss(s.params, s, batch, jax.random.PRNGKey(0), model))(
        state
    )
    assert all(float(jnp.abs(r).max()) == 0.0 for r in jax.tree.leaves(aux["tx_args"]["reference"]))
    assert float(aux["metrics"]["memory_ce"]) == 0.0
    stepped, _ = jax.jit(make_train_step(model, algorithm, optax.sgd(LR)))(state, batch)
    _, g, _, _, _ = mammoth_observe(state.params, batch, {"x": batch["x"], "y": batch["y"]})
    np.testing.assert_allclose(
        as_flat(stepped.params), as_flat(state.params) - LR * g.numpy(), rtol=1e-5, atol=1e-6
    )
    chex.assert_trees_all_equal(stepped.algo, state.algo)  # nothing is stored during a task


# ---------------- The episodic memory ------------------------------------------------------


def task_of(t: int, size: int, capacity: int = 48):
    """A padded task whose images identify their example (pixel 0 = index + 1, 0 in padding)."""
    x = np.zeros((size, 4, 4, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(size) + 1
    x[:, 1, 1, 0] = 100 + t
    return task_arrays(x, np.full(size, 2 * t), np.full(size, t), capacity)


def stored_ids(items, rows):
    return sorted(round(float(v) * 255) - 1 for v in items["x"][rows, 0, 0, 0])


def test_end_task_stores_capacity_over_num_tasks_examples(model):
    algorithm = AGEM(capacity=16, replay_batch=4, num_tasks=2)  # 8 examples per task
    state = create_state(model, algorithm, optax.sgd(LR), batch_of(0), seed=0)
    end_task = jax.jit(lambda s, d, k: algorithm.end_task(s, d, k, model))
    algo = end_task(state, task_of(0, 43), jax.random.PRNGKey(1))
    assert int(algo.num_seen) == 8
    first = stored_ids(algo.items, slice(0, 8))
    assert len(set(first)) == 8 and all(0 <= i < 43 for i in first)  # distinct, never padding
    assert np.all(np.asarray(algo.items["y"][:8]) == 0)
    assert float(jnp.abs(algo.items["x"][8:]).max()) == 0.0  # the rest still empty
    # The second task fills the rest in order; the first task's examples stay.
    algo2 = end_task(state._replace(algo=algo), task_of(1, 29), jax.random.PRNGKey(2))
    assert int(algo2.num_seen) == 16
    chex.assert_trees_all_equal(
        jax.tree.map(lambda a: a[:8], algo2.items), jax.tree.map(lambda a: a[:8], algo.items)
    )
    assert np.all(np.asarray(algo2.items["y"][8:]) == 2)
    assert len(set(stored_ids(algo2.items, slice(8, 16)))) == 8
    # A task smaller than its share stores all its examples and no padding.
    small = end_task(state, task_of(0, 5), jax.random.PRNGKey(3))
    assert int(small.num_seen) == 5 and stored_ids(small.items, slice(0, 5)) == [0, 1, 2, 3, 4]
    assert float(jnp.abs(small.items["x"][5:]).max()) == 0.0
    # The sample differs between keys.
    other = end_task(state, task_of(0, 43), jax.random.PRNGKey(4))
    assert stored_ids(other.items, slice(0, 8)) != first


def test_end_task_sample_is_uniform(model):
    """Each of a task's examples is stored with probability per_task / size."""
    from scipy import stats

    algorithm = AGEM(capacity=16, replay_batch=4, num_tasks=2)
    state = create_state(model, algorithm, optax.sgd(LR), batch_of(0), seed=0)
    data = task_of(0, 20)
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    items = jax.jit(
        jax.vmap(lambda k: algorithm.end_task(state, data, k, model).items["x"][:8, 0, 0, 0])
    )(keys)
    ids = np.rint(np.asarray(items) * 255).astype(int) - 1
    counts = np.bincount(ids.reshape(-1), minlength=20)
    assert counts.sum() == 2000 * 8 and len(counts) == 20
    assert stats.chisquare(counts).pvalue > 1e-4, counts


def test_combines_with_a_regulariser(model):
    """combine(AGEM, EWC): the combined objective's gradient is projected on A-GEM's reference."""
    algorithm = combine(AGEM(capacity=CAPACITY, replay_batch=CAPACITY, num_tasks=2), EWC(lam=1.0))
    assert len(algorithm.optimizer(optax.sgd(LR)).init({})) == 2  # A-GEM's projection, then SGD
    batch = batch_of(1)
    memory = {"x": batch_of(2, CAPACITY)["x"], "y": (batch_of(2, CAPACITY)["y"] + 3) % CLASSES}
    state = create_state(model, algorithm, optax.sgd(LR), batch, seed=0)
    items = jax.tree.map(lambda b, m: b.at[:CAPACITY].set(m), state.algo["agem"].items, memory)
    state = state._replace(
        algo={**state.algo, "agem": ReservoirState(items, jnp.asarray(CAPACITY, jnp.int32))}
    )
    rng = jax.random.PRNGKey(5)
    loss_and_grad = jax.value_and_grad(
        lambda p, s: algorithm.loss(p, s, batch, rng, model), has_aux=True
    )
    (_, aux), grads = jax.jit(loss_and_grad)(state.params, state)
    projected, violated = agem_project(grads, aux["tx_args"]["reference"])
    assert bool(violated)
    stepped, _ = jax.jit(make_train_step(model, algorithm, optax.sgd(LR)))(state, batch)
    chex.assert_trees_all_close(
        stepped.params, jax.tree.map(lambda p, g: p - LR * g, state.params, projected), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"replay_batch": 0}, "replay_batch"),
        ({"replay_batch": 17}, "replay_batch"),
        ({"num_tasks": 0}, "num_tasks"),
        ({"num_tasks": 17}, "num_tasks"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AGEM(**{"capacity": 16, "replay_batch": 4, **kwargs})
    assert algorithms.make("agem", capacity=50, replay_batch=20, num_tasks=5) == AGEM(50, 20, 5)


# ---------------- A-GEM-R: the reservoir memory -------------------------------------------------


def test_default_state_structure_is_unchanged(model):
    """memory="task_end" (the default) keeps the plain `ReservoirState` (recorded runs,
    checkpoints); "reservoir" holds a `ReplayState` (its next memory batch drawn in advance)."""
    batch = batch_of(0)
    items = {
        "x": jnp.zeros((CAPACITY, *batch["x"].shape[1:]), jnp.float32),
        "y": jnp.zeros((CAPACITY,), jnp.int32),
    }
    expected = ReservoirState(items, jnp.zeros((), jnp.int32))
    algo = state_with_memory(AGEM(CAPACITY, 4, 2), model).algo
    assert type(algo) is ReservoirState
    assert jax.tree.structure(algo) == jax.tree.structure(expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(algo, expected)
    agem_r = state_with_memory(AGEM(CAPACITY, 4, memory="reservoir"), model).algo
    replay = ReplayState(expected, jax.tree.map(lambda b: b[:4], items), jnp.zeros(4, bool))
    assert jax.tree.structure(agem_r) == jax.tree.structure(replay)
    chex.assert_trees_all_equal_shapes_and_dtypes(agem_r, replay)


def test_reservoir_memory_is_a_reservoir_fed_every_batch(model):
    """After each step the memory equals a reservoir fed the same batches (Algorithm R with
    the step's insertion key), and the next memory batch is drawn from it; a task's end leaves
    it alone."""
    algorithm = AGEM(capacity=CAPACITY, replay_batch=4, memory="reservoir")
    state = state_with_memory(algorithm, model)
    update = jax.jit(lambda algo, batch, key: algorithm.update(algo, state, batch, {}, key))
    algo = state.algo
    expected = reservoir_init(CAPACITY, {"x": batch_of(0)["x"][0], "y": batch_of(0)["y"][0]})
    for step in range(5):  # 30 examples through 8 slots: the reservoir overflows
        batch, key = batch_of(10 + step), jax.random.PRNGKey(step)
        algo = update(algo, batch, key)
        insert_key, sample_key = jax.random.split(key)
        expected = reservoir_add(expected, {"x": batch["x"], "y": batch["y"]}, insert_key)
        chex.assert_trees_all_equal(algo.buffer, expected)
        replay, valid = reservoir_sample(expected, 4, sample_key)
        chex.assert_trees_all_equal((algo.replay, algo.valid), (replay, valid))
    assert int(algo.buffer.num_seen) == 5 * BATCH and bool(algo.valid.all())
    ended = state._replace(algo=algo)
    assert algorithm.end_task(ended, task_of(0, 43), jax.random.PRNGKey(9), model) is algo
    # The step's memory batch is the one drawn after the previous insertion.
    stepped = state._replace(algo=algo)
    _, aux = algorithm.loss(stepped.params, stepped, batch_of(1), jax.random.PRNGKey(0), model)
    assert float(aux["metrics"]["memory_ce"]) > 0.0


def test_needs_boundaries_and_hyperparameters():
    assert AGEM().needs_boundaries.startswith("its memory is filled when a task ends")
    assert "config.algorithm.memory='reservoir'" in AGEM().needs_boundaries
    assert AGEM(memory="reservoir").needs_boundaries == ""
    with pytest.raises(ValueError, match="memory='task_ends' is unknown") as error:
        AGEM(memory="task_ends")
    assert "\n" not in str(error.value)
    # num_tasks only divides the task-end memory's capacity.
    assert AGEM(capacity=16, replay_batch=4, num_tasks=27, memory="reservoir").num_tasks == 27
    with pytest.raises(ValueError, match="replay_batch"):
        AGEM(capacity=16, replay_batch=17, memory="reservoir")
    assert algorithms.make("agem", memory="reservoir") == AGEM(memory="reservoir")


def test_the_contract_with_a_reservoir_memory():
    agem_r = AGEM(capacity=16, replay_batch=4, num_tasks=2, memory="reservoir")
    assert testing.check_algorithm(agem_r).method == "AGEM"


class MammothBuffer:
    """mammoth `utils/buffer.py`'s `Buffer` (examples and labels only), with its `reservoir`."""

    def __init__(self, buffer_size: int, seed: int):
        self.buffer_size, self.num_seen_examples = buffer_size, 0
        self.examples = self.labels = None
        self.rng = np.random.default_rng(seed)

    def is_empty(self) -> bool:
        return self.num_seen_examples == 0

    def reservoir(self) -> int:
        if self.num_seen_examples < self.buffer_size:
            return self.num_seen_examples
        rand = self.rng.integers(0, self.num_seen_examples + 1)
        return rand if rand < self.buffer_size else -1

    def add_data(self, examples, labels):
        if self.examples is None:
            shape = (self.buffer_size, *examples.shape[1:])
            self.examples = torch.zeros(shape, dtype=torch.float64)
            self.labels = torch.zeros((self.buffer_size,), dtype=torch.int64)
        for i in range(examples.shape[0]):
            index = self.reservoir()
            self.num_seen_examples += 1
            if index >= 0:
                self.examples[index], self.labels[index] = examples[i], labels[i]

    def get_data(self, size: int):
        filled = min(self.num_seen_examples, self.examples.shape[0])
        choice = self.rng.choice(filled, size=min(size, filled), replace=False)
        return self.examples[choice], self.labels[choice]


def agem_r_observe(net, opt, buffer, inputs, labels, minibatch_size):
    """`AGemr.observe`, line by line: (loss, the gradient `opt.step()` used, projected?)."""

    def store_grad():
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()]).clone()

    def overwrite_grad(vector):
        start = 0
        for p in net.parameters():
            p.grad.copy_(vector[start : start + p.numel()].view_as(p))
            start += p.numel()

    opt.zero_grad()
    loss = F.cross_entropy(net(inputs), labels)
    loss.backward()
    projected = False
    if not buffer.is_empty():
        grad_xy = store_grad()
        buf_inputs, buf_labels = buffer.get_data(minibatch_size)
        net.zero_grad()
        penalty = F.cross_entropy(net(buf_inputs), buf_labels)
        penalty.backward()
        grad_er = store_grad()
        dot_prod = torch.dot(grad_xy, grad_er)
        if dot_prod.item() < 0:  # models/agem.py's `project`
            g_tilde = grad_xy - torch.dot(grad_xy, grad_er) / torch.dot(grad_er, grad_er) * grad_er
            overwrite_grad(g_tilde)
            projected = True
        else:
            overwrite_grad(grad_xy)
    final = store_grad()
    opt.step()
    buffer.add_data(inputs, labels)  # not_aug_inputs: no augmentation here
    return loss.item(), final, projected


def test_agem_r_matches_mammoths_observe(model):
    """Three steps of A-GEM-R (reservoir filled after each step) against `AGemr.observe` in
    float64: an empty memory (plain SGD), a memory of class 0 against a batch of class 5
    (their gradients conflict: projected), and a memory of both with a mixed batch. The memory
    batch covers the whole buffer (replay_batch = capacity), so both draw the same examples."""
    capacity = 16
    algorithm = AGEM(capacity=capacity, replay_batch=capacity, memory="reservoir")
    first = random_batch(1, BATCH, labels=[0] * BATCH)
    batches = [first, random_batch(2, BATCH, labels=[5] * BATCH), batch_of(3)]
    state = create_state(model, algorithm, optax.sgd(LR), first, seed=0)
    train_step = jax.jit(make_train_step(model, algorithm, optax.sgd(LR)))
    grad_fn = jax.jit(
        jax.grad(lambda p, s, b: algorithm.loss(p, s, b, LOSS_KEY, model), has_aux=True)
    )
    net = torch_mlp(state.params)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    buffer = MammothBuffer(capacity, seed=0)
    flags = []
    for batch in batches:
        grads, aux = grad_fn(state.params, state, batch)
        projected, violated = agem_project(grads, aux["tx_args"]["reference"])
        inputs = torch.from_numpy(np.array(batch["x"], np.float64))
        labels = torch.from_numpy(np.array(batch["y"], np.int64))
        loss, final, was_projected = agem_r_observe(net, opt, buffer, inputs, labels, capacity)
        assert bool(violated) is was_projected
        flags.append(was_projected)
        np.testing.assert_allclose(as_flat(projected), final.numpy(), rtol=1e-5, atol=1e-7)
        state, metrics = train_step(state, batch)
        np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
        expected = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy()
        np.testing.assert_allclose(as_flat(state.params), expected, rtol=1e-5, atol=1e-6)
    assert flags[0] is False and flags[1] is True  # class 5 against a memory of class 0
    assert int(state.algo.buffer.num_seen) == buffer.num_seen_examples == 3 * BATCH


# ---------------- End to end -------------------------------------------------------------------


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_agem_keeps_task_zero_alive_on_split_mnist(tmp_path):
    naive = naive_result("split")
    agem = loop.run(
        small_split_config("agem", capacity=100, replay_batch=64, num_tasks=5),
        tmp_path / "agem",
        verbose=False,
    )
    naive_acc, agem_acc = naive.summary["class_il"]["acc"], agem.summary["class_il"]["acc"]
    # Naive forgets every earlier task in class-IL (about 1/5); A-GEM's projections keep the
    # memory's loss from rising, so the first task survives four later ones (naive: 0).
    assert naive_acc < 0.3 and naive.class_il[-1, 0] < 0.05
    assert agem_acc > naive_acc + 0.08, (agem_acc, naive_acc)
    assert agem.class_il[-1, 0] > 0.3


def test_agem_r_runs_on_a_task_free_stream(tmp_path):
    """With boundaries hidden (task -1, no end_task) A-GEM-R is accepted and fills its reservoir
    from every batch; the task-end memory is refused with the fix in the message."""
    config = small_split_config("agem", capacity=40, replay_batch=10, num_tasks=2)
    config.data.num_tasks, config.data.train_per_task, config.data.test_per_task = 2, 50, 20
    config.model.widths = (16,)
    config.training.task_free = True
    config.checkpoint.enabled = False
    with pytest.raises(ConfigError, match="config.algorithm.memory='reservoir'") as error:
        loop.run(config, tmp_path / "task_end", verbose=False)
    assert "\n" not in str(error.value)
    config.algorithm.memory = "reservoir"
    result = loop.run(config, tmp_path / "agem_r", verbose=False)
    assert int(result.state.algo.buffer.num_seen) == 100  # every training example offered
    assert result.class_il.shape == (2, 2) and np.isfinite(result.class_il).all()
