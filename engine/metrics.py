"""Continual-learning metrics over the accuracy matrix.

``R`` is a float ``[T, T]`` array with ``R[i, j]`` the accuracy on task ``j`` after training
task ``i``: rows are time, columns are tasks. Every function is pure numpy, returns Python
floats (or a numpy vector), and does not care whether accuracies are fractions or percentages;
only ``format_matrix(..., percent=True)`` assumes fractions in ``[0, 1]``.

Usage:

    R = np.array([[0.9, 0.1], [0.7, 0.8]])
    print(format_matrix(R, title="split-mnist"))
    summary(R)  # acc 0.75, bwt -0.2, forgetting 0.2, learning_acc 0.85 (up to rounding)

References:
  Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017
  (ACC, BWT, FWT).
  Chaudhry, Dokania, Ajanthan & Torr, "Riemannian Walk for Incremental Learning:
  Understanding Forgetting and Intransigence", ECCV 2018 (forgetting, intransigence).
  Riemer et al., "Learning to Learn without Forgetting by Maximizing Transfer and Minimizing
  Interference", ICLR 2019 (learning accuracy).
  Rebuffi, Kolesnikov, Sperl & Lampert, "iCaRL: Incremental Classifier and Representation
  Learning", CVPR 2017 (average incremental accuracy; old and new classes as PyCIL reports
  them, G-U-IT-LAMDA/PyCIL utils/toolkit.py `accuracy`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "average_accuracy",
    "average_forgetting",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting_per_task",
    "format_matrix",
    "forward_transfer",
    "intransigence",
    "learning_accuracy",
    "old_new_accuracy",
    "seen_accuracy_curve",
    "summary",
]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _as_matrix(R: npt.ArrayLike) -> np.ndarray:
    """Returns ``R`` as a float64 square 2-D array with at least one task (NaN allowed)."""
    matrix = np.asarray(R, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"accuracy matrix must be square 2-D [T, T], got shape {matrix.shape}")
    if matrix.shape[0] == 0:
        raise ValueError("accuracy matrix must hold at least one task, got shape (0, 0)")
    return matrix


def _require_finite(values: np.ndarray, what: str) -> None:
    if np.isnan(values).any():
        raise ValueError(f"accuracy matrix has NaN in the entries {what} needs")


def _as_task_vector(values: npt.ArrayLike, num_tasks: int, name: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (num_tasks,):
        raise ValueError(f"{name} must have shape ({num_tasks},), got {vector.shape}")
    _require_finite(vector, name)
    return vector


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def average_accuracy(R: npt.ArrayLike) -> float:
    """ACC = mean_j R[T-1, j]: accuracy on every task after the last one (Lopez-Paz & Ranzato
    2017). Divisor: T.

    Uses the last row only.
    """
    matrix = _as_matrix(R)
    final_row = matrix[-1]
    _require_finite(final_row, "average_accuracy (last row)")
    return float(final_row.mean())


def backward_transfer(R: npt.ArrayLike, *, divide_by_all_tasks: bool = False) -> float:
    """BWT = mean_{j<T-1} (R[T-1, j] - R[j, j]) (Lopez-Paz & Ranzato 2017).

    Divisor: T - 1, as in the paper. The GEM reference code
    (facebookresearch/GradientEpisodicMemory, ``metrics/metrics.py``) averages the vector
    ``R[T-1] - diag(R)`` whose last entry is 0, i.e. divides the same sum by T; pass
    ``divide_by_all_tasks=True`` to reproduce numbers reported with that code.

    Negative values mean forgetting. Returns 0.0 for T == 1 (no earlier task to transfer to).
    """
    matrix = _as_matrix(R)
    num_tasks = matrix.shape[0]
    if num_tasks == 1:
        return 0.0
    final = matrix[-1, :-1]
    just_trained = np.diag(matrix)[:-1]
    _require_finite(final, "backward_transfer (last row)")
    _require_finite(just_trained, "backward_transfer (diagonal)")
    divisor = num_tasks if divide_by_all_tasks else num_tasks - 1
    return float((final - just_trained).sum() / divisor)


def forward_transfer(R: npt.ArrayLike, random_init_accuracies: npt.ArrayLike) -> float:
    """FWT = mean_{j>=1} (R[j-1, j] - b[j]) (Lopez-Paz & Ranzato 2017).

    ``random_init_accuracies`` is ``b``, float ``[T]``: the accuracy of the randomly
    initialised model (before any training) on each task; ``b[0]`` is required for shape but
    unused. Needs the superdiagonal ``R[j-1, j]``, i.e. evaluating a task before training it.

    Divisor: T - 1, as in the paper (the GEM reference code includes a zero for task 0 and
    divides by T). Returns 0.0 for T == 1.
    """
    matrix = _as_matrix(R)
    num_tasks = matrix.shape[0]
    baseline = _as_task_vector(random_init_accuracies, num_tasks, "random_init_accuracies")
    if num_tasks == 1:
        return 0.0
    before_training = np.diag(matrix, k=1)
    _require_finite(before_training, "forward_transfer (superdiagonal)")
    return float((before_training - baseline[1:]).mean())


def forgetting_per_task(R: npt.ArrayLike) -> np.ndarray:
    """f_j = max_{l<T-1} R[l, j] - R[T-1, j] for each j < T-1 (Chaudhry et al. 2018).

    Returns a float ``[T-1]`` vector (empty for T == 1). As in the paper the max runs over all
    rows before the last, including rows before task j was trained, so rows 0..T-2 of columns
    0..T-2 must be filled.

    Avalanche's ``Forgetting`` uses first-minus-last instead, ``R[j, j] - R[T-1, j]``; the two
    differ when accuracy on task j peaks after task j (backward transfer followed by a drop),
    where the max version is larger.
    """
    matrix = _as_matrix(R)
    num_tasks = matrix.shape[0]
    if num_tasks == 1:
        return np.zeros((0,), dtype=np.float64)
    earlier = matrix[:-1, :-1]
    final = matrix[-1, :-1]
    _require_finite(earlier, "forgetting (rows and columns 0..T-2)")
    _require_finite(final, "forgetting (last row)")
    return earlier.max(axis=0) - final


def average_forgetting(R: npt.ArrayLike) -> float:
    """Average forgetting = mean_{j<T-1} (max_{l<T-1} R[l, j] - R[T-1, j]) (Chaudhry et al.
    2018). Divisor: T - 1.

    See ``forgetting_per_task`` for the per-task vector and the difference from Avalanche's
    first-minus-last definition. Returns 0.0 for T == 1.
    """
    per_task = forgetting_per_task(R)
    if per_task.size == 0:
        return 0.0
    return float(per_task.mean())


def learning_accuracy(R: npt.ArrayLike) -> float:
    """LA = mean_i R[i, i]: accuracy on each task just after training it (Riemer et al. 2019).
    Divisor: T.
    """
    matrix = _as_matrix(R)
    diagonal = np.diag(matrix)
    _require_finite(diagonal, "learning_accuracy (diagonal)")
    return float(diagonal.mean())


def intransigence(R: npt.ArrayLike, joint_accuracies: npt.ArrayLike) -> float:
    """Mean intransigence = mean_k (a*_k - R[k, k]) (Chaudhry et al. 2018). Divisor: T.

    ``joint_accuracies`` is ``a*``, float ``[T]``: ``a*_k`` is the accuracy on task k of a
    reference model trained jointly on the data of tasks 0..k. The paper defines I_k for one k
    (usually the last); the mean over all k summarises how much the method's inability to learn
    new tasks grew along the sequence. Positive means the method learns less than joint
    training would.
    """
    matrix = _as_matrix(R)
    reference = _as_task_vector(joint_accuracies, matrix.shape[0], "joint_accuracies")
    diagonal = np.diag(matrix)
    _require_finite(diagonal, "intransigence (diagonal)")
    return float((reference - diagonal).mean())


def _weights(num_tasks: int, test_sizes) -> np.ndarray:
    if test_sizes is None:
        return np.ones(num_tasks)
    sizes = _as_task_vector(test_sizes, num_tasks, "test_sizes")
    if (sizes <= 0).any():
        raise ValueError(f"test_sizes must be positive, got {sizes.tolist()}")
    return sizes


def seen_accuracy_curve(R: npt.ArrayLike, test_sizes: npt.ArrayLike | None = None) -> np.ndarray:
    """A_k = Σ_{j<=k} n_j R[k, j] / Σ_{j<=k} n_j for each k: the accuracy on the test examples
    of every task seen so far, after training task k (iCaRL's curve, Rebuffi et al. 2017).

    ``test_sizes`` is ``n``, the test examples of each task (so A_k is the accuracy on the
    union of the seen test sets, as the class-IL literature measures it); None weighs the
    tasks equally. Returns a float ``[T]`` vector.
    """
    matrix = _as_matrix(R)
    num_tasks = matrix.shape[0]
    n = _weights(num_tasks, test_sizes)
    curve = np.empty(num_tasks)
    for k in range(num_tasks):
        seen = matrix[k, : k + 1]
        _require_finite(seen, f"seen_accuracy_curve (row {k}, tasks 0..{k})")
        curve[k] = float(np.dot(n[: k + 1], seen) / n[: k + 1].sum())
    return curve


def average_incremental_accuracy(
    R: npt.ArrayLike, test_sizes: npt.ArrayLike | None = None
) -> float:
    """Average incremental accuracy = mean_k A_k (Rebuffi et al. 2017; PyCIL's "average
    accuracy" of its top-1 curve): the mean of `seen_accuracy_curve` over the T phases.
    Divisor: T."""
    return float(seen_accuracy_curve(R, test_sizes).mean())


def old_new_accuracy(
    R: npt.ArrayLike, test_sizes: npt.ArrayLike | None = None
) -> tuple[float, float]:
    """(old, new) after the last task: the accuracy on the test examples of tasks 0..T-2
    (weighted by ``test_sizes``, as one pooled test set) and on task T-1's (PyCIL's "old" and
    "new" groups of classes after a phase). ValueError for T == 1 (no old task)."""
    matrix = _as_matrix(R)
    num_tasks = matrix.shape[0]
    if num_tasks == 1:
        raise ValueError("old_new_accuracy needs at least two tasks")
    n = _weights(num_tasks, test_sizes)
    final = matrix[-1]
    _require_finite(final, "old_new_accuracy (last row)")
    return float(np.dot(n[:-1], final[:-1]) / n[:-1].sum()), float(final[-1])


def anytime_seen_accuracy(
    curve: npt.ArrayLike, phases: npt.ArrayLike, test_sizes: npt.ArrayLike | None = None
) -> np.ndarray:
    """a_e = Σ_{j<=p_e} n_j C[e, j] / Σ_{j<=p_e} n_j at each evaluation point e: the accuracy
    on the test examples of the tasks seen so far (tasks 0..p_e, p_e the last task of the phase
    being trained when point e was taken), as `seen_accuracy_curve` but at any step.

    ``curve`` is C, float [E, T] (every task's accuracy at each point); ``phases`` is p, int
    [E], each >= 0; ``test_sizes`` n weighs the tasks (None: equally). Returns float [E].
    """
    values = np.asarray(curve, np.float64)
    points = np.asarray(phases, np.int64)
    if values.ndim != 2 or points.shape != values.shape[:1]:
        raise ValueError(
            f"anytime curve must be [points, tasks] with one phase per point, got "
            f"{values.shape} and {points.shape}"
        )
    if (points < 0).any() or (points >= values.shape[1]).any():
        raise ValueError(f"anytime phases must be in [0, {values.shape[1]}), got {points}")
    n = _weights(values.shape[1], test_sizes)
    out = np.empty(len(points))
    for e, p in enumerate(points):
        seen = values[e, : p + 1]
        _require_finite(seen, f"anytime point {e} (tasks 0..{p})")
        out[e] = float(np.dot(n[: p + 1], seen) / n[: p + 1].sum())
    return out


def average_anytime_accuracy(curve: npt.ArrayLike, phases: npt.ArrayLike) -> float:
    """AAA = (1/E) Σ_e mean_{j<=p_e} C[e, j]: the mean, over the E evaluation points taken
    while training (every `eval.every_steps` steps and at each task's end), of the average
    accuracy over the tasks seen so far (Caccia, Aljundi, Asadi, Tuytelaars, Pineau,
    Belilovsky, "New insights on reducing abrupt representation change in online continual
    learning", ICLR 2022, eq. for "average anytime accuracy"). Tasks weigh equally."""
    return float(anytime_seen_accuracy(curve, phases).mean())


def accuracy_auc(
    curve: npt.ArrayLike,
    phases: npt.ArrayLike,
    samples: npt.ArrayLike,
    test_sizes: npt.ArrayLike | None = None,
) -> float:
    """A_AUC: the area under the seen-classes accuracy curve against the training examples
    seen, divided by the span of examples it covers (Koh, Kim, Ha, Yun, Choi, ICLR 2022,
    "A_auc = Σ_i f(i Δn) Δn", with f the accuracy on the seen classes' test examples; their
    code averages f over evenly spaced points, which this trapezoid equals for evenly spaced
    points up to the end points). ``samples`` is the examples seen at each point, int [E]
    (increasing); one point gives its own accuracy."""
    f = anytime_seen_accuracy(curve, phases, test_sizes)
    n = np.asarray(samples, np.float64)
    if n.shape != f.shape or (np.diff(n) < 0).any():
        raise ValueError(f"accuracy_auc: samples must be increasing, one per point, got {n}")
    if len(f) == 1 or n[-1] == n[0]:
        return float(f.mean())
    return float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(n)) / (n[-1] - n[0]))


def summary(
    R: npt.ArrayLike,
    random_init_accuracies: npt.ArrayLike | None = None,
    test_sizes: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """Returns ``{"acc", "bwt", "forgetting", "learning_acc"}`` (+ ``"fwt"`` when ``b`` given;
    + ``"avg_incremental_acc"``, and ``"old_acc"`` and ``"new_acc"`` for T > 1, when the tasks'
    ``test_sizes`` are given).

    Defined only for a complete matrix (all T tasks trained): a partially filled matrix has NaN
    in its last row and raises ValueError. BWT uses the paper's T - 1 divisor.
    """
    metrics = {
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "forgetting": average_forgetting(R),
        "learning_acc": learning_accuracy(R),
    }
    if random_init_accuracies is not None:
        metrics["fwt"] = forward_transfer(R, random_init_accuracies)
    if test_sizes is not None:
        metrics["avg_incremental_acc"] = average_incremental_accuracy(R, test_sizes)
        if np.shape(R)[0] > 1:
            metrics["old_acc"], metrics["new_acc"] = old_new_accuracy(R, test_sizes)
    return metrics


# ---------------------------------------------------------------------------------------------
# Console table
# ---------------------------------------------------------------------------------------------

_ROW_LABEL_WIDTH = 14  # len("after task 99") + 1
_CELL_WIDTH = 9  # " 100.00" and "task 99" both fit with room
_MISSING = "  -  "


def format_matrix(
    R: npt.ArrayLike,
    *,
    title: str | None = None,
    percent: bool = True,
    row_labels: Sequence[str] | None = None,
) -> str:
    """Returns ``R`` as a fixed-width text table, one line per trained task.

    Rows are "after task i", columns "task j". Rows that are entirely NaN (tasks not reached
    yet) are omitted, so the console can print the matrix after every task; NaN entries inside
    a shown row (tasks not evaluated yet) print as ``"  -  "``. With ``percent=True`` values
    are fractions shown as percent with 2 decimals; with ``percent=False`` they print as
    given with 4 decimals. ``R`` may have fewer rows than columns (joint training has one
    training phase over every task); ``row_labels`` then names the rows.
    """
    matrix = np.asarray(R, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"accuracy matrix must be 2-D [rows, tasks], got shape {matrix.shape}")
    num_tasks = matrix.shape[1]
    if row_labels is None:
        row_labels = [f"after task {i}" for i in range(matrix.shape[0])]
    lines = [] if title is None else [title]
    header = " " * _ROW_LABEL_WIDTH + "".join(
        f"{f'task {j}':>{_CELL_WIDTH}}" for j in range(num_tasks)
    )
    lines.append(header)
    for i, row in enumerate(matrix):
        if np.isnan(row).all():
            continue
        cells = []
        for value in row:
            if np.isnan(value):
                cells.append(f"{_MISSING:>{_CELL_WIDTH}}")
            elif percent:
                cells.append(f"{100.0 * value:>{_CELL_WIDTH}.2f}")
            else:
                cells.append(f"{value:>{_CELL_WIDTH}.4f}")
        lines.append(f"{row_labels[i]:<{_ROW_LABEL_WIDTH}}" + "".join(cells))
    return "\n".join(lines)
