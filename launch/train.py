"""Train one continual-learning experiment from an ml_collections config file.

    python -m sequax.launch.train --config=configs/smnist_er.py --workdir=runs/smnist_er
    python -m sequax.launch.train --config=configs/pmnist_ewc.py:local --workdir=/tmp/x \
        --config.algorithm.lam=10 --config.seed=3

The workdir receives config.json (the resolved config), metrics.jsonl, accuracy_matrix.json
and summary.json. A bad config or missing data file stops with one line naming the cause
and the fix, before anything is compiled.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sequax.data import DataError
from sequax.engine import loop
from sequax.engine.build import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:local]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder for logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl's parser, but an override of a key the config lacks is one line, not a traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as error:  # raised by config_flags for --config.<unknown>
        # ml_collections nests the key's repr in the message and may add a "Did you mean" line.
        message = str(error)
        key = re.search(r"[^'\\\"]+", message)
        hint = re.search(r'Did you mean "[^"]+"', message)
        name = repr(key.group()) if key else message
        hint = f"; {hint.group()}?" if hint else ""
        print(
            f"sequax: error: a --config override names the unknown key {name}{hint}; overrides "
            "must name keys the config has (see configs/common.py base_config)",
            file=sys.stderr,
        )
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep the console for progress and results
    try:
        loop.run(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, DataError) as error:
        print(f"sequax: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
