"""The whole loop (`sequax.engine.loop.run`) end to end on tiny streams, into tmp_path."""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest
from conftest import needs_shared_mnist

from sequax.configs import common
from sequax.data import DataError
from sequax.engine import loop, metrics, programs
from sequax.engine.build import ConfigError, build_scenario


def tiny_config(
    scenario="split", algorithm="er", source="mnist_packaged", num_tasks=None, **algorithm_kwargs
):
    config = common.der_config(scenario, algorithm, 0.1, **algorithm_kwargs)
    config.data.source = source
    config.data.train_per_task = 300
    config.data.test_per_task = 100
    config.model.widths = (32,)
    config.training.batch_size = 10  # 30 steps per task: enough to learn, cheap to run
    if num_tasks is not None:
        config.data.num_tasks = num_tasks
    return config


def er_config():
    return tiny_config(source="mnist", capacity=50, replay_batch=10)  # real MNIST, the default root


@pytest.fixture(scope="module")
def er_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("er_run")
    return workdir, loop.run(er_config(), workdir, verbose=False)


@needs_shared_mnist
def test_end_to_end_outputs(er_run):
    workdir, result = er_run
    assert result.class_il.shape == result.task_il.shape == (5, 5)
    assert result.random_init["class_il"].shape == (5,)
    for name in ("config.json", "metrics.jsonl", "accuracy_matrix.json", "summary.json"):
        assert (workdir / name).is_file(), name
    assert json.loads((workdir / "config.json").read_text())["algorithm"]["name"] == "er"

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert {"train", "eval", "summary"} <= set(kinds) and kinds[-1] == "summary"
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["phase"] for r in evals] == [-1, 0, 1, 2, 3, 4]
    np.testing.assert_allclose(evals[-1]["class_il"], result.class_il[-1])
    assert all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train")

    matrix = json.loads((workdir / "accuracy_matrix.json").read_text())
    np.testing.assert_array_equal(matrix["class_il"], result.class_il)
    np.testing.assert_array_equal(matrix["task_il"], result.task_il)
    summary = json.loads((workdir / "summary.json").read_text())
    assert set(summary) >= {"class_il", "task_il", "timings"}
    assert summary["class_il"]["acc"] == pytest.approx(result.summary["class_il"]["acc"])
    assert result.timings["train_samples"] == 5 * (300 // 10) * 10
    # Average incremental accuracy and old/new tasks, weighted by each task's test examples.
    from sequax.engine.experiment import from_config

    sizes = from_config(er_config()).scenario.test_sizes
    for view in ("class_il", "task_il"):
        expected = metrics.average_incremental_accuracy(getattr(result, view), sizes)
        assert summary[view]["avg_incremental_acc"] == pytest.approx(expected)
        old, new = metrics.old_new_accuracy(getattr(result, view), sizes)
        assert summary[view]["old_acc"] == pytest.approx(old)
        assert summary[view]["new_acc"] == pytest.approx(new)
        assert new == getattr(result, view)[-1, -1]


@needs_shared_mnist
def test_accuracies_are_sensible(er_run):
    _, result = er_run
    # Chance is 1/2 for a task-IL pair, 1/(2t+2) class-IL; a trained MLP is far above both.
    assert np.all(np.diag(result.task_il) > 0.8)
    assert np.all(np.diag(result.class_il) > 0.5)
    # Class-IL never predicts a class not seen yet: tasks ahead score exactly 0.
    assert np.all(result.class_il[np.triu_indices(5, 1)] == 0.0)
    # ER keeps task 0 alive in class-IL at the end (naive would be at 0).
    assert result.class_il[-1, 0] > 0.05
    assert np.all((result.class_il >= 0) & (result.class_il <= 1))


@needs_shared_mnist
def test_same_config_is_bit_identical(er_run, tmp_path):
    _, first = er_run
    second = loop.run(er_config(), tmp_path, verbose=False)
    np.testing.assert_array_equal(first.class_il, second.class_il)
    np.testing.assert_array_equal(first.task_il, second.task_il)
    chex.assert_trees_all_equal(
        jax.tree.map(np.asarray, first.state), jax.tree.map(np.asarray, second.state)
    )


def test_two_tasks_of_different_sizes_compile_the_train_step_once(monkeypatch, tmp_path):
    traces = []
    real_make_run_steps = programs.make_run_steps

    def counting_make_run_steps(train_step, batch_size, *, runs, data_axes, **kwargs):
        # the un-jitted run_steps (with the run axis every program carries)
        inner = real_make_run_steps(
            train_step, batch_size, runs=runs, data_axes=data_axes
        ).__wrapped__

        def run_steps(*args):
            traces.append(None)
            return inner(*args)

        return jax.jit(run_steps, donate_argnums=0)

    monkeypatch.setattr(programs, "make_run_steps", counting_make_run_steps)
    config = tiny_config(num_tasks=2, capacity=50, replay_batch=10)
    config.data.train_per_task = 0  # every example: the two tasks differ in size
    config.training.steps_per_dispatch = 50  # several dispatches per task
    sizes = build_scenario(config.data).train_sizes
    assert sizes[0] != sizes[1]
    result = loop.run(config, tmp_path, verbose=False)
    assert len(traces) == 1
    assert int(result.state.step) == sum(n // 10 for n in sizes)
    assert result.class_il.shape == (2, 2)


def test_joint_gives_one_row(tmp_path):
    result = loop.run(tiny_config(algorithm="joint", num_tasks=2), tmp_path, verbose=False)
    assert result.class_il.shape == result.task_il.shape == (1, 2)
    assert set(result.summary) == {"class_il", "task_il"}
    assert set(result.summary["class_il"]) == {"acc", "acc_top5"}  # no other metric is defined
    assert result.summary["class_il"]["acc"] == pytest.approx(result.class_il[0].mean())
    assert np.all(result.task_il[0] > 0.8)
    assert int(result.state.step) == 600 // 10  # one phase over the union of both tasks
    matrix = json.loads((tmp_path / "accuracy_matrix.json").read_text())
    assert matrix["phases"] == [[0, 1]]


def test_permuted_domain_il(tmp_path):
    result = loop.run(
        tiny_config(scenario="permuted", algorithm="naive", num_tasks=2), tmp_path, verbose=False
    )
    assert result.class_il.shape == (2, 2)
    assert set(result.summary) == {"domain_il"}
    np.testing.assert_array_equal(result.class_il, result.task_il)  # every mask is all classes
    assert np.all(np.diag(result.class_il) > 0.3)  # chance is 0.1; 30 steps reach about 0.55


def fail_if_compiling(monkeypatch):
    def compiling(*args, **kwargs):
        raise AssertionError("the run got as far as building its state or step")

    monkeypatch.setattr(programs, "create_state", compiling)
    monkeypatch.setattr(programs, "make_run_steps", compiling)
    monkeypatch.setattr(programs, "make_train_step", compiling)


def bad_configs():
    unknown_algorithm = tiny_config(algorithm="nope")
    unknown_hyperparameter = tiny_config(capacity=50, replay_batch=10)
    unknown_hyperparameter.algorithm.nope = 1
    missing_root = tiny_config(source="mnist")
    missing_root.data.root = "/nonexistent/sequax-data"
    too_large_batch = tiny_config()
    too_large_batch.training.batch_size = 1000
    bad_lr = tiny_config()
    bad_lr.optimizer.lr = 0.0
    return [
        ("unknown algorithm", unknown_algorithm, ConfigError, "'nope'"),
        ("unknown hyper-parameter", unknown_hyperparameter, ConfigError, "nope"),
        ("missing data root", missing_root, DataError, "/nonexistent/sequax-data"),
        ("batch size", too_large_batch, ConfigError, "batch_size"),
        ("learning rate", bad_lr, ConfigError, "lr"),
    ]


@pytest.mark.parametrize(
    ("label", "config", "error", "names"), bad_configs(), ids=[c[0] for c in bad_configs()]
)
def test_bad_config_fails_with_one_line_before_compiling(
    monkeypatch, tmp_path, label, config, error, names
):
    fail_if_compiling(monkeypatch)
    with pytest.raises(error) as raised:
        loop.run(config, tmp_path, verbose=False)
    message = str(raised.value)
    assert "\n" not in message and names in message, message


def test_a_base_plus_increments_stream_runs_and_says_what_it_built(tmp_path, capsys):
    """B0-Inc1 (ten one-class tasks: more than num_tasks x classes_per_task allows) with the
    class-IL literature's seed-1993 order, through the whole run."""
    config = tiny_config("split", "naive", num_tasks=10)
    config.data.options = {"base": 0, "increment": 1, "class_order": "seed1993"}
    config.data.train_per_task = 30
    config.checkpoint.enabled = False
    result = loop.run(config, tmp_path, verbose=True)
    assert result.class_il.shape == (10, 10)
    order = np.random.RandomState(1993).permutation(10).tolist()
    line = f"sequax: split_mnist_packaged: 10 tasks of 1 classes: {[[c] for c in order]}"
    assert line in capsys.readouterr().out.splitlines()
