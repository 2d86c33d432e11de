"""sequax: a JAX-first, compiled continual-learning engine.

The public API, from Python with objects:

    import sequax
    result = sequax.train(stream, model, algorithm, optimizer, workdir="runs/x", runs=3)

`stream` is a task stream (`sequax.data.make_scenario(...)`), `model` a `sequax.Model` or a
flax linen module, `algorithm` a `sequax.Algorithm` (a built-in from `sequax.algorithms`, or
your own subclass), `optimizer` an optax transformation or a config section such as
`{"name": "adamw", "lr": 1e-3}`. The same run from a config file is
`python -m sequax.launch.train --config=...`; both resolve into the same objects
(`sequax.engine.experiment`) and the same loop (`sequax.engine.loop.run`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["Algorithm", "CLState", "Model", "train"]

# Imported on first use (PEP 562), so that `import sequax.data` or a launcher's startup does
# not pay for JAX and flax before it needs them.
_WHERE = {"Algorithm": "sequax.core.protocol", "CLState": "sequax.core.state",
          "Model": "sequax.core.models", "train": "sequax.training"}  # fmt: skip

if TYPE_CHECKING:
    from sequax.core.models import Model
    from sequax.core.protocol import Algorithm
    from sequax.core.state import CLState
    from sequax.training import train


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sequax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
