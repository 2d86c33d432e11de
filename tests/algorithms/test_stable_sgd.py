"""Stable SGD: the per-task learning rate lr·γ^(t+offset) from the state, one compile for
every task, parity with torch's SGD+momentum at that rate, less forgetting than naive."""

from __future__ import annotations

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from small_streams import naive_result, small_permuted_config
from torch_reference import torch_mlp

from sequax.algorithms import StableSGD
from sequax.algorithms.losses import cross_entropy
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop
from sequax.engine.step import make_train_step

LR, DECAY = 0.1, 0.5


def batch(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "x": jnp.asarray(rng.uniform(size=(8, 6)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 3, 8)),
        "task": jnp.zeros(8, jnp.int32),
    }


def setup(algorithm, momentum=None):
    model = mlp(3, widths=(5,))
    tx = optax.sgd(LR, momentum=momentum)
    traces = []

    def counted(state, b):
        traces.append(None)
        return make_train_step(model, algorithm, tx)(state, b)

    state = create_state(model, algorithm, tx, batch(0), 0)
    return model, tx, jax.jit(counted), state, traces


@pytest.mark.parametrize("offset", [1, 0])
def test_update_is_lr_decay_power_task_times_gradient_one_compile(offset):
    algorithm = StableSGD(decay=DECAY, offset=offset, min_factor=1e-3)
    model, _, step, state, traces = setup(algorithm)
    b = batch(1)
    grads = jax.grad(
        lambda p: cross_entropy(model.apply(p, {}, b["x"], train=True)[0]["logits"], b["y"])
    )(state.params)
    for task in (0, 1, 3, 12):  # 12: 0.5**12 < 1e-3, the floor
        new, metrics = step(state._replace(task=jnp.int32(task)), b)
        factor = max(DECAY ** (task + offset), 1e-3)
        expected = jax.tree.map(
            lambda p, g, factor=factor: p - LR * factor * g, state.params, grads
        )
        jax.tree.map(
            lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7),
            new.params,
            expected,
        )
        assert float(metrics["lr_factor"]) == pytest.approx(factor, rel=1e-6)
    assert len(traces) == 1  # the task is a traced value: one compile serves every task


def test_matches_torch_sgd_with_momentum_at_the_decayed_rate():
    """Two tasks, two steps each, optimizer reset per task (the config's reset_each_task) =
    torch.optim.SGD(lr·γ^task, momentum=0.8) built anew per task (the reference code)."""
    algorithm = StableSGD(decay=DECAY)
    _, tx, step, state, _ = setup(algorithm, momentum=0.8)
    net = torch_mlp(jax.device_get(state.params))
    for task in (1, 2):
        state = state._replace(
            task=jnp.int32(task), opt_state=algorithm.optimizer(tx).init(state.params)
        )  # reset
        optimizer = torch.optim.SGD(net.parameters(), lr=LR * DECAY ** (task + 1), momentum=0.8)
        for s in range(2):
            b = batch(10 * task + s)
            state, _ = step(state, b)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(
                net(torch.tensor(np.asarray(b["x"]), dtype=torch.float64)),
                torch.tensor(np.asarray(b["y"]), dtype=torch.long),
            ).backward()
            optimizer.step()
    theirs = torch_mlp(jax.device_get(state.params))
    for ours, ref in zip(theirs.parameters(), net.parameters()):
        np.testing.assert_allclose(ours.detach().numpy(), ref.detach().numpy(), atol=1e-6)


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="decay"):
        StableSGD(decay=1.5)
    with pytest.raises(ValueError, match="offset"):
        StableSGD(offset=-1)


def forgetting(result) -> float:
    return float(result.class_il[0, 0] - result.class_il[1, 0])


def test_forgets_less_than_naive_on_two_permuted_tasks():
    config = small_permuted_config("stable_sgd", decay=0.4, offset=0)  # task 1 at lr·0.4
    config.model.dropout = 0.25
    with tempfile.TemporaryDirectory() as workdir:
        stable = loop.run(config, workdir, verbose=False)
    naive = naive_result("permuted")
    assert forgetting(stable) < forgetting(naive) - 0.02, (forgetting(stable), forgetting(naive))
    assert np.mean(stable.class_il[-1]) > np.mean(naive.class_il[-1])
