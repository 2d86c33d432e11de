"""RanPAC: a frozen backbone, a fixed random ReLU projection, and a ridge-regression head.

No gradient training. With the frozen backbone's features h [D] and a random W_rand [D, M]
(standard normal, drawn once from the run's key in `init` and kept in the state), each
example's projected features are h' = ReLU(h W_rand) [M]. When a task ends its examples'
second-order statistics join those of the earlier tasks,

    G += H'^T H'   [M, M]          Q += H'^T Y   [M, C]   (Y one-hot over all C classes),

the ridge λ is chosen on the task's own examples (below), and the head is

    W_o = (G + λ I)^-1 Q   [M, C]   (`jnp.linalg.solve`, as the reference's torch.linalg.solve).

`predict` scores PILOT's `CosineLinear` over h' (cosine_head=True: normalised h' times
normalised class columns of W_o, sigma 1), or the RanPAC repository's plain h' W_o
(cosine_head=False). Classes without examples yet score NO_CLASS (the reference's head has
no row for them).

The ridge (the reference's `optimise_ridge_parameter`): the task's examples in a random order
(its loader shuffles; here a permutation drawn from `end_task`'s key), the first
floor(0.8 n) fit W(λ) = (G_fit + λ I)^-1 Q_fit for each λ in 10^k, k = min_ridge_exponent ..
max_ridge_exponent (the reference's -8 .. 8), and the λ of the lowest mean squared error
of H'_val W(λ) against Y_val over the remaining examples (first on ties) is kept. A λ whose
solve is not finite in float32 is never chosen.

All in `end_task`, compiled: one scan over the task's examples computes the backbone's
features (`compute_features`, `batch_size` at a time), two scans over them (projected chunk
by chunk) accumulate the task's G and Q and the fit part's, a map solves the ridges, and one
more scan scores the validation examples. Memory: the state holds G (M^2 floats: 400 MB at
M = 10,000) and `end_task` about three more M x M buffers. The loss is a constant zero
without a forward pass and every parameter is frozen (`Model.trainable`), so the engine's
training steps cost next to nothing: run it with one epoch per task.

    algorithm = RanPAC(num_classes=100, feature_dim=768, projection_dim=10000)

Deviations from the reference: the first-session parameter-efficient adaptation of the
backbone (PILOT's `_init_train` of an adapter/SSF/VPT ViT on the first task) is not
implemented: this is RanPAC on the frozen backbone as given. W_rand is drawn with JAX's
generator, not torch.randn, and the split's order with `end_task`'s key, not the torch
loader's shuffle. As in the reference, λ is chosen on the current task's examples alone and
then applied to the statistics of all tasks. Examples are untransformed (the reference uses
its test-time transform for them). projection_dim=0 uses h itself (the RanPAC repository's
M=0: decorrelation without a projection).

References:
  McDonnell, Gong, Parvaneh, Abbasnejad, van den Hengel, "RanPAC: Random Projections and
  Pre-trained Models for Continual Learning", NeurIPS 2023 (arXiv:2307.02251);
  sun-hailong/LAMDA-PILOT `models/ranpac.py` (`setup_RP`, `replace_fc`,
  `optimise_ridge_parameter`), `utils/inc_net.py` (`SimpleVitNet.forward`),
  `backbone/linears.py` (`CosineLinear`); RanPAC/RanPAC `inc_net.py` (the plain head).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sequax.algorithms.feature_cache import compute_features
from sequax.algorithms.simplecil import (
    HIGHEST,
    NO_PROTOTYPE,
    cosine_logits,
    frozen_features,
    frozen_model,
    zero_loss,
)
from sequax.core.protocol import Algorithm

NO_CLASS = NO_PROTOTYPE  # below every score of a seen class, above the evaluation mask


class RanPACState(NamedTuple):
    projection: jax.Array  # float32 [D, M]: W_rand ([D, 0] when projection_dim = 0)
    gram: jax.Array  # float32 [M, M]: G, summed over every ended task's examples
    targets: jax.Array  # float32 [M, C]: Q
    readout: jax.Array  # float32 [M, C]: W_o = (G + ridge I)^-1 Q (zero before any task)
    counts: jax.Array  # int32 [C]: examples of each class seen so far
    ridge: jax.Array  # float32 []: the λ chosen at the last task's end


def ridge_grid(min_exponent: int, max_exponent: int) -> np.ndarray:
    """The candidate λ: 10.0 ** np.arange(min_exponent, max_exponent + 1) (the reference's)."""
    return 10.0 ** np.arange(min_exponent, max_exponent + 1)


def project(features: jax.Array, projection: jax.Array) -> jax.Array:
    """h' = ReLU(h W_rand) [B, M]; h itself when the projection is empty (M = 0)."""
    if projection.shape[1] == 0:
        return features
    return jax.nn.relu(jnp.matmul(features, projection, precision=HIGHEST))


def fit_mask(rng: jax.Array, size: jax.Array, capacity: int) -> jax.Array:
    """bool [capacity]: a uniformly random floor(0.8 size) of the first `size` slots, the
    examples the ridges are fitted on (the reference's shuffled first int(0.8 n)); the other
    valid slots validate. 4 n // 5 equals Python's int(n * 0.8) for every n."""
    valid = jnp.arange(capacity) < size
    draw = jnp.where(valid, jax.random.uniform(rng, (capacity,)), 2.0)
    rank = jnp.argsort(jnp.argsort(draw))
    return rank < (4 * size) // 5


def gram(a: jax.Array, b: jax.Array) -> jax.Array:
    """a^T b in full float32."""
    return jnp.matmul(a.T, b, precision=HIGHEST)


def ridge_solve(g: jax.Array, q: jax.Array, ridge) -> jax.Array:
    """(G + λ I)^-1 Q by an LU solve (the reference's `torch.linalg.solve`)."""
    return jnp.linalg.solve(g + ridge * jnp.eye(g.shape[0], dtype=g.dtype), q)


def select_ridge(features, labels, fit, val, projection, ridges, num_classes: int):
    """(λ, losses [R]): the reference's `optimise_ridge_parameter` over the chunked backbone
    features [K, b, D] (labels, fit and validation masks [K, b]), projected chunk by chunk:
    W(λ) fitted on the fit rows, the mean squared error of H'_val W(λ) against the one-hot
    Y_val, and the argmin over the grid (first on ties; non-finite losses excluded)."""
    ridges = jnp.asarray(ridges, jnp.float32)
    m = projection.shape[1] or projection.shape[0]

    def fit_stats(carry, chunk):
        x, y, keep = chunk
        h, w = project(x, projection), keep.astype(jnp.float32)[:, None]
        onehot = jax.nn.one_hot(y, num_classes) * w
        return (carry[0] + gram(h * w, h), carry[1] + gram(h, onehot)), None

    init = (jnp.zeros((m, m), jnp.float32), jnp.zeros((m, num_classes), jnp.float32))
    (g_fit, q_fit), _ = lax.scan(fit_stats, init, (features, labels, fit))
    readouts = lax.map(lambda r: ridge_solve(g_fit, q_fit, r), ridges)  # [R, M, C]

    def errors(total, chunk):
        x, y, keep = chunk
        pred = jnp.einsum("bm,rmc->rbc", project(x, projection), readouts, precision=HIGHEST)
        err = (pred - jax.nn.one_hot(y, num_classes)) ** 2 * keep.astype(jnp.float32)[:, None]
        return total + err.sum((1, 2)), None

    sse, _ = lax.scan(errors, jnp.zeros(ridges.shape, jnp.float32), (features, labels, val))
    losses = sse / (jnp.maximum(val.sum(), 1) * num_classes).astype(jnp.float32)
    best = jnp.argmin(jnp.where(jnp.isfinite(losses), losses, jnp.inf))
    return ridges[best], losses


@dataclasses.dataclass(frozen=True)
class RanPAC(Algorithm):
    """RanPAC without the first-session adaptation (see the module docstring).

    Attributes:
      num_classes: width of the head (the stream's classes; Y is one-hot over all of them).
      feature_dim: width of the model's "features" D (768 for ViT-B/16); `init` does not see
        the model, so W_rand's shape is given here (checked when traced).
      projection_dim: M, the random projection's width (the paper's and PILOT's 10,000);
        0: no projection, h' = h (the RanPAC repository's M = 0).
      min_ridge_exponent, max_ridge_exponent: the ridge grid 10^k, k from min to max
        inclusive (the reference's -8 .. 8).
      cosine_head: True: PILOT's cosine head over h' and W_o's class columns; False: the
        plain h' W_o of the paper and the RanPAC repository (their argmax may differ).
      batch_size: examples per forward pass and per statistics chunk in `end_task` (the
        reference's loader batch, 48 in PILOT's config); memory only.
    """

    needs_boundaries = "the statistics, the ridge and the head are taken when a task ends"

    num_classes: int = 10
    feature_dim: int = 768
    projection_dim: int = 10000
    min_ridge_exponent: int = -8
    max_ridge_exponent: int = 8
    cosine_head: bool = True
    batch_size: int = 128

    def __post_init__(self):
        def integer(value):
            return isinstance(value, int) and not isinstance(value, bool)

        for name in ("num_classes", "feature_dim", "batch_size"):
            value = getattr(self, name)
            if not (integer(value) and value >= 1):
                raise ValueError(f"RanPAC {name}={value!r} must be an integer >= 1")
        if not (integer(self.projection_dim) and self.projection_dim >= 0):
            raise ValueError(
                f"RanPAC projection_dim={self.projection_dim!r} must be an integer >= 0 "
                f"(10000 in the paper; 0: no projection)"
            )
        lo, hi = self.min_ridge_exponent, self.max_ridge_exponent
        if not (integer(lo) and integer(hi) and -30 <= lo <= hi <= 30):
            raise ValueError(
                f"RanPAC needs integers -30 <= min_ridge_exponent={lo!r} <= "
                f"max_ridge_exponent={hi!r} <= 30 (the reference's -8 and 8)"
            )
        if not isinstance(self.cosine_head, bool):
            raise ValueError(f"RanPAC cosine_head={self.cosine_head!r} must be True or False")

    @property
    def width(self) -> int:
        """M: the projected features' width."""
        return self.projection_dim or self.feature_dim

    def wrap_model(self, model):
        return frozen_model(model)

    def init(self, params, model_state, example_batch, rng):
        m, c = self.width, self.num_classes
        return RanPACState(
            projection=jax.random.normal(rng, (self.feature_dim, self.projection_dim), jnp.float32),
            gram=jnp.zeros((m, m), jnp.float32),
            targets=jnp.zeros((m, c), jnp.float32),
            readout=jnp.zeros((m, c), jnp.float32),
            counts=jnp.zeros(c, jnp.int32),
            ridge=jnp.zeros((), jnp.float32),
        )

    def loss(self, params, state, batch, rng, model):
        return zero_loss(state)

    def _features(self, model, params, model_state, x):
        return frozen_features(model, params, model_state, x, self.feature_dim, "RanPAC")

    def end_task(self, state, task_data, rng, model):
        algo, c = state.algo, self.num_classes
        capacity = task_data.y.shape[0]
        batch = min(self.batch_size, capacity)
        chunks = -(-capacity // batch)
        features = compute_features(
            lambda x: self._features(model, state.params, state.model_state, x),
            task_data,
            batch,
            chunks * batch,
        )  # [chunks * batch, D]; slots past the capacity repeat the last one (masked below)
        slot = jnp.arange(chunks * batch)
        valid = slot < task_data.size
        fit = jnp.pad(fit_mask(rng, task_data.size, capacity), (0, chunks * batch - capacity))
        labels = task_data.y[jnp.minimum(slot, capacity - 1)]

        def chunked(a):
            return a.reshape(chunks, batch, *a.shape[1:])

        features, labels, valid, fit = (chunked(a) for a in (features, labels, valid, fit))

        def task_stats(carry, chunk):
            x, y, keep = chunk
            h, w = project(x, algo.projection), keep.astype(jnp.float32)[:, None]
            onehot = jax.nn.one_hot(y, c) * w
            g, q, n = carry
            return (g + gram(h * w, h), q + gram(h, onehot), n + onehot.sum(0)), None

        m = self.width
        init = (jnp.zeros((m, m)), jnp.zeros((m, c)), jnp.zeros(c))
        (g_task, q_task, n_task), _ = lax.scan(task_stats, init, (features, labels, valid))
        grid = ridge_grid(self.min_ridge_exponent, self.max_ridge_exponent)
        ridge, _ = select_ridge(features, labels, fit, valid & ~fit, algo.projection, grid, c)
        g, q = algo.gram + g_task, algo.targets + q_task
        return RanPACState(
            projection=algo.projection,
            gram=g,
            targets=q,
            readout=ridge_solve(g, q, ridge),
            counts=algo.counts + n_task.astype(jnp.int32),
            ridge=ridge,
        )

    def predict(self, params, model_state, algo, x, task, model):
        h = project(self._features(model, params, model_state, x), algo.projection)
        if self.cosine_head:
            logits = cosine_logits(h, algo.readout.T)
        else:
            logits = jnp.matmul(h, algo.readout, precision=HIGHEST)
        return jnp.where(algo.counts > 0, logits, NO_CLASS)
