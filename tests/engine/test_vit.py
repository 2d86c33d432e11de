"""The ViT (`sequax.core.vit`) against a PyTorch transcription of timm's (tests/vit_reference.py),
its prompt and prefix hooks, and parameter groups (`sequax.core.param_groups`): a frozen
backbone gets exactly zero updates, a slow group a scaled one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from vit_reference import TorchViT

from sequax.core import param_groups
from sequax.core.vit import VARIANTS, vit
from sequax.engine.build import build_model
from sequax.engine.errors import ConfigError

SIZES = dict(width=16, depth=3, num_heads=2, mlp_dim=32, patch_size=4)


@pytest.fixture(scope="module")
def tiny():
    model = vit(5, head_zeroinit=False, **SIZES)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 1))
    params, _ = model.init(jax.random.PRNGKey(0), x)
    return model, params, x


def torch_out(params, x, **hooks):
    net = TorchViT.from_flax(params, num_heads=2)
    with torch.no_grad():
        return net(torch.tensor(np.asarray(x, np.float64)), **hooks)


def test_forward_matches_timm_transcription(tiny):
    model, params, x = tiny
    out, _ = model.apply(params, {}, x, train=False)
    ref = torch_out(params, x)
    for key in ("logits", "features", "tokens"):
        np.testing.assert_allclose(out[key], ref[key].numpy(), atol=1e-5)
    assert out["tokens"].shape == (3, 1 + 4, 16)


def test_prompt_and_prefix_hooks_match_the_transcription(tiny):
    model, params, x = tiny
    rng = np.random.default_rng(0)
    prompt = rng.normal(size=(3, 2, 16)).astype(np.float32)
    keys, values = (rng.normal(size=(3, 4, 16)).astype(np.float32) for _ in range(2))
    hooks = dict(prompts={0: prompt, 2: prompt}, prefixes={1: (keys, values)})
    out = model.module.apply({"params": params}, x, **hooks)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    ref = torch_out(
        params, x, prompts={0: t(prompt), 2: t(prompt)}, prefixes={1: (t(keys), t(values))}
    )
    assert out["tokens"].shape == (3, 1 + 2 + 2 + 4, 16)  # two prompts of 2 tokens each
    np.testing.assert_allclose(out["logits"], ref["logits"].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["tokens"], ref["tokens"].numpy(), atol=1e-5)
    plain = model.module.apply({"params": params}, x)
    assert not np.allclose(out["logits"], plain["logits"], atol=1e-3)  # the hooks do something


def test_prompt_layer_outside_the_network_is_refused(tiny):
    model, params, x = tiny
    with pytest.raises(ValueError, match="prompt layer 3 is outside"):
        model.module.apply({"params": params}, x, prompts={3: jnp.zeros((3, 1, 16))})


def test_variants_are_the_published_sizes():
    """ViT-Ti/S/B at 224 px: parameter counts of Table 2, Zhai et al. 2022 (5.7M, 22M, 86M
    with a 1000-class head), from shapes only."""
    counts = {}
    for size in ("Ti", "S", "B"):
        model = vit(1000, f"{size}/16")
        shapes = jax.eval_shape(
            model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
        )[0]
        counts[size] = sum(np.prod(a.shape) for a in jax.tree.leaves(shapes)) / 1e6
    assert counts["Ti"] == pytest.approx(5.7, abs=0.1)
    assert counts["S"] == pytest.approx(22.0, abs=0.2)
    assert counts["B"] == pytest.approx(86.5, abs=0.3)
    assert VARIANTS["B"]["width"] == 768


def test_frozen_backbone_gets_zero_updates_even_with_weight_decay(tiny):
    model, params, x = tiny
    frozen_model = vit(5, trainable="head", **SIZES)
    tx = param_groups.frozen(optax.adamw(1e-2, weight_decay=0.1), frozen_model.trainable)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    moved = {
        path: bool(np.any(np.asarray(u) != 0))
        for path, u in zip(param_groups.paths(updates), jax.tree.leaves(updates), strict=True)
    }
    assert moved["head/kernel"] and moved["head/bias"]
    assert not any(v for k, v in moved.items() if not k.startswith("head/"))


def test_scaled_group_is_a_slower_learning_rate(tiny):
    _, params, _ = tiny
    factors = lambda p: param_groups.group_factors(p, {"Transformer/.*": 0.01})  # noqa: E731
    grads = jax.tree.map(lambda a: jnp.full_like(a, 0.5), params)
    plain, _ = optax.sgd(0.1, momentum=0.9).update(grads, optax.sgd(0.1, 0.9).init(params))
    tx = param_groups.scaled(optax.sgd(0.1, momentum=0.9), factors)
    slow, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(
        slow["Transformer"]["encoder_norm"]["scale"],
        0.01 * plain["Transformer"]["encoder_norm"]["scale"],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(slow["head"]["kernel"], plain["head"]["kernel"])


def test_trainable_pattern_matching_nothing_is_one_line(tiny):
    _, params, _ = tiny
    with pytest.raises(ValueError, match="matches no parameter; paths look like"):
        param_groups.trainable_mask(params, ("heads/.*",))


def test_config_builds_a_vit_and_names_missing_sizes():
    model = build_model({"name": "vit", "variant": "Ti/16"}, 10)
    assert model.module.width == 192 and model.trainable is None
    with pytest.raises(ConfigError, match="vit needs a variant"):
        build_model({"name": "vit", "width": 16}, 10)


def test_resize_feeds_small_images_to_a_larger_vit():
    """CIFAR-sized 32 px images into a ViT of 64 px patches grid (16 tokens at patch 16)."""
    model = vit(3, width=16, depth=1, num_heads=2, mlp_dim=16, patch_size=16, resize=64)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))
    params, _ = model.init(jax.random.PRNGKey(1), x)
    assert params["pos_embedding"].shape == (1, 16, 16)
    out, _ = model.apply(params, {}, x, train=False)
    big = jax.image.resize(x, (2, 64, 64, 3), "bilinear")
    direct = vit(3, width=16, depth=1, num_heads=2, mlp_dim=16, patch_size=16)
    np.testing.assert_allclose(
        out["logits"], direct.apply(params, {}, big, train=False)[0]["logits"]
    )
