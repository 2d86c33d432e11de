"""DualPrompt (`sequax.algorithms.dualprompt`): the contract on a tiny ViT of 5 layers, and a
float64 PyTorch transcription of LAMDA-PILOT's DualPrompt (`backbone/prompt.py`
`EPrompt.forward` with `use_prefix_tune_for_e_prompt`, `backbone/vit_dualprompt.py`
`forward_features` with the G-prompt at layers 0-1 and E-prompts at 2-4 through
`PreT_Attention`, `forward_head` with `head_type="token"`, `models/dualprompt.py`
`_init_train`'s masked loss) on the same parameters: the training loss (the task's own
E-prompt, `use_prompt_mask`), the evaluation logits (key-query matching, batchwise) and the
gradients of the G- and E-prompts, keys and head agree to 1e-5, with the reference's reshape
of the selected prompts and with mammoth's permute fix.
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
from sequax.algorithms.dualprompt import DualPrompt
from sequax.core.models import mlp
from sequax.core.state import CLState
from sequax.core.task_data import gather_batch
from sequax.core.vit import vit
from sequax.testing.synthetic import synthetic_stream

CLASSES, HEADS, WIDTH = 4, 2, 16
SMALL = dict(pool_size=4, prompt_length=2, g_length=2, top_k=1)


def tiny_vit(depth=5):
    return vit(CLASSES, width=WIDTH, depth=depth, num_heads=HEADS, mlp_dim=32, patch_size=4)


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(num_classes=CLASSES, image_shape=(8, 8, 1))


# The contract on a tiny ViT: tests/algorithms/test_contract.py ("dualprompt").


def test_hyperparameters_and_model_are_checked():
    with pytest.raises(ValueError, match="disjoint"):
        DualPrompt(g_layers=(0, 2))
    with pytest.raises(ValueError, match="top_k=5 exceeds pool_size=4"):
        DualPrompt(pool_size=4, top_k=5)
    with pytest.raises(ValueError, match="needs a ViT backbone: set config.model.name='vit'"):
        DualPrompt().wrap_model(mlp(CLASSES))
    with pytest.raises(ValueError, match="prompts layer 4, but the ViT has 3 layers"):
        DualPrompt().wrap_model(tiny_vit(depth=3))
    assert DualPrompt(g_layers=[0], e_layers=[1, 2]).e_layers == (1, 2)
    assert DualPrompt.needs_boundaries  # the task's own E-prompt is chosen by state.task


# ---------------- The PyTorch transcription ---------------------------------------------------


def reference_forward(net, params, x, *, task, top_k, permute_fix):
    """PromptVitNet.forward on the DualPrompt ViT: the query from the frozen ViT, EPrompt's
    matching (batchwise) or, training, the task's prompt mask; the G-prompt's key and value
    halves at layers 0-1 and the selected E-prompts' at 2-4 through PreT_Attention (the
    TorchViT's `prefixes` hook, [B, 2, Lp, H, hd] split as PreT_Attention splits it)."""
    t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)  # noqa: E731
    g, e, key = (t(params["prompt"][k]) for k in ("g", "e", "keys"))
    weight, bias = t(params["head"]["kernel"]), t(params["head"]["bias"])
    hd = WIDTH // HEADS
    g6 = g.reshape(*g.shape[:-1], HEADS, hd)  # num_g, 2, g_length, H, hd
    e7 = e.reshape(*e.shape[:-1], HEADS, hd)  # num_e, 2, pool, length, H, hd
    x = torch.tensor(np.asarray(x, np.float64))
    batch = x.shape[0]
    with torch.no_grad():
        cls_features = net(x)["features"]
    prompt_key_norm, x_embed_norm = l2_normalize(key, -1), l2_normalize(cls_features, -1)
    similarity = torch.matmul(prompt_key_norm, x_embed_norm.t()).t()
    _, idx = torch.topk(similarity, k=top_k, dim=1)
    idx = batchwise(idx, e.shape[2], top_k)
    if task is not None:  # vit_dualprompt.forward_features: use_prompt_mask and train
        idx = torch.arange(task * top_k, (task + 1) * top_k).unsqueeze(0).expand(batch, -1)
    raw = e7[:, :, idx]  # num_e, 2, B, top_k, length, H, hd
    num_layers, dual, _, k, length, heads, hdim = raw.shape
    if permute_fix:
        raw = raw.permute(0, 2, 1, 3, 4, 5, 6)
    batched = raw.reshape(num_layers, batch, dual, k * length, heads, hdim)
    reduce_sim = torch.sum(prompt_key_norm[idx] * x_embed_norm.unsqueeze(1)) / batch

    def split(prompt):  # [B, 2, Lp, H, hd] -> the hook's (keys, values) [B, Lp, D]
        return tuple(prompt[:, j].reshape(batch, -1, WIDTH) for j in (0, 1))

    prefixes = {i: split(g6[torch.tensor([i] * batch)]) for i in (0, 1)}
    prefixes.update({2 + i: split(batched[i]) for i in range(3)})
    features = net(x, prefixes=prefixes)["features"]  # head_type "token": [CLS]
    logits = features @ weight + bias
    return logits, reduce_sim, idx, (g, e, key, weight, bias)


@pytest.fixture(scope="module")
def setup(stream):
    """Task 1 started (classes 2, 3 trained, 0, 1 known): a batch, the JAX loss, gradients and
    predictions; and the train-mode forward with the permute fix."""
    algorithm = DualPrompt(**SMALL)
    model = algorithm.wrap_model(tiny_vit())
    data = stream.tasks[1]
    batch = gather_batch(data, jnp.arange(8))
    params, _ = jax.jit(model.init)(jax.random.PRNGKey(3), batch["x"])
    algo = algorithm.init(params, {}, batch, None)
    state = CLState(jnp.int32(0), jnp.int32(1), params, {}, (), algo, jax.random.PRNGKey(0))
    state = state._replace(algo=algorithm.start_task(state, data, None, model))

    @jax.jit
    def run(state, batch):
        grad_fn = jax.value_and_grad(algorithm.loss, has_aux=True)
        (loss, aux), grads = grad_fn(state.params, state, batch, None, model)
        logits = algorithm.predict(state.params, {}, state.algo, batch["x"], batch["task"], model)
        return loss, aux, grads, logits

    fixed = DualPrompt(**SMALL, permute_fix=True).wrap_model(tiny_vit())
    apply_fixed = jax.jit(lambda p, x, t: fixed.apply(p, {}, x, train=True, task=t)[0])
    return batch, state, run(state, batch), apply_fixed


def reference_loss(ref_logits, reduce_sim, batch):
    known, total = 2, 4  # models/dualprompt.py: logits[:, :total], then [:, :known] = -inf
    masked = ref_logits[:, :total].clone()
    masked[:, :known] = float("-inf")
    targets = torch.tensor(np.asarray(batch["y"])).long()
    return F.cross_entropy(masked, targets) - 0.1 * reduce_sim


def test_matches_the_reference(setup):
    batch, state, (loss, aux, grads, logits), _ = setup
    params = state.params
    net = TorchViT.from_flax(params["vit"], num_heads=HEADS)
    ref_logits, reduce_sim, idx, leaves = reference_forward(
        net, params, batch["x"], task=1, top_k=1, permute_fix=False
    )
    np.testing.assert_array_equal(aux["outputs"]["prompt_idx"], idx)  # the task's own: 1
    ref_loss = reference_loss(ref_logits, reduce_sim, batch)
    ref_loss.backward()
    np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["metrics"]["reduce_sim"], reduce_sim.item(), rtol=1e-5)
    np.testing.assert_allclose(aux["outputs"]["logits"], ref_logits.detach(), rtol=1e-5, atol=1e-5)
    ours = [grads["prompt"][k] for k in ("g", "e", "keys")]
    ours += [grads["head"]["kernel"], grads["head"]["bias"]]
    for g, leaf in zip(ours, leaves, strict=True):
        np.testing.assert_allclose(g, leaf.grad.numpy(), rtol=1e-5, atol=1e-5)
    e_grad = np.abs(np.asarray(grads["prompt"]["e"])).sum(axis=(0, 1, 3, 4))
    assert e_grad[1] > 0 and np.all(e_grad[[0, 2, 3]] == 0)  # only the task's E-prompt trains

    with torch.no_grad():  # evaluation: matching and batchwise selection, no prompt mask
        ref_eval = reference_forward(net, params, batch["x"], task=None, top_k=1, permute_fix=False)
    ref_eval, known = ref_eval[0].numpy(), 2
    np.testing.assert_allclose(logits[:, known:], ref_eval[:, known:], rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(logits)[:, :known] == np.finfo(np.float32).min)  # not started


def test_permute_fix_matches_the_fixed_reference(setup):
    """mammoth's `use_permute_fix` (its issue #56): each example's key half as keys, value half
    as values. Without it, with one prompt for the whole batch, the first half of the batch
    takes the key half as keys and values and the second half the value half."""
    batch, state, (_, aux, *_), apply_fixed = setup
    net = TorchViT.from_flax(state.params["vit"], num_heads=HEADS)
    with torch.no_grad():
        ref = reference_forward(net, state.params, batch["x"], task=1, top_k=1, permute_fix=True)
    logits = apply_fixed(state.params, batch["x"], jnp.int32(1))["logits"]
    np.testing.assert_allclose(logits, ref[0].numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits, aux["outputs"]["logits"], atol=1e-3)


def test_tasks_past_the_pool_fall_back_to_matching(setup):
    batch, state, _, apply_fixed = setup
    outputs = apply_fixed(state.params, batch["x"], jnp.int32(3))
    np.testing.assert_array_equal(outputs["prompt_idx"], [[3]] * 8)
    outputs = apply_fixed(state.params, batch["x"], jnp.int32(4))  # 5 * top_k > pool_size 4
    sim = pool.similarity(outputs["query"], state.params["prompt"]["keys"])[0]
    np.testing.assert_array_equal(outputs["prompt_idx"], pool.select(sim, 1, True))
