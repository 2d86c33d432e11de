"""`algorithms.patch_gradients`: per-example convolution kernel gradients as image patches x
output gradients, for the squared-gradient sums of EWC's Fisher.

What each test shows:
  * the sums equal the per-example `vmap(grad)` path's on convolutions with strides, "SAME",
    "VALID" and explicit padding, with and without bias, and on a ResNet with its BatchNorm
    (whose parameters take the general path inside the same vmap);
  * the patches are the pixels `lax.conv_general_dilated_patches` gives, reordered;
  * a model the path does not cover (a grouped convolution, a convolution called twice, a
    dilated one, a model without a linen module) is refused, so the general path runs;
  * `fisher.squared_gradient_sum` takes this path in a chunk run from the host and not inside
    a CPU `while` loop.
"""

from __future__ import annotations

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sequax.algorithms import fisher, patch_gradients
from sequax.core.models import Model, ResNet, from_linen
from sequax.core.task_data import host_loops_tracing


class Convs(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME")(x))
        x = nn.relu(nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x))
        x = nn.Conv(3, (2, 2), padding="VALID")(x)
        features = x.mean(axis=(1, 2))
        return {"logits": nn.Dense(3)(features), "features": features}


class Depthwise(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(2, (3, 3), feature_group_count=1)(x)
        x = nn.Conv(2, (3, 3), feature_group_count=2)(x)  # depthwise
        return {"logits": nn.Dense(3)(x.mean(axis=(1, 2)))}


class Shared(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = nn.Conv(2, (3, 3))
        x = conv(conv(x))  # one kernel, two calls
        return {"logits": nn.Dense(3)(x.mean(axis=(1, 2)))}


class Dilated(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(2, (3, 3), kernel_dilation=2)(x)
        return {"logits": nn.Dense(3)(x.mean(axis=(1, 2)))}


def log_likelihood(outputs, targets):
    log_probs = jax.nn.log_softmax(outputs["logits"])
    return jnp.take_along_axis(log_probs, targets["y"][:, None], 1)[:, 0], targets["w"]


def both_paths(model, size=9):
    x = jax.random.uniform(jax.random.key(1), (6, size, size, 1))
    params, state = model.init(jax.random.key(0), x[:2])
    targets = {"y": jnp.array([0, 1, 2, 0, 1, 2]), "w": jnp.array([1.0, 1, 0.5, 1, 1, 0])}
    layers = patch_gradients.conv_layers(model, params, state, x)
    assert layers is not None
    got = jax.jit(
        lambda p: patch_gradients.patch_squared_gradient_sum(
            model, p, state, x, log_likelihood, targets, layers
        )
    )(params)
    want = jax.jit(
        lambda p: fisher.per_example_squared_gradient_sum(
            model, p, state, x, log_likelihood, targets
        )
    )(params)
    return layers, got, want


@pytest.mark.parametrize("name", ["convs", "resnet18"])
def test_the_sums_equal_the_per_example_path(name):
    resnet = ResNet(num_classes=3, nf=2, num_blocks=(1, 1, 1, 1))  # every kind of block
    model = from_linen(Convs() if name == "convs" else resnet, 3)
    layers, got, want = both_paths(model)
    assert len(layers) == (3 if name == "convs" else 12)  # stem, 4 x 2, 3 shortcuts
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(b))))


CASES = [((1, 1), "SAME"), ((2, 2), "SAME"), ((2, 1), "VALID"), ((1, 2), ((2, 0), (1, 1)))]


@pytest.mark.parametrize("strides, padding", CASES)
def test_patches_are_the_pixels_each_kernel_tap_reads(strides, padding):
    x = jax.random.normal(jax.random.key(2), (2, 7, 8, 3))
    ours = patch_gradients._patches(x, (3, 2), strides, padding)  # [b, h, w, taps, c]
    theirs = lax.conv_general_dilated_patches(
        x, (3, 2), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )  # [b, h, w, c * taps], channel-major
    b, h, w, taps, c = ours.shape
    reordered = theirs.reshape(b, h, w, c, taps).transpose(0, 1, 2, 4, 3)
    np.testing.assert_array_equal(ours, reordered)


@pytest.mark.parametrize("module", [Depthwise(), Shared(), Dilated()])
def test_models_the_path_does_not_cover_are_refused(module):
    model = from_linen(module, 3)
    x = jnp.zeros((2, 8, 8, 2))
    params, state = model.init(jax.random.key(0), x)
    assert patch_gradients.conv_layers(model, params, state, x) is None


def test_a_model_without_a_linen_module_is_refused():
    linen = from_linen(Convs(), 3)
    bare = Model(init=linen.init, apply=linen.apply, num_classes=3)  # e.g. the torch bridge
    x = jnp.zeros((2, 9, 9, 1))
    params, state = bare.init(jax.random.key(0), x)
    assert patch_gradients.conv_layers(bare, params, state, x) is None


def test_the_fisher_takes_the_path_only_in_a_chunk_run_from_the_host():
    model = from_linen(Convs(), 3)
    x = jax.random.uniform(jax.random.key(1), (4, 9, 9, 1))
    params, state = model.init(jax.random.key(0), x[:2])
    targets = {"y": jnp.array([0, 1, 2, 0]), "w": jnp.ones(4)}
    real = patch_gradients.patch_squared_gradient_sum
    with mock.patch.object(fisher, "patch_squared_gradient_sum", wraps=real) as patched:
        sums = lambda: fisher.squared_gradient_sum(  # noqa: E731 - traced for shapes only
            model, params, state, x, log_likelihood, targets
        )
        jax.eval_shape(sums)
        assert patched.call_count == (0 if jax.default_backend() == "cpu" else 1)
        with host_loops_tracing():
            jax.eval_shape(lambda: sums())  # a new function: jit's trace cache is not asked
        assert patched.call_count == (1 if jax.default_backend() == "cpu" else 2)
