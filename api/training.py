"""`sequax.train`: one run from Python objects, the same run a config file describes.

    import optax, sequax
    from sequax import algorithms, data

    stream = data.make_scenario("split", data.load_source("mnist_packaged"), num_tasks=5)
    result = sequax.train(stream, "mlp", algorithms.ER(capacity=200, replay_batch=10),
                          optax.sgd(0.1), workdir="runs/er", epochs=2)

Each component is an object or what a config would name it by (a registered name, a
"package.module:attr" import path, or a dict of the config section). The run's
`config.json` records a given object by its class's import path, with its hyper-parameters
when it is a dataclass, so a resumed run is checked against the same parts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import ml_collections

from sequax.engine import loop
from sequax.engine.experiment import from_config
from sequax.engine.results import RunResult
from sequax.engine.schema import base_config


def train(
    stream: Any,
    model: Any = "mlp",
    algorithm: Any = "naive",
    optimizer: Any = "sgd",
    *,
    workdir: str | Path,
    seed: int = 0,
    runs: int = 1,
    sweep: dict | None = None,
    batch_size: int = 10,
    epochs: int = 1,
    glances: int = 1,
    eval_batch_size: int = 1000,
    mesh: dict | None = None,
    checkpoint: dict | None = None,
    writers: dict | None = None,
    verbose: bool = True,
) -> RunResult:
    """Trains `algorithm` on `stream` and writes the run's files under `workdir`.

    Args:
      stream: a task stream (`sequax.data.make_scenario`) or a `config.data` dict.
      model: a `sequax.Model`, a flax linen module returning {"logits", "features"}, a
        registered name ("mlp", "resnet18"), an import path, or a `config.model` dict.
      algorithm: a `sequax.Algorithm` (built-in or your own), a name or import path, or a
        `config.algorithm` dict.
      optimizer: an optax `GradientTransformation`, an optimizer name, or a
        `config.optimizer` dict (`{"name": "adamw", "lr": 1e-3, "schedule": ...}`); only a
        named optimizer's values can be swept.
      workdir: where config.json, metrics.jsonl, the matrices, summary.json and the
        checkpoints go; a workdir holding this run's checkpoint resumes it.
      seed, runs, sweep: the grid of runs vmapped into one program (`config.runs`,
        `config.sweep`: e.g. {"lr": (0.03, 0.1)}).
      batch_size, epochs, glances, eval_batch_size: `config.training` and `config.eval`.
      mesh, checkpoint, writers: `config.mesh`, `config.checkpoint`, `config.writers` keys.
    """
    config = base_config()
    config.seed, config.runs = seed, runs
    config.training.update(batch_size=batch_size, epochs=epochs, glances=glances)
    config.eval.batch_size = eval_batch_size
    for section, values in (("mesh", mesh), ("checkpoint", checkpoint), ("writers", writers)):
        config[section].update(values or {})
    for key, values in (sweep or {}).items():
        config.sweep[key] = tuple(values)
    objects = {}
    if _is_section(stream):
        config.data.update(stream)
    else:
        objects["scenario"] = stream
        config.data.update(source=f"given:{stream.source.name}", scenario=f"given:{stream.name}",
                           num_tasks=stream.num_tasks)  # fmt: skip
    for key, value in (("model", model), ("algorithm", algorithm), ("optimizer", optimizer)):
        if isinstance(value, str):
            config[key] = ml_collections.ConfigDict({**_defaults(config, key), "name": value})
        elif _is_section(value):
            config[key] = ml_collections.ConfigDict({**_defaults(config, key), **value})
        else:
            objects[key] = value
            described = _described(value)
            if key == "optimizer":  # an optax object: recorded, never loaded from its name
                described = {"name": f"given:{described['name']}"}
            config[key] = ml_collections.ConfigDict({**_defaults(config, key), **described})
    return loop.run(from_config(config, **objects), workdir, verbose=verbose)


def _is_section(value) -> bool:
    return isinstance(value, (dict, ml_collections.ConfigDict))


def _defaults(config, key: str) -> dict:
    """The keys of a section that stay whatever the component (the optimizer's reset, say)."""
    return {k: v for k, v in config[key].to_dict().items() if key == "optimizer" and k != "name"}


def _described(obj) -> dict:
    """How config.json records an object: its class's import path, and its fields when it
    is a flat dataclass of plain values."""
    cls = type(obj)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, nn.Module):  # flax: its own fields
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
        plain = (bool, int, float, str, type(None), tuple)
        if all(isinstance(v, plain) for v in values.values()):
            return {**values, "name": name}
    return {"name": name}
