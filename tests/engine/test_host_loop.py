"""`make_run_steps`' host loop (`engine.step.HostLoopSteps`): chosen for convolutional steps on
XLA:CPU, kept off for dense ones, and the same training as the `fori_loop` it replaces."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from sequax.algorithms import ER
from sequax.core.models import from_linen, mlp
from sequax.core.state import create_state
from sequax.core.task_data import task_arrays
from sequax.engine.step import epoch_order, make_run_steps, make_train_step

SIZE, BATCH = 40, 8


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        h = nn.relu(nn.Conv(4, (3, 3))(x)).reshape(x.shape[0], -1)
        return {"logits": nn.Dense(10)(h), "features": h}


def setup(model):
    rng = np.random.default_rng(0)
    data = task_arrays(
        rng.integers(0, 256, (SIZE, 6, 6, 1), dtype=np.uint8),
        rng.integers(0, 10, SIZE),
        np.zeros(SIZE),
        SIZE,
    )
    er, tx = ER(capacity=16, replay_batch=BATCH), optax.sgd(0.1)
    example = {
        "x": np.zeros((BATCH, 6, 6, 1), np.float32),
        "y": np.zeros(BATCH, np.int32),
        "task": np.zeros(BATCH, np.int32),
    }
    state = create_state(model, er, tx, example, 0, {})
    order = epoch_order(state.key, state.step, data.size, SIZE)
    return make_train_step(model, er, tx), state, data, order


def run_compiled(train_step, state, data, order, host_loop):
    run_steps = make_run_steps(train_step, BATCH, host_loop=host_loop)
    compiled = run_steps.lower(state, data, order, np.int32(0), np.int32(1)).compile()
    copy = jax.tree.map(lambda a: a.copy(), state)  # the state is donated
    return compiled, compiled(copy, data, order, np.int32(1), np.int32(SIZE // BATCH))


@pytest.mark.parametrize(
    "name, model, expect_host",
    [
        ("conv", from_linen(ConvNet(), 10), True),
        ("mlp", mlp(10, widths=(16,)), False),
    ],
)
def test_automatic_choice_and_same_training(name, model, expect_host):
    train_step, state, data, order = setup(model)
    chosen, (state_auto, _) = run_compiled(train_step, state, data, order, None)
    assert callable(chosen) and hasattr(chosen, "cost_analysis")  # what engine.loop reads
    assert (type(chosen).__name__ == "function") == (
        expect_host and jax.default_backend() == "cpu"
    ), name
    _, (state_loop, means_loop) = run_compiled(train_step, state, data, order, False)
    _, (state_host, means_host) = run_compiled(train_step, state, data, order, True)
    assert int(state_host.step) == int(state_loop.step) == SIZE // BATCH - 1  # steps 1..4
    assert not np.allclose(
        np.asarray(jax.tree.leaves(state_loop.params)[0]),
        np.asarray(jax.tree.leaves(state.params)[0]),
    )  # it trained
    chex.assert_trees_all_close(state_host.params, state_loop.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state_host.algo, state_loop.algo, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(means_host, means_loop, rtol=1e-5)
    chex.assert_trees_all_close(
        state_auto.params, state_host.params if expect_host else state_loop.params
    )
