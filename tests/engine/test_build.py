"""The optimizer built from config: SGD's weight decay and momentum as torch.optim.SGD."""

from __future__ import annotations

import numpy as np
import optax
import pytest
import torch

from sequax.engine.build import ConfigError, build_optimizer


@pytest.mark.parametrize(
    "momentum, weight_decay, clip_norm",
    [(0.0, 5e-4, 0.0), (0.9, 1e-2, 0.0), (0.0, 0.0, 0.0), (0.9, 1e-2, 2.0), (0.0, 0.0, 100.0)],
)
def test_sgd_matches_torch(momentum, weight_decay, clip_norm):
    """Steps of the built optimizer against torch.optim.SGD; with clip_norm, torch's loop
    calls clip_grad_norm_ before each step (norm 2.0 clips these gradients, 100 does not)."""
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]
    tx = build_optimizer(
        dict(name="sgd", lr=0.1, momentum=momentum, weight_decay=weight_decay, clip_norm=clip_norm)
    )
    params, state = {"w": theta}, None
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": g}, state, params)
        params = optax.apply_updates(params, updates)

    w = torch.nn.Parameter(torch.from_numpy(theta.copy()))
    opt = torch.optim.SGD([w], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for g in grads:
        w.grad = torch.from_numpy(g.copy())
        if clip_norm:
            torch.nn.utils.clip_grad_norm_([w], clip_norm)
        opt.step()
    np.testing.assert_allclose(params["w"], w.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_negative_weight_decay_is_a_config_error():
    with pytest.raises(ConfigError, match="config.optimizer.weight_decay=-1"):
        build_optimizer(dict(name="sgd", lr=0.1, weight_decay=-1.0))


@pytest.mark.parametrize("clip_norm", [-1.0, True, "1"])
def test_bad_clip_norm_is_a_config_error(clip_norm):
    with pytest.raises(ConfigError, match="config.optimizer.clip_norm=.* must be a number >= 0"):
        build_optimizer(dict(name="sgd", lr=0.1, clip_norm=clip_norm))
