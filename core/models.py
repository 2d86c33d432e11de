"""Backbones as functional `Model`s: `(init, apply)` over explicit params and state.

A `Model`'s `apply(params, model_state, x, *, train, rng)` returns
`({"logits": [B, C], "features": [B, D]}, new_model_state)`. Every head is a single
head over all classes; task-, class- and domain-incremental evaluation differ only in which
logits they mask (see `engine.heads`).

    model = mlp(num_classes=10, widths=(100, 100), init="xavier")
    model = resnet18(num_classes=10, nf=20)   # the reduced ResNet-18 (GEM/DER), BatchNorm
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
from jax import lax

PyTree = Any


class Model(NamedTuple):
    """A backbone used functionally. `init(key, x) -> (params, model_state)`.

    `module` is the linen module that `apply` runs with `params` as its "params" collection,
    unchanged (set by `from_linen`; None otherwise). Tools that intercept its layers read it
    (EWC's dense-layer Fisher, `algorithms.fisher`); replacing `apply` must clear it.

    `trainable(params) -> bool tree` marks the parameters the optimizer updates (None: all);
    the engine gives the rest a zero update (`sequax.core.param_groups.frozen`): a frozen
    pretrained backbone, or a prompt method's frozen ViT.
    """

    init: Callable[[jax.Array, jax.Array], tuple[PyTree, PyTree]]
    apply: Callable[..., tuple[dict[str, jax.Array], PyTree]]
    num_classes: int
    module: nn.Module | None = None
    trainable: Callable[[PyTree], PyTree] | None = None


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


# ---------------- The reduced ResNet-18 of the GEM and DER papers ------------------------------


def _torch_conv_init():
    """PyTorch's default `nn.Conv2d` weight init, kaiming-uniform(a=sqrt(5)): U(±1/sqrt(fan_in))
    with fan_in = in_channels * kh * kw (flax kernels are [kh, kw, in, out])."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class TorchBatchNorm(nn.Module):
    """BatchNorm over the channel (last) axis with the semantics of torch's `nn.BatchNorm2d`.

    Train mode normalises with the batch's mean and biased variance and moves the running
    estimates ("batch_stats": mean, var) towards the batch's by `momentum` (torch's 0.1, i.e.
    running = 0.9 running + 0.1 batch), using the *unbiased* variance n/(n-1) as torch does
    (flax's `nn.BatchNorm` stores the biased one). Eval mode normalises with the running
    estimates. Weight ("scale") starts at 1, bias at 0, running mean at 0 and variance at 1.

    Attributes:
      momentum: torch's momentum, the weight of the new batch statistic (0.1).
      epsilon: added to the variance before the square root (torch's eps, 1e-5).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)
        )
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((features,), jnp.float32)
        )
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)  # two-pass: no E[x²] - E[x]² cancellation
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (
                    1 - self.momentum
                ) * running_var.value + self.momentum * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        return (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    # torch's padding=1 pads one pixel on each side; flax's "SAME" would pad (0, 1) at stride 2
    # and shift every strided output by one pixel.
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_torch_conv_init(),
        name=name,
    )


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-BN layers and a shortcut (1x1 conv-BN when the
    shape changes), ReLU after the sum (He et al. 2016; mammoth's `BasicBlock`).

    Attributes:
      planes: output channels.
      stride: stride of the first conv and of the shortcut (2 halves the spatial size).
    """

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = nn.relu(
            TorchBatchNorm(name="bn1")(_conv(self.planes, 3, self.stride, "conv1")(x), train)
        )
        out = TorchBatchNorm(name="bn2")(_conv(self.planes, 3, 1, "conv2")(out), train)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            shortcut = _conv(self.planes, 1, self.stride, "shortcut_conv")(x)
            shortcut = TorchBatchNorm(name="shortcut_bn")(shortcut, train)
        return nn.relu(out + shortcut)


class ResNet(nn.Module):
    """The ResNet-18 of the GEM and DER papers over NHWC images (any size, any channels).

    conv1 is 3x3 with stride 1 and no max-pooling (a CIFAR-sized stem), then four stages of
    basic blocks at widths nf, 2nf, 4nf, 8nf (strides 1, 2, 2, 2), global average pooling and
    a linear head. `features` is the pooled vector [B, 8nf]. Parameter and layer names follow
    mammoth's `backbone/ResNet18.py` (conv1, bn1, layer{1-4}_{block}, linear) so that weights
    map one to one onto the torch module's `state_dict`.

    Attributes:
      num_classes: width of the single head.
      nf: width of the first stage: 20 for the "reduced" ResNet-18 of GEM (Lopez-Paz &
        Ranzato 2017), 64 for the full-width one mammoth's DER experiments use.
      num_blocks: basic blocks per stage ((2, 2, 2, 2) is ResNet-18).
    """

    num_classes: int
    nf: int = 20
    num_blocks: Sequence[int] = (2, 2, 2, 2)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        x = nn.relu(TorchBatchNorm(name="bn1")(_conv(self.nf, 3, 1, "conv1")(x), train))
        for stage, blocks in enumerate(self.num_blocks):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.nf * 2**stage, stride, name=f"layer{stage + 1}_{block}")(
                    x, train
                )
        features = x.mean(axis=(1, 2))  # mammoth's avg_pool2d over the whole (square) map
        kernel_init, bias_init = dense_initializers("torch", features.shape[-1])
        logits = nn.Dense(
            self.num_classes, kernel_init=kernel_init, bias_init=bias_init, name="linear"
        )(features)
        return {"logits": logits, "features": features}


def resnet18(num_classes: int, nf: int = 20) -> Model:
    """The reduced ResNet-18 (nf=20, GEM/A-GEM) or mammoth's full-width one (nf=64, DER).

    PyTorch's default initialisation (kaiming-uniform(a=sqrt(5)) convs and linear, BatchNorm
    weight 1 and bias 0); its BatchNorm statistics are the model state, updated in train
    mode exactly as torch updates them (`TorchBatchNorm`).

    `sequax.engine.build.resnet18(..., init_from="torch")` starts it from the torch zoo
    ResNet-18's draw instead (the engine's torch bridge).
    """
    if not (isinstance(nf, int) and nf >= 1):
        raise ValueError(f"resnet18 nf={nf!r} must be a positive integer (20: reduced, 64: full)")
    return from_linen(ResNet(num_classes=num_classes, nf=nf), num_classes)
