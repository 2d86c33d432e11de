"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run,
MLP 784-100-100-10, batch 10, 1 epoch per task.

Naive fine-tuning (the DER table's SGD row), the published best learning rate.

    python -m sequax.launch.train --config=configs/smnist_naive.py --workdir=runs/smnist_naive
    python -m sequax.launch.train --config=configs/smnist_naive.py:local \
        --workdir=/tmp/smnist_naive  # short CPU run

Expected (seed 0, one run, 2-core CPU, full data): class-IL ACC 19.73 %, task-IL 94.39 % (DER Table
2, SGD: 19.60 / 97.86); about 4 s wall. Gaps to the paper are investigated with more seeds in the
DER reproduction (configs/reproduce/der, a later issue).
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    return common.finish(common.der_config("split", "naive", lr=0.03), arg)
