"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run,
MLP 784-100-100-10, batch 10, 1 epoch per task.

Joint training on the union of all tasks (the DER table's JOINT row); one training phase, so the
accuracy matrix has one row.

    python -m sequax.launch.train --config=configs/smnist_joint.py --workdir=runs/smnist_joint
    python -m sequax.launch.train --config=configs/smnist_joint.py:local \
        --workdir=/tmp/smnist_joint  # short CPU run

Expected (seed 0, one run, 2-core CPU, full data): class-IL ACC 95.01 %, task-IL 99.23 % (DER Table
2, JOINT: 95.57 / 99.51); about 4 s wall. Gaps to the paper are investigated with more seeds in the
DER reproduction (configs/reproduce/der, a later issue).
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    return common.finish(common.der_config("split", "joint", lr=0.03), arg)
