"""A validation split held out from each task's training data.

Hyper-parameters chosen on the test set overstate what a method would reach on new data
(avalanche issues #904 and #1435 ask for a sound protocol). `hold_out` moves a part of each
task's training examples into `scenario.validation`, a scenario of the same tasks, classes and
transforms whose test sets are those held-out training examples: the engine evaluates it
beside the test sets, early stopping and sweeps read it, and the test sets choose nothing.

    scenario = hold_out(split_mnist, 0.1, seed=0)     # 10 % of each task's training examples
    scenario = hold_out(split_mnist, 500, seed=0)     # or 500 of each task's
    scenario.validation.test(0)                       # task 0's held-out images and labels

Each task draws its own held-out examples (`np.random.default_rng((seed, 13, t))`), class by
class in proportion (stratified, so a rare class keeps its share in both parts); the training
examples left keep their order, so an ordered stream stays ordered. In a domain-IL stream
whose tasks share one pool of source examples (Permuted, Rotated), each task holds out its
own draw: an example held out of task 0 may train task 1 under task 1's transform.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sequax.data.errors import DataError
from sequax.data.scenarios import Scenario
from sequax.data.sources import ImageSource


def hold_out(scenario: Scenario, amount: float, seed: int = 0) -> Scenario:
    """`scenario` without `amount` of each task's training examples, which form
    `scenario.validation`.

    Args:
      scenario: any scenario (its `validation` is replaced).
      amount: in (0, 1): the fraction of each task's training examples held out; >= 1: the
        number of examples held out of each task (as close to it as the class strata allow).
      seed: the draws (one generator per task).
    """
    if not amount > 0:
        raise DataError(f"validation amount {amount}: use a fraction in (0, 1) or a count >= 1")
    labels = scenario.source.train_y
    kept, held = [], []
    for t, index in enumerate(scenario.train_indices):
        n = len(index)
        count = int(round(amount * n)) if amount < 1 else int(amount)
        if not 0 < count < n:
            raise DataError(
                f"validation: {amount} of task {t}'s {n} training examples leaves "
                f"{'no validation' if count <= 0 else 'nothing to train on'}; use a fraction "
                f"in (0, 1) or a count between 1 and {n - 1}"
            )
        chosen = _stratified(index, labels[index], count, np.random.default_rng((seed, 13, t)))
        mask = np.isin(index, chosen)
        kept.append(index[~mask])
        held.append(np.sort(index[mask]))
    for array in (*kept, *held):
        array.setflags(write=False)
    source = scenario.source
    # The held-out images are training images: a source whose "test" split is the training
    # split (the same read-only arrays, not a copy).
    pool = ImageSource(source.train_x, source.train_y, source.train_x, source.train_y,
                       source.num_classes, source.name)  # fmt: skip
    validation = dataclasses.replace(
        scenario,
        name=f"{scenario.name}_validation",
        source=pool,
        train_indices=tuple(held),
        test_indices=tuple(held),
        train_sizes=tuple(len(h) for h in held),
        test_sizes=tuple(len(h) for h in held),
        validation=None,
    )
    return dataclasses.replace(
        scenario,
        train_indices=tuple(kept),
        train_sizes=tuple(len(k) for k in kept),
        validation=validation,
    )


def _stratified(index: np.ndarray, labels: np.ndarray, count: int, rng) -> np.ndarray:
    """`count` of `index`'s examples, each class contributing in proportion to its share
    (largest remainders fill the rounding gap), drawn uniformly within the class."""
    classes, sizes = np.unique(labels, return_counts=True)
    exact = count * sizes / sizes.sum()
    take = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - take))[: count - take.sum()]:
        take[k] += 1
    return np.concatenate(
        [
            rng.choice(index[labels == c], size=min(k, s), replace=False)
            for c, k, s in zip(classes, take, sizes)
        ]
    )
