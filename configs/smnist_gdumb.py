"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run,
MLP 784-100-100-10, batch 10, 1 epoch per task.

GDumb, memory of 500. PROTOCOLS §A lists no GDumb settings (the DER paper has no GDumb row):
the retraining follows the GDumb paper's MNIST runs (drimpossible/GDumb: 128 passes, maxlr
0.05, batch 16), as constant-lr SGD (see algorithms/gdumb.py). The stream optimizer's lr only
trains `state.params`, which GDumb's evaluation does not read.

    python -m sequax.launch.train --config=configs/smnist_gdumb.py --workdir=runs/smnist_gdumb
    python -m sequax.launch.train --config=configs/smnist_gdumb.py:local \
        --workdir=/tmp/smnist_gdumb  # short CPU run

Expected (seed 0, one run, 2-core CPU, full data): class-IL ACC 86.67 %, task-IL 97.26 %; 9 to 18 s
wall (the shared machine's load; end_task, 5 retrainings of 4,096 steps, is most of it: 5-9 s).
No DER-table number exists; the GDumb README reports 90.2 ± 0.4 for MNIST, MLP-100, k=500 (its
own protocol: momentum 0.9, SGDR schedule, the best test accuracy over the 128 passes).
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_config(
        "split",
        "gdumb",
        lr=0.03,
        capacity=500,
        num_classes=10,
        epochs=128,
        fit_lr=0.05,
        batch_size=16,
    )
    return common.finish(config, arg)
