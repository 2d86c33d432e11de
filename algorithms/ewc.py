"""Elastic Weight Consolidation (EWC), separate or online, with a per-example diagonal Fisher.

Loss on task t: cross-entropy + `(lam / 2) * sum_i F_i (theta_i - theta*_i)^2`, the penalty
part of the differentiated objective (fused into the compiled step). At the end of each task
the diagonal Fisher is estimated over the task's training set as the mean of per-example
squared gradients of the log-likelihood (never the square of a batch-mean gradient), and
consolidated (see `quadratic_penalty`). Networks of dense layers get it from one matmul per
layer, without materialising per-example gradients; other networks by `vmap` of `grad`
(`algorithms.fisher`, same value).

    algorithm = EWC(lam=100.0, online=True, gamma=1.0)

Fisher estimators (`fisher_labels`):
  "empirical": gradients of log p(y_true | x) (the "empirical Fisher").
  "sampled": gradients of log p(y~ | x) with y~ drawn from the model's predictive
    distribution, one draw per example (a Monte-Carlo estimate of the true Fisher).
`normalize=True` rescales each task's Fisher to [0, 1] by its minimum and maximum over all
tensors, (F − min) / (max − min), before it is consolidated: the A-GEM codebase's EWC
(Chaudhry et al., ICLR 2019; facebookresearch/agem `model/model.py`,
`normalize_fisher_at_minima`), which the Mirzadeh et al. scripts run. A normalised Fisher
bounds the penalty's curvature by lam whatever the network, so lam keeps one meaning across
networks and SGD stays stable while lr · lam < 2. That codebase keeps only the latest task's
Fisher (its running Fisher is replaced, not summed): online=True with gamma=0.

`likelihood_weighted=True` multiplies each example's squared gradient by p(y | x) (the
label's probability, not differentiated), as the mammoth/DER `ewc_on.py` does.

Note on lam: the penalty carries the paper's 1/2, so its gradient is `lam * F * (theta -
theta*)`. mammoth's oEWC omits the 1/2: its `e_lambda` equals our `lam / 2`
(DER's P-MNIST e_lambda 0.7 is lam 1.4 here).

References:
  Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017.
  Schwarz et al., "Progress & Compress: A scalable framework for continual learning",
  ICML 2018 (online EWC).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sequax.algorithms.fisher import squared_gradient_sum
from sequax.algorithms.losses import penalised_cross_entropy
from sequax.algorithms.quadratic_penalty import (
    consolidate_online,
    consolidate_separate,
    quadratic_init,
    quadratic_penalty,
)
from sequax.core.protocol import Algorithm
from sequax.core.task_data import scan_batches

FISHER_LABELS = ("empirical", "sampled")


@dataclasses.dataclass(frozen=True)
class EWC(Algorithm):
    """Elastic Weight Consolidation.

    Attributes:
      lam: penalty strength λ (≥ 0).
      online: True for online EWC (one running Fisher, anchor = last task's solution);
        False for the original separate penalty per task (held exactly in O(1) memory).
      gamma: online EWC's decay of the previous Fisher (1.0 = plain sum; unused if not online).
      fisher_labels: "empirical" or "sampled" (see the module docstring).
      likelihood_weighted: weight each squared gradient by p(y|x), as the DER code does.
      fisher_batch: examples per chunk when estimating the Fisher (memory knob only).
      normalize: min-max rescale each task's Fisher to [0, 1] over all tensors (module
        docstring), as the A-GEM codebase does.
    """

    needs_boundaries = "the Fisher and the anchor are taken when a task ends"

    lam: float = 100.0
    online: bool = True
    gamma: float = 1.0
    fisher_labels: str = "empirical"
    likelihood_weighted: bool = False
    fisher_batch: int = 128
    normalize: bool = False

    def __post_init__(self):
        if self.fisher_labels not in FISHER_LABELS:
            raise ValueError(
                f"EWC fisher_labels={self.fisher_labels!r}; use one of {FISHER_LABELS}"
            )
        if self.lam < 0 or not 0 <= self.gamma <= 1:
            raise ValueError(
                f"EWC needs lam >= 0 and 0 <= gamma <= 1, got {self.lam}, {self.gamma}"
            )

    def init(self, params, model_state, example_batch, rng):
        return quadratic_init(params)

    def penalty(self, params, state, batch, rng, model, outputs=None):
        value = quadratic_penalty(params, state.algo, self.lam)
        return value, {"penalty": value}

    def loss(self, params, state, batch, rng, model):
        return penalised_cross_entropy(self, params, state, batch, rng, model)

    def update(self, algo, state, batch, aux, rng):
        return algo

    def fisher(self, params, model_state, task_data, rng, model):
        """Diagonal Fisher: mean over the task's examples of squared per-example gradients."""

        def log_likelihood(outputs, targets):
            log_probs = jax.nn.log_softmax(outputs["logits"])
            chosen = jnp.take_along_axis(log_probs, targets["label"][:, None], 1)[:, 0]
            weight = targets["valid"].astype(jnp.float32)
            if self.likelihood_weighted:
                weight = weight * jnp.exp(chosen)  # p(y|x), a weight: not differentiated
            return chosen, weight

        def accumulate(carry, batch, valid):
            total, index = carry
            x, labels = batch["x"], batch["y"]
            if self.fisher_labels == "sampled":
                keys = jax.random.split(jax.random.fold_in(rng, index), labels.shape[0])
                logits = model.apply(params, model_state, x, train=False)[0]["logits"]
                labels = jax.vmap(jax.random.categorical)(keys, logits)
            targets = {"label": labels, "valid": valid}
            sums = squared_gradient_sum(model, params, model_state, x, log_likelihood, targets)
            return jax.tree.map(jnp.add, total, sums), index + 1

        zeros = jax.tree.map(jnp.zeros_like, params)
        total, _ = scan_batches(accumulate, task_data, self.fisher_batch, (zeros, 0))
        return jax.tree.map(lambda f: f / task_data.size, total)

    def end_task(self, state, task_data, rng, model):
        fisher = self.fisher(state.params, state.model_state, task_data, rng, model)
        if self.normalize:
            fisher = min_max_rescaled(fisher)
        if self.online:
            return consolidate_online(state.algo, fisher, state.params, self.gamma)
        return consolidate_separate(state.algo, fisher, state.params)


def min_max_rescaled(tree):
    """(F − min) / (max − min) with min and max over every leaf of `tree`: values in [0, 1]."""
    leaves = jax.tree.leaves(tree)
    low = jnp.min(jnp.stack([leaf.min() for leaf in leaves]))
    high = jnp.max(jnp.stack([leaf.max() for leaf in leaves]))
    return jax.tree.map(lambda f: (f - low) / (high - low + 1e-32), tree)
