"""MIR (`sequax.algorithms.mir`): the contract, the retrieval's math, and a PyTorch
transcription of the reference's `retrieve_replay_update` (optimass/Maximally_Interfered_Retrieval,
`mir.py`, with `utils.get_future_step_parameters`).

The reference keeps its words: the incoming mean cross-entropy's `backward()`, the gradient
vector, the virtual network `θ - lr * g`, `pre_loss` and `post_loss` under `no_grad`,
`scores = post_loss - pre_loss`, `sort(descending=True)[1][:buffer_batch_size]`, and the
replayed cross-entropy's `backward()` adding to the incoming one's gradient.
"""

from __future__ import annotations

import copy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from batches import random_batch
from small_streams import small_split_config
from torch_reference import assert_gradient_is_naives, assert_mlp_grads_match, torch_mlp

from sequax import testing
from sequax.algorithms import Naive
from sequax.algorithms.mir import (
    MIR,
    MIRState,
    interference,
    most_interfered,
    sample_candidates,
    virtual_step,
)
from sequax.algorithms.reservoir import (
    ClassBalancedState,
    ReservoirState,
    reservoir_add,
    reservoir_init,
)
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop
from sequax.engine.experiment import from_config

BATCH, REPLAY, SUBSAMPLE, CAPACITY, CLASSES, LR = 6, 4, 8, 16, 10, 0.1


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def batch_of(seed: int, labels):
    return random_batch(seed, len(labels), labels=labels)


def state_with(algorithm, model, *, past, current, task):
    """A state at task `task` whose buffer was offered `past` examples of task `task - 1` and
    then `current` of task `task`, with candidates drawn as `update` draws them."""
    state = create_state(model, algorithm, optax.sgd(LR), batch_of(0, [0] * BATCH), seed=0)
    algo = state.algo
    for i, (count, t) in enumerate([(past, task - 1), (current, task)]):
        if count:
            fill = batch_of(10 + i, np.arange(count) % CLASSES)
            on_task = state._replace(task=jnp.asarray(t, jnp.int32))
            algo = algorithm.update(algo, on_task, fill, {}, jax.random.PRNGKey(5 + i))
    return state._replace(task=jnp.asarray(task, jnp.int32), algo=algo)


# ---------------- The contract -----------------------------------------------------------------


# The contract suite runs over the registry (`tests/algorithms/test_contract.py`, "mir").


def test_hyperparameters_are_checked():
    for kwargs in ({"replay_batch": 0}, {"replay_batch": 9, "subsample": 8}):
        with pytest.raises(ValueError, match="replay_batch"):
            MIR(capacity=16, **kwargs)
    with pytest.raises(ValueError, match="subsample"):
        MIR(capacity=16, subsample=17)
    with pytest.raises(ValueError, match="lr"):
        MIR(lr=0.0)


# ---------------- The retrieval's math --------------------------------------------------------


def test_interference_of_a_linear_model_at_zero():
    """A linear model at zero parameters, an incoming batch of one image u, all of class 0:
    g = (p - onehot(0)) ⊗ (u, 1) with p uniform, so the virtual step moves candidate v's
    logits by k * (onehot(0) - 1/C), k = lr * (u·v + 1). Its loss goes from log C to
    log(e^k + C - 1) - [y = 0] k: up for every other class, down for class 0."""
    linear = mlp(CLASSES, widths=())
    u = jnp.full((1, 4, 4, 1), 0.25)
    params, model_state = linear.init(jax.random.PRNGKey(0), u)
    params = jax.tree.map(jnp.zeros_like, params)
    incoming_x, incoming_y = jnp.repeat(u, 3, axis=0), jnp.zeros((3,), jnp.int32)
    rng = jax.random.PRNGKey(1)
    virtual = virtual_step(linear, params, model_state, incoming_x, incoming_y, rng, LR)

    scale = jnp.asarray([0.0, 1.0, 2.0, 0.5, 3.0, 1.5])[:, None, None, None]
    candidates = {"x": scale * jnp.ones((1, 4, 4, 1)), "y": jnp.asarray([1, 0, 2, 0, 3, 9])}
    scores = interference(linear, params, virtual, model_state, candidates, rng)

    uv = np.asarray(scale).ravel() * 0.25 * 16
    k = LR * (uv + 1.0)
    expected = np.log(np.exp(k) + CLASSES - 1) - np.log(CLASSES)
    expected -= np.where(np.asarray(candidates["y"]) == 0, k, 0.0)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)  # float32 differences
    # The 3 most interfered: the non-zero classes, the larger u·v first.
    index, replayed = most_interfered(scores, jnp.ones(6, bool), 3)
    np.testing.assert_array_equal(index, [4, 2, 5])
    assert bool(replayed.all())


def test_most_interfered_ranks_valid_candidates_only():
    scores = jnp.asarray([0.5, 3.0, -1.0, 2.0, 9.0, 0.1])
    valid = jnp.asarray([True, True, True, True, False, True])
    index, replayed = most_interfered(scores, valid, 3)
    np.testing.assert_array_equal(index, [1, 3, 0])  # 9.0 is an empty slot
    assert bool(replayed.all())
    # Fewer valid candidates than the replay batch: all of them, the rest marked invalid.
    index, replayed = most_interfered(scores, jnp.asarray([0, 0, 1, 0, 0, 1], bool), 3)
    np.testing.assert_array_equal(index[:2], [5, 2])
    np.testing.assert_array_equal(replayed, [True, True, False])


def test_candidates_exclude_the_current_task():
    example = {"x": jnp.zeros((4, 4, 1)), "y": jnp.zeros((), jnp.int32), "task": jnp.int32(0)}
    buffer = reservoir_init(CAPACITY, example)
    for t, count in enumerate([5, 4, 3]):  # 12 of 16 slots: 5 of task 0, 4 of task 1, 3 of 2
        batch = batch_of(t, [t] * count)
        items = {"x": batch["x"], "y": batch["y"], "task": jnp.full((count,), t, jnp.int32)}
        buffer = reservoir_add(buffer, items, jax.random.PRNGKey(t))
    sample = jax.jit(sample_candidates, static_argnums=1)
    for exclude, eligible in [(0, 7), (1, 8), (2, 9), (3, 12)]:
        for seed in range(3):
            rows, valid = sample(buffer, SUBSAMPLE, jax.random.PRNGKey(seed), exclude)
            assert int(valid.sum()) == min(eligible, SUBSAMPLE)
            tasks = np.asarray(rows["task"])[np.asarray(valid)]
            assert exclude not in tasks
            x = np.asarray(rows["x"])[np.asarray(valid)].reshape(int(valid.sum()), -1)
            assert len(np.unique(x, axis=0)) == len(x)  # without replacement


def test_update_and_start_task_draw_past_tasks_only(model):
    algorithm = MIR(CAPACITY, REPLAY, SUBSAMPLE)
    state = state_with(algorithm, model, past=0, current=12, task=0)
    assert int(state.algo.buffer.num_seen) == 12
    np.testing.assert_array_equal(state.algo.buffer.items["task"][:12], 0)
    assert not bool(state.algo.valid.any())  # only the current task is buffered: no replay
    # The next task starts: the candidates are drawn again, now from task 0.
    next_task = state._replace(task=jnp.asarray(1, jnp.int32))
    algo = algorithm.start_task(next_task, None, jax.random.PRNGKey(3), model)
    assert isinstance(algo, MIRState) and int(algo.valid.sum()) == SUBSAMPLE
    np.testing.assert_array_equal(algo.candidates["task"], 0)
    assert algorithm.end_task(next_task._replace(algo=algo), None, None, model) is algo


def test_first_task_is_naive(model):
    """No replay in the first task, however full the buffer (the reference's `task > 0`)."""
    algorithm = MIR(CAPACITY, REPLAY, SUBSAMPLE)
    state = state_with(algorithm, model, past=0, current=CAPACITY, task=0)
    batch, rng = batch_of(2, [3, 3, 2, 3, 2, 2]), jax.random.PRNGKey(0)
    assert_gradient_is_naives(algorithm, Naive(), state, batch, rng, model)


# ---------------- The buffer policy -------------------------------------------------------------


def test_default_state_structure_is_unchanged(model):
    """The buffer policies leave the default MIR state as it was (recorded runs, checkpoints):
    a plain `ReservoirState`."""
    state = create_state(
        model, MIR(CAPACITY, REPLAY, SUBSAMPLE), optax.sgd(LR), batch_of(0, [0] * BATCH), seed=0
    )
    batch = batch_of(0, [0] * BATCH)
    items = {
        "x": jnp.zeros((CAPACITY, *batch["x"].shape[1:]), jnp.float32),
        "y": jnp.zeros((CAPACITY,), jnp.int32),
        "task": jnp.zeros((CAPACITY,), jnp.int32),
    }
    candidates = jax.tree.map(lambda b: b[:SUBSAMPLE], items)
    expected = MIRState(
        ReservoirState(items, jnp.zeros((), jnp.int32)), candidates, jnp.zeros(SUBSAMPLE, bool)
    )
    assert type(state.algo.buffer) is ReservoirState
    assert jax.tree.structure(state.algo) == jax.tree.structure(expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(state.algo, expected)


def test_buffer_policy_is_checked(model):
    with pytest.raises(ValueError, match="buffer_policy='cbrs' is unknown") as error:
        MIR(CAPACITY, REPLAY, SUBSAMPLE, buffer_policy="cbrs")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="config.algorithm.buffer_classes"):
        MIR(CAPACITY, REPLAY, SUBSAMPLE, buffer_policy="class_balanced")
    # A class count other than the model's logits is caught when the step is traced.
    mir = MIR(CAPACITY, REPLAY, SUBSAMPLE, buffer_policy="class_balanced", buffer_classes=7)
    state = create_state(model, mir, optax.sgd(LR), batch_of(0, [0] * BATCH), seed=0)
    assert isinstance(state.algo.buffer, ClassBalancedState)
    with pytest.raises(ValueError, match="buffer_classes=10"):
        mir.loss(state.params, state, batch_of(1, [0] * BATCH), jax.random.PRNGKey(0), model)


def test_the_contract_with_a_class_balanced_buffer():
    mir = MIR(16, 4, 8, buffer_policy="class_balanced", buffer_classes=CLASSES)
    assert testing.check_algorithm(mir).method == "MIR"


def test_an_imbalanced_stream_leaves_a_balanced_buffer(model):
    """90 % of the stream is class 0 (the rest classes 1-4, over two tasks): the class-balanced
    buffer holds CAPACITY / 5 of each, and its candidates are still past-task examples only;
    the reservoir mirrors the stream."""
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(800) < 0.9, 0, rng.integers(1, 5, 800)).reshape(-1, 8)
    tasks = np.repeat([0, 1], len(labels) // 2)
    x = jnp.asarray(rng.random((len(labels), 8, 4, 4, 1)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), len(labels))

    def run(algorithm):
        state = create_state(model, algorithm, optax.sgd(LR), batch_of(0, [0] * 8), seed=0)

        def step(algo, inputs):
            x, y, task, key = inputs
            at = state._replace(task=task)
            return algorithm.update(algo, at, {"x": x, "y": y}, {}, key), None

        return jax.lax.scan(step, state.algo, (x, labels.astype(np.int32), tasks, keys))[0]

    balanced = jax.jit(run, static_argnums=0)(
        MIR(20, REPLAY, SUBSAMPLE, buffer_policy="class_balanced", buffer_classes=CLASSES)
    )
    stored_y = np.asarray(balanced.buffer.items["y"])
    np.testing.assert_array_equal(np.bincount(stored_y, minlength=CLASSES), [4] * 5 + [0] * 5)
    np.testing.assert_array_equal(balanced.buffer.stored, np.bincount(stored_y, minlength=CLASSES))
    assert int(balanced.buffer.num_seen) == labels.size
    assert bool(balanced.valid.any()) and not bool((balanced.candidates["task"] == 1).any())
    reservoir = jax.jit(run, static_argnums=0)(MIR(20, REPLAY, SUBSAMPLE))
    assert np.bincount(np.asarray(reservoir.buffer.items["y"]))[0] > 12


# ---------------- The PyTorch reference -------------------------------------------------------


def as_torch(a, dtype=torch.float64):
    return torch.from_numpy(np.array(a)).to(dtype)


def reference_step(net, input_x, input_y, bx, by, lr, buffer_batch_size):
    """`retrieve_replay_update` (method `mir_replay`) up to `opt.step()`, on the candidates
    `buffer.sample(args.subsample, exclude_task=task)` returned: (total loss, big_ind)."""
    loss_a = F.cross_entropy(net(input_x), input_y, reduction="none")
    loss = (loss_a).sum() / loss_a.size(0)
    net.zero_grad()
    loss.backward()
    # get_grad_vector / get_future_step_parameters: a copy stepped by -lr * grad.
    grad_dims = [param.data.numel() for param in net.parameters()]
    grad_vector = torch.cat([param.grad.data.view(-1) for param in net.parameters()])
    model_temp = copy.deepcopy(net)
    with torch.no_grad():
        offset = 0
        for param, numel in zip(model_temp.parameters(), grad_dims, strict=True):
            param.data = param.data - lr * grad_vector[offset : offset + numel].view_as(param)
            offset += numel
    with torch.no_grad():
        logits_track_pre = net(bx)
        logits_track_post = model_temp(bx)
        pre_loss = F.cross_entropy(logits_track_pre, by, reduction="none")
        post_loss = F.cross_entropy(logits_track_post, by, reduction="none")
        scores = post_loss - pre_loss
        big_ind = scores.sort(descending=True)[1][:buffer_batch_size]
    mem_x, mem_y = bx[big_ind], by[big_ind]
    replay_loss = F.cross_entropy(net(mem_x), mem_y)
    replay_loss.backward()
    return loss.item() + replay_loss.item(), big_ind.numpy()


@pytest.mark.parametrize("past", [CAPACITY, 3])  # 3: fewer past examples than the replay batch
def test_loss_gradient_and_selection_match_the_reference(model, past):
    algorithm = MIR(CAPACITY, REPLAY, SUBSAMPLE, lr=0.5)  # a large step: varied scores
    state = state_with(algorithm, model, past=past, current=5, task=1)
    params = jax.tree.map(lambda p: 3.0 * p + 0.05, state.params)  # confident, varied logits
    batch = batch_of(2, [4, 5, 5, 4, 4, 5])
    rng = jax.random.PRNGKey(0)

    value_and_grad = jax.value_and_grad(
        lambda p: algorithm.loss(p, state, batch, rng, model), has_aux=True
    )
    (loss, aux), grads = jax.jit(value_and_grad)(params)

    valid = np.asarray(state.algo.valid)
    assert valid.sum() == min(past, SUBSAMPLE)
    candidates = jax.tree.map(lambda a: np.asarray(a)[valid], state.algo.candidates)
    assert (candidates["task"] == 0).all()  # the current task's 5 are excluded
    net = torch_mlp(params)
    reference, big_ind = reference_step(
        net,
        as_torch(batch["x"]),
        as_torch(batch["y"], torch.long),
        as_torch(candidates["x"]),
        as_torch(candidates["y"], torch.long),
        algorithm.lr,
        REPLAY,
    )
    np.testing.assert_allclose(float(loss), reference, rtol=1e-5)
    assert_mlp_grads_match(grads, net, rtol=1e-5, atol=1e-7)

    # The same candidates chosen (valid candidates are the first rows, in the same order).
    virtual = virtual_step(model, params, state.model_state, batch["x"], batch["y"], rng, 0.5)
    scores = interference(model, params, virtual, state.model_state, state.algo.candidates, rng)
    index, replayed = most_interfered(scores, state.algo.valid, REPLAY)
    chosen = np.asarray(index)[np.asarray(replayed)]
    assert len(chosen) == min(past, REPLAY)
    assert set(chosen.tolist()) == set(big_ind.tolist())
    metrics = aux["metrics"]
    np.testing.assert_allclose(float(loss), float(metrics["ce"] + metrics["replay_ce"]), rtol=1e-6)
    scores = np.asarray(scores)
    np.testing.assert_allclose(float(metrics["interference"]), scores[chosen].mean(), rtol=1e-5)
    rest = np.setdiff1d(np.flatnonzero(valid), chosen)
    assert scores[chosen].min() >= scores[rest].max(initial=-np.inf)  # the largest ones


# ---------------- End to end -------------------------------------------------------------------


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_mir_trains_on_split_mnist_and_keeps_old_classes(tmp_path):
    config = small_split_config("er", capacity=100, replay_batch=10)  # its optimiser's lr: 0.05
    mir = MIR(capacity=100, replay_batch=10, subsample=50, lr=0.05)
    result = loop.run(from_config(config, algorithm=mir), tmp_path, verbose=False)
    assert result.class_il.shape == (5, 5)
    # Naive fine-tuning ends at 0.18 here, every old task at 0; ER (same buffer) at 0.67.
    # MIR measured 0.78, its old tasks 0.73 on average (deterministic on CPU).
    assert result.summary["class_il"]["acc"] > 0.6, result.summary
    assert result.class_il[-1, :-1].mean() > 0.5, result.class_il
