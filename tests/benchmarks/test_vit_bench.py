"""The ViT suite (`benchmarks/vit.py`, `benchmarks/torch_prompt.py`): its configs, the two
PyTorch loops on a tiny stream, and the section's tables from made-up cells. The measurements
themselves are not tests; a sequax cell (a ViT compile, about a minute here) is not run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import needs_shared_mnist

from benchmarks import vit


def test_the_configs_are_the_vit_split_mnist_ones_without_weights():
    from sequax.algorithms.l2p import L2P

    config = vit.make_config("l2p", train_per_task=2000, test_per_task=1000)
    assert "weights" not in config.model
    sizes = dict(width=64, depth=4, num_heads=4, mlp_dim=128, patch_size=4)
    assert {k: config.model[k] for k in sizes} == sizes and config.model.name == "vit"
    assert config.optimizer.name == "adam" and config.optimizer.lr == 2e-3
    assert config.training.batch_size == 32 and config.training.epochs == 1
    assert config.data.train_per_task == 2000 and config.data.test_per_task == 1000
    assert config.algorithm.cache_examples == 2000  # the largest task
    defaults = {f.name: f.default for f in dataclasses.fields(L2P)}
    assert all(config.algorithm[k] == defaults[k] for k in vit.L2P_HYPER)  # L2P's own
    assert vit.make_config("l2p", cache=False).algorithm.cache_examples == 0
    assert vit.make_config("l2p").algorithm.cache_examples == 13_000  # every example
    assert "weights" not in vit.make_config("simplecil").model


@needs_shared_mnist
@pytest.mark.parametrize("method", vit.METHODS)
def test_the_torch_loops_run_each_method(method):
    import torch

    from benchmarks.torch_prompt import run_torch

    threads = torch.get_num_threads()
    try:
        config = vit.make_config(method, tasks=2, train_per_task=64, test_per_task=40)
        result = run_torch(config, threads=1)
    finally:
        torch.set_num_threads(threads)  # the loop sets one thread for this process
    assert result["train_samples"] == 2 * 64  # 2 steps of 32, or the 64 prototype examples
    assert result["time_to_result"] > result["train"] + result["end_task"] > 0
    matrix = np.asarray(result["matrix"])
    assert matrix.shape == (2, 2) and np.all(matrix[0, 1:] == 0.0)  # class-IL: unseen classes
    if method == "l2p":
        assert result["samples_per_s"] > 0 and result["end_task"] == 0.0
    else:  # no training step: the prototypes' feature pass is its work
        assert result["samples_per_s"] == 0.0 and result["train"] == 0.0
        assert matrix[-1].mean() > 0.2  # class means of a random ViT's features beat chance


def test_the_torch_l2p_selects_the_batchs_most_chosen_prompts():
    import torch

    from benchmarks.torch_prompt import batchwise

    idx = torch.tensor([[0, 1], [1, 2], [1, 3], [2, 1], [2, 0]])  # counts 2, 4, 3, 1
    assert batchwise(idx, 6, 2).tolist() == [[1, 2]] * 5


def cell(run: str, **overrides) -> dict:
    base = dict(samples_per_s=1000.0, work_samples_per_s=800.0, train=60.0, end_task=2.0,
                time_to_result=100.0, acc=20.0, rss_mib=500.0)  # fmt: skip
    if run in vit.SEQUAX_RUNS:
        base.update(compile=5.0, run_steps=1, train_program="step_at")
    return {**base, **overrides}


def test_the_section_compares_each_sequax_run_with_the_torch_loop():
    cells = {
        ("l2p", "cold"): cell(
            "cold", samples_per_s=2000.0, work_samples_per_s=1600.0, time_to_result=50.0, acc=21.0
        ),  # fmt: skip
        ("l2p", "warm"): cell(
            "warm", samples_per_s=3000.0, work_samples_per_s=2400.0, time_to_result=25.0
        ),  # fmt: skip
        ("l2p", "nocache"): cell(
            "nocache", samples_per_s=1000.0, work_samples_per_s=1000.0, end_task=0.5
        ),  # fmt: skip
        ("l2p", "torch"): cell("torch", acc=20.0),
        ("l2p", "torch_all"): cell("torch_all", work_samples_per_s=1200.0),
        ("simplecil", "cold"): cell("cold", run_steps=2),
        ("simplecil", "warm"): None,  # a failed cell is said
        ("simplecil", "torch"): cell("torch", samples_per_s=0.0, train=0.0),
    }
    info = dict(cores=2, load=(0.1, 0.1, 0.1), xla_flags="default")
    header = ["Command:", "- **Quick run** (tasks=protocol, train_per_task=2000): dropped"]
    text = vit.section(cells, ["l2p", "simplecil"], header, info)
    assert "| L2P | sequax cold | 2,000 | 2.00× | 1,600 | 2.00× | 60.0 | 2.0 | 50.0 | 2.00× " \
           "| 5.0 | 1 (step_at) | 21.00 | 500 |" in text  # fmt: skip
    assert "| L2P | torch 1 thread | 1,000 | – | 800 | – | 60.0 | 2.0 | 100.0 | – | – | – " \
           "| 20.00 | 500 |" in text  # fmt: skip
    assert "| L2P | torch all threads | 1,000 | 1.00× | 1,200 | 1.50× |" in text
    assert "| SIMPLECIL | sequax cold | 1,000 | – | 800 | 1.00× |" in text  # torch: no steps
    assert "| SIMPLECIL | torch 1 thread | – | – | 800 |" in text
    assert "| SIMPLECIL | sequax warm | failed |" in text
    assert "| SIMPLECIL | sequax no cache" not in text  # L2P's only
    assert "| L2P | 2.00×, 3.00× | 2.00× | 2.00×, 4.00× | 21.00, 20.00 (+1.00) |" in text
    assert "| on (`cache_examples` = the largest task) | 2,000 | 1,600 | 2.0 |" in text
    assert "| off (`cache_examples=0`) | 1,000 | 1,000 | 0.5 |" in text
    assert "| on ÷ off | 2.00× | 1.60× | |" in text
    assert "**Not one program per run**: simplecil cold: the training program compiled 2 " \
           "times." in text  # fmt: skip
    assert "Quick run" not in text and "2000 training examples per task" in text
    assert "Taken under load" not in text
    loaded = vit.section(cells, ["l2p"], [], dict(info, load=(3.0, 3.0, 3.0)), torch_all=False)
    assert "Taken under load** (load average 3.00 on 2 cores" in loaded
    assert "| L2P | torch all threads" not in loaded and "its default (2 threads)" not in loaded


def test_the_cells_of_each_method():
    assert vit.runs_of("l2p") == ("cold", "warm", "nocache", "torch", "torch_all")
    assert vit.runs_of("simplecil", torch_all=False) == ("cold", "warm", "torch")
