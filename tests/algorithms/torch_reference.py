"""The flax MLP as a float64 torch network, for the methods' PyTorch reference tests, and the
two checks those tests share: gradients against the torch network's, and a step that must
equal naive fine-tuning's."""

from __future__ import annotations

import chex
import jax
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


def assert_mlp_grads_match(grads, net: torch.nn.Sequential, rtol: float, atol: float) -> None:
    """The flax MLP's gradients (`Dense_i` kernels and biases) equal the torch network's
    `.grad`s after its `backward()` (torch's weight is the kernel transposed)."""
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        g = grads[f"Dense_{i}"]
        np.testing.assert_allclose(g["kernel"], linear.weight.grad.numpy().T, rtol=rtol, atol=atol)
        np.testing.assert_allclose(g["bias"], linear.bias.grad.numpy(), rtol=rtol, atol=atol)


def assert_gradient_is_naives(algorithm, naive, state, batch, rng, model) -> None:
    """`algorithm`'s loss has naive fine-tuning's gradient on this state and batch (e.g. a
    replay method during the first task)."""
    grad = jax.jit(
        jax.grad(lambda p, algo: algo.loss(p, state, batch, rng, model)[0], argnums=0),
        static_argnums=1,
    )
    chex.assert_trees_all_close(grad(state.params, algorithm), grad(state.params, naive), rtol=1e-6)
