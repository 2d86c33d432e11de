"""Vision Transformers (Dosovitskiy et al. 2021) with prompt and prefix hooks, as `Model`s.

The module and parameter names are big_vision's (google-research/big_vision
`big_vision/models/vit.py`): `embedding` (the patch convolution), `pos_embedding` [1, N, D]
added to the patches *before* the class token `cls` is prepended, `Transformer/encoderblock_i/
{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1,
MlpBlock_0/{Dense_0,Dense_1}}`, `Transformer/encoder_norm` and `head`. A big_vision or
vit_jax `.npz` therefore maps onto these parameters by name, and a timm `state_dict` by a
fixed table (`sequax.engine.vit_weights`).

    model = vit(num_classes=100, variant="B/16")                   # ViT-B/16 at 224 px
    model = vit(10, width=64, depth=4, num_heads=4, mlp_dim=128, patch_size=4)  # 28-32 px
    outputs, _ = model.apply(params, {}, x, train=False)   # logits, features ([CLS]), tokens

Prompt methods call the linen module (`model.module`) with two hooks:

* `prompts={layer: tokens [B, Lp, D]}` prepends tokens to that layer's input, right after the
  class token (prompt-tuning: L2P at layer 0, deep prompt-tuning at several layers);
* `prefixes={layer: (keys [B, Lp, D], values [B, Lp, D])}` prepends keys and values to that
  layer's attention only (prefix-tuning: DualPrompt, CODA-Prompt), leaving the sequence length.

`outputs["tokens"]` is the whole normalised output sequence, [CLS, prompts..., patches], so a
method can pool its prompt positions (L2P's head reads their mean).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sequax.core.models import Model, from_linen
from sequax.core.param_groups import trainable_mask

# Table 2 of Zhai et al. 2022 (arXiv:2106.04560), as big_vision's `decode_variant`.
VARIANTS = {
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
}


class PatchEmbedding(nn.Module):
    """The patch convolution (kernel [p, p, C, D], stride p, no padding) as one matrix
    product over the flattened patches: the same parameters and values as `nn.Conv`, without
    a convolution, which XLA:CPU runs slowly (and never inside a `while` loop:
    docs/architecture.md)."""

    width: int
    patch_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, height, wide, c = x.shape
        p = self.patch_size
        h, w = height // p, wide // p
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.width))
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        patches = x[:, : h * p, : w * p].reshape(n, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5)
        y = patches.reshape(n, h, w, p * p * c) @ kernel.reshape(p * p * c, self.width)
        return y + bias


class Attention(nn.Module):
    """Multi-head self-attention with flax's `MultiHeadDotProductAttention` parameters
    (query/key/value kernels [D, heads, D/heads], out [heads, D/heads, D]) and an optional
    prefix of raw keys and values (DualPrompt's `PreT_Attention`: not projected)."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, prefix=None) -> jax.Array:
        batch, _, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads

        def dense(name):
            return nn.DenseGeneral(
                (self.num_heads, head_dim), kernel_init=nn.initializers.xavier_uniform(), name=name
            )

        q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)  # [B, L, H, hd]
        if prefix is not None:
            pk, pv = (jnp.reshape(p, (batch, -1, self.num_heads, head_dim)) for p in prefix)
            k, v = jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1)
        q = q / math.sqrt(head_dim)
        weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(
            width, axis=(-2, -1), kernel_init=nn.initializers.xavier_uniform(), name="out"
        )(y)


class MlpBlock(nn.Module):
    """The feed-forward block: Dense, GELU, Dense."""

    mlp_dim: int
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inits = dict(
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        y = nn.gelu(nn.Dense(self.mlp_dim, **inits)(x), approximate=self.approximate_gelu)
        return nn.Dense(x.shape[-1], **inits)(y)


class Encoder1DBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    mlp_dim: int
    num_heads: int
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, prefix=None) -> jax.Array:
        y = nn.LayerNorm(epsilon=1e-6, name="LayerNorm_0")(x)
        x = x + Attention(self.num_heads, name="MultiHeadDotProductAttention_0")(y, prefix)
        y = nn.LayerNorm(epsilon=1e-6, name="LayerNorm_1")(x)
        return x + MlpBlock(self.mlp_dim, self.approximate_gelu, name="MlpBlock_0")(y)


class Encoder(nn.Module):
    """The blocks (`encoderblock_i`) and the final `encoder_norm`."""

    depth: int
    mlp_dim: int
    num_heads: int
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x, prompts: Mapping[int, jax.Array], prefixes: Mapping[int, Any]):
        for layer in range(self.depth):
            if layer in prompts:  # prompt-tuning: new tokens right after [CLS]
                x = jnp.concatenate([x[:, :1], prompts[layer].astype(x.dtype), x[:, 1:]], axis=1)
            x = Encoder1DBlock(
                self.mlp_dim, self.num_heads, self.approximate_gelu, name=f"encoderblock_{layer}"
            )(x, prefixes.get(layer))
        return nn.LayerNorm(epsilon=1e-6, name="encoder_norm")(x)


class ViT(nn.Module):
    """A ViT with a class token over NHWC images in [0, 1].

    Attributes:
      num_classes: width of the head (0: no head, `logits` are the features).
      patch_size: side of the square patches (16 for the 224 px ViTs, 4 for 28-32 px).
      width, depth, mlp_dim, num_heads: the transformer's size (`VARIANTS`).
      approximate_gelu: the tanh GELU of big_vision and vit_jax (True), or the exact erf GELU
        of timm and torch's `nn.GELU` (False).
      mean, std: per-channel input normalisation `(x - mean) / std` of the [0, 1] pixels;
        0.5/0.5 gives the [-1, 1] inputs the AugReg checkpoints were trained on.
      channels: the channels the patch convolution expects; a one-channel image is repeated to
        fill them (a grey MNIST digit into an RGB-pretrained ViT). 0: the input's own.
      head_zeroinit: start the head at zero (big_vision's default); False: LeCun normal.
      resize: resize the images to resize x resize pixels first (bilinear, `jax.image.resize`),
        e.g. 224 for CIFAR's 32 px images into a 224 px pretrained ViT, as LAMDA-PILOT's
        transforms do; 0 keeps their size.
    """

    num_classes: int
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    approximate_gelu: bool = True
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)
    channels: int = 0
    head_zeroinit: bool = True
    resize: int = 0

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        *,
        prompts: Mapping[int, jax.Array] | None = None,
        prefixes: Mapping[int, Any] | None = None,
    ) -> dict[str, jax.Array]:
        del train  # no dropout: continual-learning recipes for ViTs train without it
        if self.resize and x.shape[1:3] != (self.resize, self.resize):
            x = jax.image.resize(x, (x.shape[0], self.resize, self.resize, x.shape[3]), "bilinear")
        x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        if self.channels and x.shape[-1] == 1 and self.channels > 1:
            x = jnp.repeat(x, self.channels, axis=-1)
        p = self.patch_size
        x = PatchEmbedding(self.width, p, name="embedding")(x)
        n, h, w, c = x.shape
        x = jnp.reshape(x, (n, h * w, c))
        x = x + self.param(
            "pos_embedding", nn.initializers.normal(stddev=1 / math.sqrt(c)), (1, h * w, c)
        )
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)), x], axis=1)
        prompts, prefixes = dict(prompts or {}), dict(prefixes or {})
        bad = [layer for layer in [*prompts, *prefixes] if not 0 <= layer < self.depth]
        if bad:
            raise ValueError(f"prompt layer {bad[0]} is outside the ViT's 0..{self.depth - 1}")
        tokens = Encoder(
            self.depth, self.mlp_dim, self.num_heads, self.approximate_gelu, name="Transformer"
        )(x, prompts, prefixes)
        features = tokens[:, 0]
        if not self.num_classes:
            return {"logits": features, "features": features, "tokens": tokens}
        kernel_init = (
            nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
        )
        logits = nn.Dense(self.num_classes, kernel_init=kernel_init, name="head")(features)
        return {"logits": logits, "features": features, "tokens": tokens}


def vit_module(num_classes: int, variant: str | None = None, **kwargs) -> ViT:
    """The `ViT` of a variant ("Ti/16", "S/16", "B/16", "L/16") with `kwargs` overriding it."""
    settings: dict[str, Any] = {}
    if variant:
        size, _, patch = variant.partition("/")
        if size not in VARIANTS:
            raise ValueError(f"vit variant {variant!r}: size must be one of {', '.join(VARIANTS)}")
        settings = dict(VARIANTS[size])
        if patch:
            settings["patch_size"] = int(patch)
    settings.update(kwargs)
    for key in ("mean", "std"):
        if key in settings:
            settings[key] = tuple(float(v) for v in settings[key])
    return ViT(num_classes=num_classes, **settings)


def backbone_mask(params, trainable: Sequence[str] | str | None):
    """`param_groups.trainable_mask` with the shorthands "all" (or None/empty) and "head"."""
    if trainable in (None, "", "all", ()):
        return None
    if trainable == "head":
        trainable = ("head/.*",)
    if isinstance(trainable, str):
        trainable = (trainable,)
    return trainable_mask(params, tuple(trainable))


def vit(
    num_classes: int,
    variant: str | None = None,
    *,
    trainable: Sequence[str] | str | None = None,
    **kwargs,
) -> Model:
    """A ViT as a `Model` whose outputs add "tokens" (the normalised sequence).

    `trainable`: the parameters the optimizer updates, as path patterns over this tree
    ("head" for `("head/.*",)`: a frozen backbone); None trains everything. The engine reads
    the mask from `Model.trainable` (`sequax.core.param_groups.frozen`).
    """
    module = vit_module(num_classes, variant, **kwargs)
    model = from_linen(module, num_classes)
    if trainable in (None, "", "all", ()):
        return model
    return model._replace(trainable=lambda params: backbone_mask(params, trainable))
