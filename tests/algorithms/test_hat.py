"""HAT: the step against a transcription of the official PyTorch code, the sparsity term by
hand, the annealing of s, and near-zero task-IL forgetting on a small Split MNIST stream."""

from __future__ import annotations

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from sequax.algorithms import HAT
from sequax.algorithms.hat import EMBEDDINGS, annealed_s, attention_sparsity
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop
from sequax.engine.build import ConfigError
from sequax.engine.step import make_train_step
from tests.algorithms.small_streams import naive_result, small_split_config

# Small values that switch every branch on: cosh's clamp (s e beyond ±2), the embedding clamp
# (±0.9 after a step of lr 0.5), the gradient-norm clip (0.5), non-binary cumulative gates
# (s_max 4).
HP = {"num_tasks": 2, "s_max": 4.0, "c": 0.75, "thres_cosh": 2.0, "thres_emb": 0.9, "clipgrad": 0.5}
LR, BATCH, WIDTHS = 0.5, 6, (8, 6)


def hat_state(hat, step: int, task_size: int):
    """Task 1 of a 2-task, 4-class stream (classes {2, 3}), after task 0 ended; `step` steps
    into the task, whose epochs have `task_size // BATCH` batches."""
    model = hat.wrap_model(mlp(4, widths=WIDTHS, init="torch"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (BATCH, 4, 4, 1)), jnp.float32)
    batch = {
        "x": x,
        "y": jnp.asarray(rng.integers(2, 4, BATCH), jnp.int32),
        "task": jnp.ones(BATCH, jnp.int32),
    }
    state = create_state(model, hat, optax.sgd(LR), batch, seed=0)
    # Embeddings spread over [-1.5, 1.5] so that gates, clamps and compensation all vary.
    emb = {
        k: jnp.asarray(rng.uniform(-1.5, 1.5, e.shape), jnp.float32)
        for k, e in state.params[EMBEDDINGS].items()
    }
    state = state._replace(params={**state.params, EMBEDDINGS: emb})
    state = state._replace(algo=hat.end_task(state, None, None, model))  # task 0 ends: its gates
    classes = jnp.zeros((2, 4), bool).at[1, 2:].set(True)
    algo = state.algo._replace(
        classes=classes, task_start=jnp.int32(0), task_size=jnp.int32(task_size)
    )
    return model, batch, state._replace(task=jnp.int32(1), step=jnp.int32(step), algo=algo)


def torch_hat_step(params, cumulative, batch, s, t=1):
    """One batch of joansj/hat `approaches/hat.py::train_epoch` on `networks/mlp_hat.py`
    (2 layers, no dropout), transcribed; the per-task head is the task's columns of one head."""
    smax, lamb, thres_cosh, thres_emb, clipgrad = (
        HP["s_max"],
        HP["c"],
        HP["thres_cosh"],
        HP["thres_emb"],
        HP["clipgrad"],
    )
    f64 = lambda a: torch.tensor(np.asarray(a, np.float64))
    fc1, fc2, last = (
        torch.nn.Linear(*np.shape(params[f"Dense_{i}"]["kernel"])).double() for i in range(3)
    )
    efc1, efc2 = (torch.nn.Embedding(2, w).double() for w in WIDTHS)
    with torch.no_grad():
        for i, layer in enumerate((fc1, fc2, last)):
            layer.weight.copy_(f64(params[f"Dense_{i}"]["kernel"]).T)
            layer.bias.copy_(f64(params[f"Dense_{i}"]["bias"]))
        efc1.weight.copy_(f64(params[EMBEDDINGS]["layer_0"]))
        efc2.weight.copy_(f64(params[EMBEDDINGS]["layer_1"]))
    named = {
        "fc1.weight": fc1.weight,
        "fc1.bias": fc1.bias,
        "fc2.weight": fc2.weight,
        "fc2.bias": fc2.bias,
        "efc1.weight": efc1.weight,
        "efc2.weight": efc2.weight,
        "last.weight": last.weight,
        "last.bias": last.bias,
    }
    mask_pre = [f64(cumulative["layer_0"]).view(1, -1), f64(cumulative["layer_1"]).view(1, -1)]
    mask_back = {
        "fc1.weight": 1 - mask_pre[0].view(-1, 1).expand_as(fc1.weight),
        "fc1.bias": 1 - mask_pre[0].view(-1),
        "fc2.weight": 1
        - torch.min(
            mask_pre[1].view(-1, 1).expand_as(fc2.weight),
            mask_pre[0].view(1, -1).expand_as(fc2.weight),
        ),
        "fc2.bias": 1 - mask_pre[1].view(-1),
    }
    optimizer = torch.optim.SGD(list(named.values()), lr=LR)
    task = torch.LongTensor([t])
    images = f64(batch["x"]).reshape(BATCH, -1)
    targets = torch.LongTensor(np.asarray(batch["y"]) - 2)
    # Forward (Net.forward / Net.mask)
    masks = [torch.sigmoid(s * efc1(task)), torch.sigmoid(s * efc2(task))]
    h = torch.relu(fc1(images)) * masks[0].expand(BATCH, -1)
    h = torch.relu(fc2(h)) * masks[1].expand(BATCH, -1)
    output = last(h)[:, 2:4]
    # criterion
    reg, count = 0, 0
    for m, mp in zip(masks, mask_pre):
        aux = 1 - mp
        reg += (m * aux).sum()
        count += aux.sum()
    loss = torch.nn.functional.cross_entropy(output, targets) + lamb * reg / count
    optimizer.zero_grad()
    loss.backward()
    for n, p in named.items():  # Restrict layer gradients in backprop
        if n in mask_back:
            p.grad.data *= mask_back[n]
    for n, p in named.items():  # Compensate embedding gradients
        if n.startswith("e"):
            num = torch.cosh(torch.clamp(s * p.data, -thres_cosh, thres_cosh)) + 1
            den = torch.cosh(p.data) + 1
            p.grad.data *= smax / s * num / den
    torch.nn.utils.clip_grad_norm_(list(named.values()), clipgrad)
    optimizer.step()
    for n, p in named.items():  # Constrain embeddings
        if n.startswith("e"):
            p.data = torch.clamp(p.data, -thres_emb, thres_emb)
    return {n: p.detach().numpy() for n, p in named.items()}, float(loss.detach())


@pytest.mark.parametrize("step", [0, 2, 4])  # first, middle and last batch of a 5-batch epoch
def test_step_matches_the_official_pytorch_code(step):
    hat = HAT(**HP)
    model, batch, state = hat_state(hat, step, task_size=5 * BATCH + 3)  # 5 full batches
    s = float(annealed_s(hat.s_max, state.step, state.algo.task_start, state.algo.task_size, BATCH))
    expected, expected_loss = torch_hat_step(
        jax.tree.map(np.asarray, state.params), state.algo.cumulative, batch, s
    )
    new, metrics = jax.jit(make_train_step(model, hat, optax.sgd(LR)))(state, batch)
    assert np.isclose(float(metrics["loss"]), expected_loss, atol=1e-5)
    ours = {
        "fc1.weight": new.params["Dense_0"]["kernel"].T,
        "fc1.bias": new.params["Dense_0"]["bias"],
        "fc2.weight": new.params["Dense_1"]["kernel"].T,
        "fc2.bias": new.params["Dense_1"]["bias"],
        "efc1.weight": new.params[EMBEDDINGS]["layer_0"],
        "efc2.weight": new.params[EMBEDDINGS]["layer_1"],
        "last.weight": new.params["Dense_2"]["kernel"].T,
        "last.bias": new.params["Dense_2"]["bias"],
    }
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(ours[name]), value, atol=1e-5, err_msg=name)
    # The branches the small hyper-parameters were chosen to reach were reached.
    if step == 4:  # s = s_max: cosh's clamp is active for some units
        assert np.any(
            np.abs(s * np.asarray(state.params[EMBEDDINGS]["layer_0"])) > HP["thres_cosh"]
        )
    assert np.any(np.abs(expected["efc1.weight"]) == HP["thres_emb"])
    # Units task 0 holds (cumulative gate near 1) barely move: conditioning is active.
    moved = np.abs(expected["fc1.bias"] - np.asarray(state.params["Dense_0"]["bias"]))
    held = np.asarray(state.algo.cumulative["layer_0"])
    assert np.all(moved <= (1 - held) * 1.0 + 1e-7)


def test_s_anneals_from_one_over_s_max_to_s_max_within_each_epoch():
    s = [
        float(annealed_s(400.0, jnp.int32(10 + b), jnp.int32(10), jnp.int32(5 * 64 + 7), 64))
        for b in range(11)
    ]
    np.testing.assert_allclose(s[0], 1 / 400, rtol=1e-6)  # batch 1 of every epoch
    np.testing.assert_allclose(s[4], 400.0, rtol=1e-6)  # batch B = 5
    np.testing.assert_allclose(s[2], 1 / 400 + (400 - 1 / 400) * 2 / 4, rtol=1e-6)
    np.testing.assert_allclose(s[5:10], s[0:5], rtol=1e-6)  # the next epoch starts again


def test_sparsity_term_by_hand():
    gates = {"layer_0": jnp.array([0.5, 1.0, 0.0]), "layer_1": jnp.array([0.25, 0.75])}
    cumulative = {"layer_0": jnp.array([1.0, 0.0, 0.5]), "layer_1": jnp.array([0.0, 0.5])}
    # numerator: 0.5*0 + 1*1 + 0*0.5 + 0.25*1 + 0.75*0.5 = 1.625; denominator: 0+1+0.5+1+0.5 = 3
    assert float(attention_sparsity(gates, cumulative)) == pytest.approx(1.625 / 3)
    empty = jax.tree.map(jnp.zeros_like, cumulative)  # the first task: the mean gate
    assert float(attention_sparsity(gates, empty)) == pytest.approx(2.5 / 5)


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_near_zero_task_il_forgetting_on_split_mnist():
    """With s_max 400 the gates are binary: training later tasks leaves the earlier tasks'
    task-IL accuracy unchanged, where naive fine-tuning on the same stream forgets."""
    config = small_split_config("hat", num_tasks=5, s_max=400.0, c=0.75)
    config.model.widths = (100,)
    config.training.epochs = 3
    with tempfile.TemporaryDirectory() as workdir:
        result = loop.run(config, workdir, verbose=False)
    task_il = result.task_il
    drop = np.array([task_il[j, j] - task_il[-1, j] for j in range(4)])
    learned = np.diag(task_il)  # every task is learned (the last with the fewest free units)
    assert learned.min() > 0.8 and learned.mean() > 0.9, learned
    assert np.max(np.abs(drop)) < 0.005, drop  # not one of the 100 test images changes its answer
    naive = naive_result("split").task_il
    naive_drop = np.array([naive[j, j] - naive[-1, j] for j in range(4)])
    assert naive_drop.mean() > 0.02, naive_drop  # the same stream does make naive SGD forget
    # start_task recorded each task's classes; end_task kept each task's units.
    scenario_classes = np.asarray(result.state.algo.classes)
    assert scenario_classes.sum(1).tolist() == [2] * 5
    assert float(result.state.algo.cumulative["layer_0"].max()) > 0.99


def test_a_model_without_hidden_units_to_gate_is_refused_before_compiling():
    config = small_split_config("hat", num_tasks=5)
    config.model = config.model.__class__({"name": "resnet18", "nf": 4})
    with (
        tempfile.TemporaryDirectory() as workdir,
        pytest.raises(ConfigError, match="HAT gates the hidden units"),
    ):
        loop.run(config, workdir, verbose=False)
