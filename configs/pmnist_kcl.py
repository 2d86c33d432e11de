"""Permuted MNIST, KCL's protocol (Mirzadeh et al.'s, ../shared/PROTOCOLS.md §B): 20 tasks, task 1
unpermuted, task-IL (each task classified by its own coreset), MLP 784-256-256 feature
extractor (PyTorch init, dropout 0.5), batch 10, 1 epoch per task.

Kernel continual learning with the reference code's MNIST settings
(mmderakhshani/KCL, replicate_experiment_rff_rbf_mnist.sh and stable_sgd/utils.py): coreset 200
per task (20 per class), D = 1024 random Fourier bases, KL weight tau 1e-4 (main.py's default;
the script's --tau 0 goes with its main_rbf kernel, see below), lambda init 0.1, SGD lr 0.1 with
momentum 0.8 (optimizer rebuilt per task), lr decayed by 0.5 per task
(lr_t = max(0.1 * 0.5 ** t, 5e-5), t from 1).

    python -m sequax.launch.train --config=configs/pmnist_kcl.py --workdir=runs/pmnist_kcl
    python -m sequax.launch.train --config=configs/pmnist_kcl.py:local \
        --workdir=/tmp/pmnist_kcl  # short CPU run

Published (KCL, ICML 2021, Table 1, as we recall it, not verified): average accuracy
85.5 +- 0.8, forgetting 0.02. Full protocol, 3 seeds vmapped (`python -m
sequax.launch.reproduce --table=mirzadeh --cells=pmnist_kcl/`, 2-core CPU, 2026-11-23):
76.34 +- 0.90, forgetting 0.017 +- 0.001, learning accuracy 77.8 %, 114 min (554 samples/s):
the forgetting matches, the later tasks (lr at the 5e-5 floor from task 11) learn less; the
reproduction's note (docs/reproductions/mirzadeh.md) gives the evidence. The reference's MNIST
script names main_rbf.py, an exact L1-RBF kernel (`KCL(kernel="rbf")`, the table's
`--variant=kcl_main_rbf`). `:local` (1,000 train / 500 test examples per task, seed 0, shared
2-core CPU): ACC 65.7 %, forgetting 0.5 %, learning accuracy 65.8 %, 324 s wall.
"""

import ml_collections

from sequax.configs import common


def kcl_config(scenario: str, num_tasks: int, classes_per_task: int, options: dict):
    """KCL's MNIST regime on a `scenario` stream (shared by the Permuted and Split configs)."""
    config = common.base_config()
    config.data.scenario = scenario
    config.data.num_tasks = num_tasks
    config.data.options = ml_collections.ConfigDict(options)
    config.model.widths = (256, 256)
    config.model.dropout = 0.5
    config.model.init = "torch"
    config.algorithm = ml_collections.ConfigDict(
        dict(
            name="kcl",
            num_tasks=num_tasks,
            coreset_size=20 * classes_per_task,
            classes_per_task=classes_per_task,
            num_features=1024,
            kl_weight=1e-4,
            ridge_init=0.1,
            lr_decay=0.5,
            lr_min_factor=5e-4,
        )
    )
    config.optimizer.lr = 0.1
    config.optimizer.momentum = 0.8
    config.optimizer.reset_each_task = True
    config.training.batch_size = 10
    return config


def get_config(arg: str | None = None):
    return common.finish(kcl_config("permuted", 20, 10, dict(first_task_identity=True)), arg)
