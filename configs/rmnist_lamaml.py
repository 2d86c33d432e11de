"""Rotated MNIST, La-MAML's protocol (Gupta et al., NeurIPS 2020, Table 1; ../shared/PROTOCOLS.md
§B).

Verified against the official code (github.com/montrealrobotics/La-MAML). Its MNIST-rotations
La-MAML command (`run_experiments.sh`, "#lamaml" under "# ROTATION"): `--n_layers 2
--n_hiddens 100 --samples_per_task 1000 --dataset mnist_rotations --model lamaml --memories
200 --batch_size 10 --replay_batch_size 10 --n_epochs 1 --glances 5 --opt_lr 0.3
--alpha_init 0.15 --learn_lr --use_old_task_memory`; from `parser.py` the defaults it leaves:
`--grad_clip_norm 2.0`, no `--second_order` (first order), no `--sync_update` (asynchronous:
the weight step is max(0, α) ⊙ ∇, so the SGD optimiser here runs at learning rate 1),
`--arch linear` (`model/meta/modelfactory.py`: 784-100-100-10, ReLU, biases, no dropout),
no `--xav_init`. `--use_old_task_memory` has no effect: `observe` aliases `self.M =
self.M_new` (the same list). The procedure: algorithms/lamaml.py.

Data (`dataloaders/task_incremental_loader.py`): `mnist_rotations.pt` from the README's
`python get_data.py all` (that script is not in the stored copy of the repository; MER's
`get_data.py`, mattriemer/MER, downloads the same prebuilt file). Its generator is GEM's
`data/mnist_rotations.py`: task t rotated by an angle drawn (unseeded Python `random`) from
its own bin of [min_rot, max_rot) / n_tasks, PIL's default nearest rotation, [0, 1] pixels;
with 20 tasks over [0°, 180°) (9° bins) here `protocol="stratified"`, nearest. Each task keeps a
random `samples_per_task`=1,000 of its 60,000 training images (`torch.randperm(N)[0:n]`), shuffled
by its DataLoader. Evaluation (`main.py` `eval_tasks`, after each task): the full 10,000 test
images of every task (its last image is skipped by an off-by-one, `b_to = min(..., size - 1)`, but
the count divides by 10,000: < 0.01 points). Retained accuracy (RA) is the mean of the final row of
the task matrix ("Final Accuracy", `metrics/metrics.py`, GEM's); BTI is that file's `bwt.mean()`,
the mean of R[T-1, j] − R[j, j] over all 20 tasks (the last entry is 0), i.e. our BWT
(divisor 19) times 19/20. Not reproducible here: the official network's Kaiming-normal
weights (`torch.nn.init.kaiming_normal_`, std sqrt(2 / fan_in), zero biases;
`model/meta/learner.py`) need an engine initializer (`config.model.init` offers Glorot-uniform
"xavier", used here, and torch's default "torch").

    python -m sequax.launch.train --config=configs/rmnist_lamaml.py --workdir=runs/rmnist_lamaml
    python -m sequax.launch.train --config=configs/rmnist_lamaml.py:local \
        --workdir=/tmp/rmnist_lamaml  # short CPU run

Published: retained accuracy (final ACC) 77.42 ± 0.65 %, BTI −5.88 ± 1.31 (La-MAML Table 1).
Measured (the full protocol, 10,000 test images per task, one CPU run per seed, seeds 0-4,
`--config.seed=S`): ACC 75.26, 77.11, 76.99, 74.81, 75.35 %, mean 75.90 ± 1.07 (sample
std); BWT −10.63 ± 1.00 (BTI, divisor 20: −10.10); forgetting 13.68 ± 1.00; learning
accuracy 86.0. Seed 0: 1:52 wall (82 s training, 245 samples/s); `:local` (500 test images
per task) seed 0: ACC 74.46 %, BWT −11.48, 1:38 wall. Before the verification
(inner gradients clamped, raw α in the inner steps, replay without replacement) seed 0 gave
ACC 73.15 %, BWT −14.98 (the code before commit 9ac3c9e). ACC is 1.5 points below the
published 77.42 ± 0.65 and forgetting larger (BTI −10.1 against −5.88 ± 1.31), with a
higher learning accuracy (86.0; the published RA and BTI imply about 83.6): more plasticity,
more forgetting. The procedure and every hyper-parameter now match the official code (left:
the initialisation, −0.3 points at seed 0, and the reservoir's 1/n off-by-one), so the gap's
cause lies outside them: not verifiable here are the prebuilt `mnist_rotations.pt` (its
angles and task order; ours are a stratified draw of data.seed 0) and the code version
behind the paper's table.
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
    config.algorithm = ml_collections.ConfigDict(
        dict(
            name="lamaml",
            alpha_init=0.15,
            meta_lr=0.3,
            capacity=200,
            replay_batch=10,
            inner_batch=1,
            grad_clip=2.0,
            second_order=False,
            clamp_inner=False,
        )
    )
    config.optimizer.lr = 1.0  # the step size is max(0, α) (the asynchronous update)
    config.training.batch_size = 10
    config.training.epochs = 1
    config.training.glances = 5  # each batch trained on 5 times in a row (official --glances 5)
    return common.finish(config, arg)
