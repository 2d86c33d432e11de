"""`python -m sequax.launch.reproduce --table=der_gcl | mir`: the MNIST-360 table of the DER
paper and the MNIST rows of the MIR paper (cells, configs, MNIST-360's pooled metric)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sequax.configs.reproduce.der_gcl import table as der_gcl
from sequax.configs.reproduce.mir import table as mir
from sequax.engine import metrics
from sequax.engine.build import build_scenario
from sequax.launch import reproduce

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, table", [("der_gcl", der_gcl), ("mir", mir)])
def test_the_launcher_knows_the_table_and_its_dry_run_passes(name, table):
    assert reproduce.table_module(name) is table
    chosen = reproduce.cell_configs(table, table.cells(), seeds=3, local=False)
    assert [c for c, _ in chosen] == table.cells()
    # Every cell runs at least 5 seeds (a table's SEEDS raise the launcher's default 3).
    assert all(config.runs >= 5 for _, config in chosen)
    done = subprocess.run(
        [sys.executable, "-m", "sequax.launch.reproduce", f"--table={name}", "--dry_run"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    listed = [line.split(":")[0] for line in done.stdout.splitlines()]
    assert listed == [table.cell_name(c) for c in table.cells()]


def test_der_gcl_cells_take_mammoths_mnist360_best_args():
    cells = set(der_gcl.cells())
    # A-GEM-R's cells are there exactly when `agem` has its reservoir memory.
    assert cells | {c for c in der_gcl.PUBLISHED if der_gcl.cell_name(c) in der_gcl.NOT_RUN} == set(
        der_gcl.PUBLISHED
    )
    assert len(der_gcl.PUBLISHED) == 15 and der_gcl.PUBLISHED[("mnist360", "der", 200)] == {
        "class_il": 55.22
    }
    for cell in cells:
        config = der_gcl.config(*cell)
        assert config.data.scenario == "mnist_360" and config.data.num_tasks == 27
        assert config.training.task_free and config.training.epochs == 1
        assert config.data.options.batch_size == config.training.batch_size
        assert config.algorithm.capacity == cell[2]
        assert tuple(config.model.widths) == (100, 100) and config.model.init == "xavier"
    er = der_gcl.config("mnist360", "er", 200)
    assert (er.optimizer.lr, er.training.batch_size, er.algorithm.replay_batch) == (0.2, 1, 16)
    der = der_gcl.config("mnist360", "der", 1000)
    assert (der.optimizer.lr, der.training.batch_size, der.algorithm.replay_batch) == (0.1, 8, 16)
    assert der.algorithm.num_classes == 9  # digits 0-8
    derpp = der_gcl.config("mnist360", "derpp", 1000).algorithm
    assert (derpp.alpha, derpp.beta, derpp.replay_batch) == (0.2, 1.0, 128)
    gss = der_gcl.config("mnist360", "gss", 500)
    assert (gss.optimizer.lr, gss.training.batch_size, gss.training.glances) == (0.1, 16, 1)
    assert gss.algorithm.gss_minibatch_size == 10
    if der_gcl.agem_reservoir_available():
        agem = der_gcl.config("mnist360", "agem_r", 1000)
        assert agem.algorithm.memory == "reservoir" and agem.training.batch_size == 4
    with pytest.raises(ValueError, match="no DER-GCL-table cell mnist360/er-5120"):
        der_gcl.config("mnist360", "er", 5120)


def test_mir_cells_follow_the_reference_script():
    assert mir.BUFFERS == (200, 500, 1000)  # --mem_size 20 / 50 / 100 per class, 10 classes
    for cell in mir.cells():
        benchmark, method, buffer = cell
        config = mir.config(*cell)
        algorithm = config.algorithm
        assert algorithm.name == "mir" and algorithm.capacity == buffer
        assert algorithm.replay_batch == 10 and algorithm.lr == config.optimizer.lr
        # ER is the reference's rand_replay: every candidate of past tasks replayed.
        assert algorithm.subsample == (10 if method == "er" else 50)
        assert config.optimizer.lr == (0.1 if benchmark == "smnist" else 0.05)
        assert config.training.batch_size == 10 and not config.training.task_free
        assert config.data.train_per_task == 1010  # 101 batches of 10 (er_main.py's break)
        assert tuple(config.model.widths) == (400, 400) and config.model.init == "torch"
        published = mir.PUBLISHED[cell]
        assert list(published.values())[0] is None or buffer == mir.PUBLISHED_BUFFER
    # The reference code's Split MNIST: {0}, {1,2}, {3,4}, {5,6}, {7,8}; digit 9 never seen.
    scenario = build_scenario(
        {**mir.config("smnist", "er", 200).data.to_dict(), "source": "mnist_packaged"}
    )
    assert [np.flatnonzero(row).tolist() for row in scenario.task_classes] == [
        [0], [1, 2], [3, 4], [5, 6], [7, 8]
    ]  # fmt: skip
    assert scenario.num_classes == 10
    pairs = mir.five_pairs(("smnist", "er", 200), mir.config("smnist", "er", 200))
    assert pairs.data.options.to_dict() == {"classes_per_task": 2}
    assert mir.sequax_er(("pmnist", "er", 500), mir.config("pmnist", "er", 500)).algorithm.name == (
        "er"
    )


def test_a_tiny_mnist360_cell_reports_the_pooled_accuracy(tmp_path):
    """One shrunk DER cell end to end (one round of 9 segments of the packaged MNIST, 2 seeds):
    the table's pooled accuracy equals the last value of `seen_accuracy_curve(R, test_sizes)`,
    and it is the accuracy over the whole test set, since every test image is counted the same
    number of times (twice per round) in the confusion counts it is read from."""
    cell = ("mnist360", "der", 200)
    [(_, config)] = reproduce.cell_configs(der_gcl, [cell], seeds=2, local=True)
    config.runs = 2  # below the table's 5 (SEEDS), for time
    config.data.num_tasks = 9
    config.data.options.rounds = 1
    config.data.train_per_task = 300  # of each segment's ~850 images, for time
    config.data.test_per_task = 0  # the whole test set
    results = reproduce.run_table(der_gcl, [(cell, config)], tmp_path, verbose=False)
    folder = tmp_path / "mnist360" / "der-200"
    summary = json.loads((folder / "summary.json").read_text())
    scenario = build_scenario(config.data)
    sizes = np.asarray(scenario.test_sizes)
    test_counts = np.bincount(scenario.source.test_y, minlength=9)
    pooled = der_gcl.pooled_accuracy(folder, runs=2)
    for r in range(2):
        run = folder / "runs" / f"{r:03d}"
        R = np.asarray(json.loads((run / "accuracy_matrix.json").read_text())["class_il"])
        assert pooled[r] == pytest.approx(metrics.seen_accuracy_curve(R, sizes)[-1], abs=1e-6)
        final = np.asarray(json.loads((run / "confusion.json").read_text())["confusion"])[-1]
        np.testing.assert_array_equal(final.sum(1), 2 * test_counts)
        # ... and not the segment mean the launcher reads from the summary by default.
        assert pooled[r] != pytest.approx(R[-1].mean(), abs=1e-9)
    mean, std = der_gcl.cell_result(summary, folder)["class_il"]
    assert mean == pytest.approx(100 * pooled.mean()) and std == pytest.approx(
        100 * pooled.std(ddof=1)
    )
    assert results[0]["ours"] == der_gcl.cell_result(summary, folder)  # the launcher's reader
