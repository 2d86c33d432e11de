"""Shared pieces of the experiment configs: the protocols' data, model and training blocks.

Every config file is `get_config(arg=None)`; `arg="local"` (written `configs/x.py:local` on
the command line) shrinks any config to a short CPU run with `shrink_local`.

    config = der_config("split", "er", lr=0.1, algorithm=dict(capacity=500, replay_batch=10))
    config = shrink_local(config)   # 1,000 train / 500 test examples per task
"""

from __future__ import annotations

import ml_collections

from sequax.engine.schema import DATA_ROOT, base_config  # noqa: F401 - configs build on it

# Scenario options of the DER protocol (Buzzega et al. 2020, ../shared/PROTOCOLS.md §A).
DER_SCENARIOS = {
    "split": dict(num_tasks=5, options=dict(classes_per_task=2), batch_size=10),
    "permuted": dict(num_tasks=20, options=dict(first_task_identity=False), batch_size=128),
    "rotated": dict(
        num_tasks=20, options=dict(protocol="uniform", max_angle=180.0), batch_size=128
    ),
}


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
