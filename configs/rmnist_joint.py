"""Rotated MNIST (DER protocol): 20 tasks, angle ~ U[0, 180) per task, domain-IL, MLP
784-100-100-10, batch 128, 1 epoch per task.

Joint training on the union of all tasks (the DER table's JOINT row); one training phase, so the
accuracy matrix has one row.

    python -m sequax.launch.train --config=configs/rmnist_joint.py --workdir=runs/rmnist_joint
    python -m sequax.launch.train --config=configs/rmnist_joint.py:local \
        --workdir=/tmp/rmnist_joint  # short CPU run

Expected (seed 0, one run, 2-core CPU, full data): domain-IL ACC 95.60 % (DER Table 2, JOINT:
95.76); about 55 s wall. Gaps to the paper are investigated with more seeds in the DER
reproduction (configs/reproduce/der, a later issue).
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    return common.finish(common.der_config("rotated", "joint", lr=0.2), arg)
