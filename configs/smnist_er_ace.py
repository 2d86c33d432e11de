"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run,
MLP 784-100-100-10, batch 10, 1 epoch per task.

ER-ACE, reservoir buffer of 500. The DER paper has no ER-ACE row, so these are ER-500's best
settings (DER best-args, seq-mnist: lr 0.1, replay batch 10; ../shared/PROTOCOLS.md §A),
the same buffer and replay as configs/smnist_er.py: only the incoming batch's loss differs.

    python -m sequax.launch.train --config=configs/smnist_er_ace.py --workdir=runs/smnist_er_ace
    python -m sequax.launch.train --config=configs/smnist_er_ace.py:local \
        --workdir=/tmp/smnist_er_ace  # short CPU run

Expected (seed 0, one run, 2-core CPU, full data): class-IL ACC 90.32 %, task-IL 98.98 % (no
published ER-ACE number on this protocol; ER-500 here: 89.27 / 99.21, DER Table 2 ER-500: 86.12 /
99.04); about 10 s wall.
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    return common.finish(
        common.der_config("split", "er_ace", lr=0.1, capacity=500, replay_batch=10), arg
    )
