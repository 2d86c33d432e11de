"""Per-example gradients of convolution kernels as image patches x output gradients.

`vmap` of `grad` turns each convolution's kernel gradient into a grouped convolution with one
group per example, which XLA:CPU runs slowly: for the reduced ResNet-18, 128 per-example
gradients cost about 1.8x the training of those 128 examples. Here the kernel gradients come
from one backward pass instead. For a convolution y = conv(x, k) (stride s, padding p), the
gradient of example i's value v_i is

    ∂v_i/∂k[., ., c, o] = Σ_positions patch_i[position, (c, dy, dx)] · δ_i[position, o]

with patch_i the image patches of x_i the convolution reads (strided slices of the padded
input: `lax.conv_general_dilated_patches` is itself a grouped convolution) and
δ_i = ∂v_i/∂y_i, the gradient at the convolution's output: a batched matmul. δ comes from a
zero added to each convolution's output (what linen's `Module.perturb` does), differentiated
with the rest of the parameters (BatchNorm's, the classifier's), per example by `vmap`; the
kernels themselves are held constant there, so no grouped convolution is ever built.

Covers every plain `nn.Conv` (no groups, no dilation, no mask, a string or explicit padding,
a [batch, height, width, channels] input) called once per forward, in a model with no other
convolution; any other layer's parameters (BatchNorm, dense) take the general per-example
path inside the same `vmap`. On the 2-core CPU, 128 per-example squared gradients of the
reduced ResNet-18 (28x28x1) take 0.77 s this way against 1.09 s in one `vmap` of `grad`
and 0.64 s for one batched gradient of the same 128 examples. Used by
`fisher.squared_gradient_sum` (EWC's Fisher) when the model has such convolutions.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
from jax import lax

Path = tuple[str, ...]
SUB_BATCH = 32  # examples whose per-example kernel gradients are materialised at once


def _plain_conv(context) -> bool:
    m = context.module
    return (
        context.method_name == "__call__"
        and type(m) is nn.Conv
        and m.feature_group_count == 1
        and m.mask is None
        and m.conv_general_dilated is None
        and m.conv_general_dilated_cls is None
        and all(d == 1 for d in _pair(m.kernel_dilation, len(m.kernel_size)))
        and all(d == 1 for d in _pair(m.input_dilation, len(m.kernel_size)))
        and (isinstance(m.padding, str) and m.padding in ("SAME", "VALID")
             or not isinstance(m.padding, str))
    )  # fmt: skip


def _pair(value, n: int) -> tuple:
    if value is None:
        return (1,) * n
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _padding(module, n: int):
    p = module.padding
    if isinstance(p, str):
        return p
    if isinstance(p, int):
        return ((p, p),) * n
    return tuple((q, q) if isinstance(q, int) else tuple(q) for q in p)


def conv_layers(model, params, model_state, x) -> dict[Path, tuple] | None:
    """{layer path: (input shape, output shape, strides, padding)} of the plain convolutions
    (per forward of `x`), when every one is called once on a 4-d input and owns a "kernel";
    else None. Shapes only (`jax.eval_shape`)."""
    if getattr(model, "module", None) is None:
        return None
    calls: list[tuple[Path, tuple]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _plain_conv(context):
            m, inputs = context.module, args[0] if args else kwargs["inputs"]
            n = len(m.kernel_size)
            shapes = (jnp.shape(inputs), jnp.shape(out), _pair(m.strides, n), _padding(m, n))
            calls.append((m.scope.path, shapes))
        return out

    def probe(params, model_state, x):
        with nn.intercept_methods(record):
            model.apply(params, model_state, x, train=False)

    try:
        jaxpr = jax.make_jaxpr(probe)(params, model_state, x).jaxpr  # shapes only
    except Exception:  # noqa: BLE001 - a model this probe cannot run: the general path
        return None
    layers = dict(calls)
    if not layers or len(layers) < len(calls):  # none, or a convolution called twice
        return None
    if len(convolution_groups(jaxpr)) != len(calls):  # another convolution (grouped, depthwise,
        return None  # not an nn.Conv): its kernel would be a grouped convolution under vmap
    for path, (shape_in, *_) in layers.items():
        node = params
        for key in (*path, "kernel"):
            node = node.get(key) if isinstance(node, dict) else None
        if len(shape_in) != 4 or node is None:
            return None
    return layers


def convolution_groups(jaxpr) -> list[int]:
    """The `feature_group_count` of every convolution in `jaxpr`, sub-jaxprs included (scans,
    nested jits); empty when it holds none."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(int(eqn.params["feature_group_count"]))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += convolution_groups(sub)
    return found


def _split(params, paths) -> tuple[Any, dict]:
    """(params with each convolution's kernel replaced by None, {path: kernel})."""
    kernels = {}

    def walk(node, prefix):
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            here = (*prefix, key)
            if key == "kernel" and prefix in paths:
                kernels[prefix] = value
                out[key] = None
            else:
                out[key] = walk(value, here)
        return out

    return walk(dict(params), ()), kernels


def _merge(rest, kernels, prefix=()):
    if not isinstance(rest, dict):
        return rest
    return {
        key: (kernels[prefix] if key == "kernel" and prefix in kernels and value is None
              else _merge(value, kernels, (*prefix, key)))
        for key, value in rest.items()
    }  # fmt: skip


def _weighted_squares(patches, delta, weights):
    """Σ_i w_i (patches_iᵀ δ_i)², [kh * kw * cin, cout], SUB_BATCH examples at a time:
    materialising all of a chunk's per-example kernel gradients at once is memory-bound
    (0.79 s against 0.69 s for 128 examples of the reduced ResNet-18 on the 2-core CPU, and
    a `scan` over the parts 0.72 s). Unrolled, so each part adds to the compile time."""
    batch, _, _, taps, cin = patches.shape
    total = jnp.zeros((taps, cin, delta.shape[-1]), jnp.float32)
    for lo in range(0, batch, SUB_BATCH):
        part = slice(lo, min(lo + SUB_BATCH, batch))
        per_example = jnp.einsum(
            "bhwkc,bhwo->bkco", patches[part], delta[part], precision=lax.Precision.HIGHEST
        )
        total = total + jnp.einsum("b,bkco->kco", weights[part], per_example**2)
    return total.reshape(taps * cin, -1)


def _patches(x, window, strides, padding):
    """[batch, H', W', kh * kw, C]: for each output position, the input pixels each kernel tap
    reads (strided slices of the padded input: data movement only; `lax.conv_general_dilated_
    patches` is itself a grouped convolution, slow on XLA:CPU)."""
    (kh, kw), (sh, sw) = window, strides
    pads = lax.padtype_to_pads(x.shape[1:3], window, strides, padding) if isinstance(
        padding, str) else padding  # fmt: skip
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    taps = [
        x[:, dy : dy + sh * (out_h - 1) + 1 : sh, dx : dx + sw * (out_w - 1) + 1 : sw, :]
        for dy in range(kh)
        for dx in range(kw)
    ]
    return jnp.stack(taps, axis=3)


def patch_squared_gradient_sum(model, params, model_state, x, objective, targets, layers):
    """`Σ_i w_i (∂ v_i / ∂θ)²` (see `fisher.squared_gradient_sum`) with the kernels of
    `layers` (from `conv_layers`) through patches x output gradients."""
    rest, kernels = _split(params, set(layers))
    kernels = jax.tree.map(lax.stop_gradient, kernels)
    batch = jnp.shape(x)[0]
    zeros = {
        path: jnp.zeros((batch, 1, *shape_out[1:]), jnp.float32)
        for path, (_, shape_out, _, _) in layers.items()
    }

    def value(rest, perturbations, example, target):
        inputs = {}

        def perturb(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = context.module.scope.path
            if _plain_conv(context) and path in perturbations:
                inputs[path] = args[0] if args else kwargs["inputs"]
                return out + perturbations[path].astype(out.dtype)
            return out

        with nn.intercept_methods(perturb):
            outputs, _ = model.apply(_merge(rest, kernels), model_state, example[None],
                                     train=False)  # fmt: skip
        values, weights = objective(outputs, jax.tree.map(lambda t: t[None], target))
        return values[0], (weights[0], inputs)

    grad = jax.grad(value, argnums=(0, 1), has_aux=True)
    (g_rest, deltas), (weights, inputs) = jax.vmap(grad, (None, 0, 0, 0))(rest, zeros, x, targets)
    sums = {}
    for path in layers:
        module_inputs = inputs[path][:, 0]  # [batch, H, W, C]: each example's input
        kernel = kernels[path]
        kh, kw, cin, cout = kernel.shape
        _, _, strides, padding = layers[path]
        patches = _patches(module_inputs.astype(jnp.float32), (kh, kw), strides, padding)
        delta = deltas[path][:, 0].astype(jnp.float32)  # [batch, H', W', cout]
        sums[path] = _weighted_squares(patches, delta, weights).reshape(kh, kw, cin, cout)
    squared_rest = jax.tree.map(lambda g: jnp.einsum("b,b...->...", weights, g**2), g_rest)
    return _merge(squared_rest, sums)
