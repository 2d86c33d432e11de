"""The PyTorch transcription of the MIR reference loop (`evidence/torch_mir_check.py`).

Its hyper-parameters against the table's cell configs, the reference buffer's reservoir (the
count before the batch) and its past-task sampling, ER-MIR's scores against ours
(`algorithms/mir.py` `virtual_step` and `interference`, on the same weights), the step (the two
mean gradients added; plain SGD on the first task), `--compare_to_old_logits` writing at the
subset's positions, the reference's 95 % cut, a tiny run on packaged MNIST, and the command.
"""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import run_module

from evidence import torch_mir_check as tmc
from sequax.algorithms.mir import interference, virtual_step
from sequax.core.models import mlp
from sequax.data import load_source
from sequax.data.scenarios import split, subsample


@pytest.fixture(scope="module")
def tiny():
    """The reference's split {0}, {1,2}, {3,4}, {5,6}, {7,8} of packaged MNIST, 100 / 60 each."""
    scenario = split(load_source("mnist_packaged"), num_tasks=5, increments=(1, 2, 2, 2, 2))
    return subsample(scenario, 100, 60)


def test_hyper_parameters_come_from_the_table_cells():
    er, mir = tmc.cell_hyper("smnist", "er", 500), tmc.cell_hyper("smnist", "mir", 500)
    assert er == dict(
        method="rand_replay",
        lr=0.1,
        mem_size=500,
        buffer_batch_size=10,
        subsample=10,
        batch_size=10,
        nf=400,
        train_per_task=1010,
    )
    assert mir == dict(er, method="mir_replay", subsample=50)
    assert tmc.cell_hyper("pmnist", "mir", 200)["lr"] == 0.05
    assert [tmc.cell_hyper("smnist", "er", b)["mem_size"] for b in (200, 1000)] == [200, 1000]


def test_add_reservoir_fills_then_draws_below_the_count_before_the_batch():
    buffer = tmc.Buffer(3, np.random.RandomState(0), input_size=2)
    x = torch.arange(12.0).reshape(6, 2)
    buffer.add_reservoir(x[:2], torch.tensor([0, 1]), t=0)
    assert buffer.current_index == buffer.n_seen_so_far == 2
    torch.manual_seed(5)
    draws = torch.FloatTensor(2).uniform_(0, 3).long()  # the 3 seen before the rest arrived
    torch.manual_seed(5)
    buffer.add_reservoir(x[2:5], torch.tensor([2, 3, 4]), t=1)  # one fits, two draw
    assert buffer.current_index == 3 and buffer.n_seen_so_far == 5
    expected = torch.tensor([0, 1, 2])
    for i, slot in enumerate(draws.tolist()):
        if slot < 3:
            expected[slot] = 3 + i
    assert torch.equal(buffer.by, expected)
    assert torch.equal(buffer.bx, x[expected]) and buffer.bt.tolist()[2] == 1
    assert not buffer.logits.any()  # add_reservoir(..., None, t) stores no logits


def test_sample_draws_only_past_tasks():
    buffer = tmc.Buffer(6, np.random.RandomState(0), input_size=1)
    buffer.add_reservoir(torch.arange(4.0)[:, None], torch.arange(4), t=0)
    buffer.add_reservoir(torch.arange(4.0, 6.0)[:, None], torch.arange(4, 6), t=1)
    _, by, bt, ind = buffer.sample(10, exclude_task=1, ret_ind=True)  # fewer than asked: all
    assert by.tolist() == [0, 1, 2, 3] and not bt.any() and ind.tolist() == [0, 1, 2, 3]
    choice = np.random.RandomState(0).choice(4, 2, replace=False)
    _, by, _ = buffer.sample(2, exclude_task=1)
    assert by.tolist() == choice.tolist()
    assert buffer.sample(2, exclude_task=0)[1].tolist() in ([4, 5], [5, 4])


def flax_params(net):
    """`net`'s weights as our flax MLP's params (kernel = weight.T)."""
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    return {
        f"Dense_{i}": {
            "kernel": jnp.asarray(m.weight.detach().numpy().T),
            "bias": jnp.asarray(m.bias.detach().numpy()),
        }
        for i, m in enumerate(linears)
    }


def test_mir_scores_equal_ours(tiny):
    torch.manual_seed(0)
    net = tmc.mlp(400)
    x, y = tmc.as_tensors(*(a[:10] for a in tiny.train(2)))
    bx, by = tmc.as_tensors(*(a[:50] for a in tiny.train(1)))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    scores, logits_pre, updated = tmc.mir_scores(net, 0.1, bx, by)
    assert updated is None
    model, params = mlp(10, (400, 400), init="torch"), flax_params(net)
    virtual = virtual_step(model, params, {}, x.numpy(), y.numpy(), jax.random.PRNGKey(0), 0.1)
    candidates = {"x": bx.numpy(), "y": by.numpy()}
    ours = interference(model, params, virtual, {}, candidates, jax.random.PRNGKey(1))
    np.testing.assert_allclose(scores.numpy(), np.asarray(ours), rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(logits_pre.numpy(), net(bx).detach().numpy())
    # With stored logits of 0 (loss log 10): post - min(pre, log 10).
    scores_old, _, updated = tmc.mir_scores(net, 0.1, bx, by, torch.zeros(50, 10))
    pre = torch.nn.functional.cross_entropy(logits_pre, by, reduction="none")
    torch.testing.assert_close(scores_old, scores + pre - pre.clamp(max=math.log(10)))
    assert torch.equal(updated, (pre < math.log(10)).nonzero().squeeze(1))


def test_first_task_is_plain_sgd_and_replay_adds_the_two_means(tiny):
    torch.manual_seed(0)
    hp = dict(tmc.cell_hyper("smnist", "er", 200), mem_size=20)
    learner = tmc.Learner(hp, seed=1, compare_to_old_logits=True)
    x, y = tmc.as_tensors(*(a[:30] for a in tiny.train(0)))
    before = copy.deepcopy(learner.net)
    rng = copy.deepcopy(learner.buffer.rng.get_state())
    learner.observe(x[:10], y[:10], task=0)
    grads = torch.autograd.grad(
        torch.nn.functional.cross_entropy(before(x[:10]), y[:10]), list(before.parameters())
    )
    for p, q, g in zip(learner.net.parameters(), before.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * g)
    assert learner.buffer.rng.get_state()[2] == rng[2]  # no replay: no draw
    assert torch.equal(learner.buffer.by[:10], y[:10])  # stored after the step
    learner.observe(x[10:20], y[10:20], task=0)  # 20 of task 0: full
    x1, y1 = tmc.as_tensors(*(a[:10] for a in tiny.train(1)))
    before, state = copy.deepcopy(learner.net), copy.deepcopy(learner.buffer.rng)
    index = state.choice(20, 10, replace=False)  # rand_replay: 10 of the 20 task-0 examples
    mem_x, mem_y = learner.buffer.bx[index], learner.buffer.by[index]
    loss = torch.nn.functional.cross_entropy(before(x1), y1) + (
        torch.nn.functional.cross_entropy(before(mem_x), mem_y)
    )
    grads = torch.autograd.grad(loss, list(before.parameters()))
    learner.observe(x1, y1, task=1)
    for p, q, g in zip(learner.net.parameters(), before.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * g)
    assert learner.buffer.n_seen_so_far == 30


def test_old_logits_are_written_at_the_subset_positions(tiny):
    """The reference indexes `buffer.logits` by positions in the past-task subset: with a
    current-task example in slot 1, the logits of the subset's second example (slot 2) land
    in slot 1."""
    torch.manual_seed(0)
    hp = dict(tmc.cell_hyper("smnist", "mir", 200), mem_size=3, subsample=2, buffer_batch_size=1)
    learner = tmc.Learner(hp, seed=0, compare_to_old_logits=True)
    with torch.no_grad():
        learner.net[-1].bias[0] = 30.0  # every class-0 example's loss far below log 10
    images, _ = tiny.train(0)
    x, _ = tmc.as_tensors(images[:4], np.zeros(4))
    buffer = learner.buffer
    buffer.bx[:3], buffer.by[:3], buffer.bt[:3] = x[:3], 0, torch.tensor([0, 1, 0])
    buffer.current_index = buffer.n_seen_so_far = 3
    with torch.no_grad():
        expected = learner.net(x[[0, 2]])
    learner.observe(x[3:4], torch.zeros(1, dtype=torch.int64), task=1)
    torch.testing.assert_close(buffer.logits[:2], expected)  # slots 0 and 1, not 0 and 2
    assert not buffer.logits[2].any()


def test_reference_draws_cut_each_task_once(tiny):
    one, again = tmc.reference_draws(tiny, 50), tmc.reference_draws(tiny, 50)
    for t, ((a, b), (c, d)) in enumerate(zip(one, again)):
        assert len(b) == int(len(tiny.train(t)[1]) * tmc.VALID_CUT) and np.array_equal(b, d)
        assert np.array_equal(a, c) and set(b.tolist()) <= set(tiny.train(t)[1].tolist())


def test_tiny_run(tiny):
    torch.set_num_threads(1)
    hp = dict(tmc.cell_hyper("smnist", "mir", 200), mem_size=50, train_per_task=100)
    one, again = (tmc.run(tiny, seed=3, hp=hp) for _ in range(2))
    one.pop("wall_s"), again.pop("wall_s")
    assert one == again  # seeded: init, batch order, reservoir, candidates
    assert [len(row) for row in one["matrix_exact"]] == [1, 2, 3, 4, 5]
    assert one["final"] == pytest.approx(round(one["final"]))  # rounded to 0.01 (fraction)
    assert abs(one["final"] - one["final_exact"]) < 5  # batch means of a shuffled test set
    assert one["final_ours_eval"] >= one["final_exact"]  # masking digit 9 only helps
    assert one["final_exact"] == pytest.approx(np.mean(one["matrix_exact"][-1]))
    assert one["matrix_exact"][-1][-1] > 50  # it learns the last task
    assert tmc.variant_suffix("mir_replay", False, "reference") == "-no_old_logits-reference_data"
    assert tmc.variant_suffix("rand_replay", False, "ours") == ""
    assert tmc.variant_suffix("rand_replay", True, "ours", True, 0.05) == "-five_pairs-lr0.05"


@pytest.mark.long  # a whole command (7-11 s): pytest -m long tests/evidence
def test_the_command_starts_and_parses_its_flags(tmp_path):
    """No cells: the program imports, parses its flags and writes nothing."""
    run_module("evidence.torch_mir_check", "--mir_cells=", f"--mir_out_dir={tmp_path}")
    assert not any(tmp_path.iterdir())
