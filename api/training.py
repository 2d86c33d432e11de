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
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import ml_collections

from sequax.engine import loop
from sequax.engine.build import ConfigError
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
    _check_arguments(
        stream, dict(model=model, algorithm=algorithm, optimizer=optimizer), workdir,
        dict(seed=seed, runs=runs, batch_size=batch_size, epochs=epochs, glances=glances,
             eval_batch_size=eval_batch_size),
        dict(sweep=sweep, mesh=mesh, checkpoint=checkpoint, writers=writers),
    )  # fmt: skip
    config = base_config()
    config.seed, config.runs = seed, runs
    config.training.update(batch_size=batch_size, epochs=epochs, glances=glances)
    config.eval.batch_size = eval_batch_size
    for section, values in (("mesh", mesh), ("checkpoint", checkpoint), ("writers", writers)):
        config[section].update(values or {})
    for key, values in (sweep or {}).items():  # one number: a sweep of one value, as a flag
        config.sweep[key] = tuple(values) if isinstance(values, (list, tuple)) else (values,)
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


def _check_arguments(stream, components: dict, workdir, counts: dict, sections: dict) -> None:
    """The arguments' types, in one line each before anything is read: what the config checks
    cannot see (an object in a config slot, a count ml_collections would refuse with its own
    TypeError, a class given where an instance belongs)."""
    if not (_is_section(stream) or hasattr(stream, "source") and hasattr(stream, "num_tasks")):
        raise ConfigError(
            f"stream={stream!r} is not a task stream; give one (sequax.data.make_scenario("
            "'split', sequax.data.load_source('mnist_packaged'), num_tasks=5)) or a config.data "
            "dict ({'source': 'mnist_packaged', 'scenario': 'split'})"
        )
    for name, value in components.items():
        if isinstance(value, type):
            raise ConfigError(
                f"{name}={value.__module__}.{value.__qualname__} is a class; give an instance, "
                f"e.g. {value.__qualname__}(...), or a name"
            )
    if not isinstance(workdir, (str, os.PathLike)):
        raise ConfigError(f"workdir={workdir!r} must be a folder's path (a str or a Path)")
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be an integer")
    for name, value in sections.items():
        if value is not None and not _is_section(value):
            raise ConfigError(f"{name}={value!r} must be a dict of config.{name}'s keys")
    for key, values in (sections["sweep"] or {}).items():
        numbers = values if isinstance(values, (list, tuple)) else (values,)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise ConfigError(f"sweep[{key!r}]={values!r} must list numbers, e.g. (0.03, 0.1)")


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
