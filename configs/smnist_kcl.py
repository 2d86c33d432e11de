"""Split MNIST, task-IL: 5 tasks x 2 classes, each task classified by its own coreset, MLP
784-256-256 feature extractor (PyTorch init, dropout 0.5), batch 10, 1 epoch per task.

Kernel continual learning with the reference code's MNIST settings (as configs/pmnist_kcl.py):
coreset 20 per class (40 per task), D = 1024, tau 1e-4, lambda init 0.1, SGD lr 0.1 with
momentum 0.8 reset per task, lr decayed by 0.5 per task. The KCL paper reports no Split
MNIST result; this config gives our reference number.

    python -m sequax.launch.train --config=configs/smnist_kcl.py --workdir=runs/smnist_kcl
    python -m sequax.launch.train --config=configs/smnist_kcl.py:local \
        --workdir=/tmp/smnist_kcl  # short CPU run

Expected: task-IL ACC (the only meaningful view: the class-IL row is computed with the task
oracle too); `:local` (1,000 train / 500 test per task, seed 0, shared 2-core CPU): task-IL ACC
92.4 %, forgetting 2.2 % (the last task, trained at lr 0.1 * 0.5^5, reaches 80.8 %), 32 s wall.
"""

from sequax.configs import common
from sequax.configs.pmnist_kcl import kcl_config


def get_config(arg: str | None = None):
    return common.finish(kcl_config("split", 5, 2, dict(classes_per_task=2)), arg)
