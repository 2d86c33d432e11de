"""`python -m sequax.launch.reproduce`: the DER table's cells, configs and report plumbing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from sequax import algorithms
from sequax.configs.reproduce.der import table
from sequax.engine.build import ConfigError
from sequax.launch import reproduce
from sequax.launch.common import DOCS_VARIABLE

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_published_cell_has_hyperparameters_and_a_config():
    # S-MNIST: 5 rows without a buffer + 6 buffer methods x 3 = 23;
    # P-MNIST and R-MNIST: 4 + 5 x 3 = 19
    assert len(table.cells()) == 23 + 19 + 19
    for cell in table.cells():
        benchmark, method, buffer = cell
        assert (benchmark, method) in table.HYPER, cell
        config = table.config(*cell)
        assert config.data.scenario == table.BENCHMARKS[benchmark]
        if method in table.BUFFER_METHODS:
            assert config.algorithm.capacity == buffer
        views = set(table.PUBLISHED[cell])
        assert views == ({"class_il", "task_il"} if benchmark == "smnist" else {"domain_il"})


def test_configs_take_the_paper_values():
    assert (
        table.config("smnist", "er", 200).optimizer.lr == 0.01
    )  # ER 200 / 500 / 5120: lr .01 / .1 / .1
    assert table.config("smnist", "er", 5120).optimizer.lr == 0.1
    der = table.config("smnist", "derpp", 5120).algorithm
    assert (der.alpha, der.beta, der.replay_batch) == (0.2, 0.5, 64)
    assert (
        table.config("pmnist", "oewc").algorithm.lam == 1.4
    )  # mammoth e_lambda 0.7, our ½ convention
    assert table.config("smnist", "lwf").optimizer.weight_decay == 5e-4


def test_unknown_cells_are_refused():
    with pytest.raises(ValueError, match="no DER-table cell pmnist/lwf"):
        table.config("pmnist", "lwf")
    with pytest.raises(ConfigError, match="selects no cell"):
        reproduce.selected_cells(table, ["cifar/"])


def available(cell) -> bool:
    return table.config(*cell).algorithm.name in algorithms.REGISTRY


def test_local_table_runs_resumes_and_reports(tmp_path, monkeypatch):
    cells = [
        c for c in reproduce.selected_cells(table, ["smnist/sgd", "pmnist/er-200"]) if available(c)
    ]
    chosen = reproduce.cell_configs(table, cells, seeds=2, local=True)
    for _, config in chosen:  # even shorter than :local
        config.data.num_tasks = min(config.data.num_tasks, 3)
        config.data.train_per_task = 200
    results = reproduce.run_table(table, chosen, tmp_path, verbose=False)
    assert [r["name"] for r in results] == ["smnist/sgd", "pmnist/er-200"]
    assert all(r["seeds"] == [0, 1] for r in results)
    assert set(results[0]["ours"]) == {"class_il", "task_il"} and set(results[1]["ours"]) == {
        "domain_il"
    }
    summary = json.loads((tmp_path / "smnist/sgd" / "summary.json").read_text())
    assert len(summary["runs"]) == 2
    assert not any(r["read_back"] for r in results)
    again = reproduce.run_table(table, chosen, tmp_path, verbose=False)  # read back, not re-run
    assert all(r["read_back"] for r in again)
    assert [r["ours"] for r in again] == [
        {k: tuple(v) for k, v in r["ours"].items()} for r in results
    ]
    text = reproduce.report(table, results, 12.0, local=True)
    assert "| smnist | sgd | – | class-il |" in text and "19.60" in text and "--local" in text
    assert "## Cells outside the bound" in text
    # `--cells=smnist/sgd` elsewhere: it trains (here: reads back) its cell, and the report
    # keeps only the other cells already done: pmnist/er-200 is not done there, so not trained.
    other = tmp_path / "other"
    (other / "smnist").mkdir(parents=True)
    (other / "smnist" / "sgd").symlink_to(tmp_path / "smnist" / "sgd")
    partial = reproduce.run_table(table, chosen, other, verbose=False, train={"smnist/sgd"})
    assert [r["name"] for r in partial] == ["smnist/sgd"] and not (other / "pmnist").exists()
    monkeypatch.setattr(
        sys, "argv", ["reproduce.py", "--table=der", "--cells=smnist/sgd", "--local"]
    )
    assert "    python -m sequax.launch.reproduce --table=der --local\n" in reproduce.report(
        table, results, 1.0, local=True
    )


def test_whole_table_time_is_kept_only_from_an_invocation_that_ran_every_cell(tmp_path):
    two = types.SimpleNamespace(cells=lambda: ["a", "b"])
    partial = [dict(read_back=False)]
    assert reproduce.whole_table_timing(tmp_path, two, partial, 60.0) is None  # not every cell
    resumed = [dict(read_back=False), dict(read_back=True)]
    assert reproduce.whole_table_timing(tmp_path, two, resumed, 60.0) is None  # one read back
    timing = reproduce.whole_table_timing(tmp_path, two, [dict(read_back=False)] * 2, 4200.0)
    assert timing["seconds"] == 4200.0 and "cores" in timing
    # A later report whose cells are all read back still quotes the measured run.
    assert (
        reproduce.whole_table_timing(tmp_path, two, [dict(read_back=True)] * 2, 3.0)["seconds"]
        == 4200.0
    )


def test_a_diverged_cell_is_skipped_and_the_table_goes_on(tmp_path, monkeypatch, capsys):
    from sequax.engine.checkpoint import TrainingDiverged

    cells = [
        c for c in reproduce.selected_cells(table, ["smnist/sgd", "smnist/er-200"]) if available(c)
    ]
    chosen = reproduce.cell_configs(table, cells, seeds=1, local=True)
    summary = {"table": [{"point": {}, "seeds": [0], "class_il": {"acc": [0.5, 0.0]}}]}

    def fake_run(config, folder, verbose):  # the first cell diverges, the second trains
        if config.algorithm.name == "naive":
            raise TrainingDiverged("training diverged: the mean loss ... is nan")
        return types.SimpleNamespace(summary=summary)

    monkeypatch.setattr(reproduce.loop, "run", fake_run)
    results = reproduce.run_table(table, chosen, tmp_path, verbose=False)
    assert [r["name"] for r in results] == ["smnist/er-200"]
    assert "smnist/sgd: not reported, training diverged" in capsys.readouterr().out


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its SHA-256: equal fingerprints, byte-identical folders."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def reproduce_command(workdir: Path, *flags: str, docs: Path | None = None, status: int = 0):
    """`--report_only` over a workdir whose smnist/sgd cell is done: the whole command, from
    the repository root as a maintainer runs it, in about a second (nothing trains)."""
    env = {**os.environ, **({DOCS_VARIABLE: str(docs)} if docs else {})}
    done = subprocess.run(
        [sys.executable, "-m", "sequax.launch.reproduce", "--table=der", "--cells=smnist/sgd",
         "--report_only", f"--workdir={workdir}", *flags],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == status, done.stderr[-3000:]
    return done


def test_the_report_goes_to_the_workdir_and_to_the_docs_only_with_update_docs(tmp_path):
    workdir = tmp_path / "runs"
    cell = workdir / "der" / "smnist" / "sgd"
    cell.mkdir(parents=True)
    summary = {"class_il": {"acc": 0.2}, "task_il": {"acc": 0.95}, "timings": {"wall": 3.0}}
    (cell / "summary.json").write_text(json.dumps(summary))
    row = "| smnist | sgd | – | class-il | 20.00 ± 0.00 |"
    real = fingerprint(REPO_ROOT / "docs" / "reproductions")

    reproduce_command(workdir)
    assert fingerprint(REPO_ROOT / "docs" / "reproductions") == real
    assert row in (workdir / "der" / "report.md").read_text()

    # --update_docs: the repository's copy too (here a copy of the repository's docs folder),
    # naming the command that refreshes it.
    docs = tmp_path / "docs"
    shutil.copytree(REPO_ROOT / "docs" / "reproductions", docs / "reproductions")
    (workdir / "der" / "report.md").unlink()
    done = reproduce_command(workdir, "--update_docs", docs=docs)
    text = (docs / "reproductions" / "der.md").read_text()
    assert row in text and f"--workdir={workdir} --update_docs\n" in text
    assert (workdir / "der" / "report.md").read_text() == text
    assert f"wrote {docs / 'reproductions' / 'der.md'}" in done.stdout
    assert fingerprint(REPO_ROOT / "docs" / "reproductions") == real

    # No docs folder (an installed package has none): one line before anything runs or writes.
    (workdir / "der" / "report.md").unlink()
    bad = reproduce_command(workdir, "--update_docs", docs=tmp_path / "nowhere", status=2)
    assert bad.stderr.strip().splitlines() == [
        f"sequax: error: --update_docs: no repository docs folder at {tmp_path / 'nowhere'} "
        f"(${DOCS_VARIABLE}); drop --update_docs, the document is written in the workdir (or "
        "--output) anyway"
    ]
    assert not (workdir / "der" / "report.md").exists()


def test_the_documents_of_a_table_and_its_variant(tmp_path):
    table_dir = tmp_path / "mirzadeh-agem_codebase"
    assert reproduce.documents(table_dir, "", None) == [table_dir / "report.md"]
    assert reproduce.documents(table_dir, "-", tmp_path / "docs") == [
        tmp_path / "docs" / "reproductions" / "mirzadeh-agem_codebase.md"
    ]
    assert reproduce.documents(table_dir, "x.md", None) == [Path("x.md")]
