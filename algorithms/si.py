"""Synaptic Intelligence (SI): importance from each parameter's share of the loss decrease.

During a task every step adds `-g * delta` to a running path integral ω (per parameter), where
`g` is the step's gradient and `delta` its parameter change (`aux["grads"]`, `aux["updates"]`).
At the task's end the importance grows by ω normalised by how far the parameter moved:

    Ω <- Ω + ω / ((θ_end - θ_start)^2 + ξ);   ω <- 0;   θ* <- θ_end (also the next start)
    loss = CE + c * sum_i Ω_i (θ_i - θ*_i)^2

    algorithm = SI(c=1.0, xi=0.9)

As mammoth's `si.py`: `g` is the gradient of the *total* loss (cross-entropy plus penalty)
after clipping each entry to [-clip, clip] (its `clip_grad_value_(params, 1)`); mammoth adds
`lr * g^2`, which is `-g * delta` under plain SGD, and `-g * delta` stays the path integral
with momentum or weight decay. (Zenke et al.'s code used the unregularised loss's gradient.)
The clipping is applied to SI's own loss (the gradient of the parameters is clipped as it
leaves `loss`); under `combine(base, SI(...))` the base's loss is not clipped, and ω uses the
combined objective's gradient. No ReLU on Ω (mammoth has none; Zenke et al.'s code has one).

Note on c: the penalty has no 1/2, as in the paper's surrogate loss and mammoth, so c is mammoth's c
(DER best-args: Seq-MNIST c 1.0, ξ 0.9; P-MNIST c 0.5, ξ 1.0; R-MNIST c 1.0, ξ 1.0); its
gradient is `2 c Ω (θ - θ*)`, i.e. EWC's lam = 2c in `quadratic_penalty`'s convention.

References:
  Zenke, Poole, Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017.
  Buzzega et al., NeurIPS 2020 (the aimagelab/mammoth `models/si.py` this follows).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sequax.algorithms.losses import penalised_cross_entropy
from sequax.algorithms.quadratic_penalty import (
    QuadraticState,
    consolidate_online,
    quadratic_init,
    quadratic_penalty,
)
from sequax.core.protocol import Algorithm, is_number


class SIState(NamedTuple):
    penalty: QuadraticState  # Ω (zeros before the first task ends) and θ*, the current task's start
    path: Any  # ω: the current task's path integral, parameters' structure


@jax.custom_vjp
def clip_gradient(bound, tree):
    """The identity, whose gradient is clipped entrywise to [-bound, bound] on the way back."""
    return tree


def _clip_forward(bound, tree):
    return tree, bound


def _clip_backward(bound, cotangent):
    return jnp.zeros_like(bound), jax.tree.map(
        lambda g: jnp.clip(g, -bound, bound).astype(g.dtype), cotangent
    )


clip_gradient.defvjp(_clip_forward, _clip_backward)


@dataclasses.dataclass(frozen=True)
class SI(Algorithm):
    """Synaptic Intelligence.

    Attributes:
      c: penalty strength (≥ 0), the paper's and mammoth's c (no 1/2; see the module docstring).
      xi: damping ξ (> 0) of the normalisation ω / (Δθ² + ξ); keeps Ω finite for parameters
        that barely moved.
      clip: each entry of the loss's gradient is clipped to [-clip, clip] (> 0) before the
        optimiser and the path integral see it: mammoth's `clip_grad_value_(..., 1)`, hence
        1.0; `float("inf")` disables it.
    """

    needs_boundaries = "the path integral is consolidated when a task ends"

    c: float = 1.0
    xi: float = 0.9
    clip: float = 1.0

    def __post_init__(self):
        if is_number(self.c) and self.c < 0:
            raise ValueError(f"SI c={self.c} must be >= 0")
        if is_number(self.xi) and not self.xi > 0:
            raise ValueError(f"SI xi={self.xi} must be > 0")
        if is_number(self.clip) and not self.clip > 0:
            raise ValueError(f"SI clip={self.clip} must be > 0 (float('inf') disables clipping)")

    def init(self, params, model_state, example_batch, rng):
        # The anchor starts at the initial parameters: the first task's start point.
        return SIState(penalty=quadratic_init(params), path=jax.tree.map(jnp.zeros_like, params))

    def penalty(self, params, state, batch, rng, model, outputs=None):
        value = quadratic_penalty(params, state.algo.penalty, 2.0 * self.c)  # c Σ Ω (θ - θ*)²
        return value, {"penalty": value}

    def loss(self, params, state, batch, rng, model):
        params = clip_gradient(jnp.asarray(self.clip, jnp.float32), params)
        return penalised_cross_entropy(self, params, state, batch, rng, model)

    def update(self, algo, state, batch, aux, rng):
        path = jax.tree.map(lambda w, g, d: w - g * d, algo.path, aux["grads"], aux["updates"])
        return algo._replace(path=path)

    def end_task(self, state, task_data, rng, model):
        algo = state.algo
        omega = jax.tree.map(
            lambda w, p, start: w / ((p - start) ** 2 + self.xi),
            algo.path,
            state.params,
            algo.penalty.anchor,
        )
        penalty = consolidate_online(
            algo.penalty, omega, state.params, 1.0
        )  # Ω += ..., θ* <- θ_end
        return SIState(penalty=penalty, path=jax.tree.map(jnp.zeros_like, algo.path))
