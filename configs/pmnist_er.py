"""Permuted MNIST (DER protocol): 20 tasks, every task permuted, domain-IL, MLP 784-100-100-10,
batch 128, 1 epoch per task.

Experience replay, reservoir buffer of 500, the published best settings (DER best-args).

    python -m sequax.launch.train --config=configs/pmnist_er.py --workdir=runs/pmnist_er
    python -m sequax.launch.train --config=configs/pmnist_er.py:local \
        --workdir=/tmp/pmnist_er  # short CPU run

Expected (seed 0, one run, 2-core CPU, full data): domain-IL ACC 79.20 % (DER Table 2, ER-500:
80.60); about 32 s wall. Gaps to the paper are investigated with more seeds in the DER
reproduction (configs/reproduce/der, a later issue).
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    return common.finish(
        common.der_config("permuted", "er", lr=0.2, capacity=500, replay_batch=128), arg
    )
