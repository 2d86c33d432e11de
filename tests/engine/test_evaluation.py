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


def test_details_count_top5_and_confusion_by_hand():
    # Six classes so top-5 is not trivial: preference 2 > 3 > 1 > 0 > 4 > 5.
    logits = jnp.array([0.0, 1.0, 3.0, 2.0, -1.0, -2.0])

    def apply(params, model_state, x, *, train, rng=None):
        return {"logits": jnp.broadcast_to(logits, (x.shape[0], 6)),
                "features": x.reshape(x.shape[0], -1)}, model_state  # fmt: skip

    model = Model(init=lambda key, x: ({}, {}), apply=apply, num_classes=6)
    classes = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], bool)
    y = np.array([[0, 1, 2, 0], [5, 4, 3, 3]], np.int32)
    test = evaluation.TestSets(jnp.zeros((2, 4, 1, 1, 1), jnp.uint8), jnp.asarray(y),
                               jnp.asarray([4, 4], np.int32))  # fmt: skip
    evaluate = make_evaluate(model, classes, batch_size=3, details=True)
    class_il, _, extra = evaluate({}, {}, jnp.int32(1), test)
    # Every prediction is class 2; class 5 is ranked 6th (not in the top 5), the rest are in.
    np.testing.assert_allclose(class_il, [1 / 4, 0.0])
    np.testing.assert_allclose(extra["top5"], [1.0, 3 / 4])
    expected = np.zeros((6, 6), int)
    for label in y.ravel():
        expected[label, 2] += 1
    np.testing.assert_array_equal(extra["confusion"], expected)
    np.testing.assert_allclose(evaluation.per_class_accuracy(extra["confusion"]),
                               [0, 0, 1, 0, 0, 0])  # fmt: skip
    assert "nme" not in extra  # no replay buffer in the state
    # After task 0 only classes 0-2 are candidates: top-5 among 3 is every example.
    _, _, extra = evaluate({}, {}, jnp.int32(0), test)
    np.testing.assert_allclose(extra["top5"], [1.0, 0.0])  # task 1's labels are not candidates


def test_nearest_mean_of_exemplars_by_hand():
    from sequax.algorithms.reservoir import ReservoirState

    def apply(params, model_state, x, *, train, rng=None):
        flat = x.reshape(x.shape[0], -1)
        return {"logits": jnp.zeros((x.shape[0], 3)), "features": flat}, model_state

    model = Model(init=lambda key, x: ({}, {}), apply=apply, num_classes=3)
    # Stored examples (features = the 2 pixels): class 0 at (1, 0) and (2, 0); class 1 at
    # (0, 1); class 2 has none. One slot is past the filled count and must be ignored.
    stored = jnp.array([[1, 0], [2, 0], [0, 1], [0, 9]], jnp.float32).reshape(4, 1, 2, 1)
    buffer = ReservoirState({"x": stored, "y": jnp.array([0, 0, 1, 2])}, jnp.int32(3))
    # Test pixels (uint8 / 255): (200, 10) is nearest class 0, (10, 200) class 1, (100, 120)
    # class 1 (normalised direction closer to (0, 1)); labels 0, 1, 0.
    x = np.array([[200, 10], [10, 200], [100, 120]], np.uint8).reshape(1, 3, 1, 2, 1)
    test = evaluation.TestSets(jnp.asarray(x), jnp.array([[0, 1, 0]]), jnp.array([3]))
    evaluate = make_evaluate(model, np.ones((1, 3), bool), batch_size=2, details=True)
    _, _, extra = evaluate({}, {}, jnp.int32(0), test, {"memory": buffer})
    np.testing.assert_allclose(extra["nme"], [2 / 3])
