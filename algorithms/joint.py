"""Joint (multitask) training: the union of all tasks, shuffled i.i.d., the upper bound.

    algorithm = Joint()
    algorithm.phases(5)  # [[0, 1, 2, 3, 4]]: one training phase holding every task

The loop trains one phase on the union of every task's training data and then evaluates
each task's test set, so the accuracy matrix has a single row.

References:
  The "JOINT" row of Buzzega et al., NeurIPS 2020; "multitask" in Mirzadeh et al.,
  "Understanding the Role of Training Regimes in Continual Learning", NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses

from sequax.algorithms.naive import Naive


@dataclasses.dataclass(frozen=True)
class Joint(Naive):
    """Naive's loss over one phase containing every task."""

    needs_boundaries = "its phase holds every task (an upper bound, not a stream learner)"

    def phases(self, num_tasks: int) -> list[list[int]]:
        return [list(range(num_tasks))]
