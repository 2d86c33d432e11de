"""Tests for sequax.engine.metrics: every expected value is worked out by hand below."""

import numpy as np
import pytest

from sequax.engine import metrics

# R[i, j]: accuracy on task j after training task i.
R3 = np.array(
    [
        [0.9, 0.2, 0.1],
        [0.7, 0.8, 0.3],
        [0.6, 0.5, 0.95],
    ]
)
B3 = np.array([0.1, 0.15, 0.05])  # random-initialisation accuracies
JOINT3 = np.array([0.92, 0.85, 0.9])

# Task 0 peaks after task 1 (0.8 > R[0, 0] = 0.5), so max-minus-last differs from
# first-minus-last for task 0.
R4 = np.array(
    [
        [0.5, 0.1, 0.2, 0.25],
        [0.8, 0.9, 0.3, 0.2],
        [0.6, 0.7, 0.85, 0.1],
        [0.4, 0.75, 0.6, 0.95],
    ]
)
B4 = np.array([0.25, 0.2, 0.1, 0.3])
JOINT4 = np.array([0.6, 0.88, 0.9, 0.97])


def test_average_accuracy():
    assert metrics.average_accuracy(R3) == pytest.approx((0.6 + 0.5 + 0.95) / 3)
    assert metrics.average_accuracy(R4) == pytest.approx((0.4 + 0.75 + 0.6 + 0.95) / 4)


def test_backward_transfer():
    assert metrics.backward_transfer(R3) == pytest.approx((0.6 - 0.9 + 0.5 - 0.8) / 2)
    assert metrics.backward_transfer(R4) == pytest.approx((0.4 - 0.5 + 0.75 - 0.9 + 0.6 - 0.85) / 3)


def test_backward_transfer_divisor_flag_matches_gem_code():
    assert metrics.backward_transfer(R3, divide_by_all_tasks=True) == pytest.approx(
        (0.6 - 0.9 + 0.5 - 0.8) / 3
    )
    assert metrics.backward_transfer(R4, divide_by_all_tasks=True) == pytest.approx(
        (0.4 - 0.5 + 0.75 - 0.9 + 0.6 - 0.85) / 4
    )
    # GEM's code: mean of the full vector R[T-1] - diag(R), whose last entry is 0.
    assert metrics.backward_transfer(R4, divide_by_all_tasks=True) == pytest.approx(
        np.mean(R4[-1] - np.diag(R4))
    )


def test_forward_transfer():
    assert metrics.forward_transfer(R3, B3) == pytest.approx((0.2 - 0.15 + 0.3 - 0.05) / 2)
    assert metrics.forward_transfer(R4, B4) == pytest.approx(
        (0.1 - 0.2 + 0.3 - 0.1 + 0.1 - 0.3) / 3
    )


def test_forgetting_per_task_and_average():
    np.testing.assert_allclose(metrics.forgetting_per_task(R3), [0.9 - 0.6, 0.8 - 0.5])
    assert metrics.average_forgetting(R3) == pytest.approx((0.9 - 0.6 + 0.8 - 0.5) / 2)
    np.testing.assert_allclose(metrics.forgetting_per_task(R4), [0.8 - 0.4, 0.9 - 0.75, 0.85 - 0.6])
    assert metrics.average_forgetting(R4) == pytest.approx(
        (0.8 - 0.4 + 0.9 - 0.75 + 0.85 - 0.6) / 3
    )


def test_forgetting_uses_max_not_first():
    first_minus_last = (0.5 - 0.4 + 0.9 - 0.75 + 0.85 - 0.6) / 3  # Avalanche's definition
    max_minus_last = (0.8 - 0.4 + 0.9 - 0.75 + 0.85 - 0.6) / 3
    assert metrics.average_forgetting(R4) == pytest.approx(max_minus_last)
    assert metrics.average_forgetting(R4) != pytest.approx(first_minus_last)
    assert metrics.forgetting_per_task(R4)[0] == pytest.approx(0.8 - 0.4)


def test_learning_accuracy():
    assert metrics.learning_accuracy(R3) == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert metrics.learning_accuracy(R4) == pytest.approx((0.5 + 0.9 + 0.85 + 0.95) / 4)


def test_intransigence():
    assert metrics.intransigence(R3, JOINT3) == pytest.approx(
        (0.92 - 0.9 + 0.85 - 0.8 + 0.9 - 0.95) / 3
    )
    assert metrics.intransigence(R4, JOINT4) == pytest.approx(
        (0.6 - 0.5 + 0.88 - 0.9 + 0.9 - 0.85 + 0.97 - 0.95) / 4
    )


def test_metrics_do_not_depend_on_scale():
    percent = 100.0 * R4
    assert metrics.average_accuracy(percent) == pytest.approx(100.0 * metrics.average_accuracy(R4))
    assert metrics.backward_transfer(percent) == pytest.approx(
        100.0 * metrics.backward_transfer(R4)
    )
    assert metrics.average_forgetting(percent) == pytest.approx(
        100.0 * metrics.average_forgetting(R4)
    )


def test_summary():
    result = metrics.summary(R3)
    assert set(result) == {"acc", "bwt", "forgetting", "learning_acc"}
    assert result["acc"] == pytest.approx((0.6 + 0.5 + 0.95) / 3)
    assert result["bwt"] == pytest.approx((0.6 - 0.9 + 0.5 - 0.8) / 2)
    assert result["forgetting"] == pytest.approx((0.9 - 0.6 + 0.8 - 0.5) / 2)
    assert result["learning_acc"] == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert all(isinstance(value, float) for value in result.values())

    with_fwt = metrics.summary(R3, random_init_accuracies=B3)
    assert set(with_fwt) == {"acc", "bwt", "forgetting", "learning_acc", "fwt"}
    assert with_fwt["fwt"] == pytest.approx((0.2 - 0.15 + 0.3 - 0.05) / 2)


def test_single_task():
    R1 = np.array([[0.7]])
    assert metrics.average_accuracy(R1) == pytest.approx(0.7)
    assert metrics.learning_accuracy(R1) == pytest.approx(0.7)
    assert metrics.backward_transfer(R1) == 0.0
    assert metrics.backward_transfer(R1, divide_by_all_tasks=True) == 0.0
    assert metrics.forward_transfer(R1, [0.1]) == 0.0
    assert metrics.average_forgetting(R1) == 0.0
    assert metrics.forgetting_per_task(R1).shape == (0,)
    assert metrics.intransigence(R1, [0.75]) == pytest.approx(0.75 - 0.7)
    assert metrics.summary(R1, random_init_accuracies=[0.1]) == {
        "acc": pytest.approx(0.7),
        "bwt": 0.0,
        "forgetting": 0.0,
        "learning_acc": pytest.approx(0.7),
        "fwt": 0.0,
    }


def test_format_matrix_full():
    text = metrics.format_matrix(R3, title="split-mnist")
    lines = text.splitlines()
    assert lines[0] == "split-mnist"
    assert "task 0" in lines[1] and "task 2" in lines[1]
    assert lines[2].startswith("after task 0")
    assert lines[4].startswith("after task 2")
    for value in ("90.00", "20.00", "10.00", "70.00", "80.00", "30.00", "60.00", "50.00", "95.00"):
        assert value in text
    # Fixed width: every line after the title has the same length.
    assert len({len(line) for line in lines[1:]}) == 1


def test_format_matrix_partial_omits_unreached_rows():
    partial = np.full((4, 4), np.nan)
    partial[0, 0] = 0.9
    partial[1, :2] = [0.7, 0.85]
    text = metrics.format_matrix(partial)
    lines = text.splitlines()
    assert len(lines) == 3  # header + two trained rows
    assert "after task 0" in text and "after task 1" in text
    assert "after task 2" not in text and "after task 3" not in text
    assert "90.00" in lines[1] and "70.00" in lines[2] and "85.00" in lines[2]
    assert lines[1].count("  -  ") == 3
    assert lines[2].count("  -  ") == 2
    assert "nan" not in text.lower()


def test_format_matrix_without_percent():
    text = metrics.format_matrix(np.array([[0.9]]), percent=False)
    assert "0.9000" in text
    assert "90.00" not in text


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 3)), np.zeros((3,)), np.zeros((2, 2, 2)), np.zeros((0, 0))],
    ids=["not-square", "1-d", "3-d", "empty"],
)
def test_validation_rejects_bad_shapes(bad):
    for function in (
        metrics.average_accuracy,
        metrics.backward_transfer,
        metrics.average_forgetting,
        metrics.learning_accuracy,
        metrics.summary,
    ):
        with pytest.raises(ValueError, match="accuracy matrix"):
            function(bad)
    if bad.ndim != 2 or bad.size == 0:  # a table may be rectangular (joint: one row)
        with pytest.raises(ValueError, match="accuracy matrix"):
            metrics.format_matrix(bad)


def test_format_matrix_rectangular_with_row_labels():
    table = metrics.format_matrix(np.array([[0.5, 0.25, 0.125]]), row_labels=["after tasks 0-2"])
    assert "after tasks 0-2" in table and "12.50" in table and "task 2" in table


def test_validation_rejects_nan_in_used_entries():
    partial = R3.copy()
    partial[2] = np.nan  # last task not trained yet
    with pytest.raises(ValueError, match="NaN"):
        metrics.summary(partial)
    with pytest.raises(ValueError, match="NaN"):
        metrics.average_accuracy(partial)
    with pytest.raises(ValueError, match="NaN"):
        metrics.backward_transfer(partial)
    with pytest.raises(ValueError, match="NaN"):
        metrics.average_forgetting(partial)

    missing_superdiagonal = R3.copy()
    missing_superdiagonal[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.forward_transfer(missing_superdiagonal, B3)
    # Entries a metric does not use may be NaN.
    assert metrics.average_accuracy(missing_superdiagonal) == pytest.approx((0.6 + 0.5 + 0.95) / 3)
    assert metrics.backward_transfer(missing_superdiagonal) == pytest.approx(
        (0.6 - 0.9 + 0.5 - 0.8) / 2
    )

    with pytest.raises(ValueError, match="NaN"):
        metrics.intransigence(R3, [0.9, np.nan, 0.9])


def test_validation_rejects_wrong_length_task_vectors():
    with pytest.raises(ValueError, match="random_init_accuracies"):
        metrics.forward_transfer(R3, [0.1, 0.1])
    with pytest.raises(ValueError, match="joint_accuracies"):
        metrics.intransigence(R3, [0.9, 0.9, 0.9, 0.9])


# ---------------- Average incremental accuracy, old and new tasks (Rebuffi et al. 2017) -------
N3 = np.array([100, 300, 200])  # test examples per task


def test_seen_accuracy_curve_pools_the_seen_test_sets():
    curve = metrics.seen_accuracy_curve(R3, N3)
    assert curve[0] == pytest.approx(0.9)
    assert curve[1] == pytest.approx((100 * 0.7 + 300 * 0.8) / 400)  # 0.775
    assert curve[2] == pytest.approx((100 * 0.6 + 300 * 0.5 + 200 * 0.95) / 600)  # 0.6666...
    equal = metrics.seen_accuracy_curve(R3)  # tasks weighed equally
    np.testing.assert_allclose(equal, [0.9, 0.75, (0.6 + 0.5 + 0.95) / 3])


def test_average_incremental_accuracy_is_the_curves_mean():
    expected = (0.9 + 0.775 + 400 / 600) / 3
    assert metrics.average_incremental_accuracy(R3, N3) == pytest.approx(expected)
    assert metrics.average_incremental_accuracy([[0.7]], [10]) == pytest.approx(0.7)
    # Only the lower triangle counts: untrained tasks' (upper) entries never enter it.
    upper = R3.copy()
    upper[0, 1:] = np.nan
    assert metrics.average_incremental_accuracy(upper, N3) == pytest.approx(expected)


def test_old_and_new_accuracy_after_the_last_task():
    old, new = metrics.old_new_accuracy(R3, N3)
    assert old == pytest.approx((100 * 0.6 + 300 * 0.5) / 400)  # 0.525
    assert new == pytest.approx(0.95)
    with pytest.raises(ValueError, match="at least two tasks"):
        metrics.old_new_accuracy([[0.5]])
    with pytest.raises(ValueError, match="test_sizes must be positive"):
        metrics.old_new_accuracy(R3, [100, 0, 200])
    with pytest.raises(ValueError, match=r"test_sizes must have shape \(3,\)"):
        metrics.seen_accuracy_curve(R3, [1, 2])


def test_summary_adds_them_when_the_test_sizes_are_given():
    result = metrics.summary(R3, B3, test_sizes=N3)
    assert set(result) == {"acc", "bwt", "forgetting", "learning_acc", "fwt",
                           "avg_incremental_acc", "old_acc", "new_acc"}  # fmt: skip
    assert result["avg_incremental_acc"] == pytest.approx((0.9 + 0.775 + 400 / 600) / 3)
    assert result["old_acc"] == pytest.approx(0.525) and result["new_acc"] == 0.95
    single = metrics.summary(np.array([[0.7]]), test_sizes=[10])
    assert "old_acc" not in single and single["avg_incremental_acc"] == pytest.approx(0.7)


def test_anytime_metrics_on_hand_computed_values():
    # Three points: in task 0 (only task 0 seen), at task 0's end, in task 1 (tasks 0..1).
    curve = [[0.5, 0.0], [0.8, 0.1], [0.6, 0.4]]
    tasks = [0, 0, 1]
    np.testing.assert_allclose(metrics.anytime_seen_accuracy(curve, tasks), [0.5, 0.8, 0.5])
    # Weighted by test examples (1 and 3): the last point is (0.6 + 3 * 0.4) / 4 = 0.45.
    np.testing.assert_allclose(metrics.anytime_seen_accuracy(curve, tasks, [1, 3]),
                               [0.5, 0.8, 0.45])  # fmt: skip
    assert metrics.average_anytime_accuracy(curve, tasks) == pytest.approx((0.5 + 0.8 + 0.5) / 3)
    # Trapezoid over samples 10, 20, 40: (0.65 * 10 + 0.65 * 20) / 30 = 0.65.
    assert metrics.accuracy_auc(curve, tasks, [10, 20, 40]) == pytest.approx(0.65)
    assert metrics.accuracy_auc([[0.3, 0.0]], [0], [10]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="increasing"):
        metrics.accuracy_auc(curve, tasks, [10, 5, 40])
    with pytest.raises(ValueError, match="phases must be in"):
        metrics.anytime_seen_accuracy(curve, [0, 0, 2])
