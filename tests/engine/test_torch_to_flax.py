"""The torch zoo ResNet-18's weights in sequax's flax ResNet-18 (`engine.torch_bridge.to_flax`).

The flax network with the converted weights must compute the torch module's logits and
running statistics (reference: float64 torch eager, and the bridge's float32 forward that
evidence/torch_compare trains), and `resnet18(..., init_from="torch")` must start each key
from the weights the bridge draws for the torch network from that key, on MNIST-shaped
inputs (28x28x1, nf 8: torch_compare's networks).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from sequax import algorithms
from sequax.core.state import create_state
from sequax.engine.build import ConfigError, build_model, resnet18
from sequax.engine.step import make_train_step
from sequax.engine.torch_bridge import from_torch, zoo
from sequax.engine.torch_bridge.to_flax import resnet18_variables

torch.set_num_threads(1)  # a shared 2-core machine


def mnist_like(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 28, 28, 1)).astype(np.float32)


def max_error(ours, theirs) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)).max())


def test_converted_weights_give_the_torch_logits_in_train_and_eval():
    torch.manual_seed(1)
    net = zoo.resnet18_reduced(num_classes=10, nf=8, in_channels=1)
    x = mnist_like(6)
    model = resnet18(10, nf=8)
    params, state = resnet18_variables(net.state_dict())
    own = model.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, (params, state)) == jax.tree.map(
        jnp.shape, own
    )  # every tensor, no extra
    bridge = from_torch(net, x)
    bridge_params, bridge_state = bridge.init(jax.random.PRNGKey(0), x)  # the module's own weights
    reference = copy.deepcopy(net).double()
    apply = jax.jit(lambda p, s, x, train: model.apply(p, s, x, train=train), static_argnums=3)
    bridge_apply = jax.jit(
        lambda p, s, x, train: bridge.apply(p, s, x, train=train), static_argnums=3
    )
    for train in (True, False):  # train first: eval then reads the updated running statistics
        outputs, new_state = apply(params, state, x, train)
        bridged, bridge_state = bridge_apply(bridge_params, bridge_state, x, train)
        with torch.no_grad():
            logits = reference.train(train)(
                torch.from_numpy(x).permute(0, 3, 1, 2).double()
            ).numpy()
        assert max_error(outputs["logits"], logits) < 1e-5, train
        assert max_error(outputs["logits"], bridged["logits"]) < 1e-5, train
        assert max_error(outputs["features"], bridged["features"]) < 1e-5, train
        expected = resnet18_variables(reference.state_dict())[1]
        assert max(jax.tree.leaves(jax.tree.map(max_error, new_state, expected))) < 1e-6, train
        state = new_state


@pytest.mark.long  # two vmapped ResNet-18 inits through the bridge (10-20 s): pytest -m long
def test_init_from_torch_starts_each_key_from_the_bridge_draw_of_that_key():
    x = mnist_like(2)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    flax_init = jax.jit(jax.vmap(resnet18(10, nf=4, init_from="torch").init, (0, None)))(keys, x)
    net = zoo.resnet18_reduced(num_classes=10, nf=4, in_channels=1)
    params, state = jax.jit(jax.vmap(from_torch(net, x, reinit=True).init, (0, None)))(keys, x)
    for run in range(2):
        expected = resnet18_variables({k: v[run] for k, v in {**params, **state}.items()})
        ours = jax.tree.map(lambda v, run=run: np.asarray(v[run]), flax_init)
        np.testing.assert_equal(ours, jax.tree.map(np.asarray, expected))  # the same bits
    kernel = np.asarray(flax_init[0]["conv1"]["kernel"])
    assert not np.allclose(kernel[0], kernel[1])  # each key its own draw


@pytest.mark.long  # ResNet-18 steps on both paths (10-20 s); the weights' mapping: test above
def test_flax_and_bridge_train_steps_agree_from_the_same_weights():
    """Five SGD steps (batch 10) of both networks from one seed's weights stay within float32
    rounding of each other. (Later they part, as fast as the flax network parts from itself
    started 1e-6 away: training this network amplifies rounding, docs/torch_bridge.md.)"""
    x, y = mnist_like(50, seed=3), np.random.default_rng(3).integers(0, 10, 50).astype(np.int32)
    net = zoo.resnet18_reduced(num_classes=10, nf=4, in_channels=1)
    models = resnet18(10, nf=4, init_from="torch"), from_torch(net, x[:10], reinit=True)
    naive, tx = algorithms.make("naive"), optax.sgd(0.01)
    example = {"x": x[:10], "y": y[:10], "task": np.zeros(10, np.int32)}
    states = [create_state(m, naive, tx, example, 0) for m in models]
    steps = [jax.jit(make_train_step(m, naive, tx)) for m in models]
    for k in range(5):
        batch = {
            "x": x[10 * k : 10 * (k + 1)],
            "y": y[10 * k : 10 * (k + 1)],
            "task": np.zeros(10, np.int32),
        }
        states = [step(state, batch)[0] for step, state in zip(steps, states)]
    flax_state, bridge_state = states
    expected = resnet18_variables({**bridge_state.params, **bridge_state.model_state})
    errors = jax.tree.map(max_error, (flax_state.params, flax_state.model_state), expected)
    assert max(jax.tree.leaves(errors)) < 1e-5


def test_config_option_and_unknown_tensors():
    model = build_model({"name": "resnet18", "nf": 4, "init_from": "torch"}, 10)
    assert model.module is not None  # still the linen module: EWC's dense-layer Fisher reads it
    with pytest.raises(ConfigError, match="init_from"):
        build_model({"name": "resnet18", "nf": 4, "init_from": "jax"}, 10)
    with pytest.raises(ValueError, match="not a tensor of the reduced ResNet-18"):
        resnet18_variables({"features.0.weight": np.zeros((4, 1, 3, 3), np.float32)})
