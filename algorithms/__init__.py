"""Continual-learning algorithms: frozen dataclasses of pure functions over `CLState`.

    from sequax import algorithms
    algorithm = algorithms.make("er", capacity=500, replay_batch=10)
    algorithms.REGISTRY  # name -> class, every entry held to the contract suite
"""

from __future__ import annotations

import dataclasses

from sequax.algorithms.der import DER, DERPP
from sequax.algorithms.er import ER
from sequax.algorithms.ewc import EWC
from sequax.algorithms.joint import Joint
from sequax.algorithms.naive import Naive
from sequax.algorithms.protocol import Algorithm, phases_of, sequential_phases

REGISTRY: dict[str, type] = {
    "naive": Naive,
    "joint": Joint,
    "er": ER,
    "ewc": EWC,
    "der": DER,
    "derpp": DERPP,
}


def make(name: str, **hyperparameters) -> Algorithm:
    """Builds a registered algorithm; unknown names or hyper-parameters get a one-line error."""
    if name not in REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hyperparameters) - known)
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for algorithm {name!r}; "
            f"known: {', '.join(sorted(known)) or '(none)'}"
        )
    return cls(**hyperparameters)


__all__ = [
    "Algorithm", "DER", "DERPP", "ER", "EWC", "Joint", "Naive", "REGISTRY", "make", "phases_of",
    "sequential_phases",
]
