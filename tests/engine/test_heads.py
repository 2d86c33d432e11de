"""The single masked head (`sequax.core.heads`): seen classes and logit masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sequax.core.heads import mask_logits, seen_classes

TASK_CLASSES = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], bool)


def test_seen_classes_are_those_of_tasks_up_to_task():
    expected = [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    for task, row in enumerate(expected):
        np.testing.assert_array_equal(
            seen_classes(jnp.asarray(TASK_CLASSES), task), np.array(row, bool)
        )
    # Traced task index (as inside the compiled evaluation).
    traced = jax.jit(seen_classes)(jnp.asarray(TASK_CLASSES), jnp.int32(1))
    np.testing.assert_array_equal(traced, np.array(expected[1], bool))


def test_mask_logits_excludes_masked_classes_and_stays_finite():
    logits = jnp.array([[5.0, 1.0, 9.0, 2.0, 0.0, 0.0]])
    mask = jnp.asarray(TASK_CLASSES[0])
    masked = mask_logits(logits, mask)
    assert int(jnp.argmax(masked)) == 0  # class 2 has the largest logit but is masked
    np.testing.assert_array_equal(masked[0, :2], logits[0, :2])
    assert bool(jnp.all(masked[0, 2:] == jnp.finfo(jnp.float32).min))
    probs = jax.nn.softmax(masked)
    assert bool(jnp.all(jnp.isfinite(probs))) and float(probs[0, 2:].sum()) == 0.0
