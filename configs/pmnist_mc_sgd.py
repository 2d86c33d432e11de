"""Permuted MNIST (Mirzadeh protocol, ../shared/PROTOCOLS.md §B): 20 tasks, task 1 unpermuted,
domain-IL, MLP 784-256-256-10 (torch init), 1 epoch per task, full 60k/10k per task.

MC-SGD (Mirzadeh et al., ICLR 2021) at the published setting: sequential chain SGD lr 0.1,
momentum 0.8, batch 64, per-task decay 0.8, dropout 0.2; memory of 10 examples per class per
task; line search lr 0.05, momentum 0.8, batch 64, 10 line samples, start α = 0.1.
Evaluation uses the continual solution w̄ (`MCSGD.predict`).

    python -m sequax.launch.train --config=configs/pmnist_mc_sgd.py --workdir=runs/pmnist_mc_sgd
    python -m sequax.launch.train --config=configs/pmnist_mc_sgd.py:local --workdir=/tmp/pmnist_mc_sgd  # short CPU run

Published: average accuracy 85.3 %, forgetting 0.06. The full protocol has not been run
here yet (the reproduction table is a later step); `:local`: see the issue-7 report.
"""

from sequax.configs import common
from sequax.configs.pmnist_stable_sgd import mirzadeh_config

MC_SGD = dict(num_tasks=20, per_class=10, num_classes=10, decay=0.8, line_samples=10, line_lr=0.05,
              line_momentum=0.8, line_batch=64, init_position=0.1)


def get_config(arg: str | None = None):
    return common.finish(mirzadeh_config("permuted", "mc_sgd", dropout=0.2, batch_size=64, **MC_SGD), arg)
