"""La-MAML (`sequax.algorithms.lamaml`): the meta-gradient through the inner steps against a
PyTorch transcription of the official `observe`, the non-negative weight step, glances, and a
short stream where it forgets less than naive fine-tuning."""

from __future__ import annotations

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from batches import random_batch

from sequax.algorithms import LaMAML
from sequax.algorithms.lamaml import glance_order, sample_with_replacement
from sequax.algorithms.reservoir import replay_init
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import loop
from sequax.engine.step import make_train_step
from tests.algorithms.small_streams import naive_result, small_permuted_config

BATCH, REPLAY, CAPACITY = 6, 4, 8


@pytest.fixture(scope="module")
def model():
    return mlp(10, widths=(8,))


def batch_of(seed: int, size: int = BATCH):
    return random_batch(seed, size, 10)


def lamaml_state(model, algorithm, filled: int = 3, negative_alpha: bool = True):
    """A state whose memory holds `filled` examples (fewer than REPLAY: one replay row is
    empty) and whose α mixes positive and negative rates."""
    state = create_state(model, algorithm, optax.sgd(1.0), batch_of(0), seed=0)
    algo = algorithm.update(
        state.algo, state, batch_of(1, filled), {"alpha": state.algo.alpha}, jax.random.PRNGKey(5)
    )
    rng = np.random.default_rng(2)
    low = -0.1 if negative_alpha else 0.05
    alpha = jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(low, 0.3, a.shape), jnp.float32), algo.alpha
    )
    return state._replace(algo=algo._replace(alpha=alpha))


def torch_observe_glance(
    params, alpha, x, y, bx, by, *, inner_batch, clip, meta_lr, second_order, clamp_inner=False
):
    """One glance of the official `observe` (montrealrobotics/La-MAML, model/lamaml.py), float64,
    transcribed line by line: `inner_update` on each example (inner_batch at a time) with
    fast = w - g * relu(α) and, as there, no clamp (its `torch.clamp` result is discarded;
    `clamp_inner` applies it), `meta_loss` (mean cross-entropy on the whole meta batch
    bx, by) after every inner step, their mean backpropagated, `clip_grad_norm_` on the
    weights' and on the α's gradients, then `opt_lr.step()` (SGD on α) and the asynchronous
    weight step p - p.grad * relu(α_new). `bx, by` hold only real rows (no padding)."""
    names = sorted(params, key=lambda n: int(n.split("_")[1]))
    as_torch = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
    weights = [as_torch(params[n][k]) for n in names for k in ("kernel", "bias")]
    alphas = [as_torch(alpha[n][k]) for n in names for k in ("kernel", "bias")]
    x, bx = (torch.tensor(np.asarray(a, np.float64)).flatten(1) for a in (x, bx))
    y, by = (torch.tensor(np.asarray(a, np.int64)) for a in (y, by))

    def forward(ws, h):
        for i in range(0, len(ws), 2):
            h = h @ ws[i] + ws[i + 1]  # flax kernels are [in, out]
            h = torch.relu(h) if i + 2 < len(ws) else h
        return h

    fast, metas = weights, []
    for k in range(0, len(y), inner_batch):
        loss = torch.nn.functional.cross_entropy(
            forward(fast, x[k : k + inner_batch]), y[k : k + inner_batch]
        )
        grads = torch.autograd.grad(
            loss, fast, create_graph=second_order, retain_graph=second_order
        )
        if clamp_inner:
            grads = [torch.clamp(g, min=-clip, max=clip) for g in grads]
        fast = [w - g * torch.relu(a) for w, g, a in zip(fast, grads, alphas)]
        metas.append(torch.nn.functional.cross_entropy(forward(fast, bx), by))
    meta = sum(metas) / len(metas)
    meta.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(weights, clip)
        torch.nn.utils.clip_grad_norm_(alphas, clip)
    with torch.no_grad():
        new_alphas = [a - meta_lr * a.grad for a in alphas]
        new_weights = [w - w.grad * torch.relu(a) for w, a in zip(weights, new_alphas)]

    def as_tree(tensors):
        flat = iter(t.detach().numpy() for t in tensors)
        return {n: {k: next(flat) for k in ("kernel", "bias")} for n in names}

    return meta.item(), as_tree(w.grad for w in weights), as_tree(new_alphas), as_tree(new_weights)


@pytest.mark.parametrize(
    "second_order,inner_batch,clip,clamp_inner",
    [
        (
            False,
            1,
            2.0,
            False,
        ),  # the official MNIST command: first order, clip 2 (meta-gradients only)
        (False, 1, 0.05, False),  # a clip that binds
        (True, 1, 0.05, False),
        (True, 1, 0.05, True),  # the option: the clamp the official line intends
        (True, 2, 0.0, False),
    ],
)
def test_meta_gradient_and_update_match_torch(model, second_order, inner_batch, clip, clamp_inner):
    algorithm = LaMAML(
        alpha_init=0.1,
        meta_lr=0.3,
        capacity=CAPACITY,
        replay_batch=REPLAY,
        inner_batch=inner_batch,
        grad_clip=clip,
        second_order=second_order,
        clamp_inner=clamp_inner,
    )
    state = lamaml_state(model, algorithm)
    batch, rng = batch_of(3), jax.random.PRNGKey(11)

    # The engine's path: the gradient of `loss` w.r.t. the parameters, then the transform + SGD(1),
    # in float64 (float32 round-off through the second-order terms is ~2e-5 relative).
    with jax.enable_x64(True):
        to64 = lambda tree: jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float64) if a.dtype == jnp.float32 else a, tree
        )
        state64, batch64 = to64(state), to64(batch)
        loss_fn = lambda p: algorithm.loss(p, state64, batch64, rng, model)
        (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state64.params)
        tx = algorithm.optimizer(optax.sgd(1.0))
        updates, _ = tx.update(grads, tx.init(state64.params), state64.params, **aux["tx_args"])
        params = optax.apply_updates(state64.params, updates)
        assert jax.tree.leaves(params)[0].dtype == jnp.float64

    order = np.asarray(glance_order(jax.random.split(rng)[0], BATCH))  # the glance's example order
    replay = state.algo.replay
    valid = np.asarray(replay.valid)
    assert (
        int(valid.sum()) == 3
    )  # a partly filled replay batch (official: min(replay, len(M)) rows)
    x, y = np.asarray(batch["x"])[order], np.asarray(batch["y"])[order]
    meta, g_theta, alpha, weights = (
        torch_observe_glance(  # getBatch: the memory rows, then the batch
            state.params,
            state.algo.alpha,
            x,
            y,
            np.concatenate([np.asarray(replay.replay["x"])[valid], x]),
            np.concatenate([np.asarray(replay.replay["y"])[valid], y]),
            inner_batch=inner_batch,
            clip=clip,
            meta_lr=0.3,
            second_order=second_order,
            clamp_inner=clamp_inner,
        )
    )

    np.testing.assert_allclose(float(loss), meta, rtol=1e-5)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    jax.tree.map(close, aux["alpha"], alpha)  # α - η clip(∇_α)
    jax.tree.map(close, params, weights)  # θ - max(0, α_new) clip(∇_θ)
    jax.tree.map(
        close, grads, g_theta
    )  # the engine's gradient: clip(∇_θ), as torch's clipped .grad


def test_nonpositive_rates_get_no_meta_gradient(model):
    """relu(α) in the inner steps (official `inner_update`): a rate at or below 0 has no
    meta-gradient, so α there never moves again, while the positive ones do."""
    algorithm = LaMAML(capacity=CAPACITY, replay_batch=REPLAY, meta_lr=0.3, grad_clip=0.0)
    state = lamaml_state(model, algorithm)
    _, aux = algorithm.loss(state.params, state, batch_of(3), jax.random.PRNGKey(11), model)
    moved_positive = False
    for before, after in zip(jax.tree.leaves(state.algo.alpha), jax.tree.leaves(aux["alpha"])):
        before, after = np.asarray(before), np.asarray(after)
        assert (before <= 0).any()
        np.testing.assert_array_equal(after[before <= 0], before[before <= 0])
        moved_positive |= bool((after[before > 0] != before[before > 0]).any())
    assert moved_positive


def test_replay_draws_with_replacement_from_the_filled_slots():
    """The official `getBatch`: min(replay, filled) rows, each uniform over the filled slots,
    independently (so repeats occur); the remaining rows are invalid."""
    example = {"x": jnp.zeros((), jnp.float32), "y": jnp.zeros((), jnp.int32)}
    buffer = replay_init(8, 4, example).buffer
    buffer = buffer._replace(
        items={"x": jnp.arange(8.0), "y": jnp.arange(8)}, num_seen=jnp.asarray(3, jnp.int32)
    )
    draws = jax.vmap(lambda k: sample_with_replacement(buffer, 4, k))(
        jax.random.split(jax.random.PRNGKey(0), 2000)
    )
    items, valid = np.asarray(draws[0]["y"]), np.asarray(draws[1])
    np.testing.assert_array_equal(valid, np.tile([True, True, True, False], (2000, 1)))
    real = items[:, :3]
    assert real.min() == 0 and real.max() == 2  # only the filled slots
    np.testing.assert_allclose(np.bincount(real.ravel(), minlength=3) / real.size, 1 / 3, atol=0.03)
    repeats = np.mean([len(set(row)) < 3 for row in real])
    np.testing.assert_allclose(
        repeats, 1 - 2 / 9, atol=0.04
    )  # P(3 draws of 3 not all distinct) = 7/9
    full = buffer._replace(num_seen=jnp.asarray(50, jnp.int32))
    assert bool(sample_with_replacement(full, 4, jax.random.PRNGKey(1))[1].all())


def test_second_order_terms_change_the_meta_gradient(model):
    """The two variants differ: the exact meta-gradient carries the inner Hessian terms."""
    state = lamaml_state(model, LaMAML(capacity=CAPACITY, replay_batch=REPLAY))
    batch, rng = batch_of(3), jax.random.PRNGKey(11)
    grads = {}
    for second_order in (True, False):
        algorithm = LaMAML(
            capacity=CAPACITY, replay_batch=REPLAY, grad_clip=0.0, second_order=second_order
        )
        grads[second_order] = jax.grad(
            lambda p, a=algorithm: a.loss(p, state, batch, rng, model)[0]
        )(state.params)
    gap = max(
        float(jnp.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False]))
    )
    assert gap > 1e-4


def test_weights_step_only_where_the_rate_is_positive(model):
    """θ moves by max(0, α) ⊙ ∇: coordinates whose new α is negative stay put, and α itself
    is not clipped (the paper clips only in the weight update)."""
    algorithm = LaMAML(capacity=CAPACITY, replay_batch=REPLAY, meta_lr=0.0)
    state = lamaml_state(model, algorithm)
    stepped, _ = jax.jit(make_train_step(model, algorithm, optax.sgd(1.0)))(state, batch_of(3))
    alpha = jax.tree.leaves(stepped.algo.alpha)
    assert any((a < 0).any() for a in alpha)  # negative rates survive in the state
    for before, after, a in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(stepped.params), alpha
    ):
        before, after, a = np.asarray(before), np.asarray(after), np.asarray(a)
        np.testing.assert_array_equal(after[a <= 0], before[a <= 0])
        assert (after[a > 0] != before[a > 0]).any()


def test_glances_repeat_the_step_but_push_the_batch_once(model):
    batch = batch_of(3)
    results = {}
    for glances in (1, 3):
        algorithm = LaMAML(capacity=CAPACITY, replay_batch=REPLAY)
        state = create_state(model, algorithm, optax.sgd(1.0), batch, seed=0)
        results[glances], metrics = jax.jit(
            make_train_step(model, algorithm, optax.sgd(1.0), glances=glances)
        )(state, batch)
        assert int(results[glances].step) == 1  # a batch is one step, however many glances
        assert (
            int(results[glances].algo.replay.buffer.num_seen) == BATCH
        )  # pushed on the first glance only
        assert jnp.shape(metrics["loss"]) == ()
    # Later glances see the pushed batch in their replay, and take further steps.
    assert bool(results[3].algo.replay.valid.all())
    assert any(
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(results[1].params), jax.tree.leaves(results[3].params))
    )


@pytest.mark.long  # 28 s end to end: pytest -m long; the math is checked against torch above
def test_forgets_less_than_naive_on_a_short_permuted_stream():
    """Two permuted tasks (1,000 examples each): naive fine-tuning (3 epochs, lr 0.1) loses
    much of task 0; La-MAML (1 epoch, 5 glances, memory 200, first order) keeps more of it
    and ends higher on average."""
    config = small_permuted_config(
        "lamaml",
        capacity=200,
        replay_batch=10,
        alpha_init=0.15,
        meta_lr=0.3,
        second_order=False,
    )
    config.optimizer.lr = 1.0  # the step size is max(0, α)
    config.training.epochs = 1
    config.training.glances = 5
    with tempfile.TemporaryDirectory() as workdir:
        result = loop.run(config, workdir, verbose=False)
    naive = naive_result("permuted")
    ours, theirs = result.summary["domain_il"], naive.summary["domain_il"]
    # Measured: forgetting 1.1 against 8.3 points, ACC 86.5 against 83.8 %.
    assert ours["forgetting"] < theirs["forgetting"] / 2, (ours, theirs)
    assert ours["acc"] > theirs["acc"] + 0.01, (ours, theirs)
