"""Whether a saved run's config and the current one define the same run: the defining keys, and
the differences a resume refuses (named in the refusal, `config.key` saved against current)."""

from __future__ import annotations

import functools
import json
from typing import Any

# The config keys that define the state and the data stream: a checkpoint resumes only under a
# config that agrees on all of them (a prefix covers its whole section). Evaluation batch size,
# checkpoint and writer settings, the data root and the mesh may change between runs.
DEFINING_KEYS = (
    "seed",
    "runs",
    "sweep",
    "model",
    "algorithm",
    "optimizer",
    "data.source",
    "data.factory",
    "data.num_classes",
    "data.scenario",
    "data.num_tasks",
    "data.seed",
    "data.options",
    "data.train_per_task",
    "data.test_per_task",
    "data.draws_per_run",
    "data.augment",
    "data.normalize",
    "data.pipeline",
    "training.batch_size",
    "training.epochs",
    "training.glances",
)
# The grain iterator's state is counted in chunks and tied to the number of workers.
STREAM_KEYS = ("data.stream.order", "data.stream.workers", "training.steps_per_dispatch")


def config_differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(config.key, saved value, current value) for every defining key that differs.

    A key the saved config lacks and the current one holds at its `base_config()` default is
    not a difference: sequax added it after the checkpoint was written, and its default
    keeps the old behaviour, so an upgrade does not strand a half-finished run."""
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    keys = DEFINING_KEYS + (STREAM_KEYS if current_flat.get("data.pipeline") == "stream" else ())
    out = []
    # A component's name first: "holds a run of config.algorithm.name=er" says more than the
    # hyper-parameters that follow from it.
    for key in sorted(
        set(saved_flat) | set(current_flat), key=lambda k: (not k.endswith(".name"), k)
    ):
        if any(key == k or key.startswith(k + ".") for k in keys):
            was, now = saved_flat.get(key, "<absent>"), current_flat.get(key, "<absent>")
            if was == "<absent>" and key in _defaults() and now == _defaults()[key]:
                continue
            if was != now:
                out.append((f"config.{key}", was, now))
    return out


@functools.cache
def _defaults() -> dict[str, Any]:
    """`base_config()` flattened as a saved config is (its JSON form)."""
    from sequax.engine.schema import base_config

    return _flatten(json.loads(base_config().to_json_best_effort()))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def show(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
