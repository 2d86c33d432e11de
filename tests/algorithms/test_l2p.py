"""L2P (`sequax.algorithms.l2p`, `sequax.algorithms.prompt_pool`): the contract on a tiny ViT,
the selection math, and a float64 PyTorch transcription of LAMDA-PILOT's L2P (`backbone/
prompt.py` `Prompt.forward`, `backbone/vit_l2p.py` `forward_features`/`forward_head` with
`head_type="prompt"`, `models/l2p.py` `_init_train`'s masked loss) on the same parameters:
loss, logits and the gradients of the prompts, keys and head agree to 1e-5; the cached query
gives the uncached loss (to float32 rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vit_reference import TorchViT

from benchmarks.torch_prompt import batchwise, l2_normalize  # the references' selection
from sequax.algorithms import prompt_pool as pool
from sequax.algorithms.l2p import L2P
from sequax.core.models import mlp
from sequax.core.state import CLState
from sequax.core.task_data import gather_batch
from sequax.core.vit import vit
from sequax.testing.synthetic import synthetic_stream

CLASSES, HEADS = 4, 2
SMALL = dict(pool_size=4, prompt_length=2, top_k=2)


def tiny_vit():
    return vit(CLASSES, width=16, depth=2, num_heads=HEADS, mlp_dim=32, patch_size=4)


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(num_classes=CLASSES, image_shape=(8, 8, 1))


# The contract on a tiny ViT: tests/algorithms/test_contract.py ("l2p").


def test_hyperparameters_and_model_are_checked():
    with pytest.raises(ValueError, match="top_k=5 exceeds pool_size=4"):
        L2P(pool_size=4, top_k=5)
    with pytest.raises(ValueError, match="prompt_init"):
        L2P(prompt_init="normal")
    with pytest.raises(ValueError, match="cache_examples"):
        L2P(cache_examples=-1)
    with pytest.raises(ValueError, match="pull_coeff"):
        L2P(pull_coeff=-0.1)
    with pytest.raises(ValueError, match="needs a ViT backbone: set config.model.name='vit'"):
        L2P().wrap_model(mlp(CLASSES))


# ---------------- The selection math ----------------------------------------------------------


def test_batchwise_takes_the_most_chosen_prompts():
    idx = np.array([[0, 1], [1, 2], [1, 3], [2, 1], [2, 0]])  # counts 2, 4, 3, 1
    np.testing.assert_array_equal(pool.batchwise(jnp.asarray(idx), 6), [[1, 2]] * 5)
    rng = np.random.default_rng(0)
    for _ in range(20):  # random draws whose k-th and (k+1)-th counts differ (no tie to break)
        sim = rng.normal(size=(7, 6))
        idx = np.argsort(-sim, axis=1)[:, :3]
        counts = np.sort(np.bincount(idx.ravel(), minlength=6))[::-1]
        if counts[2] == counts[3]:
            continue
        ours = pool.select(jnp.asarray(sim), 3, batchwise_prompt=True)
        ref = batchwise(torch.tensor(idx), 6, 3)
        assert {tuple(sorted(r)) for r in np.asarray(ours)} == {tuple(sorted(ref[0].tolist()))}
    ties = pool.batchwise(jnp.asarray([[0, 3], [3, 0]]), 4)  # equal counts: the lower id first
    np.testing.assert_array_equal(ties, [[0, 3], [0, 3]])


def test_selection_and_pull_term():
    query = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
    keys = jnp.asarray([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    sim, q, k = pool.similarity(query, keys)
    c = 1 / np.sqrt(2)
    np.testing.assert_allclose(sim, [[1, c, 0], [0, c, -1]], atol=1e-7)
    idx = pool.select(sim, 2, batchwise_prompt=False)
    np.testing.assert_array_equal(idx, [[0, 1], [1, 0]])
    np.testing.assert_allclose(pool.pull_term(q, k, idx), (1 + c + c + 0) / 2, rtol=1e-6)


# ---------------- The PyTorch transcription ---------------------------------------------------


def reference_forward(net, params, x, top_k):
    """PromptVitNet.forward with the prompt-pool ViT: the query from the frozen ViT, the pool's
    matching and batchwise selection, the prompts prepended with the [CLS] position (the
    expanded pos_embed of `resize_pos_embed`), the head over the prompt tokens' mean."""
    t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)  # noqa: E731
    prompt, key = t(params["prompt"]["prompts"]), t(params["prompt"]["keys"])
    weight, bias = t(params["head"]["kernel"]), t(params["head"]["bias"])
    x = torch.tensor(np.asarray(x, np.float64))
    with torch.no_grad():
        cls_features = net(x)["features"]
    prompt_norm, x_embed_norm = l2_normalize(key, 1), l2_normalize(cls_features, 1)
    similarity = x_embed_norm @ prompt_norm.t()
    _, idx = torch.topk(similarity, k=top_k, dim=1)
    idx = batchwise(idx, prompt.shape[0], top_k)
    batched_prompt = prompt[idx].reshape(x.shape[0], -1, prompt.shape[-1])
    reduce_sim = torch.sum(prompt_norm[idx] * x_embed_norm.unsqueeze(1)) / x.shape[0]
    prompts = batched_prompt + net.pos_embed[:, :1]  # the [CLS] position over the prompts
    tokens = net(x, prompts={0: prompts})["tokens"]
    pre_logits = tokens[:, 1 : 1 + batched_prompt.shape[1]].mean(dim=1)
    logits = pre_logits @ weight + bias
    return logits, reduce_sim, idx, (prompt, key, weight, bias)


@pytest.fixture(scope="module")
def setup(stream):
    """The state after task 1 started (classes 2, 3 trained, 0, 1 known), a batch of it, and
    the JAX loss, gradients and predictions."""
    algorithm = L2P(**SMALL)
    model = algorithm.wrap_model(tiny_vit())
    data = stream.tasks[1]
    batch = gather_batch(data, jnp.arange(8))
    params, _ = jax.jit(model.init)(jax.random.PRNGKey(3), batch["x"])
    algo = algorithm.init(params, {}, batch, None)
    state = CLState(jnp.int32(0), jnp.int32(1), params, {}, (), algo, jax.random.PRNGKey(0))
    state = state._replace(algo=algorithm.start_task(state, data, jax.random.PRNGKey(0), model))
    rng = jax.random.PRNGKey(1)
    grad_fn = jax.jit(jax.value_and_grad(algorithm.loss, has_aux=True), static_argnums=4)
    (loss, aux), grads = grad_fn(state.params, state, batch, rng, model)
    predict = jax.jit(algorithm.predict, static_argnums=5)
    logits = predict(state.params, {}, state.algo, batch["x"], batch["task"], model)
    return algorithm, model, state, batch, loss, aux, grads, logits


def test_matches_the_reference(setup):
    algorithm, _, state, batch, loss, aux, grads, logits = setup
    np.testing.assert_array_equal(state.algo["train_mask"], [False, False, True, True])
    params = state.params
    net = TorchViT.from_flax(params["vit"], num_heads=HEADS)
    ref_logits, reduce_sim, idx, leaves = reference_forward(net, params, batch["x"], 2)
    np.testing.assert_array_equal(np.sort(aux["outputs"]["prompt_idx"], 1), np.sort(idx, 1))
    known, total = 2, 4  # models/l2p.py: logits[:, :total], then [:, :known] = -inf
    masked = ref_logits[:, :total].clone()
    masked[:, :known] = float("-inf")
    targets = torch.tensor(np.asarray(batch["y"])).long()
    ref_loss = F.cross_entropy(masked, targets) - 0.1 * reduce_sim
    ref_loss.backward()
    np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["metrics"]["reduce_sim"], reduce_sim.item(), rtol=1e-5)
    ref_logits = ref_logits.detach().numpy()
    np.testing.assert_allclose(aux["outputs"]["logits"], ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[:, known:], ref_logits[:, known:], rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(logits)[:, :known] == np.finfo(np.float32).min)  # not started
    ours = [grads["prompt"]["prompts"], grads["prompt"]["keys"]]
    ours += [grads["head"]["kernel"], grads["head"]["bias"]]
    for g, leaf in zip(ours, leaves, strict=True):
        np.testing.assert_allclose(g, leaf.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(grads["prompt"]["keys"]).sum()) > 0  # the pull term reaches the keys


def test_only_prompts_keys_and_head_train(setup):
    _, model, state, *_ = setup
    mask = model.trainable(state.params)
    assert not any(jax.tree.leaves(mask["vit"]))
    assert all(jax.tree.leaves(mask["prompt"])) and all(jax.tree.leaves(mask["head"]))


def test_masks_follow_the_tasks(setup, stream):
    """train_mask: the classes of the task started; seen: of every task started so far."""
    algorithm, model, state, *_ = setup
    first = state._replace(task=jnp.int32(0), algo=pool.class_masks(CLASSES))
    algo = algorithm.start_task(first, stream.tasks[0], None, model)
    np.testing.assert_array_equal(algo["train_mask"], [True, True, False, False])
    algo = algorithm.start_task(state._replace(algo=algo), stream.tasks[1], None, model)
    np.testing.assert_array_equal(algo["train_mask"], [False, False, True, True])
    np.testing.assert_array_equal(algo["seen"], [True] * 4)


def test_cached_query_gives_the_uncached_loss(setup, stream):
    algorithm, model, state, _, *_ = setup
    data, index = stream.tasks[1], jnp.asarray([5, 0, 28, 3, 17, 9, 12, 1])
    batch = {**gather_batch(data, index), "index": index}
    cached = L2P(**SMALL, cache_examples=48)
    algo = cached.start_task(state, data, None, model)
    assert algo["query_cache"].shape == (48, 16)
    loss_fn = jax.jit(lambda a, s, b: a.loss(s.params, s, b, None, model)[0], static_argnums=0)
    with_cache = loss_fn(cached, state._replace(algo=algo), batch)
    without = loss_fn(algorithm, state, {k: v for k, v in batch.items() if k != "index"})
    # Equal up to float32 rounding: the cache's query comes from another XLA program (a scan
    # over 48-example batches) than the step's, which may round its last bits differently.
    np.testing.assert_allclose(with_cache, without, rtol=1e-5)
    zeroed = state._replace(algo={**algo, "query_cache": jnp.zeros_like(algo["query_cache"])})
    assert float(loss_fn(cached, zeroed, batch)) != float(with_cache)  # the cache is what is read
    query = pool.query_fn(state.params, model)(batch["x"])
    np.testing.assert_allclose(algo["query_cache"][index], query, rtol=1e-5, atol=1e-6)
