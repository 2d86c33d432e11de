"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run,
MLP 784-100-100-10, batch 10, 1 epoch per task.

Learning without Forgetting, the published best settings (DER best-args, seq-mnist: lr 0.03,
α 1, T 2.0, weight decay 5e-4 as torch SGD's `weight_decay`; ../shared/PROTOCOLS.md §A).
mammoth's classifier warm-up at the start of each task is not done (algorithms/lwf.py).

    python -m sequax.launch.train --config=configs/smnist_lwf.py --workdir=runs/smnist_lwf
    python -m sequax.launch.train --config=configs/smnist_lwf.py:local \
        --workdir=/tmp/smnist_lwf  # short CPU run

Expected (seed 0, one run, 2-core CPU, full data): class-IL ACC 19.63 %, task-IL 98.54 % (DER Table
2, LwF: 19.62 / 94.11); about 8 s wall. Task-IL is 4.4 points above the paper's (naive here:
94.39); the warm-up not done here is one candidate. Gaps to the paper are investigated with more
seeds in the DER reproduction (configs/reproduce/der, a later issue).
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_config("split", "lwf", lr=0.03, alpha=1.0, temperature=2.0)
    config.optimizer.weight_decay = 5e-4
    return common.finish(config, arg)
