"""Many runs in one program: the grid, its validation, and vmapped runs equal to single runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sequax.configs import common
from sequax.engine import loop, runs
from sequax.engine.build import ConfigError


def tiny(algorithm="ewc", **kwargs):
    config = common.der_config("split", algorithm, 0.1, **kwargs)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 3
    config.data.options.classes_per_task = 2
    config.data.train_per_task = 200
    config.data.test_per_task = 64
    config.model.widths = (16,)
    config.training.batch_size = 10
    return config


def test_grid_is_the_product_of_sweep_values_with_seeds_fastest():
    config = tiny(lam=1.0)
    config.runs = 2
    config.seed = 5
    config.sweep.lr = (0.01, 0.1)
    config.sweep.lam = (1.0, 10.0, 100.0)
    grid = runs.make_grid(config)
    assert grid.size == 12 and grid.vmapped
    assert grid.seeds == (5, 6) * 6
    assert set(grid.keys) == {"lr", "lam"}
    assert grid.points[0] == grid.points[1] != grid.points[2]
    assert sorted({(p["lr"], p["lam"]) for p in grid.points}) == [
        (lr, lam) for lr in (0.01, 0.1) for lam in (1.0, 10.0, 100.0)
    ]
    np.testing.assert_array_equal(grid.hparams()["lr"], np.float32([p["lr"] for p in grid.points]))
    assert grid.hparams()["lr"].dtype == np.float32


def test_one_run_is_not_vmapped():
    grid = runs.make_grid(tiny())
    assert grid.size == 1 and not grid.vmapped and grid.hparams() == {}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: setattr(c, "runs", 0), "config.runs=0"),
        (lambda c: c.sweep.update({"gamma_typo": (1.0,)}), "config.sweep.gamma_typo is not"),
        (lambda c: c.sweep.update({"lam": (1.0, "x")}), "must list numbers"),
        (lambda c: c.sweep.update({"lr": (0.1, -1.0)}), "config.sweep point"),
        (lambda c: c.sweep.update({"lam": (-1.0,)}), "lam >= 0"),
    ],
)
def test_bad_runs_and_sweeps_are_one_line_errors(edit, message):
    config = tiny(lam=1.0)
    edit(config)
    with pytest.raises(ConfigError, match=message) as error:
        runs.make_grid(config)
    assert "\n" not in str(error.value)


def test_shape_changing_values_are_refused_with_the_fix():
    config = tiny("er", capacity=50, replay_batch=10)
    config.sweep.capacity = (50, 100)
    with pytest.raises(ConfigError, match="sequax.launch.sweep"):
        runs.make_grid(config)


def test_vmapped_runs_equal_the_same_runs_one_by_one(tmp_path):
    config = tiny(lam=10.0)
    config.runs = 2
    config.sweep.lr = (0.05, 0.1)
    result = loop.run(config, tmp_path / "vmapped", verbose=False)
    assert result.class_il.shape == (4, 3, 3) and result.grid.size == 4
    for r in (1, 2):  # (seed 1, lr 0.05) and (seed 0, lr 0.1)
        single = tiny(lam=10.0)
        single.seed = result.grid.seeds[r]
        single.optimizer.lr = result.grid.points[r]["lr"]
        alone = loop.run(single, tmp_path / f"single{r}", verbose=False)
        np.testing.assert_allclose(result.class_il[r], alone.class_il, atol=1 / 64 + 1e-9)
        np.testing.assert_allclose(result.task_il[r], alone.task_il, atol=1 / 64 + 1e-9)
    # Different seeds and learning rates really train differently.
    assert not np.allclose(result.class_il[0], result.class_il[3])


def test_vmapped_outputs_per_run_and_summary_table(tmp_path):
    config = tiny("naive")
    config.runs = 3
    result = loop.run(config, tmp_path, verbose=False)
    for r in range(3):
        matrix = json.loads((tmp_path / "runs" / f"{r:03d}" / "accuracy_matrix.json").read_text())
        np.testing.assert_array_equal(matrix["class_il"], result.class_il[r])
        assert (
            json.loads((tmp_path / "runs" / f"{r:03d}" / "summary.json").read_text())["seed"] == r
        )
    (row,) = result.summary["table"]
    accs = [run["class_il"]["acc"] for run in result.summary["runs"]]
    assert row["class_il"]["acc"] == pytest.approx([np.mean(accs), np.std(accs, ddof=1)])
    table = (tmp_path / "summary.md").read_text()
    assert "| seeds |" in table.splitlines()[0] and "±" in table
    assert (
        json.loads((tmp_path / "summary.json").read_text())["timings"]["train_samples"]
        == 3 * 3 * 20 * 10
    )


def test_format_table_shows_points_and_mean_std():
    rows = [{"point": {"lr": 0.1}, "seeds": [0, 1], "class_il": {"acc": [0.5, 0.01]}}]
    text = runs.format_table(rows)
    assert text.splitlines()[0] == "| lr | seeds | class_il acc |"
    assert "| 0.1 | 2 | 50.00 ± 1.00 |" in text


def tiny_rotated(**kwargs):
    config = common.der_config("rotated", "naive", 0.1)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 3
    config.data.train_per_task = 200
    config.data.test_per_task = 64
    config.model.widths = (16,)
    config.training.batch_size = 10
    return config


def test_runs_drawing_their_own_angles_equal_the_same_runs_one_by_one(tmp_path):
    # data.draws_per_run: each vmapped run rotates by its own angles (as separate runs of
    # the DER code do); run r must equal a single run with that seed and the same flag.
    config = tiny_rotated()
    config.runs = 2
    config.data.draws_per_run = True
    result = loop.run(config, tmp_path / "vmapped", verbose=False)
    for r in (0, 1):
        single = tiny_rotated()
        single.seed = r
        single.data.draws_per_run = True
        alone = loop.run(single, tmp_path / f"single{r}", verbose=False)
        np.testing.assert_allclose(result.class_il[r], alone.class_il, atol=1 / 64 + 1e-9)
    # The angles differ per run: the untrained model scores differently on each run's tasks,
    # and a run without the flag uses the data seed's angles for both runs.
    assert not np.allclose(result.class_il[0], result.class_il[1])
    shared = tiny_rotated()
    shared.runs = 2
    same = loop.run(shared, tmp_path / "shared", verbose=False)
    single = tiny_rotated()
    alone = loop.run(single, tmp_path / "plain", verbose=False)
    np.testing.assert_allclose(same.class_il[0], alone.class_il, atol=1 / 64 + 1e-9)


def test_draws_per_run_needs_a_domain_stream(tmp_path):
    config = tiny(lam=1.0)
    config.data.draws_per_run = True
    with pytest.raises(ConfigError, match="draws_per_run=True redraws.*class subsets"):
        loop.run(config, tmp_path, verbose=False)
