"""Tests for sequax.data.augment: random crop and flip (exactness, statistics, keys, jit and
vmap) and the model wrapper that augments training and replayed inputs but not stored ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sequax.algorithms import ER
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.data.augment import make_augment, random_crop, random_flip, with_augmentation
from sequax.engine.build import ConfigError, build_model
from sequax.engine.step import make_train_step

KEY = jax.random.PRNGKey(0)


def images(batch=64, size=8, channels=2, seed=0):
    """Values in [1, 255]: no pixel is 0, so a crop's zero fill is recognisable."""
    return jnp.asarray(
        np.random.default_rng(seed).integers(1, 256, (batch, size, size, channels)), jnp.float32
    )


def test_flip_mirrors_about_half_the_examples_and_twice_is_identity():
    x = images(batch=2000)
    flipped = np.asarray(random_flip(x, KEY))
    mirrored = np.all(flipped == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    unchanged = np.all(flipped == np.asarray(x), axis=(1, 2, 3))
    assert np.all(mirrored ^ unchanged)  # every example is either mirrored or untouched
    assert abs(mirrored.sum() - 1000) < 90  # Binomial(2000, 1/2): sd 22, so 4 sd
    np.testing.assert_array_equal(random_flip(random_flip(x, KEY), KEY), x)


def test_crop_is_a_shift_of_at_most_four_with_zero_fill_uniform_over_81_offsets():
    x = np.asarray(images(batch=4050))
    cropped = np.asarray(random_crop(jnp.asarray(x), KEY))
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))  # zero fill
    # matches[i, j, b]: example b equals the crop of its padded image at offset (i, j).
    matches = np.stack(
        [
            np.stack(
                [
                    np.all(cropped == padded[:, i : i + 8, j : j + 8], axis=(1, 2, 3))
                    for j in range(9)
                ]
            )
            for i in range(9)
        ]
    )
    assert np.all(matches.sum(axis=(0, 1)) == 1)  # exactly one shift of at most 4 explains each
    counts = matches.sum(axis=2)
    # 4050 draws over 81 offsets, 50 expected each: chi-square with 80 degrees of freedom,
    # mean 80, sd 12.6; 140 is beyond the 99.99th percentile.
    chi2 = ((counts - 50) ** 2 / 50).sum()
    assert chi2 < 140, counts
    assert counts[0, 0] > 0 and counts[8, 8] > 0  # both extreme offsets (torchvision's [0, 2p])


def test_same_key_same_result_different_keys_differ():
    x = images()
    augment = make_augment(("crop", "flip"))
    np.testing.assert_array_equal(augment(x, KEY), augment(x, KEY))
    assert not np.array_equal(augment(x, KEY), augment(x, jax.random.PRNGKey(1)))
    # Composition: crop on fold_in(key, 0), then flip on fold_in(key, 1).
    expected = random_flip(random_crop(x, jax.random.fold_in(KEY, 0)), jax.random.fold_in(KEY, 1))
    np.testing.assert_array_equal(augment(x, KEY), expected)


def test_jit_and_vmap_over_runs():
    x = images(batch=16)
    augment = make_augment(("crop", "flip"))
    np.testing.assert_array_equal(jax.jit(augment)(x, KEY), augment(x, KEY))
    runs = jnp.stack([x, x + 1, x + 2])
    keys = jax.random.split(KEY, 3)
    batched = jax.jit(jax.vmap(augment))(runs, keys)
    for r in range(3):
        np.testing.assert_array_equal(batched[r], augment(runs[r], keys[r]))


def test_make_augment_validates_names():
    assert make_augment(()) is None
    for bad in (("rotate",), ("flip", "flip")):
        with pytest.raises(ValueError, match="'crop', 'flip'"):
            make_augment(bad)
    with pytest.raises(ConfigError, match="config.data"):
        build_model({"name": "mlp"}, 10, {"augment": ("blur",)})


def test_wrapper_augments_train_inputs_only_and_normalises_both():
    seen = []

    def probe_apply(params, model_state, x, *, train, rng=None):
        seen.append(np.asarray(x))
        return {"logits": x.reshape(len(x), -1)}, model_state

    probe = mlp(10)._replace(apply=probe_apply)
    mirror = lambda x, key: x[:, :, ::-1]  # noqa: E731 - deterministic stand-in for an augmentation
    model = with_augmentation(probe, mirror, normalize=((1.0, 2.0), (2.0, 4.0)))
    assert model.module is None
    x = images(batch=3)
    model.apply({}, {}, x, train=False)
    model.apply({}, {}, x, train=True, rng=KEY)
    mean, std = np.array([1.0, 2.0]), np.array([2.0, 4.0])
    np.testing.assert_allclose(seen[0], (np.asarray(x) - mean) / std)
    np.testing.assert_allclose(seen[1], (np.asarray(x)[:, :, ::-1] - mean) / std)
    with pytest.raises(ValueError, match="needs rng"):
        model.apply({}, {}, x, train=True)
    with pytest.raises(ValueError, match="2 channels but the inputs have 1"):
        model.apply({}, {}, x[..., :1], train=False)
    with pytest.raises(ValueError, match="normalize="):
        with_augmentation(probe, None, normalize=((0.5,), (0.0,)))


def test_replayed_examples_are_augmented_and_stored_ones_are_not():
    """ER's buffer keeps the raw batch; the replayed rows reach the network augmented."""
    seen = []
    inner = mlp(4, widths=(8,))

    def spy_apply(params, model_state, x, *, train, rng=None):
        if not isinstance(x, jax.core.Tracer):  # record eager calls only
            seen.append(np.asarray(x))
        return inner.apply(params, model_state, x, train=train, rng=rng)

    mirror = lambda x, key: x[:, :, ::-1]  # noqa: E731
    model = with_augmentation(inner._replace(apply=spy_apply), mirror)
    algorithm = ER(capacity=8, replay_batch=4)
    tx = optax.sgd(0.1)
    batches = [
        {
            "x": images(batch=4, size=4, channels=1, seed=s) / 255.0,
            "y": jnp.arange(4) % 4,
            "task": jnp.zeros(4, jnp.int32),
        }
        for s in range(3)
    ]
    state = create_state(model, algorithm, tx, batches[0], 0)
    step = jax.jit(make_train_step(model, algorithm, tx))
    for batch in batches[:2]:
        state, _ = step(state, batch)
    stored = np.asarray(state.algo.buffer.items["x"])
    raw = np.concatenate([np.asarray(b["x"]) for b in batches[:2]])
    np.testing.assert_array_equal(stored, raw)  # 8 slots, 8 examples offered: all stored, raw
    replay = np.asarray(state.algo.replay["x"])
    assert np.asarray(state.algo.valid).all()
    seen.clear()
    algorithm.loss(state.params, state, batches[2], KEY, model)  # eager: the spy sees the input
    (network_input,) = seen
    np.testing.assert_array_equal(network_input[:4], np.asarray(batches[2]["x"])[:, :, ::-1])
    np.testing.assert_array_equal(network_input[4:], replay[:, :, ::-1])  # replayed rows: augmented
    assert not np.array_equal(network_input[4:], replay)
