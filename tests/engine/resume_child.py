"""Child process of test_resume.py: one short run into WORKDIR, which the test may kill.

    SEQUAX_TEST_KILL_AT="end_task:1" python resume_child.py WORKDIR

The run resumes from WORKDIR/checkpoints when it holds one. At the end it saves every leaf
of the final `CLState` (parameters, optimizer, EWC's Fisher and anchors, ER's reservoir) to
WORKDIR/final_state.npz, for a bit-for-bit comparison with an uninterrupted run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from sequax.configs import common
from sequax.engine import loop

jax.config.update("jax_disable_most_optimizations", True)  # as in conftest: fast compiles


def kill_test_config():
    """3 tasks of Split MNIST (packaged), 2 epochs of 10 steps each, chunks of 5 steps,
    a checkpoint every 15 steps and after every task: saves at steps 15 (mid-epoch), 20 (task
    1 done), 30, 40 (task 2 done), 45 (mid-epoch), 60 (task 3 done). ER + EWC with momentum
    and dropout, so the reservoir, the Fisher, the optimizer state, the epoch's order and the
    per-step keys must all be restored."""
    config = common.der_config(
        "split", "er+ewc", 0.05, er={"capacity": 40, "replay_batch": 10}, ewc={"lam": 10.0}
    )
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 3
    config.data.train_per_task = 100
    config.data.test_per_task = 50
    config.model.widths = (32,)
    config.model.dropout = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.reset_each_task = False
    config.training.batch_size = 10
    config.training.epochs = 2
    config.training.steps_per_dispatch = 5
    config.checkpoint.every_steps = 15
    return config


def get_config():
    """The same run for the command line (`python -m sequax.launch.train --config=THIS`)."""
    return kill_test_config()


def main(workdir: str) -> None:
    result = loop.run(kill_test_config(), workdir, verbose=True)
    leaves = jax.tree_util.tree_flatten_with_path(result.state)[0]
    np.savez(
        Path(workdir) / "final_state.npz",
        **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves},
    )


if __name__ == "__main__":
    main(sys.argv[1])
