"""Experience replay (`sequax.algorithms.er`) and the registry's `make`."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from batches import random_batch

from sequax import algorithms
from sequax.algorithms import ER, Naive
from sequax.algorithms.reservoir import ClassBalancedState, ReplayState, ReservoirState
from sequax.core.models import mlp
from sequax.core.state import create_state

BATCH, REPLAY, CAPACITY = 6, 5, 8


@pytest.fixture(scope="module")
def model():
    return mlp(10, widths=(16,))


def batch_of(seed: int, size: int = BATCH):
    return random_batch(seed, size, 10)


def state_with_buffer(model, filled: int):
    """An ER state after `update` offered `filled` examples (all stored: filled <= capacity)."""
    er = ER(capacity=CAPACITY, replay_batch=REPLAY)
    state = create_state(model, er, optax.sgd(0.1), batch_of(0), seed=0)
    if filled:
        algo = er.update(state.algo, state, batch_of(1, filled), {}, jax.random.PRNGKey(5))
        state = state._replace(algo=algo)
    return er, state


def plain_cross_entropy(model, params, x, y):
    logits = np.asarray(model.apply(params, {}, x, train=True)[0]["logits"], np.float64)
    logits -= logits.max(1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -log_probs[np.arange(len(y)), np.asarray(y)].mean()


@pytest.mark.parametrize("filled", [0, 3, CAPACITY])  # empty, fewer than REPLAY, full
def test_loss_is_cross_entropy_over_batch_and_valid_replay(model, filled):
    er, state = state_with_buffer(model, filled)
    batch, rng = batch_of(2), jax.random.PRNGKey(7)
    loss, aux = jax.jit(lambda s: er.loss(s.params, s, batch, rng, model))(state)

    replay, valid = state.algo.replay, state.algo.valid  # the replay batch this step reads
    assert int(valid.sum()) == min(filled, REPLAY)
    x = jnp.concatenate([batch["x"], replay["x"][valid]])
    y = jnp.concatenate([batch["y"], replay["y"][valid]])
    np.testing.assert_allclose(
        float(loss), plain_cross_entropy(model, state.params, x, y), rtol=1e-5
    )
    np.testing.assert_allclose(float(aux["metrics"]["ce"]), float(loss))
    if filled == 0:
        np.testing.assert_allclose(
            float(loss), plain_cross_entropy(model, state.params, batch["x"], batch["y"]), rtol=1e-5
        )


def test_empty_buffer_gradient_equals_naive(model):
    er, state = state_with_buffer(model, 0)
    batch, rng = batch_of(3), jax.random.PRNGKey(0)
    er_grads = jax.jit(jax.grad(lambda p: er.loss(p, state, batch, rng, model)[0]))(state.params)
    naive_grads = jax.jit(jax.grad(lambda p: Naive().loss(p, state, batch, rng, model)[0]))(
        state.params
    )
    chex.assert_trees_all_close(er_grads, naive_grads, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("filled", [3, CAPACITY])
def test_update_stores_the_batch_and_draws_the_next_replay_from_it(model, filled):
    _, state = state_with_buffer(model, filled)
    offered = batch_of(1, filled)
    buffer = state.algo.buffer
    assert int(buffer.num_seen) == filled
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[:filled], buffer.items), offered)
    # The next replay batch: distinct stored examples, the valid rows first.
    valid = np.asarray(state.algo.valid)
    count = min(filled, REPLAY)
    np.testing.assert_array_equal(valid, np.arange(REPLAY) < count)
    replay_x = np.asarray(state.algo.replay["x"][:count]).reshape(count, -1)
    stored_x = np.asarray(offered["x"]).reshape(filled, -1)
    rows = [int(np.flatnonzero((stored_x == r).all(1))[0]) for r in replay_x]
    assert len(set(rows)) == count
    np.testing.assert_array_equal(
        np.asarray(state.algo.replay["y"][:count]), np.asarray(offered["y"])[rows]
    )


def test_default_state_structure_is_unchanged(model):
    """The buffer policies leave the default ER state as it was (recorded runs, checkpoints)."""
    state = create_state(
        model, ER(capacity=CAPACITY, replay_batch=REPLAY), optax.sgd(0.1), batch_of(0), seed=0
    )
    items = {k: jnp.zeros((CAPACITY, *v.shape[1:]), v.dtype) for k, v in batch_of(0).items()}
    replay = {k: v[:REPLAY] for k, v in items.items()}
    expected = ReplayState(
        ReservoirState(items, jnp.zeros((), jnp.int32)), replay, jnp.zeros(REPLAY, bool)
    )
    assert jax.tree.structure(state.algo) == jax.tree.structure(expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(state.algo, expected)


def test_buffer_policy_errors_are_one_line(model):
    with pytest.raises(ValueError, match="unknown") as error:
        ER(capacity=CAPACITY, replay_batch=REPLAY, buffer_policy="cbrs")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="config.algorithm.buffer_classes") as error:
        ER(capacity=CAPACITY, replay_batch=REPLAY, buffer_policy="class_balanced")
    assert "\n" not in str(error.value)
    # A class count other than the model's logits is caught when the step is traced.
    er = ER(CAPACITY, REPLAY, buffer_policy="class_balanced", buffer_classes=7)
    state = create_state(model, er, optax.sgd(0.1), batch_of(0), seed=0)
    assert isinstance(state.algo.buffer, ClassBalancedState)
    with pytest.raises(ValueError, match="buffer_classes=10"):
        er.loss(state.params, state, batch_of(1), jax.random.PRNGKey(0), model)


@pytest.mark.parametrize("replay_batch", [0, CAPACITY + 1])
def test_invalid_replay_batch_raises(replay_batch):
    with pytest.raises(ValueError, match="replay_batch"):
        ER(capacity=CAPACITY, replay_batch=replay_batch)


def test_make_unknown_name_is_one_line():
    with pytest.raises(ValueError) as error:
        algorithms.make("nope")
    message = str(error.value)
    assert "\n" not in message and "'nope'" in message
    assert all(name in message for name in algorithms.REGISTRY)


def test_make_unknown_hyperparameter_is_one_line():
    with pytest.raises(ValueError) as error:
        algorithms.make("er", capacity=10, replay_batch=2, nope=1)
    message = str(error.value)
    assert "\n" not in message and "nope" in message and "capacity" in message and "'er'" in message
    with pytest.raises(ValueError, match="known: \\(none\\)"):
        algorithms.make("naive", lam=1.0)


def test_make_builds_the_registered_class():
    er = algorithms.make("er", capacity=10, replay_batch=2)
    assert er == ER(capacity=10, replay_batch=2)
    assert set(algorithms.REGISTRY) >= {"naive", "joint", "er", "ewc"}
