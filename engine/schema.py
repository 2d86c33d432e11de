"""The config schema: every key a run reads, with its default (owned by the engine).

Config files start from `base_config()` and change values; `engine.validate.check_config`
refuses a key that is not here (with "did you mean"), and a checkpoint written before a key
was added treats it at its default here as no difference (`engine.checkpoint`). The
free-form sections (`algorithm`, `model`, `data.options`, `sweep`) are checked against the
component they configure.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections

# ../shared/data beside the repository (where CI and the benchmarks keep MNIST), unless
# SEQUAX_DATA names another root. Override per run with --config.data.root=PATH.
DATA_ROOT = os.environ.get(
    "SEQUAX_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def base_config() -> ml_collections.ConfigDict:
    """Every key a run reads, with its default. Overrides must name an existing key."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict(
        dict(
            source="mnist",  # mnist | fashion_mnist | mnist_packaged (ships with sequax) | torch
            # source="torch": "package.module:function" returning (train, test) torch Datasets
            # of (image, int label), read once (sequax.data.torch_source); "__main__:fn" names
            # a function of the running script or notebook
            factory="",
            num_classes=0,  # source="torch": 0 infers it (largest label + 1)
            root=DATA_ROOT,  # folder holding MNIST/raw/*.gz (torchvision's layout)
            scenario="split",  # split | permuted | rotated
            num_tasks=5,
            seed=0,  # permutations, angles and class orders
            # True: each run draws its own permutations/angles from (data.seed, its seed),
            # like separate runs of the reference code (Permuted, nearest Rotated only)
            draws_per_run=False,
            options=ml_collections.ConfigDict(),  # scenario keyword arguments
            train_per_task=0,  # 0 keeps every example; >0 subsamples (":local" runs)
            test_per_task=0,
            # In-jit augmentations of every train-mode input, replayed examples included (the
            # buffer keeps raw examples): () or ("crop", "flip") (sequax.data.augment)
            augment=(),
            # ((mean per channel), (std per channel)) standardising the [0, 1] inputs in train
            # and eval mode, after augmenting (mammoth's Normalize on CIFAR); () for none
            normalize=(),
            # How training batches reach the step: "device" places each phase on the devices
            # and gathers batches in-jit; "stream" reads them on the host through a grain
            # pipeline (sequax.engine.stream), chunk by chunk. `stream.order`: "device" reads
            # the device path's permutations (identical results), "shuffle" a seeded numpy
            # one; `workers`: grain processes (0: a thread); `prefetch`: chunks kept on device.
            pipeline="device",
            stream=ml_collections.ConfigDict(dict(order="device", workers=0, prefetch=2)),
            # Blurry task boundaries on a class-IL split (sequax.data.blurry): kind "none",
            # "linear_decay" (avalanche's continuous linear decay: `beta` its overlap factor,
            # `iterations` per task) or "iblurry" (i-Blurry-N-M: `disjoint` = N/100 of the
            # classes stay in their task, `moved` = M/100 of each other class's examples go
            # to other tasks). The segments are read in the stream's order.
            # A validation split held out of each task's training data (sequax.data.validation):
            # 0 none; in (0, 1) a fraction; >= 1 a count per task. It is evaluated after each
            # task (validation_matrix.json), drives training.patience, and chooses a sweep's
            # point (the summary's "chosen"), so the test sets choose nothing.
            validation=0.0,
            blurry=ml_collections.ConfigDict(
                dict(kind="none", beta=4.0, iterations=10, disjoint=0.5, moved=0.1)
            ),
        )
    )
    config.model = ml_collections.ConfigDict(
        dict(name="mlp", widths=(100, 100), dropout=0.0, init="xavier")
    )
    config.algorithm = ml_collections.ConfigDict(dict(name="naive"))
    # The optimizer and its learning-rate schedule (sequax.engine.optimizers, which documents
    # each name as its torch.optim class). name: sgd | momentum | nesterov | adam | adamw |
    # rmsprop | lion | adagrad | "package.module:factory" (your own, called with
    # learning_rate= and `args`). b1/b2/eps None: the optimizer's own default (rmsprop's b2 is
    # torch's alpha); momentum 0: none. weight_decay: L2 on the gradient (decoupled for adamw
    # and lion). clip_norm > 0 scales each step's gradient to global L2 norm <= clip_norm
    # first, as torch.nn.utils.clip_grad_norm_ before optimizer.step() (sequax.core.clipping);
    # 0: off. reset_each_task re-initialises the whole optimizer state at each task.
    # schedule: constant | multistep (milestones in epochs, gamma) | cosine (to end_lr, or
    # alpha x lr) | warmup_cosine (linear warmup over warmup_epochs from warmup_start_factor
    # x lr); per_task: restarted at each task (True) or continued over the stream (False,
    # needs total_epochs and reset_each_task=False); total_epochs 0: a task's epochs; or
    # "package.module:factory", your own, called with (lr, steps_per_epoch, epochs_per_task)
    # and returning an optax schedule (step -> learning rate).
    placeholder = ml_collections.config_dict.placeholder
    config.optimizer = ml_collections.ConfigDict(
        dict(
            name="sgd",
            lr=0.03,
            momentum=0.0,
            nesterov=False,
            b1=placeholder(float),
            b2=placeholder(float),
            eps=placeholder(float),
            weight_decay=0.0,
            clip_norm=0.0,
            reset_each_task=True,
            args=ml_collections.ConfigDict(),  # other keywords of the optax constructor
            schedule="constant",
            milestones=(),
            gamma=0.1,
            warmup_epochs=0.0,
            warmup_start_factor=0.0,
            end_lr=0.0,
            alpha=0.0,
            total_epochs=0,
            per_task=True,
        )
    )
    # glances: times each batch is trained on in a row, each a full step (La-MAML's and MER's
    # single-pass protocol; state.step counts the batch once). task_free: the method is not
    # told where tasks end (no start_task/end_task, no optimizer reset or schedule restart,
    # state.task and every batch's task id are -1); a method that needs boundaries
    # (`Algorithm.needs_boundaries`) is refused. Online CL is task_free with epochs=1.
    config.training = ml_collections.ConfigDict(
        dict(
            batch_size=10, epochs=1, steps_per_dispatch=250, glances=1, task_free=False, patience=0
        )
    )
    # patience > 0 (needs data.validation): early stopping per task, a phase ends after that
    # many epochs in a row without a better validation accuracy on its tasks (several runs:
    # when none of them improved); the state goes on from the last epoch trained.
    # every_steps > 0: anytime evaluation, every task's test set also every that many steps
    # inside a task (the curve is WORKDIR/anytime.json; average anytime accuracy and the area
    # under the accuracy curve join the summary).
    config.eval = ml_collections.ConfigDict(dict(batch_size=1000, every_steps=0))
    # Devices: vmapped runs are split over `runs` devices (each group trains its own runs),
    # the batch over data x fsdp (data=-1: every device runs and fsdp leave); with fsdp > 1,
    # parameters of at least fsdp_min_size elements are split too (sequax.engine.sharding).
    config.mesh = ml_collections.ConfigDict(dict(runs=1, data=-1, fsdp=1, fsdp_min_size=2**18))
    # Many runs in one compiled program (sequax.engine.runs): `runs` seeds per grid point,
    # and a grid over the values listed in `sweep` (an empty tuple: not swept). Any float
    # hyper-parameter of the algorithm may be added, e.g. config.sweep.gamma = (0.9, 1.0).
    config.runs = 1
    config.sweep = ml_collections.ConfigDict(dict(lr=(), momentum=(), lam=(), alpha=(), beta=()))
    # Checkpoints in WORKDIR/checkpoints (sequax.engine.checkpoint); a run restarted with the
    # same --workdir resumes from the newest good one. Intervals, 0 = never: every_steps is
    # checked at chunk boundaries (training.steps_per_dispatch), every_epochs within a task,
    # every_tasks after a task's evaluation (and after the last); `keep` complete ones kept.
    # `asynchronous`: a save returns once the state is off the devices and training goes on
    # while it is written, verified and older ones pruned (one process; several save in step).
    config.checkpoint = ml_collections.ConfigDict(
        dict(enabled=True, every_steps=0, every_epochs=0, every_tasks=1, keep=2, asynchronous=True)
    )
    # Sinks besides metrics.jsonl and the console (sequax.engine.writers): TensorBoard event
    # files in WORKDIR/tensorboard; W&B (pip install 'sequax[wandb]'), "offline" writes
    # WORKDIR/wandb for a later `wandb sync`, "online" needs a login. `sinks`: your own, as
    # "package.module:factory" paths, each called with (workdir, config) and returning an
    # object with write(record: dict) and close().
    config.writers = ml_collections.ConfigDict(
        dict(
            tensorboard=False,
            wandb=False,
            wandb_project="sequax",
            wandb_mode="offline",
            sinks=(),
        )
    )
    # JAX's persistent compilation cache (sequax.engine.compilation): "" uses
    # $SEQUAX_COMPILATION_CACHE, else ~/.cache/sequax/xla; a folder; or "off". A rerun of the
    # same config loads its programs from it instead of compiling them.
    config.compilation_cache = ""
    return config
