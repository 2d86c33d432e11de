"""Shared pieces of the experiment configs: the protocols' data, model and training blocks.

Every config file is `get_config(arg=None)`; `arg="local"` (written `configs/x.py:local` on
the command line) shrinks any config to a short CPU run with `shrink_local`.

    config = der_config("split", "er", lr=0.1, algorithm=dict(capacity=500, replay_batch=10))
    config = shrink_local(config)   # 1,000 train / 500 test examples per task
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

# Scenario options of the DER protocol (Buzzega et al. 2020, ../shared/PROTOCOLS.md §A).
DER_SCENARIOS = {
    "split": dict(num_tasks=5, options=dict(classes_per_task=2), batch_size=10),
    "permuted": dict(num_tasks=20, options=dict(first_task_identity=False), batch_size=128),
    "rotated": dict(
        num_tasks=20, options=dict(protocol="uniform", max_angle=180.0), batch_size=128
    ),
}


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
        )
    )
    config.model = ml_collections.ConfigDict(
        dict(name="mlp", widths=(100, 100), dropout=0.0, init="xavier")
    )
    config.algorithm = ml_collections.ConfigDict(dict(name="naive"))
    # clip_norm > 0 scales each step's gradient to global L2 norm <= clip_norm first, as
    # torch.nn.utils.clip_grad_norm_ before optimizer.step() (sequax.engine.clipping); 0: off.
    config.optimizer = ml_collections.ConfigDict(
        dict(
            name="sgd", lr=0.03, momentum=0.0, weight_decay=0.0, clip_norm=0.0, reset_each_task=True
        )
    )
    config.training = ml_collections.ConfigDict(
        dict(batch_size=10, epochs=1, steps_per_dispatch=250)
    )
    config.eval = ml_collections.ConfigDict(dict(batch_size=1000))
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
    config.checkpoint = ml_collections.ConfigDict(
        dict(enabled=True, every_steps=0, every_epochs=0, every_tasks=1, keep=2)
    )
    # Sinks besides metrics.jsonl and the console (sequax.engine.writers): TensorBoard event
    # files in WORKDIR/tensorboard; W&B (pip install 'sequax[wandb]'), "offline" writes
    # WORKDIR/wandb for a later `wandb sync`, "online" needs a login.
    config.writers = ml_collections.ConfigDict(
        dict(tensorboard=False, wandb=False, wandb_project="sequax", wandb_mode="offline")
    )
    return config


def der_config(
    scenario: str, algorithm: str, lr: float, **algorithm_kwargs
) -> ml_collections.ConfigDict:
    """The DER protocol: MLP 784-100-100-10 (Xavier), plain SGD, one epoch per task."""
    protocol = DER_SCENARIOS[scenario]
    config = base_config()
    config.data.scenario = scenario
    config.data.num_tasks = protocol["num_tasks"]
    config.data.options = ml_collections.ConfigDict(protocol["options"])
    config.algorithm = ml_collections.ConfigDict(dict(name=algorithm, **algorithm_kwargs))
    config.optimizer.lr = lr
    config.training.batch_size = protocol["batch_size"]
    return config


# The DER protocol on images (Buzzega et al. 2020; mammoth's seq-cifar10, seq-tinyimg and, from
# its later code, seq-cifar100): ResNet-18 at mammoth's default width nf=64 (nf=20 is GEM's
# "reduced" one), batch 32, random crop (padding 4) and horizontal flip, inputs normalised
# with the dataset's per-channel mean and std; epochs per task as in mammoth's best-args.
DER_IMAGE_SCENARIOS = {
    "cifar10": dict(
        num_tasks=5,
        classes_per_task=2,
        epochs=50,
        normalize=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)),
    ),
    "cifar100": dict(
        num_tasks=10,
        classes_per_task=10,
        epochs=50,
        normalize=((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    ),
    "tiny_imagenet": dict(
        num_tasks=10,
        classes_per_task=20,
        epochs=100,
        normalize=((0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821)),
    ),
}


def der_image_config(
    source: str, algorithm: str, lr: float, **algorithm_kwargs
) -> ml_collections.ConfigDict:
    """The DER protocol on Split CIFAR-10/100 and Split TinyImageNet: ResNet-18, plain SGD,
    batch 32, augmentation and normalisation (`DER_IMAGE_SCENARIOS`)."""
    protocol = DER_IMAGE_SCENARIOS[source]
    config = base_config()
    config.data.source = source
    config.data.scenario = "split"
    config.data.num_tasks = protocol["num_tasks"]
    config.data.options = ml_collections.ConfigDict(
        dict(classes_per_task=protocol["classes_per_task"])
    )
    config.data.augment = ("crop", "flip")
    config.data.normalize = protocol["normalize"]
    config.model = ml_collections.ConfigDict(dict(name="resnet18", nf=64))
    config.algorithm = ml_collections.ConfigDict(dict(name=algorithm, **algorithm_kwargs))
    config.optimizer.lr = lr
    config.training.batch_size = 32
    config.training.epochs = protocol["epochs"]
    return config


def shrink_local(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A short CPU run of any config: 1,000 training and 500 test examples per task (and
    for the ResNet-18 image protocols, one epoch at the reduced width)."""
    config.data.train_per_task = 1000
    config.data.test_per_task = 500
    if "capacity" in config.algorithm:
        config.algorithm.capacity = min(config.algorithm.capacity, 200)
        if "replay_batch" in config.algorithm:
            config.algorithm.replay_batch = min(
                config.algorithm.replay_batch, config.algorithm.capacity
            )
    config.training.batch_size = min(config.training.batch_size, 32)
    if config.model.get("name") == "resnet18":  # the image protocols: 50-100 epochs at nf=64
        config.training.epochs = 1
        config.model.nf = min(config.model.nf, 20)  # the reduced width: ~10x fewer FLOPs than 64
    return config


def finish(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the command-line argument after the config path (`file.py:local`)."""
    if arg in (None, ""):
        return config
    if arg == "local":
        return shrink_local(config)
    raise ValueError(f"unknown config argument {arg!r}; the only one is 'local'")
