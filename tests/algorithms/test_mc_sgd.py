"""MC-SGD: the line search against a PyTorch transcription of the reference code's
`train_task_LMC_offline`/`get_line_loss`, the class-balanced memory, evaluation with w̄, and
less forgetting than naive on a small stream."""

from __future__ import annotations

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from small_streams import naive_result, small_permuted_config
from torch_reference import torch_mlp

from sequax.algorithms import MCSGD
from sequax.core.models import mlp
from sequax.core.task_data import task_arrays
from sequax.engine import loop

ROWS = 8  # per_class 2 x num_classes 4 = line_batch: one batch per task's memory


def algorithm(**kwargs):
    return MCSGD(
        **{
            "num_tasks": 3,
            "per_class": 2,
            "num_classes": 4,
            "line_samples": 4,
            "line_batch": ROWS,
            "line_lr": 0.3,
            "line_momentum": 0.8,
            "init_position": 0.25,
            **kwargs,
        }
    )


def problem():
    model = mlp(4, widths=(6,))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(4, ROWS, 5)), jnp.float32)
    params, _ = model.init(jax.random.PRNGKey(0), x[0])
    previous = jax.tree.map(
        lambda p: p + 0.3 * jnp.asarray(rng.normal(size=p.shape), jnp.float32), params
    )
    current = jax.tree.map(
        lambda p: p + 0.3 * jnp.asarray(rng.normal(size=p.shape), jnp.float32), params
    )
    y = jnp.asarray(rng.integers(0, 4, (4, ROWS)), jnp.int32)
    return model, previous, current, x, y


def torch_line_grads(template, start, w, x, y, points):
    """The reference `get_line_loss`: one model for every point, gradients never zeroed
    between points (so point k returns the sum over points 0..k), loss = mean / count."""
    m = torch_mlp(jax.device_get(template))  # the architecture; every point's weights are copied in
    grads = None
    for t in np.arange(0.0, 1.01, 1.0 / points):
        with torch.no_grad():
            for p, s, v in zip(m.parameters(), start, w):
                p.copy_(s + (v - s) * t)
        out = m(torch.tensor(np.asarray(x), dtype=torch.float64))
        (
            torch.nn.functional.cross_entropy(out, torch.tensor(np.asarray(y), dtype=torch.long))
            / len(y)
        ).backward()
        g = torch.cat([p.grad.reshape(-1) for p in m.parameters()])  # a copy
        grads = g if grads is None else grads + g
    return grads


def torch_search(previous, current, batches, a):
    """`train_task_LMC_offline` on explicit batches: [(prev batch, curr batch or None), ...]."""
    flat = lambda params: [
        p.detach().clone() for p in torch_mlp(jax.device_get(params)).parameters()
    ]
    w_prev, w_curr = flat(previous), flat(current)
    net = torch_mlp(jax.device_get(previous))
    with torch.no_grad():
        for p, s, v in zip(net.parameters(), w_prev, w_curr):
            p.copy_(s + a.init_position * (v - s))
    optimizer = torch.optim.SGD(net.parameters(), lr=a.line_lr, momentum=a.line_momentum)
    for prev, curr in batches:
        w = [p.detach().clone() for p in net.parameters()]
        grads = 0
        if prev is not None:
            grads = torch_line_grads(previous, w_prev, w, *prev, a.line_samples)
        if curr is not None:
            grads = grads + torch_line_grads(previous, w_curr, w, *curr, a.line_samples)
        offset = 0
        for p in net.parameters():
            p.grad = grads[offset : offset + p.numel()].reshape(p.shape).clone()
            offset += p.numel()
        optimizer.step()
    return [p.detach().numpy() for p in net.parameters()]


def ours_as_list(params):
    return [p.detach().numpy() for p in torch_mlp(jax.device_get(params)).parameters()]


def search(a, model, previous, current, x, y, tasks, drawn=None):
    memory = {"x": x[:3], "y": y[:3]}
    valid = jnp.ones((3, ROWS), bool)
    drawn = {"x": x[3], "y": y[3]} if drawn is None else drawn
    return jax.jit(
        lambda key: a.line_search(
            previous, current, {}, memory, valid, jnp.int32(tasks), drawn, key, model
        )
    )(jax.random.PRNGKey(1))


def test_one_line_search_step_matches_the_reference_code():
    a = algorithm()
    model, previous, current, x, y = problem()
    ours = ours_as_list(search(a, model, previous, current, x, y, tasks=1))
    reference = torch_search(previous, current, [((x[0], y[0]), (x[3], y[3]))], a)
    start = ours_as_list(
        jax.tree.map(lambda p, c: p + a.init_position * (c - p), previous, current)
    )
    assert max(np.abs(o - s).max() for o, s in zip(ours, start)) > 1e-2  # the step moved w
    for o, r in zip(ours, reference):
        np.testing.assert_allclose(o, r, atol=1e-5)


def test_plain_sum_of_points_without_cumulative_gradients_differs():
    model, previous, current, x, y = problem()
    cumulative = ours_as_list(search(algorithm(), model, previous, current, x, y, tasks=1))
    plain = ours_as_list(
        search(algorithm(cumulative_grads=False), model, previous, current, x, y, tasks=1)
    )
    assert max(np.abs(c - p).max() for c, p in zip(cumulative, plain)) > 1e-3


def test_two_steps_with_momentum_match_the_reference_in_the_drawn_order():
    """Two stored tasks: two steps (batches of tasks 0 and 1 in a shuffled order; the current
    task's single batch joins the first), momentum carried between them."""
    a = algorithm()
    model, previous, current, x, y = problem()
    ours = ours_as_list(search(a, model, previous, current, x, y, tasks=2))
    errors = []
    for first, second in ((0, 1), (1, 0)):
        reference = torch_search(
            previous,
            current,
            [((x[first], y[first]), (x[3], y[3])), ((x[second], y[second]), None)],
            a,
        )
        errors.append(max(np.abs(o - r).max() for o, r in zip(ours, reference)))
    assert min(errors) < 1e-5 and max(errors) > 1e-4, errors


def test_a_longer_current_task_sample_goes_on_alone_after_the_memory_batches():
    """The reference pairs the i-th memory batch with the i-th batch of the current task's
    sample, and the longer list goes on alone: one stored task, a two-batch sample."""
    a = algorithm()
    model, previous, current, x, y = problem()
    drawn = {"x": jnp.concatenate([x[3], x[2]]), "y": jnp.concatenate([y[3], y[2]])}
    ours = ours_as_list(search(a, model, previous, current, x, y, tasks=1, drawn=drawn))
    reference = torch_search(
        previous, current, [((x[0], y[0]), (x[3], y[3])), (None, (x[2], y[2]))], a
    )
    for o, r in zip(ours, reference):
        np.testing.assert_allclose(o, r, atol=1e-5)


def test_end_task_stores_a_class_balanced_memory_and_starts_from_the_task_solution():
    a = algorithm(per_class=3)
    model = mlp(4, widths=(6,))
    rng = np.random.default_rng(0)
    y = np.array([0] * 10 + [1] * 2 + [2] * 7)  # class 1 has fewer than per_class; class 3 none
    data = task_arrays(rng.integers(0, 256, (len(y), 2, 2, 1)), y, np.zeros(len(y)), 32)
    params, _ = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    algo = a.init(params, {}, {"x": jnp.zeros((1, 2, 2, 1)), "y": jnp.zeros(1, jnp.int32)}, None)

    class State:  # what end_task reads
        pass

    state = State()
    state.algo, state.model_state = algo, {}
    state.params = jax.tree.map(lambda p: p + 1.0, params)
    new = a.end_task(state, data, jax.random.PRNGKey(3), model)
    stored = np.asarray(new.memory["y"][0])[np.asarray(new.valid[0])]
    assert sorted(stored.tolist()) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert int(new.stored) == 1 and not np.asarray(new.valid[1:]).any()
    jax.tree.map(np.testing.assert_array_equal, new.solution, state.params)  # w̄_0 = ŵ_0
    logits = a.predict(
        params, {}, new, jnp.ones((2, 4)), None, model
    )  # classifies with w̄, not params
    np.testing.assert_allclose(
        logits, model.apply(state.params, {}, jnp.ones((2, 4)), train=False)[0]["logits"]
    )


@pytest.mark.long  # a whole real-MNIST run (5-20 s): pytest -m long; math: the torch tests above
def test_continual_solution_learns_the_new_task_and_keeps_the_old_one_better_than_naive():
    """Two permuted tasks: w̄_1 learns task 1 (from 12 % before it) and keeps task 0 better
    than naive's sequential solution (87.7 % against 80.1 % when written)."""
    config = small_permuted_config(
        "mc_sgd", num_tasks=2, decay=1.0, line_lr=0.003, init_position=0.5
    )
    with tempfile.TemporaryDirectory() as workdir:
        result = loop.run(config, workdir, verbose=False)
    naive = naive_result("permuted")
    assert result.class_il[1, 1] > result.class_il[0, 1] + 0.4, result.class_il
    assert result.class_il[1, 0] >= naive.class_il[1, 0] + 0.03, (result.class_il, naive.class_il)


@pytest.mark.parametrize(
    "bad", [dict(line_batch=0), dict(line_momentum=1.0), dict(decay=0.0), dict(current_samples=0)]
)
def test_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        algorithm(**bad)
