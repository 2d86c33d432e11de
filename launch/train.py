"""Train one continual-learning experiment from an ml_collections config file.

    python -m sequax.launch.train --config=configs/smnist_er.py --workdir=runs/smnist_er
    python -m sequax.launch.train --config=configs/pmnist_ewc.py:local --workdir=/tmp/x \
        --config.algorithm.lam=10 --config.seed=3

The workdir receives config.json (the resolved config), metrics.jsonl, accuracy_matrix.json
and summary.json. A bad config or missing data file stops with one line naming the cause
and the fix, before anything is compiled. Checkpoints go to WORKDIR/checkpoints; the same
command with the same --workdir resumes a stopped run (config.checkpoint). A NaN or infinite
loss, or a full disk, stops with one line (exit 2), the last good checkpoint kept. Ctrl-C or
SIGTERM (a scheduler's preemption) finishes the chunk of steps in flight, saves its position
and stops with one line naming the checkpoint and the command that resumes (exit 130 or
143); a second one stops at once (`sequax.engine.interrupts`).

Several hosts: run the same command once per host. On a Cloud TPU pod slice, SLURM or Open
MPI the processes find each other by themselves; elsewhere add, on host k of N,

    --coordinator_address=10.0.0.1:1234 --num_processes=N --process_id=k

(the address of process 0's host and a free port; see BUILD.md, "Several hosts"). Only
process 0 prints and writes the workdir.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from sequax.launch.common import (
    check_workdir,
    initialize_distributed,
    parse_flags,
    reject_stray,
    stops_in_one_line,
)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:local]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder for logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    # JAX and the engine are imported here, after the flags and the config file are read: a
    # mistake there is one line in about half a second instead of after a second of imports.
    from sequax.engine import distributed, loop
    from sequax.engine.experiment import from_config

    reject_stray(argv)
    workdir = check_workdir(_WORKDIR.value)  # a file, not writable: one line, nothing written
    logging.set_verbosity(logging.WARNING)  # keep the console for progress and results
    initialize_distributed()  # before anything touches a device: the processes must join first
    # Several processes: a failure here ends this process at once so the others stop too.
    with distributed.exit_on_failure(), stops_in_one_line("sequax.launch.train", workdir):
        loop.run(from_config(_CONFIG.value), workdir)  # the config, resolved into objects


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
