"""Rotated MNIST, La-MAML's protocol (Gupta et al., NeurIPS 2020, Table 1; ../shared/PROTOCOLS.md §B).

20 tasks, task t rotated by an angle drawn from its own 9° bin of [0°, 180°) (GEM's
`mnist_rotations.py`, which La-MAML's data comes from: `protocol="stratified"`), nearest
rotation; 1,000 training examples per task, the full 10,000 test images per task; domain-IL,
MLP 784-100-100-10; batch 10, one epoch, 5 glances; memory 200, replay 10; α₀ 0.15, α's
learning rate 0.3 (the official `run_experiments.sh`: `--memories 200 --batch_size 10
--replay_batch_size 10 --n_epochs 1 --glances 5 --opt_lr 0.3 --alpha_init 0.15 --learn_lr`,
without `--second_order`, so the first-order meta-gradient; recalled from memory). The
weight step is max(0, α) ⊙ ∇, so the SGD optimiser runs at learning rate 1.

    python -m sequax.launch.train --config=configs/rmnist_lamaml.py --workdir=runs/rmnist_lamaml
    python -m sequax.launch.train --config=configs/rmnist_lamaml.py:local --workdir=/tmp/rmnist_lamaml  # short CPU run

Published: retained accuracy (final ACC) 77.42 ± 0.65 %, BTI −5.88 ± 1.31 (La-MAML Table 1).
`:local` (500 test images per task, seed 0, one run on the shared 2-core CPU): domain-IL
ACC 73.00 %, BWT −14.54, forgetting 17.32 points, 2:09 wall (104 s training, 193 samples/s);
with `--config.algorithm.second_order=True` ACC 72.11 %, BWT −15.75, 3:57 wall. Both are
below the published 77.42 and forget more (BTI −5.88); not yet explained (one seed, 500 test
images, and a procedure recalled from memory: see algorithms/lamaml.py).
"""

import ml_collections
from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.base_config()
    config.data.scenario = "rotated"
    config.data.num_tasks = 20
    config.data.options = ml_collections.ConfigDict(dict(protocol="stratified", max_angle=180.0))
    config.data.train_per_task = 1000
    config.model.widths = (100, 100)
    config.algorithm = ml_collections.ConfigDict(dict(
        name="lamaml", alpha_init=0.15, meta_lr=0.3, glances=5, capacity=200, replay_batch=10,
        inner_batch=1, grad_clip=2.0, second_order=False))
    config.optimizer.lr = 1.0  # the step size is max(0, α) (the asynchronous update)
    config.training.batch_size = 10
    config.training.epochs = 1
    return common.finish(config, arg)
