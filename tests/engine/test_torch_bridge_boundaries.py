"""The torch bridge's gradients of clamp-type ops on their kinks, against torch's autograd.

Every input holds the boundary values themselves (0, ±1, ±3, 6, the clamp bounds, -0.0,
tied maxima in a pooling window or a reduced row) among ordinary ones. The reference is
float32 torch: these ops are piecewise linear, so the bridge and torch compute the same
float32 values and the gradients agree exactly (1e-6 allows for hardswish's quadratic piece).
The upstream gradient is a random weight per output element, so a gradient sent to the
wrong element, halved or dropped shows. engine/torch_bridge/boundaries.py documents each
convention (torch's tools/autograd/derivatives.yaml); docs/torch_bridge.md lists the ops.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sequax.engine.torch_bridge import bridge_environment, from_torch, zoo

torch.set_num_threads(1)  # a shared 2-core machine

# The kinks of relu (0), relu6 (0, 6), hardtanh (±1), hardswish / hardsigmoid (±3), and the
# clamp bounds the cases below use (-1, 0.5, 1, 1.5), beside ordinary values.
KINKS = np.array(
    [-7, -6, -3, -2, -1.5, -1, -0.5, -0.0, 0, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 7], np.float32
)
# Ties at the maximum and at the minimum along rows and along columns; rolled by one
# column it ties with itself in 8 of 20 places (the pairwise cases below).
TIES = np.array([[1, 3, 3, 0, 0], [2, 2, 2, 2, 2], [5, 1, 5, 5, 1], [0, 3, 5, -1, 4]], np.float32)


def bridged(fn):
    """`fn` (torch tensors in, one tensor out) as a JAX function run by the bridge."""
    env = bridge_environment()

    def run(*arrays):
        with env:
            out = fn(*env.j2t_iso(arrays))
        return env.t2j_iso(out)

    return run


def in_place(op):
    """`op` applied in place to a copy of the input (torch refuses in-place ops on leaves)."""

    def fn(t):
        y = t * 1
        op(y)
        return y

    return fn


def on_slice(op):
    """`op` applied in place to a slice of a copy: it must write through to the copy."""

    def fn(t):
        y = t * 1
        op(y[3:12])
        return y

    return fn


def check_against_torch(fn, *inputs, atol=1e-6):
    """The bridge's forward and its gradient w.r.t. every input (jax.grad, under jit) equal
    torch's forward and autograd gradients."""
    arrays = [jnp.asarray(x) for x in inputs]
    ours = bridged(fn)
    out = ours(*arrays)
    weights = np.random.default_rng(0).normal(size=np.shape(out)).astype(np.float32)
    argnums = tuple(range(len(arrays)))
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * weights), argnums))(*arrays)

    tensors = [torch.tensor(x, requires_grad=True) for x in inputs]
    expected = fn(*tensors)
    (expected * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_allclose(np.asarray(out), expected.detach().numpy(), rtol=0, atol=atol)
    for k, (grad, t) in enumerate(zip(grads, tensors)):
        np.testing.assert_allclose(
            np.asarray(grad), t.grad.numpy(), rtol=0, atol=atol, err_msg=f"input {k}"
        )


ACTIVATIONS = {
    "relu": torch.relu,
    "F.relu": F.relu,
    "nn.ReLU(inplace)": in_place(nn.ReLU(inplace=True)),
    "F.relu6": F.relu6,
    "nn.ReLU6": nn.ReLU6(),
    "nn.ReLU6(inplace)": in_place(nn.ReLU6(inplace=True)),
    "relu6 in place on a slice": on_slice(lambda v: F.relu6(v, inplace=True)),
    "F.hardtanh": F.hardtanh,
    "nn.Hardtanh(-3, 3)": nn.Hardtanh(-3.0, 3.0),
    "hardtanh_ on a slice": on_slice(F.hardtanh_),
    "clamp(0, 6)": lambda t: torch.clamp(t, 0, 6),
    "clamp(min=-1)": lambda t: torch.clamp(t, min=-1),
    "clamp(max=1)": lambda t: torch.clamp(t, max=1),
    "clip(-1, 1)": lambda t: t.clip(-1, 1),
    "clamp_min(1.5)": lambda t: t.clamp_min(1.5),
    "clamp_max(1.5)": lambda t: t.clamp_max(1.5),
    "clamp_(-1, 0.5)": in_place(lambda v: v.clamp_(-1, 0.5)),
    "clamp_min_(0)": in_place(lambda v: v.clamp_min_(0)),
    "clamp_max_(1) on a slice": on_slice(lambda v: v.clamp_max_(1)),
    "F.leaky_relu": F.leaky_relu,
    "nn.LeakyReLU(0.2, inplace)": in_place(nn.LeakyReLU(0.2, inplace=True)),
    "leaky_relu_ on a slice": on_slice(lambda v: F.leaky_relu_(v, 0.1)),
    "F.hardswish": F.hardswish,
    "hardswish in place on a slice": on_slice(lambda v: F.hardswish(v, inplace=True)),
    "F.hardsigmoid": F.hardsigmoid,
    "hardsigmoid in place on a slice": on_slice(lambda v: F.hardsigmoid(v, inplace=True)),
    "abs": torch.abs,
    "abs_ on a slice": on_slice(torch.abs_),
    # Not replaced (JAX agrees with torch already); kept here so a torchax upgrade that
    # changes them shows.
    "F.threshold(1, -2)": lambda t: F.threshold(t, 1.0, -2.0),
    "F.elu": F.elu,
    "F.elu(alpha=0.5)": lambda t: F.elu(t, 0.5),
    "F.celu(alpha=0.5)": lambda t: F.celu(t, 0.5),
    "F.hardshrink": F.hardshrink,
    "F.softshrink": F.softshrink,
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradient_on_its_kinks_is_torchs(name):
    check_against_torch(ACTIVATIONS[name], KINKS)


def test_prelu_gradient_at_zero_is_torchs():
    """Also w.r.t. the slope (not replaced: torchax's decomposition agrees)."""
    check_against_torch(F.prelu, KINKS.reshape(1, -1), np.array([0.25], np.float32))


def test_clamp_with_tensor_bounds_sends_each_gradient_where_torch_does():
    """Gradients w.r.t. the input and both bounds: x on a bound, min == max (with x below,
    on and above), min > max (torch returns max, and sends it the gradient)."""
    x = np.array([-2, -1, 0, 1, 2, 0.5, 1, 1.5, 1, 0.5, 3, 3], np.float32)
    lo = np.array([-1, -1, -1, -1, -1, 1, 1, 1, 2, 2, 2, 3], np.float32)
    hi = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 3], np.float32)
    check_against_torch(lambda t, a, b: torch.clamp(t, a, b), x, lo, hi)
    check_against_torch(lambda t, a: torch.clamp(t, min=a), x, lo)
    check_against_torch(lambda t, b: torch.clamp(t, max=b), x, hi)
    check_against_torch(lambda t, a: torch.clamp_min(t, a), x, lo)
    check_against_torch(lambda t, b: torch.clamp_max(t, b), x, hi)
    # Bounds broadcast over the rows of a matrix (their gradients sum over the rows).
    rows = np.stack([x, x[::-1].copy(), lo])
    check_against_torch(lambda t, a, b: torch.clamp(t, a, b), rows, lo, hi)


REDUCTIONS = {
    "max(dim=1)": lambda t: t.max(dim=1).values,
    "min(dim=1)": lambda t: t.min(dim=1).values,
    "max(dim=0, keepdim)": lambda t: torch.max(t, 0, keepdim=True)[0],
    "min(dim=-1, keepdim)": lambda t: torch.min(t, -1, keepdim=True).values,
    "max()": lambda t: t.max(),
    "min()": lambda t: t.min(),
    "amax(dim=1)": lambda t: t.amax(dim=1),
    "amin(dim=0)": lambda t: t.amin(dim=0),
    "max(a, b)": lambda t: torch.max(t, t.roll(1, 1)),
    "maximum": lambda t: torch.maximum(t, t.roll(1, 1)),
    "minimum": lambda t: torch.minimum(t, t.roll(1, 1)),
    "fmax": lambda t: torch.fmax(t, t.roll(1, 1)),
    "fmin": lambda t: torch.fmin(t, t.roll(1, 1)),
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_min_max_gradient_at_ties_is_torchs(name):
    check_against_torch(REDUCTIONS[name], TIES)


def test_max_over_a_dim_returns_torchs_index_and_propagates_nan():
    values = np.concatenate([TIES, [[1, np.nan, 3, np.nan, 0]]]).astype(np.float32)
    run = bridged(lambda t: torch.stack([t.max(dim=1).indices, t.min(dim=1).indices]))
    expected = torch.stack(
        [torch.tensor(values).max(dim=1).indices, torch.tensor(values).min(dim=1).indices]
    )
    np.testing.assert_array_equal(np.asarray(run(jnp.asarray(values))), expected.numpy())
    check_against_torch(lambda t: t.max(dim=1).values, values)
    check_against_torch(lambda t: t.fmax(t.roll(1, 1)), values)


def pooling_input(shape, seed=0):
    """Small integers: most windows hold several equal maxima."""
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.float32)


POOLS = {
    "F.max_pool2d(2)": (lambda t: F.max_pool2d(t, 2), pooling_input((2, 3, 6, 6))),
    "F.max_pool2d(3, 1, 1)": (lambda t: F.max_pool2d(t, 3, 1, 1), pooling_input((2, 3, 6, 6))),
    "nn.MaxPool2d(3, 2, 1, ceil_mode)": (
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        pooling_input((2, 3, 7, 7)),
    ),
    "F.max_pool2d(2, indices)": (
        lambda t: F.max_pool2d(t, 2, return_indices=True)[0],
        pooling_input((2, 3, 6, 6)),
    ),
    "F.max_pool1d(2)": (lambda t: F.max_pool1d(t, 2), pooling_input((2, 3, 12))),
    "nn.MaxPool1d(3, 1, 1)": (nn.MaxPool1d(3, 1, 1), pooling_input((2, 3, 12))),
    "F.max_pool3d((1, 2, 2))": (
        lambda t: F.max_pool3d(t, (1, 2, 2)),
        pooling_input((1, 2, 3, 4, 4)),
    ),
    "F.max_pool2d(3, 1, 1), all equal": (
        lambda t: F.max_pool2d(t, 3, 1, 1),
        np.ones((1, 2, 5, 5), np.float32),
    ),
}


@pytest.mark.parametrize("name", list(POOLS))
def test_max_pooling_sends_a_tied_window_gradient_to_torchs_element(name):
    fn, x = POOLS[name]
    check_against_torch(fn, x)


def test_max_pooling_indices_at_ties_are_torchs():
    x = pooling_input((2, 3, 6, 6), seed=1)
    run = bridged(lambda t: F.max_pool2d(t, 3, 1, 1, return_indices=True)[1])
    expected = F.max_pool2d(torch.tensor(x), 3, 1, 1, return_indices=True)[1]
    np.testing.assert_array_equal(np.asarray(run(jnp.asarray(x))), expected.numpy())


def digit_like_images(n: int, seed: int = 0) -> np.ndarray:
    """28x28x1 images that are zero but for a random 12x12 stroke area, like MNIST."""
    x = np.zeros((n, 28, 28, 1), np.float32)
    x[:, 8:20, 8:20] = np.random.default_rng(seed).uniform(0, 1, (n, 12, 12, 1))
    return x


def test_depthwise_separable_relu6_network_gradient_matches_torch_at_init():
    """`zoo.ds_cnn` in evaluation mode at initialisation (running mean 0, variance 1): each
    bias-free convolution of an all-zero patch is an exact 0, which BatchNorm keeps and
    ReLU6 receives on its kink. With JAX's halved gradient there the bridge's parameter
    gradients were 200 % off; now they are torch's (float64) to float32 rounding."""
    x, y = digit_like_images(8), np.arange(8, dtype=np.int32) % 10
    torch.manual_seed(0)
    net = zoo.ds_cnn(widths=(8, 16))
    model = from_torch(net, x)
    params, state = model.init(jax.random.PRNGKey(0), x)

    def loss(p):
        logits = model.apply(p, state, x, train=False)[0]["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.jit(jax.grad(loss))(params)

    reference = copy.deepcopy(net).double().eval()
    on_kink = []
    for module in reference.modules():
        if isinstance(module, nn.ReLU6):
            module.register_forward_pre_hook(
                lambda m, args: on_kink.append(int(((args[0] == 0) | (args[0] == 6)).sum()))
            )
    logits = reference(torch.from_numpy(x).permute(0, 3, 1, 2).double())
    F.cross_entropy(logits, torch.from_numpy(y).long()).backward()
    assert min(on_kink) > 0, on_kink  # every ReLU6 sees inputs exactly on its kink
    assert set(grads) == {name for name, _ in reference.named_parameters()}
    for name, p in reference.named_parameters():
        error = np.abs(np.asarray(grads[name], np.float64) - p.grad.numpy()).max()
        assert error / np.abs(p.grad.numpy()).max() < 1e-5, name
