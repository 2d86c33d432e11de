"""Clamp-type ops whose gradient at a kink is torch's, where torchax's lowering splits it.

torchax lowers `aten::hardtanh` (what `nn.ReLU6`, `F.relu6` and `nn.Hardtanh` run) and
`aten::clamp` to `jnp.clip`, `aten::leaky_relu` to `jax.nn.leaky_relu` and `aten::max.dim`
to `jnp.max`. The forwards are torch's; the gradients follow JAX's conventions, which part
from torch's exactly on a kink. `jnp.clip` is a `maximum` then a `minimum`, and JAX splits a
tie of those evenly, so an input equal to a bound gets half the upstream gradient where torch
gives all of it (clamp) or none (hardtanh). Inputs do sit exactly on kinks: a BatchNorm +
ReLU6 network in evaluation mode at initialisation (running mean 0, variance 1) feeds ReLU6
exact zeros wherever a bias-free convolution saw an all-zero patch (an MNIST background),
and before this module the bridge's gradient of such a network was off by 200 %.

Each replacement below keeps torchax's forward value and takes its gradient from the operand
torch's backward formula sends it to. The formulas are torch's
`tools/autograd/derivatives.yaml` (shipped as `torchgen/packaged/autograd/derivatives.yaml`,
torch 2.13) and the C++ backward kernels it names; every convention is checked against
torch's autograd in tests/engine/test_torch_bridge_boundaries.py:

- hardtanh, relu6 (`hardtanh_backward`): grad where min_val < x < max_val, strictly;
- clamp, clip (`clamp_backward`): grad where min <= x <= max, inclusive; clamp_min, clamp_max:
  `where(self >= min, grad, 0)`, `where(self <= max, grad, 0)`; tensor bounds
  (`clamp_backward_min_max`): min gets grad where x < min and min < max, max where x > max
  or max < min (so min == max > x sends it nowhere);
- leaky_relu (`leaky_relu_backward`): grad where x > 0, else negative_slope * grad;
- max.dim, min.dim (`value_selecting_reduction_backward`): all to the returned index, the
  first extreme of a tie;
- abs: `grad * self.sgn()`, 0 at 0;
- hardsigmoid (`hardsigmoid_backward`): grad / 6 where -3 < x < 3, strictly; hardswish
  (`hardswish_backward`): 0 for x <= -3, x / 3 + 1/2 inside, 1 for x >= 3;
- fmax, fmin: all to self where self >= other (<= for fmin) or other is NaN.

Left as torchax lowers them, because JAX already agrees with torch: relu (`jax.nn.relu`
takes 0 at 0, torch's `threshold_backward(grad, result, 0)` too), max() and min() over all
elements and amax/amin (both share the gradient evenly among ties), maximum/minimum (both
halve it at ties), and max pooling (JAX's `select_and_scatter_add` routes each window's
gradient to its first maximum, as torch's kernel routes it to the index it returns).

    register_boundary_ops(env)   # on a torchax Environment; bridge_environment() calls it
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import torch
from jax import lax
from torchax.ops import op_base

aten = torch.ops.aten


def _choose(value, *choices):
    """`value`, except where a mask of `choices` ((mask, operand) pairs, disjoint) holds: there
    the operand, whose value equals `value` there. The result's value is `value`; its gradient
    flows to the chosen operand alone and is 0 where no mask holds."""
    out = lax.stop_gradient(value)
    for mask, operand in choices:
        out = jnp.where(mask, operand, out)
    return out


def hardtanh(x, min_val=-1.0, max_val=1.0):
    """torch's hardtanh (relu6 is hardtanh(x, 0, 6)): gradient only strictly inside."""
    if jnp.issubdtype(x.dtype, jnp.integer):  # torchax's rule: integer input, integer bounds
        min_val, max_val = int(min_val), int(max_val)
    value = jnp.clip(x, min_val, max_val)
    return _choose(value, ((x > min_val) & (x < max_val), x))


def clamp(x, min=None, max=None):  # noqa: A002 - aten's argument names
    """torch's clamp / clip / clamp_min / clamp_max, scalar or tensor bounds.

    self gets the gradient where min <= x <= max (inclusive), a tensor min where x < min and
    min < max, a tensor max where x > max or max < min (torch's `clamp_backward` and
    `clamp_backward_min_max`); elsewhere (x NaN, or min == max with x < min) no operand does.
    """
    value = jnp.clip(x, min, max)
    inside = jnp.ones(jnp.shape(x), bool)
    lo_mask = hi_mask = None
    if min is not None:
        inside = inside & (x >= min)
        lo_mask = x < min
    if max is not None:
        inside = inside & (x <= max)
        hi_mask = x > max
    if min is not None and max is not None:
        lo_mask = lo_mask & (min < max)
        hi_mask = hi_mask | (max < min)
    choices = [(inside, x)]
    # Scalar bounds carry no gradient; only tensor bounds are offered as operands.
    if min is not None and isinstance(min, jax.Array):
        choices.append((lo_mask, jnp.broadcast_to(min, value.shape)))
    if max is not None and isinstance(max, jax.Array):
        choices.append((hi_mask, jnp.broadcast_to(max, value.shape)))
    return _choose(value, *choices)


def clamp_min(x, min):  # noqa: A002
    return clamp(x, min=min)


def clamp_max(x, max):  # noqa: A002
    return clamp(x, max=max)


def leaky_relu(x, negative_slope=0.01):
    """torch's leaky_relu: slope 1 only for x > 0, so at 0 the gradient is negative_slope."""
    return jnp.where(x > 0, x, x * negative_slope)


def _reduce_to_index(arg_fn, full_fn, pairwise_fn):
    """aten::max / aten::min, whose overloads share the name: all elements (torch shares the
    gradient evenly among ties, as JAX does), along a dim (values read at the returned index,
    the first extreme as torch returns it, so the gradient goes there alone), or against
    another tensor (`max.other`, torch's `maximum`)."""

    def reduce(x, dim=None, keepdim=False):
        if dim is None:
            return full_fn(x)
        if isinstance(dim, jax.Array):  # max.other / min.other
            return pairwise_fn(x, dim)
        # torch's int64 indices; int32 when JAX runs without x64, as torchax maps them.
        index_dtype = jax.dtypes.canonicalize_dtype(jnp.int64)
        if x.ndim == 0:  # torch accepts dim 0 or -1 of a scalar: the value, index 0
            return x, jnp.zeros((), index_dtype)
        index = arg_fn(x, axis=dim, keepdims=True)  # the first extreme; NaN counts as one
        values = jnp.take_along_axis(x, index, axis=dim)
        if not keepdim:
            values, index = jnp.squeeze(values, dim), jnp.squeeze(index, dim)
        return values, index.astype(index_dtype)

    return reduce


def abs_(x):
    """torch's abs: `grad * sgn(x)`, so 0 at 0 (JAX's takes the +1 side)."""
    value = jnp.abs(x)
    return _choose(value, (x != 0, value))


def hardsigmoid(x):
    """torch's hardsigmoid, relu6(x + 3) / 6: gradient 1/6 only strictly inside (-3, 3)."""
    value = jnp.clip(x + 3.0, 0.0, 6.0) / 6.0
    return _choose(value, ((x > -3.0) & (x < 3.0), value))


@jax.custom_jvp
def hardswish(x):
    """torch's hardswish, x * relu6(x + 3) / 6, with the derivative of its backward kernel."""
    return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


@hardswish.defjvp
def _hardswish_jvp(primals, tangents):
    # torch's `hardswish_backward`: 0 for x <= -3, x / 3 + 1/2 inside, 1 for x >= 3 (so 0 at
    # -3 and 1 at 3, where the pieces' one-sided slopes are -1/2 and 3/2). A custom rule,
    # because no choice of operands gives these values at both kinks with the same forward.
    (x,), (t,) = primals, tangents
    slope = jnp.where(x <= -3.0, 0.0, jnp.where(x < 3.0, x / 3.0 + 0.5, 1.0))
    return hardswish(x), t * slope.astype(t.dtype)


def fmax(x, other):
    """torch's fmax: NaN-ignoring maximum, the whole gradient to self at a tie."""
    to_self = (x >= other) | jnp.isnan(other)
    return jnp.where(to_self, x, other)


def fmin(x, other):
    """torch's fmin: NaN-ignoring minimum, the whole gradient to self at a tie."""
    to_self = (x <= other) | jnp.isnan(other)
    return jnp.where(to_self, x, other)


def _lowering(env, jax_fn):
    """`jax_fn` as an op definition of `env`: torchax tensors in, torchax tensors out."""

    def lowered(*args, **kwargs):
        args, kwargs = env.t2j_iso((args, kwargs))
        return env.j2t_iso(jax_fn(*args, **kwargs))

    return lowered


def register_boundary_ops(env) -> None:
    """Overrides the ops above in the torchax environment `env`.

    torchax looks an aten op up by its overload (`aten.clamp.default`) before its packet
    (`aten.clamp`), so each key below is the one torchax registered its own lowering (or
    decomposition) under; the in-place forms (`hardtanh_`, `clamp_`, `leaky_relu_`, ...) run
    these through torchax's in-place wrapper.
    """
    lowerings = {
        aten.hardtanh: hardtanh,
        aten.clamp.default: clamp,
        aten.clamp.Tensor: clamp,
        aten.clamp_min: clamp_min,
        aten.clamp_max.default: clamp_max,  # torchax decomposes these (and their .out forms)
        aten.clamp_max.Tensor: clamp_max,
        aten.leaky_relu: leaky_relu,
        aten.max: _reduce_to_index(jnp.argmax, jnp.max, jnp.maximum),
        aten.min: _reduce_to_index(jnp.argmin, jnp.min, jnp.minimum),
        aten.abs: abs_,
        aten.hardsigmoid.default: hardsigmoid,
        aten.hardswish.default: hardswish,
        aten.fmax: fmax,
        aten.fmin: fmin,
    }
    for op, jax_fn in lowerings.items():
        env.override_op_definition(op, _lowering(env, jax_fn))
    # In-place forms: torchax decomposes `hardtanh_` (relu6(inplace=True)), `leaky_relu_`,
    # `hardswish_` and `hardsigmoid_` into the op and a `copy_` that, on a slice (a torchax
    # View), never writes back: `F.relu6(x[:, :4], inplace=True)` left `x` unchanged. It has
    # no `clamp_max_` or `abs_` at all. Each becomes torchax's own in-place wrapper over the
    # functional op (as its `clamp_` and `relu_` are), registered as a view op so that the
    # wrapper receives the View and writes through it.
    for inplace, functional in (
        (aten.hardtanh_, aten.hardtanh),
        (aten.leaky_relu_, aten.leaky_relu),
        (aten.hardswish_, aten.hardswish),
        (aten.hardsigmoid_, aten.hardsigmoid),
        (aten.clamp_max_, aten.clamp_max),
        (aten.abs_, aten.abs),
    ):
        env.override_op_definition(inplace, op_base.InplaceOp(functional), is_view_op=True)
