"""The compiled evaluation (`sequax.engine.evaluation`) on a hand-made model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sequax.core.models import Model
from sequax.engine import evaluation
from sequax.engine.evaluation import make_evaluate, stack_test_sets

# Two tasks of a class-IL stream over 4 classes: task 0 = {0, 1}, task 1 = {2, 3}.
TASK_CLASSES = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
# Every input gets these logits: overall preference 2 > 3 > 1 > 0.
LOGITS = jnp.array([0.0, 1.0, 3.0, 2.0])


def fixed_logits_model() -> Model:
    def apply(params, model_state, x, *, train, rng=None):
        return {"logits": jnp.broadcast_to(LOGITS, (x.shape[0], 4)) + 0 * params["w"]}, model_state

    return Model(init=lambda key, x: ({"w": jnp.zeros(())}, {}), apply=apply, num_classes=4)


def hand_made_test_sets() -> evaluation.TestSets:
    # Padding rows carry the label the model predicts under every mask (2), so counting
    # them would raise every accuracy.
    y = np.array([[0, 1, 1, 1, 2, 2, 2], [2, 3, 2, 2, 3, 2, 2]], np.int32)
    sizes = np.array([4, 5], np.int32)
    x = np.zeros((2, 7, 2, 2, 1), np.uint8)
    return evaluation.TestSets(jnp.asarray(x), jnp.asarray(y), jnp.asarray(sizes))


def test_class_il_and_task_il_accuracies():
    evaluate = make_evaluate(
        fixed_logits_model(), TASK_CLASSES, batch_size=3
    )  # 7 is not a multiple
    params = {"w": jnp.zeros(())}
    test = hand_made_test_sets()
    # After task 0: class-IL sees {0, 1} -> predicts 1 everywhere; task-IL masks per task.
    class_il, task_il = evaluate(params, {}, jnp.int32(0), test)
    np.testing.assert_allclose(class_il, [3 / 4, 0.0])
    np.testing.assert_allclose(task_il, [3 / 4, 3 / 5])  # task 1's mask {2, 3} -> predicts 2
    # After task 1: class-IL sees everything -> predicts 2 everywhere; task-IL unchanged.
    class_il, task_il = evaluate(params, {}, jnp.int32(1), test)
    np.testing.assert_allclose(class_il, [0.0, 3 / 5])
    np.testing.assert_allclose(task_il, [3 / 4, 3 / 5])


def test_domain_il_masks_agree():
    all_classes = np.ones((2, 4), bool)
    evaluate = make_evaluate(fixed_logits_model(), all_classes, batch_size=4)
    class_il, task_il = evaluate({"w": jnp.zeros(())}, {}, jnp.int32(0), hand_made_test_sets())
    np.testing.assert_allclose(class_il, [0.0, 3 / 5])
    np.testing.assert_allclose(class_il, task_il)


class TinyScenario:
    num_tasks = 2

    def test(self, t):
        n = (3, 5)[t]
        return np.full((n, 2, 2, 1), t + 1, np.uint8), np.arange(n, dtype=np.int32)


def test_stack_test_sets_pads_and_limits():
    stacked = stack_test_sets(TinyScenario())
    assert stacked.x.shape == (2, 5, 2, 2, 1) and stacked.y.shape == (2, 5)
    np.testing.assert_array_equal(stacked.size, [3, 5])
    np.testing.assert_array_equal(stacked.x[0, 3:], 0)
    np.testing.assert_array_equal(stacked.y[1], np.arange(5))
    limited = stack_test_sets(TinyScenario(), limit=4)
    np.testing.assert_array_equal(limited.size, [3, 4])
    assert limited.y.shape == (2, 4)
