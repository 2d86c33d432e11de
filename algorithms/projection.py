"""Gradient surgery for A-GEM and GEM: projections of the step's gradient, as optax transforms.

A-GEM and GEM change the gradient before the optimizer sees it. Their `loss` computes the
reference gradients on the episodic memory and hands them to the step in aux["tx_args"];
`optimizer_for` chains the transform below in front of the optimizer, and the step calls
`tx.update(grads, opt_state, params, **tx_args)`. Each projection treats all parameters as
one flat vector, as the reference code's `store_grad` does: dot products are summed over
the leaves (the same numbers, without concatenating the leaves into a copy).

    tx = optax.chain(agem_projection(), optax.sgd(0.1))
    updates, opt_state = tx.update(grads, opt_state, params, reference=g_ref)
    tx = optax.chain(gem_projection(margin=0.5, eps=1e-3), optax.sgd(0.1))
    updates, opt_state = tx.update(grads, opt_state, params, memories=g_tasks, seen=seen)
    u = solve_nonnegative_qp(P, c, mask)   # argmin_{u >= 0} u'Pu/2 + c'u, in-jit

References:
  Chaudhry, Ranzato, Rohrbach, Elhoseiny, "Efficient Lifelong Learning with A-GEM", ICLR 2019.
  Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017
  (`project2cone2` in facebookresearch/GradientEpisodicMemory, copied by mammoth's gem.py).
  Lawson & Hanson, "Solving Least Squares Problems", 1974, ch. 23 (the NNLS active set).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

PyTree = Any


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """The dot product of two pytrees read as flat vectors."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def agem_project(gradient: PyTree, reference: PyTree) -> tuple[PyTree, jax.Array]:
    """A-GEM: g - (g.r / r.r) r when g.r < 0, else g unchanged; and whether it projected.

    A zero reference (an empty memory) never projects."""
    dot = tree_vdot(gradient, reference)
    norm = tree_vdot(reference, reference)
    violated = dot < 0
    scale = jnp.where(violated, dot / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree.map(lambda g, r: g - scale * r, gradient, reference), violated


def solve_nonnegative_qp(
    P: jax.Array, c: jax.Array, mask: jax.Array, max_iterations: int | None = None
):
    """argmin over u >= 0 of `u'Pu/2 + c'u`, for the variables where `mask` holds (others 0).

    Lawson and Hanson's NNLS active-set method written for the QP (P symmetric positive
    definite on the mask): the passive set F starts empty; an iteration solves the
    unconstrained problem on F. If that solution z is positive on F it is accepted, and the
    variable outside F with the largest negative gradient -(Pz + c) joins F (none: z is
    optimal, the KKT conditions hold). Otherwise the iterate moves towards z until the first
    variable reaches 0, which leaves F. Exact in finitely many iterations (a few per
    variable); the cap only guards against round-off cycling, and every iterate is feasible.
    Fixed shapes throughout: the solve on F is the full system with the rows and columns of
    the other variables replaced by the identity, so it runs inside a compiled step.
    """
    n = c.shape[0]
    dtype = c.dtype
    max_iterations = 3 * n + 10 if max_iterations is None else max_iterations
    index = jnp.arange(n)
    round_off = 10 * n * jnp.finfo(dtype).eps

    def solve_on(passive):
        system = jnp.where(passive[:, None] & passive[None, :], P, 0) + jnp.diag(
            jnp.where(passive, 0, 1).astype(dtype)
        )
        return jnp.where(passive, jnp.linalg.solve(system, jnp.where(passive, -c, 0)), 0)

    def body(carry):
        u, passive, iteration, _ = carry
        z = solve_on(passive)
        feasible = jnp.all(jnp.where(passive, z > 0, True))
        # Accept z; free the variable whose gradient pulls hardest away from its bound 0.
        descent = -(P @ z + c)
        tolerance = round_off * (jnp.max(jnp.abs(c)) + jnp.max(jnp.abs(P)) * jnp.sum(jnp.abs(z)))
        candidates = mask & ~passive & (descent > tolerance)
        entering = jnp.argmax(jnp.where(candidates, descent, -jnp.inf))
        grown = passive | (candidates.any() & (index == entering))
        # Or step from u towards z up to the first bound, and release that variable.
        blocking = passive & (z <= 0)
        gap = u - z
        ratio = jnp.where(blocking, u / jnp.where(blocking & (gap > 0), gap, 1), jnp.inf)
        leaving = jnp.argmin(ratio)
        stepped = u + jnp.clip(ratio[leaving], 0, 1) * (z - u)
        shrunk = passive & (stepped > 0) & (index != leaving)
        u = jnp.where(feasible, z, jnp.where(shrunk, stepped, 0))
        passive = jnp.where(feasible, grown, shrunk)
        return u, passive, iteration + 1, feasible & ~candidates.any()

    def not_done(carry):
        return ~carry[3] & (carry[2] < max_iterations)

    init = (jnp.zeros(n, dtype), jnp.zeros(n, bool), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    u, _, _, _ = lax.while_loop(not_done, body, init)
    return u


def gem_project(
    gradient: PyTree, memories: PyTree, seen: jax.Array, margin, eps
) -> tuple[PyTree, jax.Array]:
    """GEM's `project2cone2`, when any seen task's constraint <g, g_k> >= 0 is violated.

    `memories` has the gradient's structure with a leading task axis (g_k per task), `seen`
    (bool [T]) marks the tasks with a memory. With M the seen tasks' gradients as rows, the
    dual QP of the reference code is

        min_v  v'Pv/2 + (Mg)'v   s.t.  v >= margin,    P = (MM' + (MM')')/2 + eps I

    (quadprog's `solve_qp(P, -Mg, I, margin)`, which minimises v'Pv/2 - a'v with a = -Mg),
    and the update is g + M'v. Substituting v = margin + u gives the non-negative QP solved
    here. Unseen tasks take no part (their v is 0). Returns (gradient, whether it projected).
    """
    leaves = jax.tree.leaves(memories)
    rows = [m.reshape(m.shape[0], -1) for m in leaves]
    gram = sum(r @ r.T for r in rows)
    product = sum(r @ g.reshape(-1) for r, g in zip(rows, jax.tree.leaves(gradient)))
    violated = jnp.any(seen & (product < 0))
    P = 0.5 * (gram + gram.T) + eps * jnp.eye(seen.shape[0], dtype=gram.dtype)
    shift = jnp.where(seen, margin, 0).astype(gram.dtype)
    c = product + P @ shift

    def solve(P, c):
        return jnp.where(seen, solve_nonnegative_qp(P, c, seen) + shift, 0)

    v = lax.cond(violated, solve, lambda P, c: jnp.zeros_like(c), P, c)
    projected = jax.tree.map(lambda g, m: g + jnp.tensordot(v, m, axes=1), gradient, memories)
    return jax.tree.map(lambda p, g: jnp.where(violated, p, g), projected, gradient), violated


def agem_projection() -> optax.GradientTransformationExtraArgs:
    """A-GEM as an optax transform: `update(grads, state, params, reference=g_ref)`."""

    def update(updates, state, params=None, *, reference, **extra_args):
        del params, extra_args
        return agem_project(updates, reference)[0], state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def gem_projection(margin, eps) -> optax.GradientTransformationExtraArgs:
    """GEM as an optax transform: `update(grads, state, params, memories=g_tasks, seen=mask)`."""

    def update(updates, state, params=None, *, memories, seen, **extra_args):
        del params, extra_args
        return gem_project(updates, memories, seen, margin, eps)[0], state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)
