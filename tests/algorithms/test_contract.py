"""The contract every continual-learning algorithm is held to, run over `algorithms.REGISTRY`.

Every algorithm, present and future, is added to `sequax.algorithms.REGISTRY` and is thereby
tested here with no further code: it is an `Algorithm`, a frozen dataclass of Python values
only; its train step jits; the state's structure, shapes and dtypes survive `update` and
`end_task`; two tasks of different sizes cause no retrace; and the same seed gives the same
state bit for bit. Give a new algorithm small hyper-parameters in `SMALL` if its defaults
are large (a replay buffer of thousands, say); otherwise its defaults are used.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sequax import algorithms
from sequax.core.protocol import model_for
from sequax.core.models import mlp
from sequax.core.state import STREAM_TASK, create_state, stream_key
from sequax.engine.step import epoch_order, make_run_steps, make_train_step, steps_per_epoch
from sequax.core.task_data import gather_batch, task_arrays

SMALL = {
    "er": {"capacity": 16, "replay_batch": 4},
    "agem": {"capacity": 16, "replay_batch": 4, "num_tasks": 2},
    "gem": {"capacity": 16, "num_tasks": 2},
    "ewc": {"lam": 1.0, "fisher_batch": 8},
    "icarl": {"capacity": 16, "replay_batch": 4, "feature_dim": 16},
    "gdumb": {"capacity": 16, "epochs": 2, "batch_size": 4},
    "er_ace": {"capacity": 16, "replay_batch": 4},
    "lamaml": {"capacity": 16, "replay_batch": 4, "glances": 2},
    "mc_sgd": {
        "num_tasks": 2,
        "per_class": 2,
        "num_classes": 4,
        "line_samples": 2,
        "line_batch": 4,
    },
    "hat": {"num_tasks": 2},
    "kcl": {"num_tasks": 2, "coreset_size": 4, "classes_per_task": 2, "num_features": 16},
}
NAMES = sorted(algorithms.REGISTRY)
BATCH_SIZE = 8
CAPACITY = 48  # both tasks padded to this, as the loop does
TASK_SIZES = (43, 29)  # different sizes: the compiled programs must not care


def build(name: str):
    return algorithms.make(name, **SMALL.get(name, {}))


def tiny_task(t: int, size: int):
    """Task t of a two-task class-IL stream of 4x4 images: classes {2t, 2t+1}."""
    rng = np.random.default_rng(t)
    x = rng.integers(0, 256, (size, 4, 4, 1), dtype=np.uint8)
    y = 2 * t + rng.integers(0, 2, size)
    return task_arrays(x, y, np.full(size, t), CAPACITY)


@pytest.fixture(scope="module")
def tasks():
    return [tiny_task(t, n) for t, n in enumerate(TASK_SIZES)]


class Harness(NamedTuple):
    """One algorithm's compiled pieces, built once per module and shared by the tests."""

    algorithm: object
    model: object
    tx: object
    init: object  # jitted (example, seed) -> CLState
    train_step: object  # the pure step
    run_steps: object  # jitted run_steps over a counted train_step
    end_task: object  # jitted (state, data, key) -> algo
    step_traces: list  # one entry per trace of the step inside run_steps


@functools.cache
def harness(name: str) -> Harness:
    algorithm = build(name)
    model = model_for(algorithm, mlp(10, widths=(16,)))  # HAT's gated MLP; the MLP otherwise
    tx = optax.sgd(0.1)
    train_step = make_train_step(model, algorithm, tx)
    traces = []

    def counted_step(state, batch):
        traces.append(None)
        return train_step(state, batch)

    return Harness(
        algorithm=algorithm,
        model=model,
        tx=tx,
        init=jax.jit(lambda b, seed: create_state(model, algorithm, tx, b, seed)),
        train_step=train_step,
        run_steps=make_run_steps(counted_step, BATCH_SIZE),
        end_task=jax.jit(lambda s, d, k: algorithm.end_task(s, d, k, model)),
        step_traces=traces,
    )


def initial_state(name: str, tasks, seed: int = 0):
    return harness(name).init(gather_batch(tasks[0], jnp.arange(BATCH_SIZE)), seed)


def end_of_task(name, state, data, t: int):
    key = stream_key(state.key, STREAM_TASK, t)
    return state._replace(algo=harness(name).end_task(state, data, key))


def signature(tree):
    """Structure plus (shape, dtype, weak_type) of every leaf: what decides a retrace."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(jnp.shape(a), jnp.result_type(a), jax.typeof(a).weak_type) for a in leaves]


def assert_same_layout(before, after):
    assert jax.tree.structure(before) == jax.tree.structure(after)
    chex.assert_trees_all_equal_shapes_and_dtypes(before, after)
    assert signature(before) == signature(after)


@pytest.mark.parametrize("name", NAMES)
def test_is_a_frozen_dataclass_of_python_values(name):
    algorithm = build(name)
    assert isinstance(algorithm, algorithms.Algorithm)
    assert dataclasses.is_dataclass(algorithm)
    with pytest.raises(dataclasses.FrozenInstanceError):
        algorithm.some_new_attribute = 1
    for field in dataclasses.fields(algorithm):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(algorithm, field.name, getattr(algorithm, field.name))
        for leaf in jax.tree.leaves(getattr(algorithm, field.name)):
            # Arrays on a (static) algorithm would be baked into the compiled step.
            assert isinstance(leaf, (bool, int, float, str)), (field.name, type(leaf))
    hash(algorithm)  # usable as a static argument
    assert algorithm == build(name)


@pytest.mark.parametrize("name", NAMES)
def test_step_jits_and_state_layout_is_stable(name, tasks):
    h = harness(name)
    state = initial_state(name, tasks)
    initial = jax.tree.map(np.asarray, state)  # host copy: the step below does not donate
    step = jax.jit(h.train_step)
    batch = gather_batch(tasks[0], jnp.arange(BATCH_SIZE))
    stepped, metrics = step(state, batch)
    assert_same_layout(state, stepped)
    assert int(stepped.step) == 1
    assert jnp.shape(metrics["loss"]) == () and np.isfinite(float(metrics["loss"]))
    # The step learned something: the parameters moved.
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(initial.params), jax.tree.leaves(stepped.params))
    )
    ended = end_of_task(name, stepped, tasks[0], 0)
    assert_same_layout(state, ended)
    next_batch = gather_batch(tasks[1], jnp.arange(BATCH_SIZE))
    again, _ = step(ended._replace(task=jnp.asarray(1, jnp.int32)), next_batch)
    assert_same_layout(state, again)


@pytest.mark.parametrize("name", NAMES)
def test_two_tasks_do_not_retrace(name, tasks):
    h = harness(name)
    chex.clear_trace_counter()

    # The single jitted step, over both tasks' batches and across end_task.
    step = jax.jit(chex.assert_max_traces(h.train_step, n=1))
    end_task = jax.jit(
        chex.assert_max_traces(lambda s, d, k: h.algorithm.end_task(s, d, k, h.model), n=1)
    )
    state = initial_state(name, tasks)
    for t, data in enumerate(tasks):
        state = state._replace(task=jnp.asarray(t, jnp.int32))
        for i in range(3):
            state, _ = step(state, gather_batch(data, jnp.arange(i, i + BATCH_SIZE)))
        state = state._replace(algo=end_task(state, data, stream_key(state.key, STREAM_TASK, t)))

    # The engine's on-device loop: run_steps, traced at most once whatever the task size.
    state = initial_state(name, tasks)
    for t, data in enumerate(tasks):
        state = state._replace(task=jnp.asarray(t, jnp.int32))
        order = epoch_order(state.key, state.step, data.size, CAPACITY)
        steps = steps_per_epoch(TASK_SIZES[t], BATCH_SIZE)
        state, _ = h.run_steps(state, data, order, np.int32(0), np.int32(steps))
        if t == 0:
            traced = len(h.step_traces)
            assert traced > 0
        state = end_of_task(name, state, data, t)
    assert len(h.step_traces) == traced, "the second task retraced the step"
    assert h.run_steps._cache_size() == 1
    assert int(state.step) == sum(steps_per_epoch(n, BATCH_SIZE) for n in TASK_SIZES)


def train_two_tasks(name, tasks, seed: int):
    state = initial_state(name, tasks, seed)
    for t, data in enumerate(tasks):
        state = state._replace(task=jnp.asarray(t, jnp.int32))
        order = epoch_order(state.key, state.step, data.size, CAPACITY)
        state, _ = harness(name).run_steps(state, data, order, np.int32(0), np.int32(3))
        state = end_of_task(name, state, data, t)
    return jax.tree.map(np.asarray, state)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_the_seed(name, tasks):
    first = train_two_tasks(name, tasks, seed=0)
    second = train_two_tasks(name, tasks, seed=0)
    chex.assert_trees_all_equal(first, second)  # bit for bit
    other = train_two_tasks(name, tasks, seed=1)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(other.params))
    )


@pytest.mark.parametrize("name", NAMES)
def test_host_round_trip_resumes_bit_for_bit(name, tasks):
    """The state is plain data: copied to numpy and back, training continues identically."""
    run_steps = harness(name).run_steps
    data = tasks[0]
    state = initial_state(name, tasks)
    order = epoch_order(state.key, state.step, data.size, CAPACITY)
    state, _ = run_steps(state, data, order, np.int32(0), np.int32(2))
    host = jax.tree.map(np.array, state)  # a copy, taken before `state` is donated below
    continued, _ = run_steps(state, data, order, np.int32(2), np.int32(4))
    from_host, _ = run_steps(jax.tree.map(jnp.asarray, host), data, order, np.int32(2), np.int32(4))
    chex.assert_trees_all_equal(
        jax.tree.map(np.asarray, continued), jax.tree.map(np.asarray, from_host)
    )
