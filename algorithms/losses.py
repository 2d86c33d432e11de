"""Loss pieces shared by the algorithms.

loss = cross_entropy(logits, labels)                 # mean over the batch
loss = cross_entropy(logits, labels, weights=valid)  # weighted mean, e.g. partly filled replay
outputs, model_state, loss = forward_cross_entropy(model, params, state, x, y, rng)
loss, aux = penalised_cross_entropy(regulariser, params, state, batch, rng, model)  # CE + penalty
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None):
    """Softmax cross-entropy, averaged over the examples (weighted when `weights` is given).

    With weights the divisor is their sum (at least 1e-12), so zero-weight rows, such as
    empty replay slots, change neither the value nor the gradient.
    """
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if weights is None:
        return per_example.mean()
    weights = weights.astype(per_example.dtype)
    return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1e-12)


def forward_cross_entropy(model, params, state, x, y, rng, weights=None):
    """One train-mode forward pass and its cross-entropy: (outputs, model_state, loss)."""
    outputs, model_state = model.apply(params, state.model_state, x, train=True, rng=rng)
    return outputs, model_state, cross_entropy(outputs["logits"], y, weights)


def penalised_cross_entropy(regulariser, params, state, batch, rng, model):
    """A regulariser's whole loss: the batch's cross-entropy plus `regulariser.penalty`, which
    gets the forward's outputs (EWC, MAS, RWalk, SI, LFL: the `loss` of each is this).

    Returns (loss, aux) with aux = {"model_state", "metrics": {"ce", **the penalty's},
    "outputs"}; `outputs` lets `combine` hand the forward to further regularisers."""
    outputs, model_state, ce = forward_cross_entropy(
        model, params, state, batch["x"], batch["y"], rng
    )
    penalty, metrics = regulariser.penalty(params, state, batch, rng, model, outputs)
    return ce + penalty, {
        "model_state": model_state,
        "metrics": {"ce": ce, **metrics},
        "outputs": outputs,
    }
