"""The validation split (`config.data.validation`, `sequax.data.validation.hold_out`), early
stopping on it (`config.training.patience`) and sweeps that choose their point on it, so the
test sets choose nothing (issue 18, item 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sequax.configs import common
from sequax.data import DataError, blurry, load_source, split
from sequax.data.validation import hold_out
from sequax.engine import loop
from sequax.engine.build import ConfigError
from sequax.launch import sweep


@pytest.fixture(scope="module")
def split_mnist():
    return split(load_source("mnist_packaged"), num_tasks=5, classes_per_task=2)


def test_hold_out_moves_a_stratified_part_of_each_task(split_mnist):
    held = hold_out(split_mnist, 0.1, seed=0)
    labels = split_mnist.source.train_y
    pairs = zip(split_mnist.train_indices, held.train_indices, held.validation.test_indices)
    for before, kept, val in pairs:
        assert len(val) == round(0.1 * len(before)) and len(kept) + len(val) == len(before)
        assert not np.intersect1d(kept, val).size
        assert (np.diff(kept) > 0).all()  # the order left is the task's order
        for c in np.unique(labels[before]):  # each class keeps its share (within one example)
            share = (labels[before] == c).mean() * len(val)
            assert abs((labels[val] == c).sum() - share) <= 1
    x, y = held.validation.test(2)  # training images, through the task's transform
    np.testing.assert_array_equal(x, split_mnist.source.train_x[held.validation.test_indices[2]])
    assert held.validation.test_sizes == tuple(map(len, held.validation.test_indices))
    assert hold_out(split_mnist, 50).validation.test_sizes == (50,) * 5
    assert all(a.tolist() == b.tolist() for a, b in zip(hold_out(split_mnist, 50, seed=3)
               .train_indices, hold_out(split_mnist, 50, seed=3).train_indices))  # fmt: skip
    with pytest.raises(DataError, match="nothing to train on"):
        hold_out(split_mnist, 10**6)


def test_an_ordered_stream_keeps_its_order(split_mnist):
    stream = blurry.iblurry(split_mnist, seed=1)
    held = hold_out(stream, 0.2)
    for before, kept in zip(stream.train_indices, held.train_indices):
        np.testing.assert_array_equal(kept, before[np.isin(before, kept)])


def config_with_validation(**training):
    config = common.der_config("split", "er", 0.1, capacity=30, replay_batch=10)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 3
    config.data.train_per_task = 150
    config.data.test_per_task = 40
    config.data.validation = 0.2
    config.model.widths = (16,)
    config.checkpoint.enabled = False
    config.training.update(training)
    return config


def test_validation_is_evaluated_and_summarised(tmp_path):
    loop.run(config_with_validation(), tmp_path, verbose=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    matrix = json.loads((tmp_path / "validation_matrix.json").read_text())["class_il"]
    assert np.shape(matrix) == (3, 3)
    assert summary["validation_class_il"]["acc"] == pytest.approx(np.mean(matrix[-1]))
    assert "fwt" not in summary["validation_class_il"]  # no untrained row for the split


def test_early_stopping_ends_a_phase_after_patience_epochs(tmp_path):
    # With a learning rate of 1e-12 the validation accuracy never improves after the first
    # epoch, so each phase stops after 1 + patience epochs.
    config = config_with_validation(epochs=6, patience=2)
    config.optimizer.lr = 1e-12
    loop.run(config, tmp_path, verbose=False)
    phases = json.loads((tmp_path / "summary.json").read_text())["phases"]
    assert [p["epochs"] for p in phases] == [3, 3, 3]
    config.optimizer.lr, config.training.patience = 0.1, 0
    loop.run(config, tmp_path / "all", verbose=False)
    phases = json.loads((tmp_path / "all" / "summary.json").read_text())["phases"]
    assert [p["epochs"] for p in phases] == [6, 6, 6]


def test_a_vmapped_sweep_chooses_its_point_on_the_validation_split(tmp_path):
    config = config_with_validation()
    config.runs, config.sweep.lr = 2, (1e-9, 0.1)  # 1e-9 learns nothing: 0.1 must win
    loop.run(config, tmp_path, verbose=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    chosen, table = summary["chosen"], summary["table"]
    assert chosen["point"] == {"lr": 0.1}
    scores = [row["validation_class_il"]["acc"][0] for row in table]
    assert chosen["validation_acc"] == max(scores)
    assert chosen["test"]["class_il"] == table[1]["class_il"]  # that point's test results


def test_a_point_by_point_sweep_chooses_on_the_validation_split(tmp_path):
    config = config_with_validation()
    rows = sweep.sweep(config, tmp_path, [("optimizer.lr", [1e-9, 0.1])], verbose=False)
    chosen = json.loads((tmp_path / "chosen.json").read_text())
    best = int(np.argmax([r["validation_class_il"]["acc"][0] for r in rows]))
    assert chosen["point"] == rows[best]["point"] == {"lr": 0.1}
    assert "Chosen on the validation split: lr=0.1" in (tmp_path / "sweep.md").read_text()


def test_validation_options_are_checked_before_anything_runs(tmp_path):
    config = config_with_validation(patience=2)
    config.data.validation = 0.0
    with pytest.raises(ConfigError, match="set config.data.validation"):
        loop.run(config, tmp_path, verbose=False)
    config = config_with_validation()
    config.data.scenario, config.data.draws_per_run = "permuted", True
    config.data.options = {}
    with pytest.raises(ConfigError, match="not held out of per-run draws"):
        loop.run(config, tmp_path, verbose=False)
    assert not (tmp_path / "summary.json").exists()
