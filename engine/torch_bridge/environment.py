"""The torchax environment the bridge traces torch modules in, with BatchNorm made exact.

torchax (pinned 0.0.14.dev20261026) lowers each aten op a torch forward dispatches to a JAX
function. Its batch normalisation is wrong for training in two ways, both fixed here:

- the running statistics are never written back (aten's `native_batch_norm` mutates
  `running_mean`/`running_var` in place; torchax computes new values and drops them);
- the running variance it would use is the biased batch variance, where torch stores the
  unbiased one (`var * n / (n - 1)`, n = elements per channel).

The replacement follows torch's CPU kernel: normalise with the batch mean and biased
variance in training, with the running statistics in evaluation, and update
`running = (1 - momentum) * running + momentum * batch_statistic` in place on the torchax
tensors that hold the module's buffers (the bridge reads them back after the forward).
The op is replaced at the `torch.nn.functional.batch_norm` level (what `nn.BatchNorm*d`
calls) and at the aten ops a direct `torch.batch_norm` reaches.

The clamp-type ops (hardtanh/relu6, clamp, leaky_relu, max/min along a dim, ...) get
torch's gradient at their kinks from `boundaries.py`, registered here too.

The environment is the bridge's own (`bridge_environment()`), so the replacements never
change torchax's global default environment for other users in the same process.

    env = bridge_environment()
    with env.override_property(prng=key), env:   # dropout draws from `key`
        outputs = torch.func.functional_call(module, env.j2t_iso(tensors), (env.j2t_iso(x),))
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from torchax import tensor as torchax_tensor

from sequax.engine.torch_bridge.boundaries import register_boundary_ops

aten = torch.ops.aten


def batch_norm_jax(
    x, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float
):
    """Batch normalisation over axis 1 of `x` (NC, NCL, NCHW, ...), as torch computes it.

    Returns (output, batch mean, 1/sqrt(batch variance + eps), new running mean, new running
    variance); the running values are None when none were given or when not training.
    """
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    new_mean = new_var = None
    if training:
        count = x.size // x.shape[1]
        if count <= 1:  # torch raises the same; the unbiased variance would divide by zero
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"{tuple(x.shape)}"
            )
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean.reshape(shape)), axis=axes)  # biased: normalises
        if running_mean is not None:
            new_mean = (1.0 - momentum) * running_mean + momentum * mean
        if running_var is not None:  # torch stores the unbiased variance
            new_var = (1.0 - momentum) * running_var + momentum * var * (count / (count - 1))
    else:
        mean, var = running_mean, running_var
    invstd = jax.lax.rsqrt(var + eps)
    out = (x - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out, mean, invstd, new_mean, new_var


def _jax(t):
    return None if t is None else t.jax()


def _batch_norm_in_place(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """Runs `batch_norm_jax` on torchax tensors and writes the running statistics in place."""
    training = bool(training) or running_mean is None  # torch: no running stats, batch stats
    momentum = 0.1 if momentum is None else float(momentum)
    out, mean, invstd, new_mean, new_var = batch_norm_jax(
        x.jax(),
        _jax(weight),
        _jax(bias),
        _jax(running_mean),
        _jax(running_var),
        training,
        momentum,
        float(eps),
    )
    # The buffers are the torchax tensors the bridge passed in; assigning their element is
    # the in-place update torch's kernel makes (and what torchax's own in-place ops do).
    if new_mean is not None:
        running_mean._elem = new_mean.astype(running_mean._elem.dtype)
    if new_var is not None:
        running_var._elem = new_var.astype(running_var._elem.dtype)
    env = x._env
    return env.j2t_iso(out), env.j2t_iso(mean), env.j2t_iso(invstd)


def _functional_batch_norm(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    """`torch.nn.functional.batch_norm`, the call every `nn.BatchNorm*d` makes."""
    return _batch_norm_in_place(
        input, weight, bias, running_mean, running_var, training, momentum, eps
    )[0]


def _native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """aten::native_batch_norm and aten::_native_batch_norm_legit (same argument order)."""
    return _batch_norm_in_place(
        input, weight, bias, running_mean, running_var, training, momentum, eps
    )


def _native_batch_norm_no_stats(input, weight, bias, training, momentum, eps):
    """aten::_native_batch_norm_legit.no_stats: batch statistics, nothing to update."""
    return _batch_norm_in_place(input, weight, bias, None, None, True, momentum, eps)


def _native_batch_norm_no_training(input, weight, bias, running_mean, running_var, momentum, eps):
    """aten::_native_batch_norm_legit_no_training: evaluation with the running statistics."""
    return _batch_norm_in_place(
        input, weight, bias, running_mean, running_var, False, momentum, eps
    )


@functools.cache
def bridge_environment() -> torchax_tensor.Environment:
    """The bridge's torchax environment (created once), BatchNorm replaced as described above
    and clamp-type ops given torch's gradients at their kinks (`boundaries.py`)."""
    env = torchax_tensor.Environment()
    register_boundary_ops(env)
    env.override_op_definition(F.batch_norm, _functional_batch_norm)
    for op in (
        aten.native_batch_norm,
        aten.native_batch_norm.default,
        aten._native_batch_norm_legit.default,
    ):
        env.override_op_definition(op, _native_batch_norm)
    env.override_op_definition(aten._native_batch_norm_legit.no_stats, _native_batch_norm_no_stats)
    for op in (
        aten._native_batch_norm_legit_no_training,
        aten._native_batch_norm_legit_no_training.default,
    ):
        env.override_op_definition(op, _native_batch_norm_no_training)
    return env
