"""The PyTorch transcription of Stable SGD's reference loop (`evidence/torch_mirzadeh_check.py`).

Its per-task learning rate (1-based exponent, absolute floor) and hyper-parameters against the
table's cell configs, the optimizer built anew each task (no momentum carried over), the
reference's batching (file order, last partial batch kept), that seed s trains on the
permutations / angles our run with seed s draws, the forgetting definitions, and a tiny
two-task run for the matrix's shape and range.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from evidence import torch_mirzadeh_check as mz
from sequax.configs.reproduce.mirzadeh import table
from sequax.data import load_source
from sequax.data.scenarios import permuted, rotated, subsample
from sequax.engine.build import build_scenario, draw_seed, run_scenarios
from sequax.engine.metrics import average_forgetting
from sequax.engine.runs import make_grid


@pytest.fixture(scope="module")
def tiny():
    """Two permuted tasks of packaged MNIST (task 1 unpermuted), 300 train / 100 test each."""
    return subsample(
        permuted(load_source("mnist_packaged"), num_tasks=2, seed=0, first_task_identity=True),
        300,
        100,
    )


def test_lr_schedule_has_a_one_based_exponent_and_an_absolute_floor():
    assert mz.task_lr(0.1, 0.8, 1) == pytest.approx(0.08)  # the first task already decayed
    assert mz.task_lr(0.1, 0.8, 20) == pytest.approx(0.1 * 0.8**20)  # 1.15e-3, above the floor
    assert [mz.task_lr(0.01, 1.0, t) for t in (1, 7, 20)] == [0.01] * 3  # naive: γ 1
    rot = [mz.task_lr(0.1, 0.55, t) for t in range(1, 21)]
    assert rot[11] == pytest.approx(0.1 * 0.55**12) and 0.1 * 0.55**12 > 5e-5  # task 12: 7.7e-5
    assert rot[12:] == [5e-5] * 8  # from task 13 (0.1 · 0.55¹³ = 4.2e-5) the floor
    with pytest.raises(ValueError, match="1-based"):
        mz.task_lr(0.1, 0.8, 0)


def test_hyper_parameters_come_from_the_table_cells():
    hp = {
        f"{b}/{m}": mz.cell_hyper(b, m)
        for b in ("pmnist", "rmnist")
        for m in ("naive", "stable_sgd")
    }
    for b in ("pmnist", "rmnist"):
        assert {k: hp[f"{b}/naive"][k] for k in ("lr", "gamma", "batch_size", "dropout")} == dict(
            lr=0.01, gamma=1.0, batch_size=10, dropout=0.0
        )
        assert {k: hp[f"{b}/stable_sgd"][k] for k in ("lr", "batch_size", "dropout")} == dict(
            lr=0.1, batch_size=64, dropout=0.25
        )
    assert (
        hp["pmnist/stable_sgd"]["gamma"]
        == table.config("pmnist", "stable_sgd").algorithm.decay
        == 0.8
    )
    assert (
        hp["rmnist/stable_sgd"]["gamma"]
        == table.config("rmnist", "stable_sgd").algorithm.decay
        == 0.55
    )
    assert all(
        h["momentum"] == 0.8 and h["widths"] == (256, 256) and h["epochs"] == 1 for h in hp.values()
    )
    with pytest.raises(ValueError, match="no reference loop"):
        mz.cell_hyper("pmnist", "ewc")


def test_each_task_starts_a_new_optimizer_without_momentum(tiny):
    torch.manual_seed(0)
    hp = dict(mz.cell_hyper("pmnist", "naive"), batch_size=50)
    net = mz.MLP(hp["widths"], 0.0)
    x, y = mz.as_tensors(*tiny.train(0))
    first = mz.train_task(net, x, y, 0.05, hp)  # 6 momentum steps: a non-zero buffer
    assert all(first.state[p]["momentum_buffer"].abs().sum() > 0 for p in net.parameters())
    # Task 2, one batch: with a fresh SGD the step is -lr·g (the buffer starts at g); with the
    # old optimizer's buffer carried over it would be -lr·(0.8·buf + g).
    x2, y2 = (a[:50] for a in mz.as_tensors(*tiny.train(1)))
    before = copy.deepcopy(net)
    grads = torch.autograd.grad(
        torch.nn.functional.cross_entropy(before(x2), y2), list(before.parameters())
    )
    second = mz.train_task(net, x2, y2, 0.02, hp)
    assert (
        second is not first
        and second.param_groups[0]["lr"] == 0.02
        and second.param_groups[0]["momentum"] == 0.8
    )
    for p, q, g in zip(net.parameters(), before.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - 0.02 * g)
        torch.testing.assert_close(second.state[p]["momentum_buffer"], g)


def test_batches_follow_the_file_order_and_keep_the_last_partial_one(tiny):
    hp = dict(mz.cell_hyper("pmnist", "stable_sgd"), dropout=0.0)
    x, y = mz.as_tensors(*tiny.train(0))  # 300 = 4 x 64 + 44
    seen = []
    net = mz.MLP(hp["widths"], 0.0)
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    mz.train_task(net, x, y, 0.1, hp)
    assert [len(b) for b in seen] == [64, 64, 64, 64, 44]
    assert torch.equal(torch.cat(seen), x)  # shuffle=False: the dataset's order
    seen.clear()
    mz.train_task(net, x, y, 0.1, hp, shuffle=True, drop_last=True)
    assert [len(b) for b in seen] == [64] * 4 and not torch.equal(torch.cat(seen), x[:256])


@pytest.mark.parametrize("benchmark", ["pmnist", "rmnist"])
def test_seed_s_trains_on_the_draws_of_our_run_with_seed_s(benchmark):
    config = table.config(benchmark, "stable_sgd")
    assert config.data.draws_per_run  # each seed its own permutations / angles
    config.data.source, config.runs = "mnist_packaged", 3  # same draws (784 pixels), small files
    seeds = list(make_grid(config).seeds)  # the seeds `reproduce` vmaps: 0, 1, 2
    assert seeds == [0, 1, 2]
    ours = run_scenarios(config.data, build_scenario(config.data), seeds)  # as engine/loop.py
    check = mz.cell_scenarios(benchmark, seeds, config)
    source = load_source("mnist_packaged")
    for s, a, b in zip(seeds, ours, check):
        if benchmark == "pmnist":
            expected = permuted(
                source, 20, seed=draw_seed(0, s), first_task_identity=True
            ).permutations
            np.testing.assert_array_equal(b.permutations, expected)
            np.testing.assert_array_equal(b.permutations, a.permutations)
            assert (b.permutations[0] == np.arange(784)).all()  # task 1 unpermuted
        else:
            expected = rotated(
                source, 20, seed=draw_seed(0, s), protocol="step", step=10.0, jitter=10.0
            ).angles
            np.testing.assert_array_equal(b.angles, expected)
            np.testing.assert_array_equal(b.angles, a.angles)
            assert (
                (np.arange(20) * 10.0 - 10 < b.angles) & (b.angles <= np.arange(20) * 10.0)
            ).all()
        np.testing.assert_array_equal(b.train(5)[0], a.train(5)[0])
        np.testing.assert_array_equal(b.test(5)[0], a.test(5)[0])
    assert not np.array_equal(check[0].train(5)[0], check[1].train(5)[0])  # seeds draw differently


def test_forgetting_definitions():
    R = np.array([[90.0, 30.0, 10.0], [60.0, 95.0, 50.0], [70.0, 80.0, 97.0]])
    # Mirzadeh: task 0 max(90, 60, 70) - 70 = 20; task 1 max(95, 80) - 80 = 15 -> 0.175.
    assert mz.mirzadeh_forgetting(R) == pytest.approx(0.175)
    assert average_forgetting(R / 100) == pytest.approx(0.175)  # rows before training lower here
    R[0, 1] = 99.0  # ours takes a row before task 1 was trained into its max, theirs not
    assert mz.mirzadeh_forgetting(R) == pytest.approx(0.175)
    assert average_forgetting(R / 100) == pytest.approx((20 + 19) / 200)
    R[2, 0] = 95.0  # the final accuracy is the task's best: theirs 0, ours negative
    assert mz.mirzadeh_forgetting(R) == pytest.approx(15 / 200)
    assert average_forgetting(R / 100) == pytest.approx((-5 + 19) / 200)


def test_eval_dropout_follows_the_reference(tiny):
    x, _ = mz.as_tensors(*tiny.test(0))
    for eval_dropout, stochastic in ((True, True), (False, False)):
        net = mz.MLP((256, 256), 0.25, eval_dropout).eval()
        with torch.no_grad():
            assert (not torch.equal(net(x), net(x))) == stochastic
    net = mz.MLP((256, 256), 0.0, True).eval()  # naive: p 0 drops nothing
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_tiny_run(tiny):
    torch.set_num_threads(1)
    hp = dict(
        mz.cell_hyper("pmnist", "stable_sgd"), batch_size=10
    )  # lr 0.1, γ 0.8, dropout 0.25; 30 steps
    one, again = (mz.run(tiny, seed=3, hp=hp) for _ in range(2))
    for r in (one, again):
        r.pop("train_s"), r.pop("eval_s")
    assert one == again  # seeded: init, dropout masks (eval-time ones too)
    matrix = np.asarray(one["matrix"])
    assert matrix.shape == (2, 2) and ((0 <= matrix) & (matrix <= 100)).all()
    assert one["lrs"] == pytest.approx([0.08, 0.064])
    assert one["final"] == pytest.approx(matrix[-1].mean())
    assert (
        matrix[0, 0] > 30 and matrix[1, 1] > 30
    )  # it learns each task (chance: about 10 %; here 44, 62)
    assert one["forgetting_ours"] == pytest.approx(average_forgetting(matrix / 100))
    assert one["forgetting_mirzadeh"] == pytest.approx(max(matrix[0, 0] - matrix[1, 0], 0) / 100)
    seen = mz.run(
        tiny, seed=3, hp=hp, eval_dropout=False, full_matrix=False
    )  # the reference's triangle
    assert [len(row) for row in seen["matrix"]] == [1, 2] and "forgetting_ours" not in seen
    assert mz.variant_suffix(False, False, True, hp) == "" and mz.variant_suffix(
        True, False, False, hp
    ) == ("-shuffle-no_eval_dropout")
