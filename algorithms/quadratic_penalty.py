"""The quadratic penalty shared by importance-based methods (EWC, online EWC, SI, MAS, RWalk).

`(lam / 2) * sum_i importance_i * (theta_i - anchor_i)^2`, whose gradient is
`lam * importance * (theta - anchor)`. The state has the parameters' structure and is
allocated at init: importance zeros (so the penalty is exactly 0 on task 0) and anchor a
copy of the initial parameters.

Two consolidation rules close a task, given its importance F and final parameters theta_t:
- online (Schwarz et al. 2018): importance <- gamma * importance + F; anchor <- theta_t.
- separate (Kirkpatrick et al. 2017): the sum over tasks of F_t (theta - theta_t)^2 equals
  (sum F_t) (theta - m)^2 + const with m the F-weighted mean of the anchors, so the same
  two arrays hold it exactly, whatever the number of tasks: importance <- importance + F;
  anchor <- (importance_old * anchor + F * theta_t) / (importance_old + F). The constant
  does not affect training and is not reported in the loss.

    penalty_state = quadratic_init(params)
    value = quadratic_penalty(params, penalty_state, lam)
    penalty_state = consolidate_online(penalty_state, fisher, params, gamma)

SI, MAS and RWalk write their penalty without the 1/2 (`c * sum Ω (θ - θ*)^2`, as their
papers): they pass `lam = 2 * c`. SI and MAS close a task with `consolidate_online(..., 1.0)`
(a sum of importances); RWalk replaces the importance with its normalised Fisher and score.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class QuadraticState(NamedTuple):
    importance: PyTree  # same structure as params; zeros before the first task ends
    anchor: PyTree  # same structure as params


def quadratic_init(params: PyTree) -> QuadraticState:
    return QuadraticState(
        importance=jax.tree.map(jnp.zeros_like, params),
        anchor=jax.tree.map(jnp.array, params),  # a copy, not an alias of donated buffers
    )


def quadratic_penalty(params: PyTree, state: QuadraticState, lam) -> jax.Array:
    """`(lam / 2) * sum importance * (params - anchor)^2` over every leaf."""
    terms = jax.tree.map(
        lambda p, f, a: jnp.sum(f * (p - a) ** 2), params, state.importance, state.anchor
    )
    return 0.5 * lam * sum(jax.tree.leaves(terms))


def consolidate_online(
    state: QuadraticState, importance: PyTree, params: PyTree, gamma
) -> QuadraticState:
    """Online EWC: decay the accumulated importance by gamma, add the new, re-anchor."""
    return QuadraticState(
        importance=jax.tree.map(lambda old, new: gamma * old + new, state.importance, importance),
        anchor=params,
    )


def consolidate_separate(
    state: QuadraticState, importance: PyTree, params: PyTree
) -> QuadraticState:
    """Separate penalties per task, folded exactly into one importance and one anchor."""

    def anchor(old_f, old_a, new_f, p):
        total = old_f + new_f
        merged = (old_f * old_a + new_f * p) / jnp.where(total > 0, total, 1.0)
        return jnp.where(total > 0, merged, p)

    return QuadraticState(
        importance=jax.tree.map(jnp.add, state.importance, importance),
        anchor=jax.tree.map(anchor, state.importance, state.anchor, importance, params),
    )
