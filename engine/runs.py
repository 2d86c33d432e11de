"""Many runs in one compiled program: seeds and swept hyper-parameters on a leading run axis.

`config.runs = N` trains N seeds (config.seed, config.seed + 1, ...) and `config.sweep`
lists values of hyper-parameters that do not change any shape (learning rate, momentum,
λ, α, β, ...). The grid is the product of the sweep's values, each point repeated for every
seed (seeds vary fastest, and every point uses the same seeds). All runs share one program:
the state gets a leading run axis, the swept values live in `CLState.hparams` as float32
scalars, and `bind` rebuilds the algorithm and optimizer from them inside the vmapped step,
so each run reads its own values as traced scalars.

    grid = make_grid(config, algorithm)     # validated before anything compiles
    grid.size, grid.seeds, grid.points      # runs, their seeds, their swept values
    algorithm, tx = bind(algorithm, config.optimizer, state.hparams)   # inside jit/vmap

A sweep key names an optimizer field (`lr`, `momentum`) or a float hyper-parameter of the
algorithm (`lam`, `alpha`, `beta`, `gamma`, ...). Values that change shapes (a buffer's
capacity, a batch size) cannot share a program: `python -m sequax.launch.sweep` runs
those grids point by point.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from sequax.engine.build import ConfigError, build_algorithm, build_optimizer, check_optimizer
from sequax.engine.optimizers import SWEEPABLE_KEYS

OPTIMIZER_KEYS = SWEEPABLE_KEYS  # lr, momentum, weight_decay, b1, b2, eps: traced-safe
TABLE_METRICS = ("acc", "bwt", "fwt", "forgetting")  # the table's columns; summary.json has all


@dataclasses.dataclass(frozen=True)
class RunGrid:
    """The runs of one program: run r has seed `seeds[r]` and swept values `points[r]`."""

    seeds: tuple[int, ...]
    points: tuple[dict[str, float], ...]
    keys: tuple[str, ...]  # the swept names, in config order

    @property
    def size(self) -> int:
        return len(self.seeds)

    @property
    def vmapped(self) -> bool:
        """Whether the program carries a run axis (more than one run, or any swept value)."""
        return self.size > 1 or bool(self.keys)

    def hparams(self) -> dict[str, np.ndarray]:
        """float32 [runs] per swept name: the values `CLState.hparams` starts from."""
        return {k: np.array([p[k] for p in self.points], np.float32) for k in self.keys}

    def label(self, r: int) -> str:
        point = ", ".join(f"{k}={self.points[r][k]:g}" for k in self.keys)
        return f"seed={self.seeds[r]}" + (f", {point}" if point else "")


def _sweep_items(config) -> list[tuple[str, tuple[float, ...]]]:
    sweep = config.get("sweep") or {}
    sweep = sweep.to_dict() if hasattr(sweep, "to_dict") else dict(sweep)
    items = []
    for key, values in sweep.items():
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if values:  # an empty tuple means "not swept" (the base config lists common keys)
            items.append((key, values))
    return items


def make_grid(config, algorithm=None, *, optimizer_object: bool = False) -> RunGrid:
    """Validates `config.runs` and `config.sweep` against `algorithm` (default: the one
    `config.algorithm` builds) and lists the runs (one-line errors). `optimizer_object`: the
    optimizer was given as an object, so its values cannot be swept."""
    if algorithm is None:
        algorithm = build_algorithm(config.algorithm)
    runs = config.get("runs", 1)
    if not isinstance(runs, int) or runs < 1:
        raise ConfigError(f"config.runs={runs!r} must be a positive integer (the number of seeds)")
    fields = (
        {f.name for f in dataclasses.fields(algorithm)}
        if dataclasses.is_dataclass(algorithm)
        else set()
    )
    items = _sweep_items(config)
    for key, values in items:
        if key in OPTIMIZER_KEYS and optimizer_object:
            raise ConfigError(
                f"config.sweep.{key}: the optimizer was given as an object, so its values cannot "
                f"be swept; name it in config.optimizer instead"
            )
        if key not in OPTIMIZER_KEYS and key not in fields:
            known = ", ".join([*OPTIMIZER_KEYS, *sorted(fields)])
            raise ConfigError(
                f"config.sweep.{key} is not a hyper-parameter of this run; known: {known}"
            )
        if key in fields and not isinstance(getattr(algorithm, key), float):
            raise ConfigError(
                f"config.sweep.{key}: only float hyper-parameters can share one program (this one "
                f"sets shapes or control flow); sweep it point by point with sequax.launch.sweep"
            )
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"config.sweep.{key}={values!r} must list numbers")
    keys = tuple(k for k, _ in items)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in items))]
    for point in points:  # every point must be a valid run on its own (before any compile)
        _check_point(config, algorithm, point)
    seeds = [int(config.seed) + s for s in range(runs)]
    grid_points = tuple(dict(p) for p in points for _ in seeds)
    return RunGrid(seeds=tuple(seeds) * len(points), points=grid_points, keys=keys)


def _check_point(config, algorithm, point: dict[str, float]) -> None:
    optimizer = config.optimizer.to_dict()
    values = {k: float(v) for k, v in point.items() if k not in OPTIMIZER_KEYS}
    optimizer.update({k: float(v) for k, v in point.items() if k in OPTIMIZER_KEYS})
    try:
        if values:
            dataclasses.replace(algorithm, **values)  # its __post_init__ checks the values
        if not str(optimizer.get("name", "")).startswith("given:"):  # an object: fixed
            check_optimizer(optimizer)
    except (ConfigError, ValueError, TypeError) as error:
        raise ConfigError(f"config.sweep point {point}: {error}") from None


def bind_algorithm(algorithm, hparams: dict[str, Any]):
    """The algorithm of one run, with its swept values (traced scalars under vmap): a copy
    made by `dataclasses.replace` (whose `__post_init__` checks only plain numbers: every
    grid point's concrete values were checked by `make_grid`)."""
    values = {k: v for k, v in hparams.items() if k not in OPTIMIZER_KEYS}
    return dataclasses.replace(algorithm, **values) if values else algorithm


def bind_optimizer(
    optimizer_config,
    hparams: dict[str, Any],
    *,
    steps_per_epoch: int | None = None,
    epochs_per_task: int | None = None,
):
    """The configured optimizer of one run, with its swept values (traced under vmap);
    `steps_per_epoch` and `epochs_per_task` place a learning-rate schedule's epochs
    (`build_optimizer`)."""
    schedule = dict(steps_per_epoch=steps_per_epoch, epochs_per_task=epochs_per_task)
    if not any(k in OPTIMIZER_KEYS for k in hparams):
        return build_optimizer(optimizer_config, **schedule)
    optimizer = dict(
        optimizer_config.to_dict() if hasattr(optimizer_config, "to_dict") else optimizer_config
    )
    optimizer.update({k: v for k, v in hparams.items() if k in OPTIMIZER_KEYS})
    return build_optimizer(optimizer, validate=False, **schedule)


def bind(
    algorithm,
    optimizer_config,
    hparams: dict[str, Any],
    *,
    steps_per_epoch: int | None = None,
    epochs_per_task: int | None = None,
):
    """(algorithm, optimizer) of one run: `bind_algorithm` and `bind_optimizer`."""
    return bind_algorithm(algorithm, hparams), bind_optimizer(
        optimizer_config,
        hparams,
        steps_per_epoch=steps_per_epoch,
        epochs_per_task=epochs_per_task,
    )


def summary_table(grid: RunGrid, per_run: list[dict]) -> list[dict]:
    """Mean and (sample, ddof=1) std over the seeds of each grid point, for every metric.

    `per_run[r]` maps a view ("class_il", "task_il", "domain_il") to its metrics, as the
    loop's summaries do. Rows come in grid order: [{"point", "seeds", view: {metric: [mean, std]}}].
    """
    rows: list[dict] = []
    for r, run in enumerate(per_run):
        point = grid.points[r]
        if not rows or rows[-1]["point"] != point:
            rows.append({"point": point, "seeds": [], "_runs": []})
        rows[-1]["seeds"].append(grid.seeds[r])
        rows[-1]["_runs"].append(run)
    for row in rows:
        runs = row.pop("_runs")
        for view in (v for v in runs[0] if isinstance(runs[0][v], dict) and v != "hparams"):
            row[view] = {}
            for metric in runs[0][view]:
                values = np.array([run[view][metric] for run in runs], np.float64)
                std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                row[view][metric] = [float(values.mean()), std]
    return rows


def format_table(rows: list[dict]) -> str:
    """The summary table as markdown: one line per grid point, metrics in % as mean ± std."""
    if not rows:
        return ""
    views = [v for v in rows[0] if v not in ("point", "seeds")]
    keys = list(rows[0]["point"])
    columns = [(view, m) for view in views for m in rows[0][view] if m in TABLE_METRICS]
    header = [*keys, "seeds", *(f"{view} {metric}" for view, metric in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row['point'][k]:g}" for k in keys] + [str(len(row["seeds"]))]
        for view, metric in columns:
            mean, std = row[view][metric]
            cells.append(f"{100 * mean:.2f} ± {100 * std:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
