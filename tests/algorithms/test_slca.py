"""SLCA (`sequax.algorithms.slca`): the contract on a tiny ViT, the slow learner's update, and a
float64 PyTorch transcription of LAMDA-PILOT's models/slca.py (`_run`'s loss,
`_compute_class_mean`, `_stage2_compact_classifier` with its logit normalisation and SGD) on
the same parameters (tests/vit_reference.py's TorchViT for the backbone). The reference's
MultivariateNormal draws and `torch.randperm` are replaced by the draws the JAX code made.
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

from sequax.algorithms.slca import SLCA
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.core.task_data import gather_batch
from sequax.core.vit import vit
from sequax.testing.synthetic import synthetic_stream

CLASSES, WIDTH, HEADS = 4, 16, 2
SMALL = dict(ca_epochs=2, num_sampled_pcls=8, stats_batch=16)


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(num_classes=CLASSES, image_shape=(8, 8, 1))


@pytest.fixture(scope="module")
def backbone():
    return vit(CLASSES, width=WIDTH, depth=2, num_heads=HEADS, mlp_dim=32, patch_size=4)


# The contract on a tiny ViT: tests/algorithms/test_contract.py ("slca").


def test_hyperparameters_and_backbone_are_checked():
    for name in ("backbone_lr_factor", "ca_lr", "ca_momentum", "ca_weight_decay"):
        with pytest.raises(ValueError, match=name):
            SLCA(**{name: -1.0})
    for name in ("num_sampled_pcls", "stats_batch", "ca_epochs"):
        with pytest.raises(ValueError, match=name):
            SLCA(**{name: -1})
    with pytest.raises(ValueError, match="ca_with_logit_norm"):
        SLCA(ca_with_logit_norm=-0.1)
    with pytest.raises(ValueError, match="model.name='vit'"):
        SLCA().wrap_model(mlp(CLASSES))


def test_the_backbone_learns_at_a_hundredth_of_the_heads_rate(setup):
    params = setup[2].params
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    plain, slow = optax.sgd(0.1, momentum=0.9), SLCA().optimizer(optax.sgd(0.1, momentum=0.9))

    @jax.jit
    def updates(params):
        state_plain, state_slow = plain.init(params), slow.init(params)
        for _ in range(2):  # the second step carries momentum
            up_plain, state_plain = plain.update(grads, state_plain, params)
            up_slow, state_slow = slow.update(grads, state_slow, params)
        return up_plain, up_slow

    up_plain, up_slow = updates(params)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(up_slow["head"][name], up_plain["head"][name])
    rest = lambda t: {k: v for k, v in t.items() if k != "head"}  # noqa: E731
    jax.tree.map(
        lambda s, p: np.testing.assert_allclose(s, np.float32(0.01) * p, rtol=1e-7),
        rest(up_slow),
        rest(up_plain),
    )


# ---------------- Against the reference ---------------------------------------------------------


@pytest.fixture(scope="module")
def setup(stream, backbone):
    """The state after task 0's end (statistics of classes 0, 1), started on task 1."""
    algorithm = SLCA(**SMALL)
    model = algorithm.wrap_model(backbone)
    batch = gather_batch(stream.tasks[1], jnp.arange(6))
    state = jax.jit(lambda b: create_state(model, algorithm, optax.sgd(0.1), b, seed=0))(batch)
    rng = np.random.default_rng(0)
    head = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), state.params["head"]
    )
    state = state._replace(params={**state.params, "head": head})
    end = jax.jit(lambda s, d: algorithm.end_task(s, d, jax.random.PRNGKey(5), model))
    start = jax.jit(lambda s, d: algorithm.start_task(s, d, jax.random.PRNGKey(6), model))
    state = state._replace(algo=end(state, stream.tasks[0]))
    state = state._replace(task=jnp.int32(1))
    state = state._replace(algo=start(state, stream.tasks[1]))
    return algorithm, model, state, batch, end


def test_the_slow_learners_loss_is_the_references(setup):
    """`_run`: F.cross_entropy(logits[:, known:], targets - known) at task 1 (known = 2)."""
    algorithm, model, state, batch, _ = setup
    loss, grads = jax.jit(
        jax.value_and_grad(lambda p, s, b: algorithm.loss(p, s, b, None, model)[0])
    )(state.params, state, batch)
    net = TorchViT.from_flax(state.params, num_heads=HEADS)
    logits = net(np.array(batch["x"]))["logits"]
    targets = torch.tensor(np.asarray(batch["y"])).long() - 2
    ref = F.cross_entropy(logits[:, 2:], torch.where(targets >= 0, targets, -100))
    ref.backward()
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-5)
    np.testing.assert_allclose(
        grads["head"]["kernel"], net.head.weight.grad.numpy().T, rtol=1e-5, atol=1e-6
    )
    qkv = net.blocks[0].attn.qkv.weight.grad.numpy()[:WIDTH].T.reshape(WIDTH, HEADS, -1)
    attention = grads["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]
    np.testing.assert_allclose(attention["query"]["kernel"], qkv, rtol=1e-5, atol=1e-5)


def test_class_statistics_are_the_references(setup, stream):
    """`_compute_class_mean`: the mean and torch.cov + 1e-4 I of each class's features."""
    _, _, state, _, _ = setup
    net = TorchViT.from_flax(state.params, num_heads=HEADS)
    data = stream.tasks[0]
    size = int(data.size)
    x = np.array(gather_batch(data, jnp.arange(size))["x"])
    y = np.asarray(data.y)[:size]
    with torch.no_grad():
        features = net(x)["features"]
    for c in (0, 1):
        vectors = features[torch.tensor(y == c)]
        mean = vectors.mean(0)
        cov = torch.cov(vectors.T) + torch.eye(WIDTH, dtype=torch.float64) * 1e-4
        np.testing.assert_allclose(state.algo["means"][c], mean.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state.algo["covs"][c], cov.numpy(), rtol=1e-5, atol=1e-5)
    assert np.asarray(state.algo["seen"]).tolist() == [True, True, False, False]
    assert np.asarray(state.algo["class_task"]).tolist() == [0, 0, -1, -1]
    # No alignment after the first task: the head as trained, read by predict.
    np.testing.assert_array_equal(state.algo["head"]["kernel"], state.params["head"]["kernel"])
    assert not np.asarray(state.algo["covs"][2:]).any()


def torch_alignment(head, means, covs, noise, orders, task_sizes, cur_task, lr, wd, tau):
    """`_stage2_compact_classifier`: MultivariateNormal(mean, cov).sample as mean + L·noise
    (L: Cholesky of cov, torch's construction), `torch.randperm` as the JAX draw's order."""
    W = torch.tensor(np.asarray(head["kernel"], np.float64).T, requires_grad=True)
    b = torch.tensor(np.asarray(head["bias"], np.float64), requires_grad=True)
    optimizer = torch.optim.SGD([W, b], lr=lr, momentum=0.9, weight_decay=wd)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(noise))
    crct_num, task_size, n = sum(task_sizes), task_sizes[-1], noise[0].shape[1]
    for epoch in range(len(noise)):
        sampled_data, sampled_label = [], []
        for c_id in range(crct_num):
            t_id = c_id // task_size
            decay = (t_id + 1) / (cur_task + 1) * 0.1
            cls_mean = torch.tensor(means[c_id], dtype=torch.float64) * (0.9 + decay)
            chol = torch.linalg.cholesky(torch.tensor(covs[c_id], dtype=torch.float64))
            sampled_data.append(
                cls_mean + torch.tensor(noise[epoch][c_id], dtype=torch.float64) @ chol.T
            )
            sampled_label.extend([c_id] * n)
        inputs, targets = torch.cat(sampled_data), torch.tensor(sampled_label)
        sf = torch.tensor(orders[epoch])
        inputs, targets = inputs[sf], targets[sf]
        for _iter in range(crct_num):
            inp = inputs[_iter * n : (_iter + 1) * n]
            tgt = targets[_iter * n : (_iter + 1) * n]
            logits = inp @ W.T + b
            per_task_norm, prev_t_size, cur_t_size = [], 0, 0
            for _ti in range(cur_task + 1):
                cur_t_size += task_sizes[_ti]
                temp_norm = (
                    torch.norm(logits[:, prev_t_size:cur_t_size], p=2, dim=-1, keepdim=True) + 1e-7
                )
                per_task_norm.append(temp_norm)
                prev_t_size += task_sizes[_ti]
            norms = torch.cat(per_task_norm, dim=-1).mean(dim=-1, keepdim=True)
            decoupled_logits = torch.div(logits[:, :crct_num], norms) / tau
            loss = F.cross_entropy(decoupled_logits, tgt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    return W.detach().numpy().T, b.detach().numpy()


def test_classifier_alignment_is_the_references(setup, stream):
    """`end_task` of task 1: the statistics of classes 2, 3 join, then two alignment passes
    over features drawn for all four classes, each pass's batches SGD steps with momentum."""
    algorithm, model, state, _, end = setup
    algo = end(state, stream.tasks[1])
    assert bool(algo["aligned"]) and np.asarray(algo["seen"]).all()
    n, dim, key = algorithm.num_sampled_pcls, WIDTH, jax.random.PRNGKey(5)
    noise, orders = [], []
    labels = np.repeat(np.arange(CLASSES), n)
    for epoch in range(algorithm.ca_epochs):
        k = jax.random.fold_in(key, epoch)
        noise.append(np.asarray(jax.random.normal(jax.random.fold_in(k, 0), (CLASSES, n, dim))))
        u = np.asarray(jax.random.uniform(jax.random.fold_in(k, 1), (CLASSES * n,)))
        orders.append(np.argsort(np.where(np.ones_like(labels, bool), u, 2.0), kind="stable"))
    kernel, bias = torch_alignment(
        state.params["head"],
        np.asarray(algo["means"], np.float64),
        np.asarray(algo["covs"], np.float64),
        noise,
        orders,
        task_sizes=[2, 2],
        cur_task=1,
        lr=algorithm.ca_lr,
        wd=algorithm.ca_weight_decay,
        tau=algorithm.ca_with_logit_norm,
    )
    np.testing.assert_allclose(algo["head"]["kernel"], kernel, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(algo["head"]["bias"], bias, rtol=1e-5, atol=1e-5)
    # The parameters' head is untouched (the reference's backup/recall); predict reads the
    # aligned one.
    assert not np.allclose(kernel, np.asarray(state.params["head"]["kernel"]))
    x = gather_batch(stream.tasks[1], jnp.arange(4))["x"]
    logits = jax.jit(lambda p, a, x: algorithm.predict(p, {}, a, x, None, model))(
        state.params, algo, x
    )
    with torch.no_grad():
        features = TorchViT.from_flax(state.params, num_heads=HEADS)(np.array(x))["features"]
    np.testing.assert_allclose(logits, features.numpy() @ kernel + bias, rtol=1e-5, atol=1e-5)
