"""SLCA: a slow learner (the whole ViT at a small learning rate) with classifier alignment.

Training (the slow learner): the pretrained ViT and its linear head train together on the
current task's classes (cross-entropy over them only), the backbone's updates scaled by
`backbone_lr_factor` (the reference: SGD at 0.01 for the head, 0.0001 for the backbone).
When a task ends, each of its classes' feature mean and covariance (+1e-4 I) are taken over
its examples ([CLS] of the ViT after training); from the second task on the head is then
aligned (classifier alignment): `ca_epochs` passes, each drawing `num_sampled_pcls` features
per seen class c from N(μ_c (0.9 + 0.1 (t_c + 1) / (t + 1)), Σ_c) (t_c: the task of class c,
t: the current task), shuffling them and stepping SGD (momentum, weight decay, a cosine
schedule over the passes) on the head alone over batches of `num_sampled_pcls`, with the
logits normalised per task (`ca_with_logit_norm` = τ > 0): logits / mean_τ'(||logits of task
τ'|| + 1e-7) / τ. Evaluation reads the aligned head; the next task trains on from the head
as it was before the alignment (the reference's `fc.backup()` / `fc.recall()`), so the aligned
head lives in the method's state, not the parameters.

    algorithm = SLCA(backbone_lr_factor=0.01, ca_epochs=3, ca_lr=0.01)
    config.optimizer: SGD, lr 0.01 (the head's), momentum 0.9, weight decay 5e-4

Hyper-parameters:
  backbone_lr_factor: the backbone's learning rate over the head's (the reference's
    bcb_lrscale, 1/100); the configured optimizer's learning rate is the head's.
  ca_epochs: classifier-alignment passes after each task but the first (0: no alignment).
  ca_lr, ca_momentum, ca_weight_decay: the alignment's SGD (the reference reuses its lrate
    0.01, momentum 0.9 and weight_decay 5e-4), its learning rate cosine-annealed to 0 over
    the passes (torch's CosineAnnealingLR, stepped after each pass).
  num_sampled_pcls: features drawn per class per pass, and the alignment's batch (256).
  ca_with_logit_norm: τ of the logit normalisation (0.1); 0: the plain cross-entropy.
  stats_batch: examples per batch of the end-of-task feature pass.

The head: the reference's SimpleContinualLinear holds one Linear(D, |task|) per task,
concatenated in task order, with the earlier heads frozen while a task trains and all of them
aligned; ours is the ViT's single [D, C] head over all classes, task t's head being the
columns of its classes (the columns of other classes get no gradient from the masked
cross-entropy; the alignment updates the seen classes' columns only). `wrap_model` re-draws it
as the reference's (trunc_normal std 0.02, zero bias).

Deviations from the reference:
  * The class statistics are float32 (the reference: a float64 covariance, stored float32);
    a class with one example has covariance 1e-4 I (torch.cov divides by zero there).
  * The features are drawn by our own random stream (Cholesky factor times normal draws, the
    construction of torch's MultivariateNormal.sample), so the draws differ from torch's.
  * A class's task t_c is the task it was seen in (the reference: class // the current task's
    size, the same for equal tasks).
  * Frozen earlier heads: with weight decay in the configured optimizer, their columns decay
    while later tasks train (the reference's frozen heads do not), and momentum carried over
    from an earlier task moves them unless the optimizer is reset per task (the reference
    builds a new SGD per task: `config.optimizer.per_task`).

References:
  Zhang, Wang, Kang, Chen, Wei, "SLCA: Slow Learner with Classifier Alignment for Continual
  Learning on a Pre-trained Model", ICCV 2023. Code: sun-hailong/LAMDA-PILOT `models/slca.py`
  (`_stage1_training`, `_compute_class_mean`, `_stage2_compact_classifier`),
  `backbone/linears.py` (`SimpleContinualLinear`), `utils/inc_net.py` (`SLCANet`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sequax.algorithms.feature_cache import compute_features
from sequax.core.param_groups import path_of, scaled
from sequax.core.protocol import Algorithm, is_number
from sequax.core.vit import ViT

MASKED = -1e30  # the logit of a class outside the current task (or not seen yet)
COV_EPS = 1e-4  # added to each class covariance's diagonal (the reference's 1e-4 I)
NORM_EPS = 1e-7  # added to each task's logit norm (the reference's)


def class_statistics(features, labels, valid, num_classes: int, batch: int):
    """Per-class mean [C, D], covariance [C, D, D] (unbiased, + COV_EPS I) and count [C] of
    the rows of `features` [N, D] marked `valid`; classes without rows get zeros."""
    n, dim = features.shape
    onehot = (labels[:, None] == jnp.arange(num_classes)) & valid[:, None]
    count = onehot.sum(0)
    means = (onehot.astype(features.dtype).T @ features) / jnp.maximum(count, 1)[:, None]
    centred = features - means[labels]
    target = jnp.where(valid, labels, num_classes)
    pad = -n % batch
    centred = jnp.concatenate([centred, jnp.zeros((pad, dim), centred.dtype)])
    target = jnp.concatenate([target, jnp.full(pad, num_classes, target.dtype)])

    def add(cov, chunk):
        rows, index = chunk
        return cov.at[index].add(rows[:, :, None] * rows[:, None, :], mode="drop"), None

    chunks = (centred.reshape(-1, batch, dim), target.reshape(-1, batch))
    cov, _ = lax.scan(add, jnp.zeros((num_classes, dim, dim), features.dtype), chunks)
    cov = cov / jnp.maximum(count - 1, 1)[:, None, None] + COV_EPS * jnp.eye(dim)
    return means, jnp.where((count > 0)[:, None, None], cov, 0.0), count


def aligned_logits(logits, seen, class_task, logit_norm):
    """The alignment's logits over the seen classes: divided by the mean over the seen tasks of
    each task's logit norm (+1e-7), then by τ = `logit_norm` (> 0); τ = 0: unchanged."""
    num_classes = seen.shape[0]
    member = (class_task[None, :] == jnp.arange(num_classes)[:, None]) & seen[None, :]
    shown = jnp.where(seen, logits, 0.0)
    present = member.any(1)
    squares = (shown**2) @ member.T.astype(logits.dtype)  # [B, tasks]
    norms = jnp.sqrt(jnp.where(present, squares, 1.0)) + NORM_EPS  # no 0 under the root
    mean = jnp.sum(jnp.where(present, norms, 0.0), -1, keepdims=True) / present.sum()
    on = logit_norm > 0
    scaled_logits = logits / mean / jnp.where(on, logit_norm, 1.0)
    return jnp.where(seen, jnp.where(on, scaled_logits, logits), MASKED)


def alignment_loss(head, features, labels, seen, class_task, logit_norm):
    logits = features @ head["kernel"] + head["bias"]
    logits = aligned_logits(logits, seen, class_task, logit_norm)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def sgd_step(head, momentum_buffer, grads, lr, momentum, weight_decay, seen):
    """torch's SGD (weight decay added to the gradient, buffer = m · buffer + g, first step
    buffer = g) on the seen classes' columns of the head."""
    mask = {"kernel": seen[None, :], "bias": seen}
    grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, head)
    buffer = jax.tree.map(lambda b, g: momentum * b + g, momentum_buffer, grads)
    new = jax.tree.map(lambda p, b, m: jnp.where(m, p - lr * b, p), head, buffer, mask)
    return new, jax.tree.map(lambda b, m: jnp.where(m, b, 0.0), buffer, mask)


@dataclasses.dataclass(frozen=True)
class SLCA(Algorithm):
    """SLCA (see the module docstring)."""

    needs_boundaries = "class statistics and the classifier alignment are taken when a task ends"

    backbone_lr_factor: float = 0.01
    ca_epochs: int = 3
    ca_lr: float = 0.01
    ca_momentum: float = 0.9
    ca_weight_decay: float = 5e-4
    num_sampled_pcls: int = 256
    ca_with_logit_norm: float = 0.1
    stats_batch: int = 64

    def __post_init__(self):
        for name in ("backbone_lr_factor", "ca_lr", "ca_momentum", "ca_weight_decay"):
            value = getattr(self, name)
            if is_number(value) and value < 0:
                raise ValueError(f"SLCA {name}={value} must be >= 0")
        if is_number(self.ca_with_logit_norm) and self.ca_with_logit_norm < 0:
            raise ValueError(
                f"SLCA ca_with_logit_norm={self.ca_with_logit_norm} must be >= 0 (0: off)"
            )
        for name in ("ca_epochs", "num_sampled_pcls", "stats_batch"):
            value, least = getattr(self, name), 0 if name == "ca_epochs" else 1
            if not (isinstance(value, int) and value >= least):
                raise ValueError(f"SLCA {name}={value!r} must be an int >= {least}")

    # ---- the network and its optimizer ---------------------------------------------------
    def wrap_model(self, model):
        vit = model.module
        if not isinstance(vit, ViT):
            raise ValueError("SLCA needs a ViT backbone: set config.model.name='vit'")
        if not vit.num_classes:
            raise ValueError("SLCA needs the ViT's head: set config.model.num_classes > 0")

        def init(key, x):
            params, model_state = model.init(key, x)
            shape = params["head"]["kernel"].shape
            kernel = 0.02 * jax.random.truncated_normal(
                jax.random.fold_in(key, 1), -2.0 / 0.02, 2.0 / 0.02, shape, jnp.float32
            )  # timm's trunc_normal_(std=.02): cut at ±2 (absolute)
            head = {"kernel": kernel, "bias": jnp.zeros(shape[1], jnp.float32)}
            return {**params, "head": head}, model_state

        return model._replace(init=init)

    def optimizer(self, tx):
        factor = self.backbone_lr_factor

        def factors(params):
            return jax.tree_util.tree_map_with_path(
                lambda p, _: 1.0 if path_of(p).startswith("head/") else factor, params
            )

        return scaled(tx, factors)

    # ---- the method ----------------------------------------------------------------------
    def init(self, params, model_state, example_batch, rng):
        dim, num_classes = params["head"]["kernel"].shape
        none = jnp.zeros(num_classes, bool)
        return {
            "current": none,
            "seen": none,
            "class_task": jnp.full(num_classes, -1, jnp.int32),
            "means": jnp.zeros((num_classes, dim), jnp.float32),
            "covs": jnp.zeros((num_classes, dim, dim), jnp.float32),
            "head": jax.tree.map(jnp.copy, params["head"]),
            "aligned": jnp.zeros((), bool),
        }

    def start_task(self, state, task_data, rng, model):
        valid = jnp.arange(task_data.y.shape[0]) < task_data.size
        num_classes = state.algo["current"].shape[0]
        current = (
            jnp.zeros(num_classes, bool)
            .at[jnp.where(valid, task_data.y, num_classes)]
            .set(True, mode="drop")
        )
        return {**state.algo, "current": current, "aligned": jnp.zeros((), bool)}

    def loss(self, params, state, batch, rng, model):
        outputs, model_state = model.apply(
            params, state.model_state, batch["x"], train=True, rng=rng
        )
        logits = jnp.where(state.algo["current"], outputs["logits"], MASKED)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return ce, {"model_state": model_state, "metrics": {"ce": ce}}

    def end_task(self, state, task_data, rng, model):
        algo, num_classes = state.algo, state.algo["current"].shape[0]
        capacity = task_data.y.shape[0]
        features = compute_features(
            lambda x: model.apply(state.params, state.model_state, x, train=False)[0]["features"],
            task_data,
            self.stats_batch,
            capacity,
        )
        valid = jnp.arange(capacity) < task_data.size
        means, covs, count = class_statistics(
            features, task_data.y, valid, num_classes, self.stats_batch
        )
        present = count > 0
        algo = {
            **algo,
            "seen": algo["seen"] | present,
            "class_task": jnp.where(present, state.task, algo["class_task"]),
            "means": jnp.where(present[:, None], means, algo["means"]),
            "covs": jnp.where(present[:, None, None], covs, algo["covs"]),
        }
        head = state.params["head"]
        if self.ca_epochs:
            aligned = self.align(head, algo, state.task, rng)
            head = jax.tree.map(lambda a, h: jnp.where(state.task > 0, a, h), aligned, head)
        return {**algo, "head": head, "aligned": jnp.ones((), bool)}

    def align(self, head, algo, task, rng):
        """The classifier alignment (`_stage2_compact_classifier`) from `head`."""
        seen, class_task = algo["seen"], algo["class_task"]
        num_classes, dim = algo["means"].shape
        n = self.num_sampled_pcls
        scale = 0.9 + (class_task + 1) / (task + 1) * 0.1
        means = algo["means"] * scale[:, None]
        eye = jnp.eye(dim, dtype=jnp.float32)
        chol = jnp.linalg.cholesky(jnp.where(seen[:, None, None], algo["covs"], eye))
        labels = jnp.repeat(jnp.arange(num_classes), n)
        num_seen = seen.sum()
        grad_fn = jax.grad(alignment_loss)

        def epoch(e, carry):
            head, buffer = carry
            key = jax.random.fold_in(rng, e)
            noise = jax.random.normal(jax.random.fold_in(key, 0), (num_classes, n, dim))
            drawn = means[:, None, :] + jnp.einsum("cde,cne->cnd", chol, noise)
            drawn = drawn.reshape(num_classes * n, dim)
            order = jax.random.uniform(jax.random.fold_in(key, 1), (num_classes * n,))
            order = jnp.argsort(jnp.where(seen[labels], order, 2.0))  # seen classes' first
            lr = self.ca_lr * (1 + jnp.cos(math.pi * e / self.ca_epochs)) / 2

            def step(i, carry):
                head, buffer = carry
                index = lax.dynamic_slice(order, (i * n,), (n,))
                grads = grad_fn(
                    head, drawn[index], labels[index], seen, class_task, self.ca_with_logit_norm
                )
                return sgd_step(
                    head, buffer, grads, lr, self.ca_momentum, self.ca_weight_decay, seen
                )

            return lax.fori_loop(0, num_seen, step, (head, buffer))

        buffer = jax.tree.map(jnp.zeros_like, head)
        return lax.fori_loop(0, self.ca_epochs, epoch, (head, buffer))[0]

    def predict(self, params, model_state, algo, x, task, model):
        outputs, _ = model.apply(params, model_state, x, train=False)
        head = algo["head"]
        aligned = outputs["features"] @ head["kernel"] + head["bias"]
        return jnp.where(algo["aligned"], aligned, outputs["logits"])
