"""Gradient-norm clipping with PyTorch's semantics, shared by the optimiser and the methods.

    grads = clip_grad_norm(grads, 1.0)                  # torch.nn.utils.clip_grad_norm_
    tx = optax.chain(clip_grad_norm_transform(1.0), optax.sgd(0.1))   # config.optimizer.clip_norm

`torch.nn.utils.clip_grad_norm_(params, max_norm)` scales every gradient by
min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ the global L2 norm over all of them. optax's
`clip_by_global_norm` scales by max_norm / max(‖g‖, max_norm), which differs by the 1e-6;
the reference codes sequax transcribes (HAT, La-MAML) and PyTorch users' loops use torch's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def clip_grad_norm(tree: PyTree, max_norm) -> PyTree:
    """`tree` scaled by min(1, max_norm / (global L2 norm + 1e-6)), as torch's clip_grad_norm_."""
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, tree)


def clip_grad_norm_transform(max_norm) -> optax.GradientTransformation:
    """`clip_grad_norm` as a stateless optax transformation (chained in front of an optimiser)."""

    def update(updates, state, params=None):
        return clip_grad_norm(updates, max_norm), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
