"""Jittable image augmentations, and a model wrapper that applies them to every train-mode input.

An augmentation is a pure function `augment(x, key) -> x` over a float batch [B, H, W, C]
that draws independently per example from `key`: `random_crop` (torchvision's
`RandomCrop(H, padding=4)`: zero padding, then a crop at a uniform offset) and `random_flip`
(`RandomHorizontalFlip()`), the training transforms of the DER paper's CIFAR and
TinyImageNet protocols (mammoth's `seq-cifar10`, `seq-tinyimg`).

`with_augmentation(model, augment)` returns a `Model` whose `apply(..., train=True, rng=key)`
augments its input before the forward pass. Every algorithm sends its replayed examples
through `model.apply(train=True)` too, so they are augmented afresh at each replay, while the
buffer keeps the raw examples (mammoth stores `not_aug_inputs` and transforms them when it
samples them); evaluation (`train=False`) sees raw inputs. `normalize=(mean, std)` then
standardises every input per channel, in train and eval mode, after the augmentation
(mammoth's `Normalize` ends both its train and test transforms, so padded pixels are 0
before normalisation).

    augment = make_augment(("crop", "flip"))                     # or None for ()
    model = with_augmentation(
        resnet18(10), augment, normalize=((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    )
    outputs, model_state = model.apply(params, model_state, x, train=True, rng=key)

Caveat: methods that compare a train-mode forward with an eval-mode one on the same batch
(LwF's and LFL's old-model outputs, iCaRL's distillation targets) see the augmented input
in the first and the raw one in the second; mammoth computes both on the augmented batch.

This module imports JAX; the rest of `sequax.data` is numpy only, so it is imported
explicitly (`from sequax.data.augment import ...`), not re-exported by `sequax.data`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Augment = Callable[[jax.Array, jax.Array], jax.Array]  # (x [B, H, W, C] float, key) -> x

# Keeps the augmentation's key apart from the one the wrapped model gets (dropout).
AUGMENT_STREAM = 0x617567


def random_crop(x: jax.Array, key: jax.Array, padding: int = 4) -> jax.Array:
    """Per example: pad H and W by `padding` zeros on each side, crop back to H x W at an
    offset drawn uniformly from [0, 2 * padding] on each axis (torchvision's `RandomCrop`
    with `padding`). Content moves by at most `padding` pixels; uncovered pixels are 0.
    """
    batch, height, width, channels = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def random_flip(x: jax.Array, key: jax.Array) -> jax.Array:
    """Per example, with probability 1/2: mirror left-right (torchvision's
    `RandomHorizontalFlip`)."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


AUGMENTATIONS: dict[str, Augment] = {"crop": random_crop, "flip": random_flip}


def make_augment(names: Sequence[str]) -> Augment | None:
    """The augmentations named in `names`, applied in that order (each with its own key
    `fold_in(key, position)`); None for an empty sequence.

    Raises:
      ValueError: an unknown or repeated name.
    """
    names = tuple(names)
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"augment={names!r}: use distinct names among {', '.join(map(repr, AUGMENTATIONS))}, "
            "e.g. ('crop', 'flip')"
            # "crop,flip" on the command line is one string: a tuple must be written quoted
            + (" (on the command line: --config.data.augment=\"('crop', 'flip')\")"
               if any("," in str(n) or "(" in str(n) for n in names) else "")
        )  # fmt: skip
    if not names:
        return None
    functions = [AUGMENTATIONS[n] for n in names]

    def augment(x: jax.Array, key: jax.Array) -> jax.Array:
        for position, function in enumerate(functions):
            x = function(x, jax.random.fold_in(key, position))
        return x

    return augment


def with_augmentation(model, augment: Augment | None, normalize=None):
    """`model` with its train-mode inputs augmented and, optionally, every input normalised.

    Args:
      model: a `sequax.core.models.Model`.
      augment: `augment(x, key) -> x` (e.g. from `make_augment`), run when `train=True` with a
        key derived from the `rng` given to `apply`; None: no augmentation.
      normalize: None, or per-channel `(mean, std)` applied as `(x - mean) / std` in train and
        eval mode, after the augmentation.

    The returned model's `module` is None: its `apply` no longer runs the linen module on the
    given inputs (tools that intercept the module's layers must not assume it does).

    Raises:
      ValueError: `normalize` is not two equal-length sequences with positive stds.
    """
    mean = std = None
    if normalize is not None and len(normalize):
        if len(normalize) != 2 or len(normalize[0]) != len(normalize[1]) or min(normalize[1]) <= 0:
            raise ValueError(
                f"normalize={normalize!r}: give ((mean per channel), (std > 0 per channel))"
            )
        mean, std = (jnp.asarray(v, jnp.float32) for v in normalize)

    def apply(params, model_state, x, *, train: bool, rng: jax.Array | None = None):
        if train and augment is not None:
            if rng is None:
                raise ValueError(
                    "an augmented model's apply(train=True) needs rng: the augmentations draw from "
                    "it"
                )
            x = augment(x, jax.random.fold_in(rng, AUGMENT_STREAM))
        if mean is not None:
            if x.shape[-1] != mean.shape[0]:
                raise ValueError(
                    f"normalize has {mean.shape[0]} channels but the inputs have {x.shape[-1]}; "
                    f"set config.data.normalize to one (mean, std) entry per channel"
                )
            x = (x - mean) / std
        return model.apply(params, model_state, x, train=train, rng=rng)

    return model._replace(apply=apply, module=None)
