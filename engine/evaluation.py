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
    """
    task_classes = jnp.asarray(task_classes, bool)

    def logits_of(params, model_state, algo, x, task):
        if predict is not None:
            return predict(params, model_state, algo, x, task, model)
        return model.apply(params, model_state, x, train=False)[0]["logits"]

    def evaluate(params, model_state, task, test: TestSets, algo=None):
        seen = seen_classes(task_classes, task)

        def one_task(j):
            data = TaskData(test.x[j], test.y[j], jnp.full_like(test.y[j], j), test.size[j])

            def count(carry, batch, valid):
                logits = logits_of(params, model_state, algo, batch["x"], batch["task"])
                hit_class = jnp.argmax(mask_logits(logits, seen), -1) == batch["y"]
                hit_task = jnp.argmax(mask_logits(logits, task_classes[j]), -1) == batch["y"]
                return carry + jnp.stack([(hit_class & valid).sum(), (hit_task & valid).sum()])

            hits = scan_batches(count, data, batch_size, jnp.zeros(2, jnp.int32))
            return hits / data.size

        accuracies = jax.lax.map(one_task, jnp.arange(task_classes.shape[0]))
        return accuracies[:, 0], accuracies[:, 1]

    test_axes = TestSets(0, None, None) if test_per_run else None
    return jax.jit(jax.vmap(evaluate, in_axes=(0, 0, 0, test_axes, 0)) if runs else evaluate)
