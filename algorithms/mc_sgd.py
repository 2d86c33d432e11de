"""MC-SGD: Mode-Connectivity SGD, a continual solution linearly connected to each task's minimum.

Two chains of parameters run side by side. The sequential chain ŵ_t is plain SGD on each
task in turn (`state.params`, with Stable SGD's per-task learning-rate decay: the factor
max(decay ** t, min_factor) of `stable_sgd.task_lr_factor`, 0-based t). At the end of task
t > 0, the continual solution w̄_t (`state.algo.solution`, what evaluation classifies with,
through `predict`) is sought as a point with low loss along both segments

    w̄_{t-1} → w     on the episodic memory of tasks 0..t,
    ŵ_t     → w     on the memory sample of task t,

starting from w = w̄_{t-1} + init_position · (ŵ_t − w̄_{t-1}). The first segment's batches are
the memory's (each task's rows split into batches of `line_batch`, the batches shuffled); the
second's are `current_samples` examples of task t drawn uniformly with replacement (the
reference's `loaders['subset']`: as many as the whole memory holds, num_tasks · rows by
default), in batches of `line_batch`. Step i pairs the i-th batch of each list, and the
longer list goes on alone: max(tasks · ⌈P/B⌉, ⌈S/B⌉) SGD steps with momentum (P = per_class ·
num_classes rows per task, S = current_samples, B = line_batch). Each step's gradient is, for
each segment (start s, batch b),

    Σ_k c_k ∇ℓ_b(s + α_k (w − s)),    α_k = k / line_samples,  k = 0..line_samples,

the gradient at each interpolated point (no chain-rule factor α_k, as the reference code
assigns the point's gradient to w), with ℓ_b the eval-mode cross-entropy of the batch
divided by its size twice (the reference `get_clf_loss`: batch mean / example count) and
c_k = line_samples + 1 − k when `cumulative_grads` (the reference code never zeroes the
interpolated model's gradients between points, so point k returns the sum of the gradients
of points 0..k) or 1. After task 0, w̄_0 = ŵ_0. The whole search is one compiled
`end_task` (a `fori_loop` over the steps); the next task trains on from ŵ_t, not w̄_t, as
the reference's `train_task_sequentially` loads `t_{task-1}_seq`.

Memory: when task t ends, `per_class` of its training examples per class (uniformly without
replacement within each class; classes absent from the task leave their rows empty) are
stored in row t of a [num_tasks, per_class · num_classes] memory, so shapes never change.

    algorithm = MCSGD(num_tasks=20, per_class=10)   # with config.model.dropout=0.2

Departures from the reference code (imirzadeh/CL-LinearModeConnectivity, the research
repository of the paper; its `train_task_LMC_offline`, `get_line_loss`, `get_all_loaders`):
the memory is class-balanced and drawn without replacement (there: a uniform subset per
task, with replacement).

References:
  Mirzadeh, Farajtabar, Gorur, Pascanu, Ghasemzadeh, "Linear Mode Connectivity in Multitask
  and Continual Learning", ICLR 2021.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sequax.algorithms.stable_sgd import decayed_cross_entropy, scale_by_lr_factor
from sequax.core.protocol import Algorithm, is_number
from sequax.core.task_data import gather_batch


class MCSGDState(NamedTuple):
    memory: Any  # {"x": float32 [num_tasks, rows, ...], "y": int32 [num_tasks, rows]}
    valid: jax.Array  # bool [num_tasks, rows]: rows holding a stored example
    stored: jax.Array  # int32 scalar: tasks stored so far
    solution: (
        Any  # w̄: the continual solution evaluation uses (the initial params until task 0 ends)
    )


def class_balanced_sample(task_data, per_class: int, num_classes: int, key: jax.Array):
    """`per_class` examples of each class of a phase, uniformly without replacement within
    the class: ({"x": [C·per_class, ...], "y": [C·per_class]}, valid [C·per_class])."""
    capacity = task_data.y.shape[0]
    scores = jax.random.uniform(key, (capacity,))
    real = jnp.arange(capacity) < task_data.size

    def of_class(c):
        top, index = lax.top_k(jnp.where(real & (task_data.y == c), scores, -1.0), per_class)
        return index, top >= 0

    index, valid = jax.vmap(of_class)(jnp.arange(num_classes))
    batch = gather_batch(task_data, index.reshape(-1))
    return {"x": batch["x"], "y": batch["y"]}, valid.reshape(-1)


@dataclasses.dataclass(frozen=True)
class MCSGD(Algorithm):
    """MC-SGD.

    Attributes:
      num_tasks: tasks in the stream (rows of the memory; later tasks are not stored).
      per_class: memory examples per class per task (10 in the paper: 100 per MNIST task).
      num_classes: classes of the stream (the memory's columns are per_class · num_classes).
      decay: per-task learning-rate decay γ of the sequential chain, lr · γ^t (0-based t).
      min_factor: floor of that factor (the reference's 5e-4 at lr 0.1: 5e-3).
      line_samples: points per segment minus one (α = 0, 1/n, ..., 1).
      line_lr: SGD learning rate of the line search. May be traced. The default and
        init_position's are the P-MNIST ones chosen in configs/pmnist_mc_sgd.py (the
        published 0.05 and 0.1 overshoot under the reference code's loss scale).
      line_momentum: its momentum (torch's SGD: buf = μ·buf + g). May be traced.
      line_batch: memory examples per line-search batch.
      init_position: where on the segment w̄_{t-1} → ŵ_t the search starts (α in the paper).
      cumulative_grads: weight point k by line_samples + 1 − k, as the reference code's
        accumulated gradients do (see the module docstring); False: every point once.
      current_samples: examples of the finished task the second segment's batches draw (with
        replacement); None: num_tasks · per_class · num_classes, the whole memory's size, as
        the reference draws `memory_size` of them.
    """

    needs_boundaries = "the per-task minima and memories are taken when a task ends"

    num_tasks: int = 20
    per_class: int = 10
    num_classes: int = 10
    decay: float = 0.8
    min_factor: float = 5e-3
    line_samples: int = 10
    line_lr: float = 0.003
    line_momentum: float = 0.8
    line_batch: int = 64
    init_position: float = 0.3
    cumulative_grads: bool = True
    current_samples: int | None = None

    def __post_init__(self):
        if self.current_samples is not None and (
            not isinstance(self.current_samples, int) or self.current_samples < 1
        ):
            raise ValueError(
                f"MCSGD current_samples={self.current_samples!r} must be None or an int >= 1"
            )
        for name in ("num_tasks", "per_class", "num_classes", "line_samples", "line_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"MCSGD {name}={getattr(self, name)!r} must be an int >= 1")
        if is_number(self.decay) and not 0 < self.decay <= 1:
            raise ValueError(f"MCSGD decay={self.decay} must be in (0, 1]")
        if is_number(self.line_lr) and not self.line_lr > 0:
            raise ValueError(f"MCSGD line_lr={self.line_lr} must be > 0")
        if is_number(self.line_momentum) and not 0 <= self.line_momentum < 1:
            raise ValueError(f"MCSGD line_momentum={self.line_momentum} must be in [0, 1)")

    @property
    def rows(self) -> int:
        return self.per_class * self.num_classes

    @property
    def current_size(self) -> int:
        return self.current_samples or self.num_tasks * self.rows

    def init(self, params, model_state, example_batch, rng):
        shape = (self.num_tasks, self.rows)
        example = {"x": example_batch["x"][0], "y": example_batch["y"][0]}
        memory = jax.tree.map(
            lambda e: jnp.zeros(shape + jnp.shape(e), jnp.result_type(e)), example
        )
        solution = jax.tree.map(jnp.copy, params)
        return MCSGDState(memory, jnp.zeros(shape, bool), jnp.zeros((), jnp.int32), solution)

    def loss(self, params, state, batch, rng, model):
        return decayed_cross_entropy(
            model, params, state, batch, rng, self.decay, 0, self.min_factor
        )

    def optimizer(self, tx):
        return optax.chain(self.gradient_transform(), tx)

    def gradient_transform(self):
        return scale_by_lr_factor()

    def update(self, algo, state, batch, aux, rng):
        return algo

    def predict(self, params, model_state, algo, x, task, model):
        return model.apply(algo.solution, model_state, x, train=False)[0]["logits"]

    def end_task(self, state, task_data, rng, model):
        sample_key, order_key, current_key = jax.random.split(rng, 3)
        algo = state.algo
        examples, valid = class_balanced_sample(
            task_data, self.per_class, self.num_classes, sample_key
        )
        memory = jax.tree.map(
            lambda m, new: m.at[algo.stored].set(new, mode="drop"), algo.memory, examples
        )
        memory_valid = algo.valid.at[algo.stored].set(valid, mode="drop")
        drawn = gather_batch(
            task_data, jax.random.randint(current_key, (self.current_size,), 0, task_data.size)
        )
        solution = lax.cond(
            algo.stored == 0,
            lambda: state.params,  # w̄_0 = ŵ_0
            lambda: self.line_search(
                algo.solution,
                state.params,
                state.model_state,
                memory,
                memory_valid,
                jnp.minimum(algo.stored + 1, self.num_tasks),
                {"x": drawn["x"], "y": drawn["y"]},
                order_key,
                model,
            ),
        )
        return MCSGDState(memory, memory_valid, algo.stored + 1, solution)

    def line_search(
        self, previous, current, model_state, memory, memory_valid, tasks, drawn, key, model
    ):
        """w̄_t from w̄_{t-1} (`previous`) and ŵ_t (`current`): the memory of the first `tasks`
        tasks and `drawn` ({"x", "y"}: examples of task t) in batches (the module docstring)."""
        per_task = -(-self.rows // self.line_batch)  # batches per task's memory
        slots = self.num_tasks * per_task
        scores = jnp.where(
            jnp.arange(slots) < tasks * per_task, jax.random.uniform(key, (slots,)), 2.0
        )
        order = jnp.argsort(scores)  # the stored tasks' batches, shuffled, first
        drawn_count = drawn["y"].shape[0]
        drawn_batches = -(-drawn_count // self.line_batch)

        def rows_of(batch_index, count):  # row indices and in-range mask of a batch of `count` rows
            rows = batch_index * self.line_batch + jnp.arange(self.line_batch)
            return jnp.minimum(rows, count - 1), rows < count

        def step(i, carry):
            w, trace = carry
            slot = order[jnp.minimum(i, slots - 1)]
            rows, in_range = rows_of(slot % per_task, self.rows)
            task = slot // per_task
            grads = self.line_gradient(
                previous,
                w,
                model_state,
                memory["x"][task, rows],
                memory["y"][task, rows],
                in_range & memory_valid[task, rows] & (i < tasks * per_task),
                model,
            )
            rows, in_range = rows_of(i, drawn_count)  # out of range once i >= drawn_batches
            current_grads = self.line_gradient(
                current, w, model_state, drawn["x"][rows], drawn["y"][rows], in_range, model
            )
            grads = jax.tree.map(jnp.add, grads, current_grads)
            trace = jax.tree.map(lambda m, g: self.line_momentum * m + g, trace, grads)
            return jax.tree.map(lambda p, m: p - self.line_lr * m, w, trace), trace

        start = jax.tree.map(lambda a, b: a + self.init_position * (b - a), previous, current)
        zeros = jax.tree.map(jnp.zeros_like, start)
        return lax.fori_loop(0, jnp.maximum(tasks * per_task, drawn_batches), step, (start, zeros))[
            0
        ]

    def line_gradient(self, start, w, model_state, x, y, mask, model):
        """Σ_k c_k ∇ℓ(start + α_k (w − start)) over the segment's points (module docstring);
        ℓ is the eval-mode cross-entropy summed over `mask`, divided by the batch size squared."""
        n = self.line_samples
        alphas = jnp.arange(n + 1, dtype=jnp.float32) / n
        weights = (n + 1 - jnp.arange(n + 1)) if self.cumulative_grads else jnp.ones(n + 1)
        count = jnp.maximum(mask.sum(), 1).astype(jnp.float32)

        def point_loss(theta):
            logits = model.apply(theta, model_state, x, train=False)[0]["logits"]
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.where(mask, per_example, 0.0).sum() / count**2

        def point_gradient(alpha):
            return jax.grad(point_loss)(jax.tree.map(lambda s, v: s + alpha * (v - s), start, w))

        grads = jax.vmap(point_gradient)(alphas)
        return jax.tree.map(lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=1), grads)
