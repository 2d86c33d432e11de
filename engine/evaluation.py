"""Compiled evaluation of every task's test set: one row of the accuracy matrix.

All test sets are stacked once on the device ([T, M, ...], padded, with true sizes), and a
single compiled program scores the model on each, under two masks at once:
class-incremental (logits of every class seen so far) and task-incremental (the task's own
classes). For a domain-incremental stream both masks are all classes and the rows agree.

    test = stack_test_sets(scenario)
    evaluate = make_evaluate(model, scenario.task_classes, batch_size=1000)
    class_il, task_il = evaluate(state.params, state.model_state, state.task, test)  # [T] each
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sequax.algorithms.reservoir import ReservoirState
from sequax.core.heads import mask_logits, seen_classes
from sequax.core.task_data import TaskData, scan_batches


class TestSets(NamedTuple):
    """Every task's test set, stacked and padded on device."""

    x: jax.Array  # uint8 [T, M, H, W, C]
    y: jax.Array  # int32 [T, M]
    size: jax.Array  # int32 [T]


def stack_test_sets(scenario, limit: int | None = None, put=jax.device_put) -> TestSets:
    """Reads each task's test split from the scenario and places the stack on device.

    `put(host_array) -> jax.Array` places each array (replicated over a mesh, say)."""
    sets = [scenario.test(t) for t in range(scenario.num_tasks)]
    if limit is not None:
        sets = [(x[:limit], y[:limit]) for x, y in sets]
    capacity = max(len(y) for _, y in sets)
    xs = np.zeros((len(sets), capacity, *sets[0][0].shape[1:]), np.uint8)
    ys = np.zeros((len(sets), capacity), np.int32)
    for t, (x, y) in enumerate(sets):
        xs[t, : len(y)], ys[t, : len(y)] = x, y
    sizes = np.array([len(y) for _, y in sets], np.int32)
    return TestSets(put(xs), put(ys), put(sizes))


def stack_run_test_sets(scenarios, put=jax.device_put, put_x=None) -> TestSets:
    """Per-run test sets of runs that draw their own transforms: `x` is [runs, T, M, ...]
    (placed with `put_x`), labels and sizes are shared (only the transform differs)."""
    host = [stack_test_sets(s, put=np.asarray) for s in scenarios]
    return TestSets(
        (put_x or put)(np.stack([h.x for h in host])), put(host[0].y), put(host[0].size)
    )


def make_evaluate(
    model,
    task_classes: np.ndarray,
    batch_size: int = 1000,
    *,
    runs: bool = False,
    predict=None,
    test_per_run: bool = False,
    details: bool = False,
):
    """`evaluate(params, model_state, task, test, algo={}) -> (class_il [T], task_il [T])`, jitted.

    `task` is the index of the last task trained; class-IL counts as candidates the classes
    of tasks 0..task. Accuracies are fractions of each task's test set. With `runs=True`
    the model arguments carry a leading run axis and the results are [runs, T].

    `predict(params, model_state, algo, x, task, model) -> logits` is the method's `predict`
    hook (iCaRL's nearest mean of exemplars, GDumb's model retrained from its memory, HAT's
    per-task gates; the model's own logits by default); `algo` is the algorithm's state and
    `task` the examples' task ids, int32 [B]. None: the model's logits. `test_per_run=True`:
    `test.x` carries the run axis too (`stack_run_test_sets`).

    `details=True` adds a third result, a dict computed in the same pass:
      "top5": [T], the fraction of each test set whose label is among the 5 largest
        class-IL logits (ties counted in the label's favour: fewer than 5 strictly larger);
      "confusion": int32 [C, C], test examples of every task counted by (label, class-IL
        prediction), from which per-class accuracy is read (`per_class_accuracy`);
      "nme": [T], nearest-mean-of-exemplars class-IL accuracy when `algo` holds a replay
        buffer (`exemplar_buffer`), else absent: the test example's normalised features go to
        the nearest normalised mean of the stored examples' normalised features among the
        seen classes that have one (Rebuffi et al., "iCaRL", CVPR 2017, eq. of the
        nearest-mean-of-exemplars rule).
    """
    task_classes = jnp.asarray(task_classes, bool)
    num_classes = task_classes.shape[1]

    def logits_of(params, model_state, algo, x, task):
        if predict is not None:
            return predict(params, model_state, algo, x, task, model)
        return model.apply(params, model_state, x, train=False)[0]["logits"]

    def features_of(params, model_state, x):
        feats = model.apply(params, model_state, x, train=False)[0]["features"]
        return _normalize(feats.reshape(feats.shape[0], -1))

    def evaluate(params, model_state, task, test: TestSets, algo=None):
        seen = seen_classes(task_classes, task)
        buffer = exemplar_buffer(algo) if details else None
        means = None
        if buffer is not None:
            means, has = exemplar_means(lambda x: features_of(params, model_state, x), buffer,
                                        num_classes, batch_size)  # fmt: skip
            nme_candidates = seen & has

        def one_task(j):
            data = TaskData(test.x[j], test.y[j], jnp.full_like(test.y[j], j), test.size[j])

            def count(carry, batch, valid):
                hits, confusion = carry
                logits = logits_of(params, model_state, algo, batch["x"], batch["task"])
                masked = mask_logits(logits, seen)
                predicted = jnp.argmax(masked, -1)
                hit_class = predicted == batch["y"]
                hit_task = jnp.argmax(mask_logits(logits, task_classes[j]), -1) == batch["y"]
                counts = [(hit_class & valid).sum(), (hit_task & valid).sum()]
                if details:
                    own = jnp.take_along_axis(masked, batch["y"][:, None], axis=1)
                    top5 = ((masked > own).sum(-1) < 5) & seen[batch["y"]]  # a candidate
                    counts.append((top5 & valid).sum())
                    confusion = confusion.at[batch["y"], predicted].add(valid.astype(jnp.int32))
                if means is not None:
                    f = features_of(params, model_state, batch["x"])
                    distance = jnp.where(nme_candidates, ((f[:, None] - means) ** 2).sum(-1),
                                         jnp.inf)  # fmt: skip
                    counts.append(((jnp.argmin(distance, -1) == batch["y"]) & valid).sum())
                return hits + jnp.stack(counts), confusion

            width = 2 + details + (means is not None)
            init = (jnp.zeros(width, jnp.int32), jnp.zeros((num_classes,) * 2, jnp.int32))
            hits, confusion = scan_batches(count, data, batch_size, init)
            return hits / data.size, confusion

        accuracies, confusions = jax.lax.map(one_task, jnp.arange(task_classes.shape[0]))
        if not details:
            return accuracies[:, 0], accuracies[:, 1]
        extra = {"top5": accuracies[:, 2], "confusion": confusions.sum(0)}
        if means is not None:
            extra["nme"] = accuracies[:, 3]
        return accuracies[:, 0], accuracies[:, 1], extra

    test_axes = TestSets(0, None, None) if test_per_run else None
    return jax.jit(jax.vmap(evaluate, in_axes=(0, 0, 0, test_axes, 0)) if runs else evaluate)


def exemplar_buffer(algo) -> ReservoirState | None:
    """The first replay buffer (`sequax.algorithms.reservoir.ReservoirState` holding "x" and
    "y") in a method's state, None if it holds none: the exemplars nearest-mean accuracy
    uses. Found by its type, so a user's method that keeps our buffer gets it too."""
    if algo is None:
        return None
    found = [
        node
        for node in jax.tree_util.tree_leaves(algo, is_leaf=lambda n: isinstance(n, ReservoirState))
        if isinstance(node, ReservoirState)
        and isinstance(node.items, dict)
        and {"x", "y"} <= set(node.items)
    ]
    return found[0] if found else None


def exemplar_means(features, buffer: ReservoirState, num_classes: int, batch_size: int):
    """(means [C, D], has bool [C]): each class's mean of the stored examples' normalised
    features, normalised again (iCaRL's class means); `has` marks classes with an example."""
    x, y = buffer.items["x"], buffer.items["y"]
    capacity = y.shape[0]
    filled = jnp.arange(capacity) < jnp.minimum(buffer.num_seen, capacity)
    chunks = -(-capacity // batch_size)
    pad = chunks * batch_size - capacity
    padded = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    feats = jax.lax.map(features, padded.reshape(chunks, batch_size, *x.shape[1:]))
    feats = feats.reshape(chunks * batch_size, -1)[:capacity]
    onehot = jax.nn.one_hot(jnp.where(filled, y, num_classes), num_classes, dtype=feats.dtype)
    sums, counts = onehot.T @ feats, onehot.sum(0)
    return _normalize(sums / jnp.maximum(counts, 1)[:, None]), counts > 0


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """float [C]: the diagonal of a (label, prediction) count matrix over its row sums; NaN
    for a class with no test example."""
    confusion = np.asarray(confusion, np.float64)
    totals = confusion.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diagonal(confusion, axis1=-2, axis2=-1) / totals, np.nan)


def _normalize(v: jax.Array) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
