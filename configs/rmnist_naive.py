"""Rotated MNIST (DER protocol): 20 tasks, angle ~ U[0, 180) per task, domain-IL, MLP
784-100-100-10, batch 128, 1 epoch per task.

Naive fine-tuning (the DER table's SGD row), the published best learning rate.

    python -m sequax.launch.train --config=configs/rmnist_naive.py --workdir=runs/rmnist_naive
    python -m sequax.launch.train --config=configs/rmnist_naive.py:local \
        --workdir=/tmp/rmnist_naive  # short CPU run

Expected (seed 0, one run, 2-core CPU, full data): domain-IL ACC 63.81 % (DER Table 2, SGD: 67.66);
about 44 s wall. Gaps to the paper are investigated with more seeds in the DER
reproduction (configs/reproduce/der, a later issue).
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    return common.finish(common.der_config("rotated", "naive", lr=0.2), arg)
