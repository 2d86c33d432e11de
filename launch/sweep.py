"""Run a grid that cannot share one program (buffer sizes, batch sizes) point by point.

Values that keep every shape (learning rate, λ, α, β, seeds) are vmapped inside one
program with `config.runs` / `config.sweep` (see `sequax.engine.runs`); this launcher
loops over the rest, one compiled program per point, and collects one table.

    python -m sequax.launch.sweep --config=configs/smnist_er.py:local --workdir=runs/er_sweep \
        --grid=algorithm.capacity=200,500,5120 --config.runs=3

Each point trains into WORKDIR/<key=value,...>/ exactly as `sequax.launch.train` would
(a point whose summary.json exists is read back, not re-run, so an interrupted sweep
resumes). WORKDIR/sweep.md and sweep.json hold the table: one line per point (and per
vmapped sweep point inside it), ACC/BWT/FWT/forgetting as mean ± std over the seeds.
Every point's config is built and checked before the first one trains.
"""

from __future__ import annotations

import ast
import copy
import itertools
import json
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from sequax.engine import build, distributed, loop, runs, validate
from sequax.engine.build import ConfigError
from sequax.engine.results import chosen_point
from sequax.launch.common import (
    check_workdir,
    initialize_distributed,
    parse_flags,
    reject_stray,
    stops_in_one_line,
)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program (so tests
    can import several launchers into one process)."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:local]).")
    flags.DEFINE_string("workdir", None, "Output folder: one subfolder per point, and the table.")
    flags.DEFINE_multi_string(
        "grid",
        [],
        "KEY=V1,V2,...: a config key (dotted) and its values; repeat for a product grid.",
    )
    flags.mark_flags_as_required(["config", "workdir"])


def parse_grid(specs: list[str]) -> list[tuple[str, list]]:
    """["algorithm.capacity=200,500"] -> [("algorithm.capacity", [200, 500])] (Python literals)."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise ConfigError(
                f"--grid={spec!r} must read KEY=V1,V2,... (e.g. algorithm.capacity=200,500)"
            )
        parsed = []
        for text in values.split(","):
            try:
                parsed.append(ast.literal_eval(text.strip()))
            except (ValueError, SyntaxError):
                parsed.append(text.strip())  # a bare word: a string value
        axes.append((key.strip(), parsed))
    return axes


def point_configs(config, axes: list[tuple[str, list]]):
    """[(name, point, config)] for the product of the axes, each config built and checked."""
    for key, _ in axes:
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in filter(None, parent.split(".")):
            node = node.get(part) if hasattr(node, "get") else None
        if node is None or leaf not in node:
            raise ConfigError(
                f"--grid key {key!r} is not in the config; grid keys must name existing keys"
            )
    points = []
    for values in itertools.product(*(v for _, v in axes)):
        point = dict(zip((k for k, _ in axes), values))
        point_config = copy.deepcopy(config)
        for key, value in point.items():
            parent, _, leaf = key.rpartition(".")
            node = point_config
            for part in filter(None, parent.split(".")):
                node = node[part]
            try:
                node[leaf] = value
            except TypeError as error:  # ml_collections refuses a value of another type
                raise ConfigError(f"--grid {key}={value!r}: {error}") from None
        try:  # everything that can be checked without data or compiling, for every point first
            validate.check_config(point_config)  # keys, types, ranges (as the run would first)
            build.build_model(point_config.model, 10)
            build.check_optimizer(point_config.optimizer)
            runs.make_grid(point_config)
        except ConfigError as error:
            raise ConfigError(f"grid point {point}: {error}") from None
        name = ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in point.items()) or "base"
        points.append((name, point, point_config))
    return points


def table_rows(point: dict, summary: dict, seed: int) -> list[dict]:
    """The point's lines of the table: its vmapped table, or its one run (std 0)."""
    short = {k.rpartition(".")[2]: v for k, v in point.items()}
    if "table" in summary:
        return [{**row, "point": {**short, **row["point"]}} for row in summary["table"]]
    views = {
        v: {m: [x, 0.0] for m, x in metrics.items()}
        for v, metrics in summary.items()
        if v != "timings" and isinstance(metrics, dict)  # not per-class lists or phase costs
    }
    return [{"point": short, "seeds": [seed], **views}]


def check_streams(points) -> None:
    """Each point's method against its stream (a buffer larger than the stream, a head width),
    before the first point trains: the stream read once per distinct `config.data`."""
    streams = {}
    for _, point, point_config in points:
        data = point_config.data.to_json()
        try:
            if data not in streams:
                streams[data] = build.build_scenario(point_config.data)
            algorithm = build.build_algorithm(point_config.algorithm)
            validate.check_combination(point_config, streams[data], algorithm)
        except ConfigError as error:
            raise ConfigError(f"grid point {point}: {error}") from None


def sweep(config, workdir: Path, axes, *, verbose: bool = True) -> list[dict]:
    points = point_configs(config, axes)
    check_streams(points)
    say = (
        (lambda text: print(text, flush=True))
        if distributed.is_main_process()
        else (lambda text: None)
    )
    rows = []
    for i, (name, point, point_config) in enumerate(points):
        folder = workdir / name
        done = folder / "summary.json"
        if _agreed(done.is_file()):
            summary = json.loads(done.read_text())
            say(f"sweep: point {i + 1}/{len(points)} {name}: done before, read back")
        else:
            say(f"sweep: point {i + 1}/{len(points)} {name}")
            summary = loop.run(point_config, folder, verbose=verbose).summary
            summary = json.loads(done.read_text()) if done.is_file() else summary
        rows += table_rows(point, summary, int(point_config.seed))
    chosen = None
    if len(rows) > 1 and all(any(v.startswith("validation_") for v in r) for r in rows):
        # config.data.validation: the validation split picks the point, the test sets report
        chosen = chosen_point(rows, "class" if "class_il" in rows[0] else "domain")
    if distributed.is_main_process():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
        table = runs.format_table(rows)
        if chosen is not None:
            (workdir / "chosen.json").write_text(json.dumps(chosen, indent=1) + "\n")
            point = ", ".join(f"{k}={v}" for k, v in chosen["point"].items())
            table += (f"\n\nChosen on the validation split: {point} (validation ACC "
                      f"{100 * chosen['validation_acc']:.2f}; {chosen['by']}).")  # fmt: skip
        (workdir / "sweep.md").write_text(table + "\n")
    return rows


def _agreed(flag: bool) -> bool:
    """Process 0's answer in every process (several hosts must skip or run the same points)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.array(flag)))


def main(argv):
    reject_stray(argv)
    workdir = check_workdir(FLAGS.workdir)  # a file, not writable: one line, nothing written
    logging.set_verbosity(logging.WARNING)
    initialize_distributed()
    with distributed.exit_on_failure(), stops_in_one_line("sequax.launch.sweep"):
        rows = sweep(FLAGS.config, workdir, parse_grid(FLAGS.grid))
    if distributed.is_main_process():
        print(runs.format_table(rows))


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
