"""The optimizer built from config: SGD's weight decay and momentum as torch.optim.SGD."""

from __future__ import annotations

import numpy as np
import optax
import pytest
import torch

from sequax.engine.build import ConfigError, build_optimizer


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 5e-4), (0.9, 1e-2), (0.0, 0.0)])
def test_sgd_matches_torch(momentum, weight_decay):
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]
    tx = build_optimizer(dict(name="sgd", lr=0.1, momentum=momentum, weight_decay=weight_decay))
    params, state = {"w": theta}, None
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": g}, state, params)
        params = optax.apply_updates(params, updates)

    w = torch.nn.Parameter(torch.from_numpy(theta.copy()))
    opt = torch.optim.SGD([w], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for g in grads:
        w.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_allclose(params["w"], w.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_negative_weight_decay_is_a_config_error():
    with pytest.raises(ConfigError, match="config.optimizer.weight_decay=-1"):
        build_optimizer(dict(name="sgd", lr=0.1, weight_decay=-1.0))
