"""Weighted sums of squared per-example gradients: the diagonal Fisher's building block.

For a batch x and a per-example objective (v, w) = objective(outputs, targets), row i
depending on example i only, `squared_gradient_sum` returns, shaped like the parameters,

    Σ_i w_i (∂ v_i / ∂θ)²        (w_i is a weight, never differentiated)

    def log_likelihood(outputs, targets):  # EWC's empirical Fisher
        log_probs = jax.nn.log_softmax(outputs["logits"])
        return jnp.take_along_axis(log_probs, targets["y"][:, None], 1)[:, 0], targets["weight"]
    targets = {"y": labels, "weight": weights}  # [b] each
    total = squared_gradient_sum(model, params, model_state, x, log_likelihood, targets)

Two paths to the same value, chosen at trace time:
- dense: when every parameter is the kernel or bias of an `nn.Dense` called once per forward
  on [batch, features] inputs. The per-example gradient of a kernel is then the outer
  product x_i ⊗ δ_i (x_i the layer's input, δ_i = ∂v_i/∂y_i at its output), so
  Σ_i w_i (x_i ⊗ δ_i)² = (x²)ᵀ diag(w) δ², one matmul; the bias gets Σ_i w_i δ_i². δ comes
  from one backward pass of Σ_i v_i to a zero added to each layer's output (what linen's
  `Module.perturb` does): rows are independent in evaluation mode (an assumption: the
  per-example path runs one example at a time), so row i of that gradient is δ_i. No
  per-example gradient is ever materialised.
- per-example: `vmap` of `grad` over the batch (a [batch, #params] array), for everything
  else: other layers (convolutions, BatchNorm, embeddings), a layer called twice (shared
  weights), a parameter read outside its layer, a model with no linen module.

The dense path needs `model.module` (set by `engine.models.from_linen`): the linen module that
`model.apply` runs with `params` as its "params" collection, unchanged. Whether it covers every
parameter is proved by a shape-only probe (`dense_layers`), never assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
from jax import lax

from sequax.algorithms.patch_gradients import (
    conv_layers,
    convolution_groups,
    patch_squared_gradient_sum,
)
from sequax.core.task_data import loops_on_host

PyTree = Any
Path = tuple[str, ...]
# objective(outputs, targets) -> (values [b], weights [b]); row i from example i only.
Objective = Callable[[dict[str, jax.Array], PyTree], tuple[jax.Array, jax.Array]]


def squared_gradient_sum(model, params, model_state, x, objective: Objective, targets) -> PyTree:
    """`Σ_i w_i (∂ v_i / ∂θ)²` over the batch, by the dense path when it covers every parameter."""
    layers = dense_layers(model, params, model_state, x)
    if layers is not None:
        return dense_squared_gradient_sum(model, params, model_state, x, objective, targets, layers)
    # Convolution kernels through patches x output gradients (`patch_gradients`), except on
    # XLA:CPU inside a `while` loop (a task's chunks scanned in one program), where the
    # backward convolutions run slowly and one example at a time is faster.
    in_loop = jax.default_backend() == "cpu" and not loops_on_host()
    convs = None if in_loop else conv_layers(model, params, model_state, x)
    if convs is not None:
        return patch_squared_gradient_sum(model, params, model_state, x, objective, targets, convs)
    return per_example_squared_gradient_sum(model, params, model_state, x, objective, targets)


def per_example_squared_gradient_sum(
    model, params, model_state, x, objective: Objective, targets
) -> PyTree:
    """The general path: one gradient per example (`vmap` of `grad`), squared and weighted."""

    def value(p, example_and_target):
        example, target = example_and_target
        outputs, _ = model.apply(p, model_state, example[None], train=False)
        values, weights = objective(outputs, jax.tree.map(lambda t: t[None], target))
        return values[0], weights[0]

    x = batched_like_params(x, params)
    return per_example_gradient_sum(value, params, (x, targets), jnp.square)


def per_example_gradient_sum(value, params, examples, transform, sequential: bool | None = None):
    """`Σ_i w_i transform(∂ v_i / ∂θ)` with `(v_i, w_i) = value(params, example_i)` over the
    examples (a tree of [b, ...] arrays): one `vmap` of `grad`, or `sequential`ly, a `scan`
    over the examples adding each one's transformed gradient to a running sum.

    Why sequential: under `vmap`, a convolution's kernel gradient becomes a grouped
    convolution with `feature_group_count` = examples x the layer's groups, and XLA:CPU runs
    those slowly, the more so inside the `while` loop that scans a task's chunks
    (`scan_batches`). `python -m benchmarks.end_task` (docs/benchmarks.md) measures EWC's end
    of task against one epoch of training: the reduced ResNet-18 13.6x in one vmap, 6.2x
    sequentially; a depthwise-separable CNN 0.6-0.9x sequentially (the issue measured about
    77x in one vmap). It never holds a [b, #params] array either. `sequential` None: on CPU
    when the value's computation holds a convolution; elsewhere one vmap (GPU and TPU
    batch grouped convolutions well), and on models without convolutions (no grouping).
    """
    if sequential is None:
        one = jax.tree.map(lambda a: a[0], examples)
        groups = _convolution_groups(value, params, one) if jax.default_backend() == "cpu" else []
        # In a chunk's own program (`loops_on_host`), one vmap is fastest for plain
        # convolutions; grouped ones (depthwise) stay sequential: vmapped, they become
        # convolutions of examples x groups groups, which XLA:CPU runs slowly anywhere.
        sequential = bool(groups) and (not loops_on_host() or max(groups) > 1)
    grad = jax.grad(value, has_aux=True)
    if sequential:

        def add(total, example):
            g, w = grad(params, example)
            return jax.tree.map(lambda t, gi: t + w * transform(gi), total, g), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        return lax.scan(add, zeros, examples)[0]
    grads, weights = jax.vmap(grad, (None, 0))(params, examples)
    return jax.tree.map(lambda g: jnp.einsum("b,b...->...", weights, transform(g)), grads)


def _convolution_groups(fn, *args) -> list[int]:
    """The `feature_group_count` of every convolution in `fn(*args)`'s computation (its
    jaxpr, traced for shapes); empty when it holds none."""
    return convolution_groups(jax.make_jaxpr(fn)(*args).jaxpr)


def batched_like_params(x: jax.Array, params) -> jax.Array:
    """`x` plus an exact zero taken from the parameters, so that under a `vmap` over runs
    (vmapped seeds share one task's images, `in_axes=None`) the images are batched like the
    parameters.

    Why: the per-example `vmap(grad)` turns each convolution's kernel gradient into a grouped
    convolution (`feature_group_count` = batch) of the layer's input with its cotangent. For
    the first layer that input is `x`; with `x` shared and the cotangent batched over runs,
    the outer vmap meets a grouped convolution whose kernel operand alone is batched, and
    JAX's batching rule (jax 0.10, `lax.convolution._conv_general_dilated_batch_rule`) raises
    a bare `NotImplementedError` for that case whenever the convolution carries an output
    sharding, which the convolution's transpose always sets under a mesh (`jax.set_mesh`, as
    `engine.loop` runs). Batched on both operands, the case is the supported one. The zero
    costs one add over the batch; outside a vmap nothing is broadcast; no gradient flows
    through it (`stop_gradient`); parameters holding a NaN or an infinity make `x` NaN, as
    they would make the Fisher anyway. Any per-example `vmap(grad)` over shared images under
    vmapped runs needs it (MAS's importance has the same structure).
    """
    leaves = jax.tree.leaves(params)
    if not leaves or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    zero = lax.stop_gradient(jnp.ravel(leaves[0])[0]).astype(x.dtype) * 0
    return x + zero


def _plain_dense(context) -> bool:
    """A call of `nn.Dense` itself (not a subclass) whose product is the plain x @ kernel."""
    module = context.module
    return (
        context.method_name == "__call__"
        and type(module) is nn.Dense
        and module.dot_general is None
        and module.dot_general_cls is None
    )


def _dense_input(args, kwargs) -> jax.Array:
    return args[0] if args else kwargs["inputs"]


def dense_layers(model, params, model_state, x) -> dict[Path, int] | None:
    """{layer path: output features} when the dense path gives the exact value, else None.

    Decided at trace time from shapes only (`jax.eval_shape`, nothing runs): the model's
    forward is probed with an empty parameter tree while every plain `nn.Dense` call is
    replaced by zeros of its output's shape. The probe succeeds only if no parameter is read
    outside those calls; then every parameter must be the kernel ([in, out]) or bias ([out])
    of a layer called exactly once on a [batch, in] input.
    """
    if getattr(model, "module", None) is None:
        return None
    calls: list[tuple[Path, tuple[int, ...], int, bool]] = []

    def replace_dense(next_fun, args, kwargs, context):
        if not _plain_dense(context):
            return next_fun(*args, **kwargs)
        inputs, module = _dense_input(args, kwargs), context.module
        calls.append((module.scope.path, jnp.shape(inputs), module.features, module.use_bias))
        dtype = module.dtype or jnp.result_type(inputs, module.param_dtype)
        return jnp.zeros((*jnp.shape(inputs)[:-1], module.features), dtype)

    def probe(model_state, x):
        with nn.intercept_methods(replace_dense):
            model.apply({}, model_state, x, train=False)

    try:
        jax.eval_shape(probe, model_state, x)
    except Exception:  # noqa: BLE001 - any failure (a parameter read elsewhere) disproves it
        return None
    layers = {path: (shape, features, use_bias) for path, shape, features, use_bias in calls}
    if len(layers) < len(calls):  # a layer called more than once per forward
        return None
    expected = {}
    for path, (shape, features, use_bias) in layers.items():
        if len(shape) != 2 or shape[0] != jnp.shape(x)[0]:  # not one row per example
            return None
        expected[(*path, "kernel")] = (shape[1], features)
        if use_bias:
            expected[(*path, "bias")] = (features,)
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    found = {}
    for key_path, leaf in leaves:
        if not all(isinstance(k, jax.tree_util.DictKey) for k in key_path):
            return None
        found[tuple(k.key for k in key_path)] = tuple(jnp.shape(leaf))
    if found != expected:  # a parameter outside these layers, or a layer without its own
        return None
    return {path: features for path, (_, features, _) in layers.items()}


def dense_squared_gradient_sum(
    model, params, model_state, x, objective: Objective, targets, layers: dict[Path, int]
) -> PyTree:
    """The dense path (`layers` from `dense_layers`): one backward pass and one matmul per layer."""
    batch = jnp.shape(x)[0]
    zeros = {path: jnp.zeros((batch, features), jnp.float32) for path, features in layers.items()}

    def total(perturbations):
        inputs = {}

        def perturb_dense(next_fun, args, kwargs, context):
            if not _plain_dense(context):
                return next_fun(*args, **kwargs)
            path = context.module.scope.path
            inputs[path] = _dense_input(args, kwargs)
            outputs = next_fun(*args, **kwargs)
            return outputs + perturbations[path].astype(outputs.dtype)

        with nn.intercept_methods(perturb_dense):
            outputs, _ = model.apply(params, model_state, x, train=False)
        values, weights = objective(outputs, targets)
        return jnp.sum(values), (inputs, weights)

    deltas, (inputs, weights) = jax.grad(total, has_aux=True)(zeros)
    sums = {}
    for path in layers:
        squared_deltas = deltas[path] ** 2
        weighted_inputs = weights[:, None] * inputs[path].astype(jnp.float32) ** 2
        sums[(*path, "kernel")] = jnp.matmul(
            weighted_inputs.T, squared_deltas, precision=jax.lax.Precision.HIGHEST
        )
        sums[(*path, "bias")] = jnp.matmul(
            weights, squared_deltas, precision=jax.lax.Precision.HIGHEST
        )
    return jax.tree_util.tree_map_with_path(
        lambda key_path, _: sums[tuple(k.key for k in key_path)], params
    )
