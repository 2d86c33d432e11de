"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run, MLP 784-100-100-10, batch 10, 1 epoch per task.

Experience replay, reservoir buffer of 500, the published best settings (DER best-args).

    python -m sequax.launch.train --config=configs/smnist_er.py --workdir=runs/smnist_er
    python -m sequax.launch.train --config=configs/smnist_er.py:local --workdir=/tmp/smnist_er  # short CPU run

Expected (2-core CPU, seed 0): EXPECTED
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    return common.finish(common.der_config("split", "er", lr=0.1, capacity=500, replay_batch=10), arg)
