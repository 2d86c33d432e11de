"""Blurry task boundaries: a class-incremental stream whose tasks bleed into each other.

A `Scenario` cut into tasks has sharp boundaries: task t holds only its own classes. Online
continual learning also studies streams where the classes of neighbouring tasks mix. Both
constructions here take a scenario and return one with `ordered=True`: each task's
`train_indices` is a segment of the stream in the order it is read, holding examples of
several nominal tasks. The test sets, the task classes and the accuracy matrix's columns stay
those of the nominal tasks, so forgetting and transfer read as before; a row is written when
a segment ends. Run them with `config.training.task_free=True` to hide the segments' ends
from the method as well (`sequax.engine.validate`).

    from sequax.data import blurry
    stream = blurry.linear_decay(split_mnist, beta=4.0, iterations=10, seed=0)
    stream = blurry.iblurry(split_mnist, disjoint=0.5, moved=0.1, seed=0)  # i-Blurry-50-10
    stream = blurry.blur(split_mnist, "iblurry", seed=0, disjoint=0.5, moved=0.1)  # by name

Only scenarios whose examples are the source's images as they are (Split, new instances,
a torch source's split) can be blurred: a permuted or rotated example's pixels depend on its
task, and an ordered segment's examples would all take the segment's transform.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sequax.data.errors import DataError
from sequax.data.scenarios import IdentityTransform, Scenario

KINDS = ("none", "linear_decay", "iblurry")


def linear_decay(
    scenario: Scenario, beta: float = 4.0, iterations: int = 10, seed: int = 0
) -> Scenario:
    """Avalanche's continuous linear-decay stream: each task's share of the stream rises and
    falls linearly, overlapping its neighbours (Zeno et al., "Task agnostic continual learning
    using online variational Bayes", 2021; transcribed from avalanche
    `benchmarks/scenarios/online.py`, `split_continuous_linear_decay_stream`).

    The stream is `num_tasks * iterations` iterations of equal size (the scenario's training
    examples divided evenly). Iteration i draws each of its examples' task from the tasks'
    normalised probabilities at i (`_task_probabilities`), and the example itself from that
    task's cyclic sampler (a seeded shuffle of the task's examples, restarted when used up:
    an example may be read twice or not at all, as in avalanche). Within an iteration the
    examples are shuffled. Segment t (a row of the accuracy matrix) is iterations
    [t * iterations, (t + 1) * iterations).

    Args:
      scenario: a class-IL scenario of untransformed images (Split, a torch source's split).
      beta: avalanche's `overlap_factor`: at most 1 gives sharp boundaries; larger values
        give each task a plateau of (beta - 2) / beta of its span, ramps of 2 / beta of it.
      iterations: avalanche's `iters_per_virtual_epoch`: iterations per task.
      seed: the samplers' shuffles and the categorical draws.
    """
    _check(scenario, "linear_decay")
    if iterations < 1 or not beta > 0:
        raise DataError(
            f"blurry linear_decay: iterations={iterations}, beta={beta}; use iterations >= 1 "
            "and beta > 0"
        )
    tasks = scenario.num_tasks
    total = tasks * iterations
    probs = np.stack([_task_probabilities(total, tasks, t, beta) for t in range(tasks)])
    probs = probs / probs.sum(axis=0, keepdims=True)  # [tasks, total]
    rng = np.random.default_rng((seed, 7))
    size = max(1, sum(scenario.train_sizes) // total)
    samplers = [_CyclicSampler(index, rng) for index in scenario.train_indices]
    segments = []
    for t in range(tasks):
        parts = []
        for i in range(t * iterations, (t + 1) * iterations):
            drawn = rng.choice(tasks, size=size, p=probs[:, i])
            picked = np.concatenate([samplers[k].take(int((drawn == k).sum())) for k in
                                     range(tasks)])  # fmt: skip
            parts.append(rng.permutation(picked))
        segments.append(np.concatenate(parts))
    return _ordered(scenario, segments, f"{scenario.name}_linear_decay")


def iblurry(
    scenario: Scenario, disjoint: float = 0.5, moved: float = 0.1, seed: int = 0
) -> Scenario:
    """The i-Blurry-N-M stream (Koh, Kim, Ha, Yun, Choi, "Online continual learning on class
    incremental blurry task configuration with anytime inference", ICLR 2022).

    A fraction N (`disjoint`) of the classes, drawn with `seed`, are disjoint: their examples
    stay in their own task. The other classes are blurry: a fraction M (`moved`) of each
    one's training examples, drawn with `seed`, move to the other tasks, each to one of them
    uniformly. Each segment is then shuffled. i-Blurry-50-10 is disjoint=0.5, moved=0.1.

    Args:
      scenario: a class-IL scenario of untransformed images.
      disjoint: N / 100, the fraction of classes that never leave their task (0 to 1).
      moved: M / 100, the fraction of a blurry class's examples spread over other tasks.
      seed: which classes are disjoint, which examples move and where, the segments' order.
    """
    _check(scenario, "iblurry")
    if not (0.0 <= disjoint <= 1.0 and 0.0 <= moved <= 1.0):
        raise DataError(
            f"blurry iblurry: disjoint={disjoint}, moved={moved}; both are fractions in [0, 1]"
        )
    rng = np.random.default_rng((seed, 11))
    classes = np.flatnonzero(scenario.task_classes.any(axis=0))
    blurry_classes = rng.permutation(classes)[int(round(disjoint * len(classes))) :]
    labels = scenario.source.train_y
    tasks = scenario.num_tasks
    segments: list[list[np.ndarray]] = [[index] for index in scenario.train_indices]
    for t, index in enumerate(scenario.train_indices):
        for c in np.intersect1d(blurry_classes, labels[index]):
            members = index[labels[index] == c]
            count = int(round(moved * len(members))) if tasks > 1 else 0
            leaving = rng.choice(members, size=count, replace=False)
            segments[t][0] = np.setdiff1d(segments[t][0], leaving)
            others = np.array([k for k in range(tasks) if k != t])
            for k, example in zip(rng.choice(others, size=count), leaving):
                segments[k].append(np.array([example]))
    shuffled = [rng.permutation(np.concatenate(parts)) for parts in segments]
    name = f"{scenario.name}_iblurry{round(disjoint * 100)}-{round(moved * 100)}"
    return _ordered(scenario, shuffled, name)


def blur(scenario: Scenario, kind: str, seed: int = 0, **options) -> Scenario:
    """`scenario` with the blurry boundaries `kind` names ("none" returns it unchanged)."""
    if kind == "none":
        return scenario
    if kind not in KINDS:
        raise DataError(f"blurry kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    if kind == "linear_decay":
        return linear_decay(scenario, seed=seed, **_only(options, ("beta", "iterations")))
    return iblurry(scenario, seed=seed, **_only(options, ("disjoint", "moved")))


def mixture(scenario: Scenario) -> np.ndarray:
    """float [segments, tasks]: the fraction of each segment's examples from each nominal task
    (by the example's class): what a blurry stream built, for its one-line description."""
    owner = np.argmax(scenario.task_classes, axis=0)  # class -> its (first) task
    labels = scenario.source.train_y
    out = np.zeros((scenario.num_tasks, scenario.num_tasks))
    for s, index in enumerate(scenario.train_indices):
        counts = np.bincount(owner[labels[index]], minlength=scenario.num_tasks)
        out[s] = counts / max(1, counts.sum())
    return out


def _task_probabilities(iters: int, tasks: int, task: int, beta: float) -> np.ndarray:
    """Avalanche's `_create_task_probs`: task `task`'s unnormalised weight at each iteration,
    a plateau with linear ramps into its neighbours (flat at the stream's two ends)."""
    if beta <= 1:
        start = peak_start = int((task / tasks) * iters)
        end = peak_end = int(((task + 1) / tasks) * iters)
    else:
        start = max(int(((beta * task - 1) * iters) / (beta * tasks)), 0)
        peak_start = int(((beta * task + 1) * iters) / (beta * tasks))
        peak_end = int(((beta * task + (beta - 1)) * iters) / (beta * tasks))
        end = min(int(((beta * task + (beta + 1)) * iters) / (beta * tasks)), iters)
    probs = np.zeros(iters)
    up = [(i - start) / (peak_start - start) for i in range(start, peak_start)]
    down = [1 - (i - peak_end) / (end - peak_end) for i in range(peak_end, end)]
    probs[start:peak_start] = 1.0 if task == 0 else np.asarray(up)
    probs[peak_start:peak_end] = 1.0
    probs[peak_end:end] = 1.0 if task == tasks - 1 else np.asarray(down)
    return probs


class _CyclicSampler:
    """Avalanche's `CyclicSampler(shuffle=True)`: a task's examples in a shuffled order,
    reshuffled each time they are used up."""

    def __init__(self, index: np.ndarray, rng: np.random.Generator):
        self.index, self.rng, self.order, self.at = np.asarray(index), rng, np.empty(0, int), 0

    def take(self, count: int) -> np.ndarray:
        out = []
        while count > 0:
            if self.at == len(self.order):
                self.order, self.at = self.rng.permutation(self.index), 0
            n = min(count, len(self.order) - self.at)
            out.append(self.order[self.at : self.at + n])
            self.at, count = self.at + n, count - n
        return np.concatenate(out) if out else np.empty(0, self.index.dtype)


def _check(scenario: Scenario, kind: str) -> None:
    if scenario.setting != "class" or not isinstance(scenario.transform, IdentityTransform):
        raise DataError(
            f"blurry {kind}: {scenario.name} is not a class-incremental split of untransformed "
            "images; blur a 'split' scenario (a permuted or rotated example's pixels depend on "
            "its task)"
        )
    if any(size == 0 for size in scenario.train_sizes):
        raise DataError(f"blurry {kind}: {scenario.name} has an empty task; every task needs data")


def _only(options: dict, names: tuple[str, ...]) -> dict:
    return {k: v for k, v in options.items() if k in names}


def _ordered(scenario: Scenario, segments: list[np.ndarray], name: str) -> Scenario:
    for segment in segments:
        segment.setflags(write=False)
    return dataclasses.replace(
        scenario,
        name=name,
        train_indices=tuple(segments),
        train_sizes=tuple(len(s) for s in segments),
        ordered=True,
    )
