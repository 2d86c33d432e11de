"""The online suite (`benchmarks/online.py`): one tiny sequax cell as the suite runs it (its
own process, `--single`), the three PyTorch loops on a tiny stream, and the section's tables
from made-up cells. The measurements themselves are not tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import needs_shared_mnist, run_module

from benchmarks import online


@needs_shared_mnist
def test_a_sequax_cell_trains_the_hidden_boundary_stream_in_one_program(tmp_path):
    out = tmp_path / "cell.json"
    run_module("benchmarks.online", "--single=er,sequax", f"--json_out={out}", "--tasks=2",
               "--train_per_task=300")  # fmt: skip
    cell = json.loads(out.read_text())
    assert cell["framework"] == "sequax" and cell["method"] == "er"
    assert cell["run_steps"] == 1 and cell["compilations"]["run_steps"] == 1
    assert cell["train_steps"] == 2 * 300 // 10 and cell["samples_per_s"] > 0
    assert cell["time_to_result"] >= cell["train"] + cell["compile"] > 0
    assert np.shape(cell["matrix"]) == (2, 2) and 50.0 < cell["acc"] <= 100.0


@needs_shared_mnist
@pytest.mark.parametrize("method", online.METHODS)
def test_the_torch_loops_run_each_method(method):
    import torch

    threads = torch.get_num_threads()
    try:
        result = online.run_torch(online.make_config(method, tasks=2, train_per_task=300))
    finally:
        torch.set_num_threads(threads)  # the loop sets one thread for this process
    assert result["train_samples"] == 600 and result["samples_per_s"] > 0
    assert result["time_to_result"] > result["train"] > 0
    matrix = np.asarray(result["matrix"])
    assert matrix.shape == (2, 2) and matrix[-1].mean() > 0.5  # replay keeps the first task


def test_the_mir_config_sets_the_virtual_step_apart_from_the_optimiser():
    config = online.make_config("mir")
    assert config.algorithm.lr == config.optimizer.lr == online.LR
    assert config.training.task_free and config.training.batch_size == 10
    assert config.data.source == "mnist" and config.data.num_tasks == 5
    assert config.data.train_per_task == 0  # the whole training set


def cell(run: str, **overrides) -> dict:
    base = dict(samples_per_s=1000.0, train=60.0, time_to_result=20.0, acc=90.0, rss_mib=500.0)
    if run != "torch":
        base.update(compile=5.0, run_steps=1, compile_count=6, cache_hits=0 if run == "cold" else 6)
    return {**base, **overrides}


def test_the_section_compares_each_sequax_run_with_the_torch_loop():
    cells = {
        ("mir", "cold"): cell("cold", samples_per_s=4000.0, time_to_result=25.0, acc=91.0),
        ("mir", "warm"): cell("warm", samples_per_s=5000.0, time_to_result=10.0),
        ("mir", "torch"): cell("torch", time_to_result=50.0, acc=90.0),
        ("gss", "cold"): cell("cold", run_steps=2),
        ("gss", "warm"): None,  # a failed cell is said
        ("gss", "torch"): cell("torch"),
    }
    info = dict(cores=2, load=(0.1, 0.1, 0.1), xla_flags="default")
    text = online.section(cells, ["mir", "gss"], ["Command:"], info)
    assert "| MIR | sequax cold | 4,000 | 4.00× | 60.0 | 25.0 | 2.00× | 5.0 | 1 | 6 (0) |" in text
    assert "| MIR | sequax warm | 5,000 | 5.00× | 60.0 | 10.0 | 5.00× | 5.0 | 1 | 6 (6) |" in text
    assert "| MIR | torch | 1,000 | – | 60.0 | 50.0 | – | – | – | – | 90.00 | 500 |" in text
    assert "| MIR | 4.00×, 5.00× | 2.00×, 5.00× | 91.00, 90.00 (+1.00) |" in text
    assert "| GSS | warm | failed |" in text
    assert "**Not one program per run**: gss cold: run_steps compiled 2 times." in text
    assert online.bad_compiles(cells) == ["gss cold: run_steps compiled 2 times"]
    assert "Taken under load" not in text
