"""Every experiment config loads and builds; quickstart and one config per scenario run.

A smoke run of all 15 `:local` configs would take minutes on 2 cores, so every config is
loaded and built (data, model, optimiser, algorithm: all the validation a run does before
compiling), and `loop.run` runs on the quickstart `:local` plus one config per scenario,
shrunk further to 2 tasks of 200 training examples.
"""

from __future__ import annotations

import importlib

import pytest
from conftest import REPO_ROOT, needs_shared_mnist

from sequax import algorithms
from sequax.engine import loop
from sequax.engine.build import build_algorithm, build_model, build_optimizer, build_scenario

CONFIG_NAMES = sorted(
    p.stem for p in (REPO_ROOT / "configs").glob("*.py") if p.stem not in ("common", "__init__")
)


def load(name: str):
    return importlib.import_module(f"sequax.configs.{name}")


def test_the_configs_are_all_found():
    assert len(CONFIG_NAMES) >= 15
    assert {"quickstart", "smnist_derpp", "pmnist_derpp"} <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_loads_and_builds(name):
    module = load(name)
    assert module.__doc__ and "python -m sequax.launch.train" in module.__doc__
    full, local = module.get_config(), module.get_config("local")
    # Full configs keep every example unless their protocol itself subsamples (La-MAML: 1,000).
    assert local.data.train_per_task == 1000
    assert full.data.train_per_task == 0 or full.data.train_per_task >= local.data.train_per_task
    assert local.data.test_per_task == 500 and local.training.batch_size <= 32
    assert set(full.keys()) == set(local.keys())
    for config in (full, local):
        algorithm = build_algorithm(config.algorithm)
        assert type(algorithm) is algorithms.REGISTRY[config.algorithm.name]
        build_model(config.model, 10)
        build_optimizer(config.optimizer)
    with pytest.raises(ValueError, match="local"):
        module.get_config("bogus")


# CIFAR and TinyImageNet are not available offline: tests/configs/test_image_configs.py builds
# those configs' scenarios from small files generated in the official formats.
IMAGE_SOURCES = ("cifar10", "cifar100", "tiny_imagenet")


@needs_shared_mnist
@pytest.mark.parametrize(
    "name",
    [
        n
        for n in CONFIG_NAMES
        if n != "quickstart" and load(n).get_config().data.source not in IMAGE_SOURCES
    ],
)
def test_local_scenario_builds(name):
    scenario = build_scenario(load(name).get_config("local").data)
    assert set(scenario.train_sizes) == {1000} and set(scenario.test_sizes) == {500}


def test_quickstart_local_runs(tmp_path):
    config = load("quickstart").get_config("local")
    result = loop.run(config, tmp_path, verbose=False)
    assert result.class_il.shape == (5, 5)
    assert (tmp_path / "summary.json").is_file()
    assert result.summary["task_il"]["acc"] > 0.8


@needs_shared_mnist
@pytest.mark.parametrize(
    "name", ["smnist_ewc", "pmnist_er", "rmnist_joint"]
)  # split, permuted, rotated
def test_one_config_per_scenario_runs(name, tmp_path):
    config = load(name).get_config("local")
    config.data.num_tasks = 2
    config.data.train_per_task = 200
    config.data.test_per_task = 100
    result = loop.run(config, tmp_path, verbose=False)
    rows = 1 if config.algorithm.name == "joint" else 2
    assert result.class_il.shape == (rows, 2)
    assert (tmp_path / "summary.json").is_file()
    assert all(0.0 <= a <= 1.0 for a in result.class_il.ravel())
