"""Continual-learning algorithms: frozen dataclasses of pure functions over `CLState`.

from sequax import algorithms
algorithm = algorithms.make("er", capacity=500, replay_batch=10)
algorithms.REGISTRY  # name -> class, every entry held to the contract suite
"""

from __future__ import annotations

import dataclasses

from sequax.algorithms.agem import AGEM
from sequax.algorithms.combine import Combined, combine
from sequax.algorithms.der import DER, DERPP
from sequax.algorithms.er import ER
from sequax.algorithms.er_ace import ERACE
from sequax.algorithms.ewc import EWC
from sequax.algorithms.gdumb import GDumb
from sequax.algorithms.gem import GEM
from sequax.algorithms.hat import HAT
from sequax.algorithms.icarl import ICaRL
from sequax.algorithms.joint import Joint
from sequax.algorithms.kcl import KCL
from sequax.algorithms.lamaml import LaMAML
from sequax.algorithms.lfl import LFL
from sequax.algorithms.lwf import LwF
from sequax.algorithms.mas import MAS
from sequax.algorithms.mc_sgd import MCSGD
from sequax.algorithms.naive import Naive
from sequax.algorithms.protocol import Algorithm, phases_of, sequential_phases
from sequax.algorithms.rwalk import RWalk
from sequax.algorithms.si import SI
from sequax.algorithms.stable_sgd import StableSGD

REGISTRY: dict[str, type] = {
    "naive": Naive,
    "agem": AGEM,
    "gem": GEM,
    "joint": Joint,
    "er": ER,
    "ewc": EWC,
    "der": DER,
    "derpp": DERPP,
    "icarl": ICaRL,
    "gdumb": GDumb,
    "lwf": LwF,
    "lfl": LFL,
    "er_ace": ERACE,
    "si": SI,
    "mas": MAS,
    "rwalk": RWalk,
    "stable_sgd": StableSGD,
    "mc_sgd": MCSGD,
    "hat": HAT,
    "kcl": KCL,
    "lamaml": LaMAML,
}


def make(name: str, **hyperparameters) -> Algorithm:
    """Builds a registered algorithm; unknown names or hyper-parameters get a one-line error.

    "a+b+..." combines registered methods (`combine.py`): each part's hyper-parameters are a
    dict under its name, e.g. make("er+ewc", er=dict(capacity=500), ewc=dict(lam=10.0)).
    """
    if isinstance(name, str) and "+" in name:
        names = name.split("+")
        stray = sorted(set(hyperparameters) - set(names))
        if stray:
            raise ValueError(
                f"algorithm {name!r}: put hyper-parameters under their method's name "
                f"({', '.join(names)}), not {', '.join(stray)}"
            )
        parts = [make(part, **dict(hyperparameters.get(part) or {})) for part in names]
        return combine(*parts, names=tuple(names))
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
    "AGEM",
    "Algorithm",
    "Combined",
    "GEM",
    "DER",
    "DERPP",
    "ER",
    "ERACE",
    "EWC",
    "GDumb",
    "HAT",
    "ICaRL",
    "Joint",
    "KCL",
    "LaMAML",
    "LFL",
    "LwF",
    "MAS",
    "MCSGD",
    "Naive",
    "REGISTRY",
    "RWalk",
    "SI",
    "StableSGD",
    "combine",
    "make",
    "phases_of",
    "sequential_phases",
]
