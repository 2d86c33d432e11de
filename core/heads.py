"""The single masked head: which logits count in task-, class- and domain-IL.

One output layer over all classes is allocated at its final width from the start; the
scenario's `task_classes` (bool [T, C]) says which classes belong to which task, and the
mask is computed in-jit from the task index, so no shape ever changes.

    seen = seen_classes(task_classes, task)          # class-IL: classes of tasks <= task
    pred = jnp.argmax(mask_logits(logits, seen), -1)
    pred_task_il = jnp.argmax(mask_logits(logits, task_classes[j]), -1)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def seen_classes(task_classes: jax.Array, task: jax.typing.ArrayLike) -> jax.Array:
    """bool [C]: the classes of every task up to and including `task`."""
    upto = jnp.arange(task_classes.shape[0]) <= task
    return jnp.any(task_classes & upto[:, None], axis=0)


def mask_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Sets the logits of classes outside `mask` to the most negative finite value.

    Finite rather than -inf so that a softmax over a row stays NaN-free.
    """
    return jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
