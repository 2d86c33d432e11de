"""Parameter groups: which parts of a parameter tree train, and at which rate.

A group is chosen by regular expressions over a parameter's path, its keys joined by "/"
(the names big_vision's `config.schedule` and optax's `multi_transform` examples use):
"head/kernel", "Transformer/encoderblock_3/MlpBlock_0/Dense_0/bias", "prompt/keys".

    mask = trainable_mask(params, ("head/.*",))              # bool tree: only the head trains
    tx = frozen(optax.adam(1e-3), lambda p: trainable_mask(p, ("head/.*",)))
    tx = scaled(tx, lambda p: group_factors(p, {"backbone/.*": 0.01}))   # a slow learner

A frozen parameter's update is exactly zero (`optax.set_to_zero`), whatever the optimizer
does with it (weight decay included), and its gradient is never used, so XLA drops its
computation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def path_of(key_path) -> str:
    """ "a/b/c" for a `jax.tree_util` key path (dict keys, attributes, sequence indices)."""
    return jax.tree_util.keystr(tuple(key_path), simple=True, separator="/")


def paths(params: PyTree) -> list[str]:
    """Every leaf's path, in the tree's leaf order."""
    return [path_of(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def trainable_mask(params: PyTree, patterns: Sequence[str]) -> PyTree:
    """A bool tree: True where a leaf's path fully matches one of `patterns`.

    Raises:
      ValueError: a pattern matches no parameter (a typo would otherwise freeze everything).
    """
    compiled = [re.compile(p) for p in patterns]
    used = [False] * len(compiled)

    def match(key_path, _):
        path = path_of(key_path)
        hit = False
        for i, pattern in enumerate(compiled):
            if pattern.fullmatch(path):
                used[i] = hit = True
        return hit

    mask = jax.tree_util.tree_map_with_path(match, params)
    unused = [p for p, u in zip(patterns, used, strict=True) if not u]
    if unused:
        shown = ", ".join(paths(params)[:4])
        raise ValueError(
            f"trainable pattern {unused[0]!r} matches no parameter; paths look like {shown}"
        )
    return mask


def group_factors(params: PyTree, factors: Mapping[str, float], default: float = 1.0) -> PyTree:
    """A float tree: the factor of the first pattern of `factors` a leaf's path fully matches,
    else `default`."""
    compiled = [(re.compile(p), float(f)) for p, f in factors.items()]

    def factor(key_path, _):
        path = path_of(key_path)
        return next((f for pattern, f in compiled if pattern.fullmatch(path)), default)

    return jax.tree_util.tree_map_with_path(factor, params)


def frozen(
    tx: optax.GradientTransformation, mask_fn: Callable[[PyTree], PyTree] | None
) -> optax.GradientTransformation:
    """`tx` on the leaves `mask_fn(params)` marks True; a zero update (and no optimizer state)
    on the rest. `mask_fn` None: `tx` unchanged."""
    if mask_fn is None:
        return tx

    def labels(params):
        return jax.tree.map(lambda t: "train" if t else "freeze", mask_fn(params))

    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def scaled(
    tx: optax.GradientTransformation, factors_fn: Callable[[PyTree], PyTree]
) -> optax.GradientTransformation:
    """`tx` followed by each leaf's update times its factor (`factors_fn(params)`): a group's
    learning rate times that factor for SGD, momentum and Adam alike (their updates are
    linear in the learning rate)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("scaled(...) needs params to find each parameter's group")
        factors = factors_fn(params)
        return jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors), state

    return optax.chain(tx, optax.GradientTransformation(init, update))
