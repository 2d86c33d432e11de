"""Learning without Forgetting (LwF): distil the previous model's outputs on the current data.

At the end of each task the parameters are snapshotted; while learning the next task, the
network's outputs on the current batch are pulled towards the snapshot's, on the logits of
the previous tasks' classes only, with mammoth's `lwf.py` loss (the DER paper's LwF row):

    loss = CE(f(x)[:, seen], y)
           + alpha * H(softmax(f_old(x)[:, old] / T), softmax(f(x)[:, old] / T))

`seen` are the classes of the tasks up to the current one (the future classes' logits are
left out of the cross-entropy, as mammoth's `outputs[:, mask]`), `old` those of the tasks
before it, and H(p, q) = -mean_batch sum_c p_c log q_c is the cross-entropy to the soft
targets (mammoth's `modified_kl_div`; it differs from the KL divergence by the targets'
entropy, a constant, and carries no T² factor). mammoth writes the targets as `smooth(
softmax(z), T)` = softmax(z)^(1/T) renormalised, which is softmax(z / T) exactly. The old
logits come from the snapshot in evaluation mode on the same batch, inside the step (mammoth
precomputes them per task in `begin_task`; the values are the same). The penalty is exactly 0
until the first task ends. `seen` and `old` are tracked from the labels trained on (so any
class order works); `old` is `seen` at the end of the previous task.

    algorithm = LwF(alpha=1.0, temperature=2.0)
    algorithm = combine(ER(500, 10), LwF())   # ER's loss plus the distillation

Departures from mammoth: (1) its `begin_task` first trains the classifier alone on the new
task for an epoch ("warm-up"); there is no begin-task hook in the engine, so that is not
done (the old classes' logits, the only ones distilled, are unaffected by it). (2) It
hard-codes T = 2 in `observe` (ignoring `--softmax_temp`); here `temperature` is used, 2 by
default. (3) A class of the current task enters `seen` at the first batch holding it, not at
the task's first step (at batch 10 and 2 classes per task a first batch misses one class with
probability 2/1024). Weight decay (DER best-args: 5e-4) is `config.optimizer.weight_decay`.

References:
  Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017.
  Buzzega et al., "Dark Experience for General Continual Learning", NeurIPS 2020 (the
  aimagelab/mammoth `models/lwf.py` this follows).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sequax.algorithms.losses import cross_entropy
from sequax.core.heads import mask_logits
from sequax.core.protocol import Algorithm, is_number


class LwFState(NamedTuple):
    old_params: Any  # the parameters at the end of the previous task (a copy of the init before)
    old_model_state: Any
    old_classes: jax.Array  # bool [C]: classes of the previous tasks; all False until one ends
    seen: jax.Array  # bool [C]: classes of every batch trained on so far


def labels_mask(labels: jax.Array, num_classes: int) -> jax.Array:
    """bool [num_classes]: the classes present in `labels`."""
    return jnp.zeros((num_classes,), bool).at[labels].set(True, mode="drop")


def soft_cross_entropy(logits, target_logits, classes, temperature) -> jax.Array:
    """-mean_b sum_{c in classes} softmax(t / T)_c log softmax(z / T)_c, both over `classes` only.

    0 when `classes` is empty. The targets are not differentiated.
    """
    targets = jax.nn.softmax(
        mask_logits(jax.lax.stop_gradient(target_logits), classes) / temperature
    )
    log_probs = jax.nn.log_softmax(mask_logits(logits, classes) / temperature)
    return -jnp.where(classes, targets * log_probs, 0.0).sum(-1).mean()


@dataclasses.dataclass(frozen=True)
class LwF(Algorithm):
    """Learning without Forgetting.

    Attributes:
      alpha: weight α of the distillation term (≥ 0; DER best-args on Seq-MNIST: 1).
      temperature: softmax temperature T of targets and predictions (> 0; mammoth: 2).
      num_classes: width of the model's logits (the class masks are allocated in `init`);
        checked when tracing.
    alpha and temperature may be traced scalars (a vmapped sweep): they only enter arithmetic.
    """

    needs_boundaries = "the teacher network is taken when a task ends"

    alpha: float = 1.0
    temperature: float = 2.0
    num_classes: int = 10

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"LwF num_classes={self.num_classes} must be at least 1")
        if is_number(self.alpha) and self.alpha < 0:
            raise ValueError(f"LwF alpha={self.alpha} must be >= 0")
        if is_number(self.temperature) and self.temperature <= 0:
            raise ValueError(f"LwF temperature={self.temperature} must be > 0")

    def init(self, params, model_state, example_batch, rng):
        no_classes = jnp.zeros((self.num_classes,), bool)
        # Copies, not aliases of the parameters' buffers (the train step donates them).
        snapshot = jax.tree.map(jnp.array, (params, model_state))
        return LwFState(*snapshot, no_classes, no_classes)

    def _check(self, logits):
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"LwF num_classes={self.num_classes} but the model has {logits.shape[-1]} logits; "
                f"set config.algorithm.num_classes={logits.shape[-1]}"
            )

    def penalty(self, params, state, batch, rng, model, outputs=None):
        if outputs is None:
            outputs, _ = model.apply(params, state.model_state, batch["x"], train=True, rng=rng)
        self._check(outputs["logits"])
        algo = state.algo
        old, _ = model.apply(algo.old_params, algo.old_model_state, batch["x"], train=False)
        distill = soft_cross_entropy(
            outputs["logits"], old["logits"], algo.old_classes, self.temperature
        )
        return self.alpha * distill, {"distill": distill}

    def loss(self, params, state, batch, rng, model):
        outputs, model_state = model.apply(
            params, state.model_state, batch["x"], train=True, rng=rng
        )
        self._check(outputs["logits"])
        seen = state.algo.seen | labels_mask(batch["y"], self.num_classes)
        ce = cross_entropy(mask_logits(outputs["logits"], seen), batch["y"])
        penalty, metrics = self.penalty(params, state, batch, rng, model, outputs)
        aux = {"model_state": model_state, "metrics": {"ce": ce, **metrics}, "outputs": outputs}
        return ce + penalty, aux

    def update(self, algo, state, batch, aux, rng):
        return algo._replace(seen=algo.seen | labels_mask(batch["y"], self.num_classes))

    def end_task(self, state, task_data, rng, model):
        snapshot = jax.tree.map(jnp.array, (state.params, state.model_state))  # copies
        return LwFState(*snapshot, state.algo.seen, state.algo.seen)
