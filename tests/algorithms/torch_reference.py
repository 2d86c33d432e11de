"""The flax MLP as a float64 torch network, for the methods' PyTorch reference tests."""

from __future__ import annotations

import numpy as np
import torch


def torch_mlp(params) -> torch.nn.Sequential:
    """The flax MLP `Dense_0 -> relu -> ... -> Dense_k` (params of `engine.models.mlp`) as
    `Flatten -> Linear -> ReLU -> ... -> Linear` in float64, with the same weights."""
    layers = []
    names = sorted(params, key=lambda n: int(n.split("_")[1]))
    for i, name in enumerate(names):
        kernel = np.asarray(params[name]["kernel"], np.float64)
        linear = torch.nn.Linear(*kernel.shape).double()
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T))
            linear.bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"], np.float64)))
        layers += [linear] + ([torch.nn.ReLU()] if i < len(names) - 1 else [])
    return torch.nn.Sequential(torch.nn.Flatten(), *layers)
