"""Continual-learning algorithms: frozen dataclasses of pure functions over `CLState`.

from sequax import algorithms
algorithm = algorithms.make("er", capacity=500, replay_batch=10)
algorithms.REGISTRY  # name -> class, every entry held to the contract suite
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sequax.algorithms.agem import AGEM, AGEMR
from sequax.algorithms.coda_prompt import CodaPrompt
from sequax.algorithms.combine import Combined, combine
from sequax.algorithms.der import DER, DERPP
from sequax.algorithms.dualprompt import DualPrompt
from sequax.algorithms.er import ER
from sequax.algorithms.er_ace import ERACE
from sequax.algorithms.er_aml import ERAML
from sequax.algorithms.ewc import EWC
from sequax.algorithms.gdumb import GDumb
from sequax.algorithms.gem import GEM
from sequax.algorithms.gss import GSS
from sequax.algorithms.hat import HAT
from sequax.algorithms.icarl import ICaRL
from sequax.algorithms.joint import Joint
from sequax.algorithms.kcl import KCL
from sequax.algorithms.l2p import L2P
from sequax.algorithms.lamaml import LaMAML
from sequax.algorithms.lfl import LFL
from sequax.algorithms.lwf import LwF
from sequax.algorithms.mas import MAS
from sequax.algorithms.mc_sgd import MCSGD
from sequax.algorithms.mir import MIR
from sequax.algorithms.naive import Naive
from sequax.algorithms.ranpac import RanPAC
from sequax.algorithms.rwalk import RWalk
from sequax.algorithms.si import SI
from sequax.algorithms.simplecil import SimpleCIL
from sequax.algorithms.slca import SLCA
from sequax.algorithms.stable_sgd import StableSGD
from sequax.core.protocol import Algorithm, missing_hooks
from sequax.data.factories import load_attribute

REGISTRY: dict[str, type] = {
    "naive": Naive,
    "agem": AGEM,
    "agem_r": AGEMR,
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
    "er_aml": ERAML,
    "mir": MIR,
    "gss": GSS,
    "si": SI,
    "mas": MAS,
    "rwalk": RWalk,
    "stable_sgd": StableSGD,
    "mc_sgd": MCSGD,
    "hat": HAT,
    "kcl": KCL,
    "lamaml": LaMAML,
    # on pretrained models (issue 19): any backbone's features, or a ViT's prompts
    "simplecil": SimpleCIL,
    "ranpac": RanPAC,
    "l2p": L2P,
    "dualprompt": DualPrompt,
    "coda_prompt": CodaPrompt,
    "slca": SLCA,
}


def resolve(name: Any, key: str = "algorithm.name"):
    """The class, factory or object `name` stands for: a registered name, a
    "package.module:attr" import path (the user's own method), or the object itself."""
    if not isinstance(name, str):
        return name
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        return load_attribute(name, key, ValueError, "a method, e.g. 'my_pkg.my_method:MyER'")
    raise ValueError(
        f"unknown algorithm {name!r}; known: {', '.join(sorted(REGISTRY))}, a 'a+b' "
        f"combination, or the import path of your own, 'package.module:Class'"
    )


def hyperparameters(name: Any) -> dict[str, Any]:
    """The hyper-parameters `name`'s method takes, with their defaults (None: required):
    what a config section gets when `--config.algorithm.name` switches method."""
    if isinstance(name, str) and "+" in name:
        return {part: hyperparameters(part) for part in name.split("+")}
    target = resolve(name)
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)):
        return {}  # a factory or an object: its own file documents its arguments
    return {
        f.name: (None if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(target)
        if f.init
    }


def make(name: Any, **hyperparameters_) -> Algorithm:
    """Builds a method; unknown names or hyper-parameters, or an object that lacks hooks of
    the protocol (`sequax.core.protocol.HOOKS`), get a one-line `ValueError`.

    `name` is a registered name, "package.module:attr" (a class or factory called with the
    hyper-parameters, or an `Algorithm` object), an object, or "a+b+..." combining registered
    methods (`combine.py`): each part's hyper-parameters are a dict under its name, e.g.
    make("er+ewc", er=dict(capacity=500), ewc=dict(lam=10.0)).
    """
    if isinstance(name, str) and "+" in name:
        names = name.split("+")
        stray = sorted(set(hyperparameters_) - set(names))
        if stray:
            raise ValueError(
                f"algorithm {name!r}: put hyper-parameters under their method's name "
                f"({', '.join(names)}), not {', '.join(stray)}"
            )
        parts = [make(part, **dict(hyperparameters_.get(part) or {})) for part in names]
        return combine(*parts, names=tuple(names))
    target = resolve(name)
    if isinstance(target, type) and dataclasses.is_dataclass(target):
        known = {f.name for f in dataclasses.fields(target) if f.init}
        unknown = sorted(set(hyperparameters_) - known)
        if unknown:
            raise ValueError(
                f"unknown hyper-parameter(s) {', '.join(unknown)} for algorithm {name!r}; "
                f"known: {', '.join(sorted(known)) or '(none)'}"
            )
    if isinstance(target, type) or (callable(target) and missing_hooks(target)):
        algorithm = target(**hyperparameters_)
    elif hyperparameters_:
        raise ValueError(
            f"algorithm {name!r} is an object; it takes no hyper-parameters "
            f"({', '.join(sorted(hyperparameters_))}): name its class or factory instead"
        )
    else:
        algorithm = target
    missing = missing_hooks(algorithm)
    if missing:
        raise ValueError(
            f"algorithm {name!r} gives a {type(algorithm).__name__}, not a method: it lacks "
            f"{', '.join(missing)}; subclass sequax.Algorithm (every hook has a default)"
        )
    return algorithm


__all__ = [
    "AGEM",
    "AGEMR",
    "Algorithm",
    "Combined",
    "GEM",
    "GSS",
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
    "hyperparameters",
    "make",
    "resolve",
]
