"""Backbones as functional `Model`s: `(init, apply)` over explicit params and state.

A `Model`'s `apply(params, model_state, x, *, train, rng)` returns
`({"logits": [B, C], "features": [B, D]}, new_model_state)`. Every head is a single
head over all classes; task-, class- and domain-incremental evaluation differ only in which
logits they mask (see `engine.heads`).

    model = mlp(num_classes=10, widths=(100, 100), init="xavier")
    params, model_state = model.init(jax.random.PRNGKey(0), x)
    outputs, model_state = model.apply(params, model_state, x, train=True, rng=key)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any


class Model(NamedTuple):
    """A backbone used functionally. `init(key, x) -> (params, model_state)`.

    `module` is the linen module that `apply` runs with `params` as its "params" collection,
    unchanged (set by `from_linen`; None otherwise). Tools that intercept its layers read it
    (EWC's dense-layer Fisher, `algorithms.fisher`); replacing `apply` must clear it.
    """

    init: Callable[[jax.Array, jax.Array], tuple[PyTree, PyTree]]
    apply: Callable[..., tuple[dict[str, jax.Array], PyTree]]
    num_classes: int
    module: nn.Module | None = None


def _torch_default_bias_init(fan_in: int):
    """PyTorch's `nn.Linear` bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense_initializers(init: str, fan_in: int):
    """(kernel_init, bias_init) for a dense layer.

    "xavier": Glorot-uniform weights, zero bias (the DER/mammoth MNIST MLP).
    "torch": PyTorch's default `nn.Linear` init, kaiming-uniform(a=sqrt(5)) weights, i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same range for the bias.
    """
    if init == "xavier":
        return nn.initializers.xavier_uniform(), nn.initializers.zeros
    if init == "torch":
        return (
            nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            _torch_default_bias_init(fan_in),
        )
    raise ValueError(f"unknown init {init!r}; use 'xavier' or 'torch'")


class MLP(nn.Module):
    """A ReLU multilayer perceptron over flattened inputs.

    Attributes:
      widths: hidden layer widths, e.g. (100, 100) for the DER MNIST MLP, (256, 256) for
        the Mirzadeh protocol.
      num_classes: width of the single output head.
      dropout: drop probability after every hidden activation (0 disables; Stable SGD uses
        0.25).
      initializer: "xavier" (DER) or "torch" (PyTorch's default `nn.Linear` init).
    """

    widths: Sequence[int]
    num_classes: int
    dropout: float = 0.0
    initializer: str = "xavier"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        x = x.reshape(x.shape[0], -1)
        for width in self.widths:
            kernel_init, bias_init = dense_initializers(self.initializer, x.shape[-1])
            x = nn.relu(nn.Dense(width, kernel_init=kernel_init, bias_init=bias_init)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        features = x
        kernel_init, bias_init = dense_initializers(self.initializer, x.shape[-1])
        logits = nn.Dense(self.num_classes, kernel_init=kernel_init, bias_init=bias_init)(x)
        return {"logits": logits, "features": features}


def from_linen(module: nn.Module, num_classes: int) -> Model:
    """Wraps a linen module `module(x, train) -> dict` as a functional `Model`.

    Variables other than "params" (e.g. "batch_stats") are the model state; they are
    updated in train mode and returned, never mutated in place.
    """

    def init(key: jax.Array, x: jax.Array):
        params_key, dropout_key = jax.random.split(key)
        variables = module.init({"params": params_key, "dropout": dropout_key}, x, train=False)
        variables = dict(variables)
        params = variables.pop("params")
        return params, variables

    def apply(params, model_state, x, *, train: bool, rng: jax.Array | None = None):
        rngs = {"dropout": rng} if (train and rng is not None) else {}
        variables = {"params": params, **model_state}
        if train and model_state:
            outputs, new_state = module.apply(
                variables, x, train=True, rngs=rngs, mutable=list(model_state)
            )
            return outputs, dict(new_state)
        return module.apply(variables, x, train=train, rngs=rngs), model_state

    return Model(init=init, apply=apply, num_classes=num_classes, module=module)


def mlp(
    num_classes: int,
    widths: Sequence[int] = (100, 100),
    dropout: float = 0.0,
    init: str = "xavier",
) -> Model:
    """The MLP of the DER (784-100-100-10) and Mirzadeh (784-256-256-10) protocols."""
    dense_initializers(init, 1)  # validate early, before any tracing
    module = MLP(widths=tuple(widths), num_classes=num_classes, dropout=dropout, initializer=init)
    return from_linen(module, num_classes)
