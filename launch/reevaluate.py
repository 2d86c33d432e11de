"""Re-evaluate a finished run's final state with other evaluation settings.

    python -m sequax.launch.reevaluate --table=mirzadeh --cell=pmnist_kcl/kcl \
        --eval_batch_size=256 --set=eval_ridge=latest

A finished run (here a reproduction cell in WORKDIR/<table>/<cell>) is restored from its last
checkpoint, on a copy of its folder (the run itself is not touched), and its test sets are
evaluated again: with another evaluation batch size (methods whose classifier depends on the
batch, as KCL's min-max feature normalisation does) and with algorithm fields that act at
evaluation only (`--set=name=value`, e.g. KCL's `eval_ridge`). It prints the final row of
accuracies and their average, as the run reported it and as re-evaluated, per run.

This is how a table's note shows what an evaluation quirk of a reference code is worth,
without training again. Fields that change the state or the training (anything `loss`,
`update` or `end_task` reads) must not be set: the restored state would not be the one
they describe.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

from sequax.engine import loop
from sequax.engine.build import ConfigError, build_algorithm
from sequax.engine.evaluation import make_evaluate
from sequax.engine.experiment import from_config
from sequax.engine.feed import Feed
from sequax.launch import reproduce
from sequax.launch.common import parse_flags, reject_stray

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program (so tests
    and other launchers can import it beside their own `--seeds`, `--workdir`)."""
    flags.DEFINE_enum(
        "table", "mirzadeh", ["der", "mirzadeh"], "The reproduction table holding the cell."
    )
    flags.DEFINE_string(
        "cell", "pmnist_kcl/kcl", "The finished cell to re-evaluate (its name in the table)."
    )
    flags.DEFINE_string(
        "workdir", "runs/reproduce", "The reproduction's --workdir (cells under <table>/)."
    )
    flags.DEFINE_integer("seeds", 3, "The reproduction's --seeds (the cell's runs).")
    flags.DEFINE_integer("eval_batch_size", 0, "Evaluation batch size; 0 keeps the run's.")
    flags.DEFINE_multi_string(
        "set", [], "name=value: an evaluation-only field of the algorithm to change."
    )


def parse_value(text: str):
    """'latest' -> 'latest', '3' -> 3, '0.5' -> 0.5, 'true'/'false' -> bool."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def reevaluate(
    config, run_folder: Path, batch_size: int = 0, overrides: dict | None = None
) -> dict:
    """{view: (reported, again)} for "class_il" and "task_il": the final accuracy row
    [runs, tasks] (fractions) the run reported, and the one `config` with `overrides` and
    `batch_size` gives on the run's restored final state (a domain-IL table reports class_il)."""
    if not (run_folder / "summary.json").is_file():
        raise ConfigError(f"{run_folder} holds no finished run (no summary.json); finish it first")
    algorithm = build_algorithm(config.algorithm)
    try:
        changed = dataclasses.replace(algorithm, **(overrides or {}))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--set: {error}") from None
    experiment = from_config(config, algorithm=changed)  # the run's parts, changed method
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(run_folder, copy)
        result = loop.run(experiment, copy, verbose=False)  # the final checkpoint: no training
    state = result.state
    if result.grid is None:  # a single run's state, as the programs see it: a run axis of one
        state = jax.tree.map(lambda a: np.asarray(a)[None], state)
    evaluate = make_evaluate(
        experiment.model,
        experiment.scenario.task_classes,
        batch_size or int(config.eval.batch_size),
        runs=True,
        predict=changed.predict,
        test_per_run=experiment.drawn is not None,
    )
    test = Feed(experiment).test_sets()
    again = dict(
        zip(
            ("class_il", "task_il"),
            evaluate(state.params, state.model_state, state.task, test, state.algo),
        )
    )
    rows = lambda a: np.asarray(a).reshape(-1, np.shape(a)[-1])  # noqa: E731 - [runs, tasks]
    return {
        view: (rows(np.asarray(getattr(result, view))[..., -1, :]), rows(again[view]))
        for view in again
    }


def main(argv):
    reject_stray(argv)
    logging.set_verbosity(logging.WARNING)
    try:
        if FLAGS.eval_batch_size < 0:
            raise ConfigError(
                f"--eval_batch_size={FLAGS.eval_batch_size} must be >= 0 (0 keeps the run's)"
            )
        table = reproduce.table_module(FLAGS.table)
        cells = [c for c in table.cells() if table.cell_name(c) == FLAGS.cell]
        if not cells:
            raise ConfigError(f"--cell={FLAGS.cell} is not a cell of --table={FLAGS.table}")
        ((_, config),) = reproduce.cell_configs(table, cells, FLAGS.seeds, local=False)
        overrides = {}
        for item in FLAGS.set:
            name, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set={item!r} must be name=value")
            overrides[name] = parse_value(value)
        rows = reevaluate(
            config, Path(FLAGS.workdir) / FLAGS.table / FLAGS.cell, FLAGS.eval_batch_size, overrides
        )
    except ConfigError as error:
        print(f"sequax: error: {error}", file=sys.stderr)
        sys.exit(2)
    view = next(iter(table.PUBLISHED[cells[0]]))  # the setting the table reports
    reported, again = rows["task_il" if view == "task_il" else "class_il"]
    settings = ", ".join(
        [f"eval batch {FLAGS.eval_batch_size or config.eval.batch_size}", *FLAGS.set]
    )
    for name, row in (("reported", reported), (f"again ({settings})", again)):
        means = 100 * row.mean(-1)
        std = means.std(ddof=1) if len(means) > 1 else 0.0  # as the tables' seed std
        print(
            f"{name}: {view} average accuracy {means.mean():.2f} ± {std:.2f} "
            f"(runs: {', '.join(f'{m:.2f}' for m in means)})"
        )


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)  # a bad flag: one line and exit 2
