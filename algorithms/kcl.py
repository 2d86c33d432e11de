"""Kernel Continual Learning (KCL): per-task kernel ridge classifiers over variational random
Fourier features of a shared feature extractor, each task keeping a small coreset.

For task t the classifier is not a head but the closed-form kernel ridge regression (KRR)
fit to the task's coreset C_t = (X_c, Y_c) (one-hot targets):

    phi(h) = sqrt(2/D) cos(omega h + b)       omega: [D, d] spectral samples, b ~ U(0, 2 pi)^D
    K = phi(H_c) phi(H_c)^T                   alpha = (K + (|lambda_t| + 0.01) I)^-1 Y_c
    logits(x) = gamma_t phi(h(x)) phi(H_c)^T alpha + beta_t

with h the feature extractor's min-max normalised features. The spectral distribution is
variational: omega ~ q(omega | C_t) = N(mu, sigma^2), amortised by an inference network
from the mean coreset feature, against a prior p(omega | batch) from the mean batch
feature. Loss = cross-entropy of the KRR logits on the batch + kl_weight * KL(q || p). The
ridge lambda_t, scale gamma_t and shift beta_t of each task are trained with the network.
At evaluation (task-IL) each test set is classified by its own task's coreset, lambda_t,
gamma_t and beta_t (`predict` with the task ids), so every earlier task's classifier is
re-fit through the current shared extractor.

    algorithm = KCL(num_tasks=20, coreset_size=200, classes_per_task=10, num_features=1024)

The inference networks and the per-task (lambda, gamma, beta) are trainable parameters: KCL
wraps the backbone (`wrap_model`), so they sit beside it in `params` as
{"backbone": ..., "kcl": {"prior", "posterior", "ridge"}} and the run's optimiser trains them.

Coreset: `coreset_size // classes_per_task` examples of each class of the task, drawn
uniformly without replacement when the task starts (`start_task`, in-jit), as the reference
code's `coreset_selection`; a task's slots are never written again. Deviations from the
reference code (mmderakhshani/KCL, stable_sgd/main.py): the coreset examples stay in the
training stream (the reference sets them aside: 200 of 60,000 on Permuted MNIST); the batch
and the coreset go through one forward pass (no BatchNorm in the MNIST MLP, and dropout
masks are per example, so this is the same computation); evaluation draws each task's D
bases once from a key in the state (the reference draws new ones per test batch); and each
task is evaluated with its own lambda_t, gamma_t, beta_t (the reference indexes them by the
latest task when it evaluates earlier ones; gamma and beta do not change the argmax).

References:
  Derakhshani, Zhen, Shao & Snoek, "Kernel Continual Learning", ICML 2021 (code:
  github.com/mmderakhshani/KCL).
  Rahimi & Recht, "Random Features for Large-Scale Kernel Machines", NeurIPS 2007.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sequax.algorithms.losses import cross_entropy
from sequax.algorithms.stable_sgd import scale_by_lr_factor, task_lr_factor
from sequax.core.models import Model, dense_initializers
from sequax.core.protocol import Algorithm
from sequax.core.task_data import gather_batch


class KCLState(NamedTuple):
    x: jax.Array  # [T, M, ...]: each task's coreset examples (float, as the step sees them)
    y: jax.Array  # int32 [T, M]
    valid: jax.Array  # bool [T, M]: filled slots
    bias: jax.Array  # float32 [D]: the random features' phases b ~ U(0, 2 pi), fixed for the run
    eval_key: jax.Array  # uint32 [2]: evaluation's bases, fold_in(eval_key, task)


class InferenceNetwork(nn.Module):
    """The amortised spectral distribution: a vector [d] -> (mean [d], log-variance [d]), each
    a three-layer ELU network (the reference's `Amortized` / `InferenceBlock`)."""

    width: int

    @nn.compact
    def __call__(self, h: jax.Array):
        def block(name):
            z = h
            for i, act in enumerate((nn.elu, nn.elu, None)):
                kernel_init, bias_init = dense_initializers("torch", z.shape[-1])
                z = nn.Dense(
                    self.width, kernel_init=kernel_init, bias_init=bias_init, name=f"{name}_{i}"
                )(z)
                z = act(z) if act else z
            return z

        return block("mean"), block("log_variance")


def random_features(h: jax.Array, omega: jax.Array, bias: jax.Array) -> jax.Array:
    """Random Fourier features sqrt(2/D) cos(h omega^T + b): [n, d] -> [n, D]."""
    return math.sqrt(2.0 / omega.shape[0]) * jnp.cos(h @ omega.T + bias)


def kernel_ridge_logits(phi_query, phi_support, targets, valid, ridge, gamma=1.0, beta=0.0):
    """gamma * k(query, support) (K + ridge I)^-1 Y + beta, with K = phi_s phi_s^T.

    Invalid support rows are zeroed in phi and Y: the system is then block-diagonal and their
    alpha is exactly 0, so the result equals the KRR fit to the valid rows alone."""
    mask = valid[:, None].astype(phi_support.dtype)
    phi_support = phi_support * mask
    return gram_ridge_logits(
        phi_support @ phi_support.T, phi_query @ phi_support.T, targets * mask, ridge, gamma, beta
    )


def gram_ridge_logits(gram, cross, targets, ridge, gamma=1.0, beta=0.0):
    """gamma * cross (gram + ridge I)^-1 targets + beta: KRR from the support Gram matrix [M, M]
    and the query-support kernel [n, M] (rows/columns of invalid support zeroed by the caller)."""
    alpha = jnp.linalg.solve(gram + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype), targets)
    return gamma * cross @ alpha + beta


def l1_rbf_kernel(a: jax.Array, b: jax.Array) -> jax.Array:
    """exp(-0.25 ||a_i - b_j||_1) [n, m]: the reference's `rbf_kernel` (stable_sgd/utils.py),
    the kernel of its MNIST script's `main_rbf` (no random features)."""
    return jnp.exp(-0.25 * jnp.abs(a[:, None, :] - b[None, :, :]).sum(-1))


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> jax.Array:
    """KL(N(mu_q, exp logvar_q) || N(mu_p, exp logvar_p)), diagonal, summed."""
    return 0.5 * jnp.sum(
        logvar_p - logvar_q + (jnp.exp(logvar_q) + (mu_q - mu_p) ** 2) / jnp.exp(logvar_p) - 1.0
    )


def minmax(h: jax.Array, valid: jax.Array) -> jax.Array:
    """(h - min) / (max - min) over all valid rows' entries (the reference's `normalize`)."""
    rows = valid[:, None]
    lo = jnp.min(jnp.where(rows, h, jnp.inf))
    hi = jnp.max(jnp.where(rows, h, -jnp.inf))
    spread = jnp.where(hi > lo, hi - lo, 1.0)
    return jnp.where(rows, (h - jnp.where(jnp.isfinite(lo), lo, 0.0)) / spread, 0.0)


@dataclasses.dataclass(frozen=True)
class KCL(Algorithm):
    """Kernel continual learning (task-incremental).

    Attributes:
      num_tasks: tasks in the stream (each has its own coreset and lambda, gamma, beta).
      coreset_size: coreset examples per task (the reference's `core_size`; MNIST: 200,
        i.e. 20 per class); a multiple of `classes_per_task`.
      classes_per_task: classes a task shows (10 for Permuted MNIST, 2 for Split MNIST).
      num_features: D, the number of random Fourier bases (reference: 1024 on MNIST).
      kl_weight: weight of KL(q || p) in the loss (the reference's `tau`, default 1e-4).
      ridge_init: initial lambda of every task; the solve uses |lambda| + 0.01 (reference 0.1).
      lr_decay: the reference trains task t (0-based) at lr * lr_decay ** (t + 1), floored at
        lr * lr_min_factor (its Stable-SGD regime: lr 0.1, decay 0.5, floor 5e-5); applied as
        a gradient scale in front of the optimizer (`stable_sgd.scale_by_lr_factor`, exact
        with the optimizer reset per task). 1.0 disables it.
      lr_min_factor: the floor as a fraction of the optimizer's lr (5e-5 / 0.1 = 5e-4).
      kernel: "rff", the paper's variational random Fourier features (the reference's
        main.py), or "rbf", the exact kernel exp(-0.25 ||h - h'||_1) on the features with no
        bases and no KL (the reference's main_rbf.py, which its MNIST script names).
      eval_ridge: whose lambda, gamma, beta classify a test set: "own" (its task's, the
        method as the paper states it) or "latest" (the task trained last, for every test
        set: what the reference code's `eval_single_epoch(..., current_task_id)` does).
        Evaluation only; gamma and beta do not change the argmax, lambda does.
    """

    needs_boundaries = "one kernel ridge head per task, fitted when a task ends"

    num_tasks: int = 20
    coreset_size: int = 200
    classes_per_task: int = 10
    num_features: int = 1024
    kl_weight: float = 1e-4
    ridge_init: float = 0.1
    lr_decay: float = 0.5
    lr_min_factor: float = 5e-4
    kernel: str = "rff"
    eval_ridge: str = "own"

    def __post_init__(self):
        if self.kernel not in ("rff", "rbf"):
            raise ValueError(f"KCL kernel={self.kernel!r} must be 'rff' or 'rbf'")
        if self.eval_ridge not in ("own", "latest"):
            raise ValueError(f"KCL eval_ridge={self.eval_ridge!r} must be 'own' or 'latest'")
        if not (self.num_tasks >= 1 and self.classes_per_task >= 1 and self.num_features >= 1):
            raise ValueError(
                f"KCL needs num_tasks, classes_per_task, num_features >= 1, got {self}"
            )
        if self.coreset_size < self.classes_per_task or self.coreset_size % self.classes_per_task:
            raise ValueError(
                f"KCL coreset_size={self.coreset_size} must be a positive multiple of "
                f"classes_per_task={self.classes_per_task} (equal examples per class)"
            )

    # ---------------- the trainable parts, beside the backbone -------------------------------
    def wrap_model(self, model: Model) -> Model:
        """The backbone with KCL's inference networks and per-task ridge parameters in `params`."""

        def init(key, x):
            backbone_key, prior_key, posterior_key = jax.random.split(key, 3)
            params, model_state = model.init(backbone_key, x)
            width = model.apply(params, model_state, x, train=False)[0]["features"].shape[-1]
            net = InferenceNetwork(width=width)
            probe = jnp.zeros((width,), jnp.float32)
            ridge = {
                "lam": jnp.full((self.num_tasks,), self.ridge_init, jnp.float32),
                "gamma": jnp.ones((self.num_tasks,), jnp.float32),
                "beta": jnp.zeros((self.num_tasks,), jnp.float32),
            }
            kcl = {
                "prior": net.init(prior_key, probe)["params"],
                "posterior": net.init(posterior_key, probe)["params"],
                "ridge": ridge,
            }
            return {"backbone": params, "kcl": kcl}, model_state

        def apply(params, model_state, x, *, train, rng=None):
            return model.apply(params["backbone"], model_state, x, train=train, rng=rng)

        return Model(init=init, apply=apply, num_classes=model.num_classes, module=None)

    def init(self, params, model_state, example_batch, rng):
        bias_key, eval_key = jax.random.split(rng)
        example = example_batch["x"][0]
        size = (self.num_tasks, self.coreset_size)
        return KCLState(
            x=jnp.zeros((*size, *example.shape), example.dtype),
            y=jnp.zeros(size, jnp.int32),
            valid=jnp.zeros(size, bool),  # empty: a task without a coreset predicts beta_t
            bias=jax.random.uniform(bias_key, (self.num_features,), jnp.float32, 0.0, 2 * math.pi),
            eval_key=eval_key,
        )

    # ---------------- the classifier ---------------------------------------------------------
    def _logits(self, params, algo, features, n, task, key, num_classes, ridge_task=None):
        """KRR logits of the first `n` feature rows, fit to the rest (task `task`'s coreset),
        with the lambda, gamma, beta of `ridge_task` (default: `task`)."""
        ridge_task = task if ridge_task is None else ridge_task
        valid = algo.valid[task]
        query = minmax(features[:n], jnp.ones((n,), bool))
        support = minmax(features[n:], valid)
        kcl = params["kcl"]
        targets = jax.nn.one_hot(algo.y[task], num_classes)
        ridge = kcl["ridge"]
        lam, gamma, beta = (
            jnp.abs(ridge["lam"][ridge_task]) + 0.01,
            ridge["gamma"][ridge_task],
            ridge["beta"][ridge_task],
        )
        if self.kernel == "rbf":  # the reference's main_rbf: the exact kernel, no bases, no KL
            mask = valid.astype(support.dtype)
            gram = l1_rbf_kernel(support, support) * mask[:, None] * mask[None, :]
            cross = l1_rbf_kernel(query, support) * mask[None, :]
            return gram_ridge_logits(
                gram, cross, targets * mask[:, None], lam, gamma, beta
            ), jnp.zeros(())
        mean_support = support.sum(0) / jnp.maximum(valid.sum(), 1)
        net = InferenceNetwork(width=features.shape[-1])
        mu_q, logvar_q = net.apply({"params": kcl["posterior"]}, mean_support)
        mu_p, logvar_p = net.apply({"params": kcl["prior"]}, query.mean(0))
        eps = jax.random.normal(key, (self.num_features, features.shape[-1]))
        omega = mu_q + eps * jnp.exp(0.5 * logvar_q)
        phi_query = random_features(query, omega, algo.bias)
        phi_support = random_features(support, omega, algo.bias)
        logits = kernel_ridge_logits(phi_query, phi_support, targets, valid, lam, gamma, beta)
        return logits, gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)

    def loss(self, params, state, batch, rng, model):
        algo, task, n = state.algo, state.task, batch["y"].shape[0]
        dropout_key, basis_key = jax.random.split(rng)
        # One forward pass over the batch and the task's coreset (the coreset's features move
        # with the extractor, so its classifier is re-fit at every step).
        x = jnp.concatenate([batch["x"], algo.x[task].astype(batch["x"].dtype)])
        outputs, model_state = model.apply(
            params, state.model_state, x, train=True, rng=dropout_key
        )
        logits, kl = self._logits(
            params, algo, outputs["features"], n, task, basis_key, model.num_classes
        )
        ce = cross_entropy(logits, batch["y"])
        loss = ce + self.kl_weight * kl
        lr_factor = task_lr_factor(task, self.lr_decay, 1, self.lr_min_factor)
        return loss, {
            "model_state": model_state,
            "metrics": {"ce": ce, "kl": kl},
            "tx_args": {"lr_factor": lr_factor},
        }

    def optimizer(self, tx):
        return optax.chain(self.gradient_transform(), tx)

    def gradient_transform(self):
        return scale_by_lr_factor()  # the per-task learning-rate decay

    def predict(self, params, model_state, algo, x, task, model):
        """Logits of `x` by its task's classifier (`task`: int32 [B], one test set's task id):
        the task's coreset, ridge parameters and bases."""
        task = task[0]
        inputs = jnp.concatenate([x, algo.x[task].astype(x.dtype)])
        features = model.apply(params, model_state, inputs, train=False)[0]["features"]
        key = jax.random.fold_in(algo.eval_key, task)
        ridge_task = task
        if self.eval_ridge == "latest":  # the latest task with a coreset: the one trained last
            ridge_task = jnp.max(jnp.where(algo.valid.any(1), jnp.arange(algo.valid.shape[0]), 0))
        return self._logits(
            params, algo, features, x.shape[0], task, key, model.num_classes, ridge_task
        )[0]

    # ---------------- the coreset --------------------------------------------------------------
    def start_task(self, state, task_data, rng, model):
        """Draws the task's coreset: `coreset_size // classes_per_task` examples of each of its
        classes, uniformly without replacement (classes take blocks in label order)."""
        per_class = self.coreset_size // self.classes_per_task
        capacity = task_data.y.shape[0]
        real = jnp.arange(capacity) < task_data.size
        # Sorting by label + a uniform draw groups each class's examples in a random order.
        u = jax.random.uniform(rng, (capacity,))
        order = jnp.argsort(jnp.where(real, task_data.y + u, jnp.inf))
        y = task_data.y[order]
        starts = jnp.concatenate([jnp.ones((1,), bool), y[1:] != y[:-1]]) & real[order]
        block = jnp.cumsum(starts) - 1  # the class's rank among the task's classes
        first = jax.lax.cummax(jnp.where(starts, jnp.arange(capacity), 0))
        rank = jnp.arange(capacity) - first  # position within its class
        keep = real[order] & (rank < per_class) & (block < self.classes_per_task)
        slot = jnp.where(keep, block * per_class + rank, self.coreset_size)  # out of range: dropped
        chosen = (
            jnp.zeros((self.coreset_size,), jnp.int32)
            .at[slot]
            .set(order.astype(jnp.int32), mode="drop")
        )
        filled = jnp.zeros((self.coreset_size,), bool).at[slot].set(True, mode="drop")
        batch = gather_batch(task_data, chosen)
        algo, task = state.algo, state.task
        return algo._replace(
            x=algo.x.at[task].set(
                jnp.where(_rows(filled, batch["x"]), batch["x"], 0).astype(algo.x.dtype)
            ),
            y=algo.y.at[task].set(jnp.where(filled, batch["y"], 0)),
            valid=algo.valid.at[task].set(filled),
        )

    def update(self, algo, state, batch, aux, rng):
        return algo

    def end_task(self, state, task_data, rng, model):
        return state.algo  # earlier tasks' coresets are never written again


def _rows(mask, like):
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))
