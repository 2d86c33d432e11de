"""The Split CIFAR-10/100 and Split TinyImageNet configs (DER protocol, ResNet-18) build on
small files generated in the official formats (the real datasets are not available offline),
and the Split CIFAR-10 `:local` config trains end to end on them, augmentation included."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from fake_image_datasets import write_cifar10, write_cifar100, write_tiny_imagenet

from sequax import algorithms
from sequax.engine import loop
from sequax.engine.build import build_algorithm, build_model, build_optimizer, build_scenario

# config -> (writer, tasks, classes per task, image shape, algorithm)
CONFIGS = {
    "scifar10_er": (
        lambda root: write_cifar10(root, per_batch=20, test=20),
        5,
        2,
        (32, 32, 3),
        "er",
    ),
    "scifar100_der": (
        lambda root: write_cifar100(root, train=200, test=100),
        10,
        10,
        (32, 32, 3),
        "der",
    ),
    "stinyimg_derpp": (
        lambda root: write_tiny_imagenet(root, num_classes=200, train_per_class=1),
        10,
        20,
        (64, 64, 3),
        "derpp",
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_image_config_builds_on_generated_files(name, tmp_path):
    write, num_tasks, per_task, shape, algorithm_name = CONFIGS[name]
    write(tmp_path)
    module = importlib.import_module(f"sequax.configs.{name}")
    assert "not available offline" in " ".join(module.__doc__.split())
    full, local = module.get_config(), module.get_config("local")
    assert (full.model.name, full.model.nf, full.training.batch_size) == ("resnet18", 64, 32)
    assert full.training.epochs in (50, 100) and (local.training.epochs, local.model.nf) == (1, 20)
    assert full.data.augment == ("crop", "flip") and len(full.data.normalize[0]) == 3
    for config in (full, local):
        config.data.root = str(tmp_path)
        scenario = build_scenario(config.data)
        assert (
            scenario.num_tasks == num_tasks
            and scenario.task_classes.sum(1).tolist() == [per_task] * num_tasks
        )
        assert scenario.train(0)[0].shape[1:] == shape
        model = build_model(config.model, scenario.num_classes, config.data)
        assert model.module is None  # wrapped: augmentation and normalisation
        params, _ = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
        assert params["linear"]["kernel"].shape == (8 * config.model.nf, scenario.num_classes)
        assert type(build_algorithm(config.algorithm)) is algorithms.REGISTRY[algorithm_name]
        build_optimizer(config.optimizer)


def test_scifar10_local_trains_with_augmented_replay(tmp_path):
    write_cifar10(tmp_path, per_batch=40, test=20)
    config = importlib.import_module("sequax.configs.scifar10_er").get_config("local")
    config.data.root = str(tmp_path)
    config.data.num_tasks = 2
    config.algorithm.capacity = (
        64  # the fake files' stream has 80 examples (a larger buffer is refused)
    )
    # The data path end to end (RGB files, split, augmentation, normalisation, raw examples in
    # the buffer) with a small MLP: on XLA:CPU a ResNet step inside the compiled loop takes
    # ~10 s with the tests' optimisations off (the ResNet is tested in tests/engine/test_resnet.py).
    config.model = ml_collections.ConfigDict(dict(name="mlp", widths=(32,)))
    config.eval.batch_size = 20
    result = loop.run(config, tmp_path / "run", verbose=False)
    assert result.class_il.shape == (2, 2) and np.isfinite(result.class_il).all()
    # The buffer holds raw examples: every stored image is a training image of tasks 0-1
    # exactly (a crop's zero border or a flip would not be).
    buffer = result.state.algo.buffer
    stored = np.asarray(buffer.items["x"])[: int(buffer.num_seen)]
    source = build_scenario(config.data).source
    train = {image.tobytes() for image in source.train_x[source.train_y < 4]}
    assert len(stored) > 0
    assert all(np.rint(image * 255).astype(np.uint8).tobytes() in train for image in stored)
