"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run, MLP 784-100-100-10, batch 10, 1 epoch per task.

Naive fine-tuning (the DER table's SGD row), the published best learning rate.

    python -m sequax.launch.train --config=configs/smnist_naive.py --workdir=runs/smnist_naive
    python -m sequax.launch.train --config=configs/smnist_naive.py:local --workdir=/tmp/smnist_naive  # short CPU run

Expected (2-core CPU, seed 0): EXPECTED
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    return common.finish(common.der_config("split", "naive", lr=0.03), arg)
