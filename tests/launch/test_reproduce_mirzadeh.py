"""`python -m sequax.launch.reproduce --table=mirzadeh`: every cell builds, and a short local
table reports accuracy and forgetting (reference rows included)."""

from __future__ import annotations

import pytest

from sequax.configs.reproduce.mirzadeh import table
from sequax.engine import build, validate
from sequax.launch import reproduce


def test_every_cell_builds_its_algorithm_model_and_stream():
    # 7 methods x 2 streams, La-MAML's R-MNIST, KCL's P-MNIST, HAT and KCL on Split MNIST.
    assert len(table.cells()) == 7 * 2 + 4
    chosen = reproduce.cell_configs(
        table, table.cells(), seeds=3, local=True
    )  # as --dry_run --local
    for cell, config in chosen:
        validate.check_config(config)
        algorithm = build.build_algorithm(config.algorithm)
        scenario = build.build_scenario(config.data)
        validate.check_combination(config, scenario, algorithm)
        build.build_model(config.model, scenario.num_classes, config.data)
        (setting,) = table.PUBLISHED[cell]  # the one view each cell is read in
        # ... and the loop writes that view for the cell's stream (HAT and KCL: task-IL on
        # Split MNIST)
        assert setting == ("domain_il" if scenario.setting == "domain" else "task_il"), cell
    full = {table.cell_name(c): table.config(*c) for c in table.cells()}
    for name in ("pmnist/naive", "rmnist/stable_sgd", "pmnist/mc_sgd", "pmnist/er-200"):
        assert full[name].data.num_tasks == 20 and full[name].model.widths == (256, 256), name
        assert full[name].data.draws_per_run, name  # each seed its own permutations/angles
    assert (
        full["pmnist/naive"].optimizer.lr == 0.01 and full["pmnist/naive"].training.batch_size == 10
    )
    assert (
        full["pmnist/stable_sgd"].algorithm.decay == 0.8
        and full["rmnist/stable_sgd"].algorithm.decay == 0.55
    )
    assert full["rmnist/ewc"].algorithm.lam == 20.0  # the A-GEM code's λ 10 under our ½ convention
    assert (
        full["pmnist/agem-200"].algorithm.capacity == 200
        and full["pmnist/agem-200"].data.train_per_task == 50_000
    )


def test_a_one_seed_summary_reads_as_a_row_with_zero_std():
    """`--seeds=1` runs are not vmapped: their summary has the metrics without a table."""
    summary = {"domain_il": {"acc": 0.7, "forgetting": 0.25}, "timings": {"wall": 43.0}}
    assert reproduce.cell_result(summary) == {"domain_il": (70.0, 0.0)}
    assert reproduce.cell_forgetting(summary) == {"domain_il": (0.25, 0.0)}


def test_cells_listed_as_not_run_are_skipped_by_default_and_named_in_the_report():
    default = [table.cell_name(c) for c in reproduce.selected_cells(table, [])]
    assert "pmnist_kcl/kcl" not in default and "pmnist/mc_sgd" in default
    assert [table.cell_name(c) for c in reproduce.selected_cells(table, ["pmnist_kcl/"])] == [
        "pmnist_kcl/kcl"
    ]
    results = [
        dict(
            cell=c,
            name=table.cell_name(c),
            ours={"domain_il": (50.0, 1.0)},
            wall=1.0,
            seeds=[0],
            read_back=True,
            forgetting={},
        )
        for c in table.cells()
        if table.cell_name(c) in default
    ]
    text = reproduce.report(table, results, 1.0, local=False)
    assert "## Cells not run on this machine" in text and "**pmnist_kcl/kcl**: too long" in text
    assert "Partial" not in text and "the 1 cell listed as not run is not in it" in text


def test_the_agem_codebase_variant_runs_the_reference_scripts_regime():
    """23 tasks, every task permuted, 64 memory examples per step, 1 per class per task."""
    cells = reproduce.selected_cells(table, ["pmnist/er-200", "rmnist/agem-200"])
    (_, er), (_, agem) = reproduce.cell_configs(table, cells, 1, False, "agem_codebase")
    assert er.data.num_tasks == 23 and not er.data.options.first_task_identity
    assert (er.algorithm.capacity, er.algorithm.replay_batch) == (230, 64)
    assert agem.algorithm.num_tasks == 23 and abs(agem.data.options.step - 180 / 23) < 1e-9
    with pytest.raises(reproduce.ConfigError, match="not one of this table's variants"):
        reproduce.cell_configs(table, cells, 1, False, "nope")
    with pytest.raises(reproduce.ConfigError, match="applies to the P-/R-MNIST EWC"):
        reproduce.cell_configs(
            table, reproduce.selected_cells(table, ["pmnist/naive"]), 1, False, "agem_codebase"
        )


def test_the_kcl_main_rbf_variant_takes_the_reference_scripts_kernel():
    ((_, config),) = reproduce.cell_configs(
        table, reproduce.selected_cells(table, ["pmnist_kcl/"]), 1, False, "kcl_main_rbf"
    )
    assert (config.algorithm.kernel, config.algorithm.kl_weight, config.algorithm.coreset_size) == (
        "rbf",
        0.0,
        200,
    )
    with pytest.raises(reproduce.ConfigError, match="applies to pmnist_kcl/kcl"):
        reproduce.cell_configs(
            table, reproduce.selected_cells(table, ["smnist/kcl"]), 1, False, "kcl_main_rbf"
        )


def test_unknown_cells_are_refused():
    with pytest.raises(ValueError, match="no Mirzadeh-table cell pmnist/hat"):
        table.config("pmnist", "hat")
    assert reproduce.table_module("mirzadeh") is table


def test_local_table_reports_accuracy_and_forgetting(tmp_path):
    cells = reproduce.selected_cells(table, ["pmnist/naive", "rmnist/stable_sgd", "smnist/hat"])
    chosen = reproduce.cell_configs(table, cells, seeds=2, local=True)
    for _, config in chosen:  # even shorter than --local
        config.data.num_tasks = 3
        config.data.train_per_task = 200
        config.data.test_per_task = 200
        config.training.epochs = 1
        if "num_tasks" in config.algorithm:
            config.algorithm.num_tasks = 3
    results = reproduce.run_table(table, chosen, tmp_path, verbose=False)
    assert [r["name"] for r in results] == ["pmnist/naive", "rmnist/stable_sgd", "smnist/hat"]
    naive = results[0]
    mean, std = naive["forgetting"]["domain_il"]
    assert 0.0 < mean < 1.0 and std >= 0.0  # a fraction, and naive SGD forgets
    assert set(results[2]["forgetting"]) == {"class_il", "task_il"}
    again = reproduce.run_table(
        table, chosen, tmp_path, verbose=False
    )  # read back, forgetting included
    assert all(r["read_back"] for r in again) and again[0]["forgetting"]["domain_il"] == (mean, std)
    text = reproduce.report(table, results, 30.0, local=True)
    assert "| within | forgetting | published forgetting | seeds |" in text
    assert f"| pmnist | naive | – | domain-il | {naive['ours']['domain_il'][0]:.2f} ±" in text
    assert f"| {mean:.3f} ± {std:.3f} | 0.53 | 2 |" in text  # P-MNIST naive: 0.53 verified
    assert "| 0.10 (recalled) |" in text  # R-MNIST Stable SGD forgetting, recalled
    hat = next(line for line in text.splitlines() if line.startswith("| smnist | hat |"))
    assert "| task-il |" in hat and "| – | – | ref |" in hat and "class-il" not in text
    assert "average_forgetting" in text  # the definitions stated
    (tmp_path / "mirzadeh.md").write_text(text)
