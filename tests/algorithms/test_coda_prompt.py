"""CODA-Prompt (`sequax.algorithms.coda_prompt`): the contract on a tiny ViT, Gram-Schmidt's
math, and a float64 PyTorch transcription of LAMDA-PILOT's `CodaPrompt` (backbone/prompt.py:
forward's weights, prompt and orthogonality penalty; gram_schmidt) and of `CodaPromptVitNet`'s
forward and the training loss of models/coda_prompt.py, on the same parameters
(tests/vit_reference.py's TorchViT for the prefixed ViT). Gram-Schmidt's `randn_like` draws
are replaced by the draws the JAX code made.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from vit_reference import TorchViT

from sequax.algorithms.coda_prompt import CodaPrompt, gram_schmidt
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.core.task_data import gather_batch
from sequax.core.vit import vit
from sequax.testing.synthetic import synthetic_stream

CLASSES, POOL, LENGTH, WIDTH, HEADS, MU = 4, 4, 2, 16, 2, 0.1
SMALL = dict(num_tasks=2, pool_size=POOL, prompt_length=LENGTH, ortho_mu=MU, cache_examples=43)


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(num_classes=CLASSES, image_shape=(8, 8, 1))


@pytest.fixture(scope="module")
def backbone():
    return vit(CLASSES, width=WIDTH, depth=5, num_heads=HEADS, mlp_dim=32, patch_size=4)


# The contract on a tiny ViT: tests/algorithms/test_contract.py ("coda_prompt").


def test_hyperparameters_and_backbone_are_checked(backbone):
    for bad, match in (
        (dict(pool_size=1, num_tasks=2), "pool_size"),
        (dict(prompt_length=3), "even"),
        (dict(ortho_mu=-1.0), "ortho_mu"),
        (dict(prompt_layers=(0, 0)), "prompt_layers"),
        (dict(cache_examples=-1), "cache_examples"),
    ):
        with pytest.raises(ValueError, match=match):
            CodaPrompt(**bad)
    with pytest.raises(ValueError, match="model.name='vit'"):
        CodaPrompt().wrap_model(mlp(CLASSES))
    with pytest.raises(ValueError, match="prompt_layers"):
        CodaPrompt(prompt_layers=(5,)).wrap_model(backbone)


# ---------------- Gram-Schmidt ------------------------------------------------------------------


def torch_gram_schmidt(vv, task_count, pool, n_tasks, draws):
    """CodaPrompt.gram_schmidt, its `torch.randn_like(vv[:, k])` replaced by `draws[k - s]`."""

    def projection(u, v):
        denominator = (u * u).sum()
        if denominator < 1e-8:
            return None
        return (v * u).sum() / denominator * u

    shape = vv.shape
    vv = vv.reshape(vv.shape[0], -1).T
    uu = torch.zeros_like(vv)
    pt = int(pool / n_tasks)
    s, f = int(task_count * pt), int((task_count + 1) * pt)
    if s > 0:
        uu[:, 0:s] = vv[:, 0:s].clone()
    for k in range(s, f):
        vk = draws[k - s]
        uk = 0
        for j in range(0, k):
            uk = uk + projection(uu[:, j].clone(), vk)
        uu[:, k] = vk - uk
    for k in range(s, f):
        uk = uu[:, k].clone()
        uu[:, k] = uk / (uk.norm())
    return uu.T.reshape(shape)


def test_gram_schmidt_is_the_references_and_orthonormal():
    pool, n, key = 6, 5, jax.random.PRNGKey(3)
    old = np.random.default_rng(0).normal(size=(pool, n)).astype(np.float32)
    gs = jax.jit(gram_schmidt, static_argnums=2)
    draws = [np.asarray(jax.random.normal(jax.random.fold_in(key, i), (n,))) for i in range(2)]
    # Trained (not orthogonal) earlier rows: the reference's classical projections.
    for task in (0, 1, 2):
        ours = gs(jnp.asarray(old), jnp.int32(2 * task), 2, key)
        ref = torch_gram_schmidt(
            torch.tensor(old, dtype=torch.float64),
            task,
            pool,
            3,
            [torch.tensor(d, dtype=torch.float64) for d in draws],
        )
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-5)
    # Orthonormal earlier rows: the new rows are orthonormal and orthogonal to them.
    basis = np.linalg.qr(np.random.default_rng(1).normal(size=(n, n)))[0].T.astype(np.float32)
    rows = np.concatenate([basis[:2], np.ones((pool - 2, n), np.float32)])
    ours = np.asarray(gs(jnp.asarray(rows), jnp.int32(2), 2, key))
    np.testing.assert_array_equal(ours[:2], rows[:2])
    np.testing.assert_allclose(ours[:4] @ ours[:4].T, np.eye(4), atol=1e-6)
    np.testing.assert_array_equal(ours[4:], 0.0)


# ---------------- The loss against the reference ------------------------------------------------


@pytest.fixture(scope="module")
def setup(stream, backbone):
    """The state at task 1: task 0's components drawn and then moved ("trained"), task 1's
    drawn against them; a batch of task 1 (with "index")."""
    algorithm = CodaPrompt(**SMALL)
    model = algorithm.wrap_model(backbone)
    batch = gather_batch(stream.tasks[1], jnp.arange(5))
    batch["index"] = jnp.arange(5)
    state = jax.jit(lambda b: create_state(model, algorithm, optax.sgd(0.1), b, seed=0))(batch)
    start = jax.jit(lambda s, d, k: algorithm.start_task(s, d, k, model))
    state = state._replace(algo=start(state, stream.tasks[0], jax.random.PRNGKey(1)))
    rng = np.random.default_rng(0)
    moved = jax.tree.map(
        lambda p: p + 0.3 * jnp.asarray(rng.normal(size=p.shape), jnp.float32),
        state.params["prompt"],
    )
    moved = jax.tree.map(  # task 0's rows only: the rest stay as they are (zero)
        lambda m, p: jnp.where((jnp.arange(POOL) < 2).reshape(1, POOL, *[1] * (p.ndim - 2)), m, p),
        moved,
        state.params["prompt"],
    )
    head = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), state.params["head"]
    )
    params = {**state.params, "prompt": moved, "head": head}
    state = state._replace(params=params, task=jnp.int32(1))
    before = jax.tree.map(jnp.add, params["prompt"], state.algo["offset"])
    state = state._replace(algo=start(state, stream.tasks[1], jax.random.PRNGKey(2)))
    return algorithm, model, state, batch, before


def effective(state):
    return jax.tree.map(jnp.add, state.params["prompt"], state.algo["offset"])


def test_start_task_draws_only_the_new_components(setup):
    _, _, state, _, before = setup
    after = effective(state)
    for name in ("k", "a", "p"):
        np.testing.assert_allclose(after[name][:, :2], before[name][:, :2], atol=1e-6)
        rows = np.asarray(after[name][:, 2:]).reshape(5, 2, -1)
        for layer in rows:  # unit rows
            np.testing.assert_allclose(np.linalg.norm(layer, axis=1), 1.0, rtol=1e-5)
    assert np.asarray(state.algo["current"]).tolist() == [False, False, True, True]


def torch_coda(prompt, head, vit_params, x, y, task_count, train):
    """CodaPromptVitNet.forward (+ CodaPrompt.forward per layer) and the loss of
    models/coda_prompt.py `_init_train` at task `task_count` (known = 2 · task_count)."""
    net = TorchViT.from_flax(vit_params, num_heads=HEADS)
    with torch.no_grad():
        q = net(x)["features"]
    pt = POOL // 2
    s, f = task_count * pt, (task_count + 1) * pt
    prefixes, prompt_loss = {}, 0.0
    for layer in range(5):
        K, A, p = (prompt[n][layer] for n in ("k", "a", "p"))
        if train:
            if task_count > 0:
                K = torch.cat((K[:s].detach().clone(), K[s:f]), dim=0)
                A = torch.cat((A[:s].detach().clone(), A[s:f]), dim=0)
                p = torch.cat((p[:s].detach().clone(), p[s:f]), dim=0)
            else:
                K, A, p = K[s:f], A[s:f], p[s:f]
        else:
            K, A, p = K[0:f], A[0:f], p[0:f]
        a_querry = torch.einsum("bd,kd->bkd", q, A)
        n_K = F.normalize(K, dim=1)
        qn = F.normalize(a_querry, dim=2)
        aq_k = torch.einsum("bkd,kd->bk", qn, n_K)
        P_ = torch.einsum("bk,kld->bld", aq_k, p)
        i = LENGTH // 2
        prefixes[layer] = (P_[:, :i, :], P_[:, i:, :])

        def ortho_penalty(t):
            return ((t @ t.T - torch.eye(t.shape[0], dtype=t.dtype)) ** 2).mean()

        prompt_loss = prompt_loss + ortho_penalty(K) * MU + ortho_penalty(A) * MU
        prompt_loss = prompt_loss + ortho_penalty(p.view(p.shape[0], -1)) * MU
    out = net(x, prefixes=prefixes)["features"]
    logits = out @ head["kernel"] + head["bias"]
    if not train:
        return logits
    known, total = 2 * task_count, 2 * (task_count + 1)
    logits = logits[:, :total].clone()
    logits[:, :known] = float("-inf")
    return F.cross_entropy(logits, y.long()) + prompt_loss


def test_loss_gradients_and_predictions_match_the_reference(setup):
    algorithm, model, state, batch, _ = setup
    loss_fn = jax.jit(
        jax.value_and_grad(lambda p, s, b: algorithm.loss(p, s, b, jax.random.PRNGKey(0), model)[0])
    )
    loss, grads = loss_fn(state.params, state, batch)
    t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)  # noqa: E731
    prompt = {k: t(v) for k, v in effective(state).items()}
    head = {k: t(v) for k, v in state.params["head"].items()}
    x, y = torch.tensor(np.asarray(batch["x"], np.float64)), torch.tensor(np.asarray(batch["y"]))
    ref = torch_coda(prompt, head, state.params["vit"], x, y, 1, train=True)
    ref.backward()
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-5)
    for name in ("k", "a", "p"):
        np.testing.assert_allclose(
            grads["prompt"][name], prompt[name].grad.numpy(), rtol=1e-5, atol=1e-5
        )
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(
            grads["head"][name], head[name].grad.numpy(), rtol=1e-5, atol=1e-5
        )
    assert not np.asarray(grads["prompt"]["p"][:, :2]).any()  # task 0's: detached
    assert not any(np.asarray(g).any() for g in jax.tree.leaves(grads["vit"]))  # frozen
    # Evaluation: every component of tasks 0 and 1, no mask.
    logits = jax.jit(lambda p, a, x: algorithm.predict(p, {}, a, x, None, model))(
        state.params, state.algo, batch["x"]
    )
    with torch.no_grad():
        ref_logits = torch_coda(prompt, head, state.params["vit"], x, y, 1, train=False)
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-5, atol=1e-5)


def test_cached_queries_give_the_computed_loss(setup):
    algorithm, model, state, batch, _ = setup
    loss = jax.jit(lambda s, b: algorithm.loss(s.params, s, b, jax.random.PRNGKey(0), model)[0])
    assert state.algo["cache"].shape == (43, WIDTH) and np.asarray(state.algo["cache"]).any()
    without = {k: v for k, v in batch.items() if k != "index"}
    np.testing.assert_allclose(loss(state, batch), loss(state, without), rtol=1e-6)
