"""The contract every continual-learning method is held to, over `algorithms.REGISTRY`.

It runs through `sequax.testing`, the functions a user runs on their own method: each method
in the registry, and a few `combine`d ones, is an `Algorithm` whose hooks take the engine's
arguments; its programs jit; the state's structure, shapes and dtypes survive `update`,
`end_task` and `start_task`; two tasks of different sizes cause no retrace; the same seed
gives the same state bit for bit; and the state survives an orbax checkpoint round trip. Every
method added to the registry is tested here with no further code: give it small
hyper-parameters in `SMALL` if its defaults are large (a replay buffer of thousands, say).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import pytest

from sequax import algorithms, testing
from sequax.core.vit import vit

SMALL = {
    "er": {"capacity": 16, "replay_batch": 4},
    "agem": {"capacity": 16, "replay_batch": 4, "num_tasks": 2},
    "agem_r": {"capacity": 16, "replay_batch": 4},
    "gem": {"capacity": 16, "num_tasks": 2},
    "ewc": {"lam": 1.0, "fisher_batch": 8},
    "icarl": {"capacity": 16, "replay_batch": 4, "feature_dim": 16},
    "gdumb": {"capacity": 16, "epochs": 2, "batch_size": 4},
    "er_ace": {"capacity": 16, "replay_batch": 4},
    "er_aml": {"capacity": 16, "replay_batch": 4},
    "mir": {"capacity": 16, "replay_batch": 4, "subsample": 8},
    "gss": {"capacity": 16, "replay_batch": 4, "gss_minibatch_size": 4},
    "lamaml": {"capacity": 16, "replay_batch": 4},
    "mc_sgd": {
        "num_tasks": 2,
        "per_class": 2,
        "num_classes": 4,
        "line_samples": 2,
        "line_batch": 4,
    },
    "hat": {"num_tasks": 2},
    "kcl": {"num_tasks": 2, "coreset_size": 4, "classes_per_task": 2, "num_features": 16},
    "simplecil": {"num_classes": 4, "feature_dim": 16},
    "ranpac": {"num_classes": 4, "feature_dim": 16, "projection_dim": 32},
    "l2p": {"pool_size": 4, "prompt_length": 2, "top_k": 2, "cache_examples": 48},
    "dualprompt": {
        "pool_size": 4,
        "prompt_length": 2,
        "g_length": 2,
        "top_k": 1,
        "g_layers": (0,),
        "e_layers": (1,),
        "cache_examples": 48,
    },
}
SMALL["coda_prompt"] = dict(
    num_tasks=2, pool_size=4, prompt_length=2, ortho_mu=0.1, prompt_layers=(0,),
    cache_examples=43,
)  # fmt: skip
SMALL["slca"] = dict(ca_epochs=2, num_sampled_pcls=8, stats_batch=16)
# The ViT methods need a ViT: a tiny one (this depth) on 8x8 images of 4 classes (two tasks
# of two), one layer deep (DualPrompt: its G- and E-prompts on two). Their transcription
# tests run the default layers.
ON_VIT = {
    **dict.fromkeys(("simplecil", "ranpac", "l2p", "coda_prompt", "slca"), 1),
    "dualprompt": 2,
}
# Combinations, as `algorithms.make` builds them: a replay base with a regulariser, and a base
# that shapes the run (HAT's gated network, its `task_model`) with one.
COMBINED = {
    "er+ewc": {"er": SMALL["er"], "ewc": SMALL["ewc"]},
    "hat+ewc": {"hat": SMALL["hat"], "ewc": SMALL["ewc"]},
}
# How the engine trains a method, where it differs from the defaults (config.training).
TRAINING = {"lamaml": {"glances": 2}}  # La-MAML's single-pass protocol: each batch twice

# The ViT methods' checks run from tests/algorithms/test_contract_vit.py, a file of their own
# so that the test workers (one file each) share the contract's time.
NAMES = sorted(set(algorithms.REGISTRY) - set(ON_VIT))
CHECKS = {
    "protocol": testing.check_protocol,
    "jits": testing.check_jits,
    "state_stable": testing.check_state_stable,
    "no_retrace": testing.check_no_retrace,
    "deterministic": testing.check_deterministic,
    "checkpoint": testing.check_checkpoint_round_trip,
}


def build(name: str):
    if name in COMBINED:
        return algorithms.make(name, **COMBINED[name])
    return algorithms.make(name, **SMALL.get(name, {}))


@functools.cache
def harness(name: str) -> testing.Harness:
    """The method's compiled programs, built once and shared by its checks."""
    options = dict(TRAINING.get(name, {}))
    if name in ON_VIT:
        options.update(
            model=vit(4, width=16, depth=ON_VIT[name], num_heads=2, mlp_dim=16, patch_size=4),
            num_classes=4,
            stream=testing.synthetic_stream(num_classes=4, image_shape=(8, 8, 1)),
        )
    return testing.Harness(build(name), name=name, **options)


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", NAMES + sorted(COMBINED))
def test_contract(name, check):
    CHECKS[check](harness(name))


@pytest.mark.parametrize("name", sorted(algorithms.REGISTRY))
def test_is_a_frozen_dataclass_of_python_values(name):
    """Built-in methods are frozen dataclasses of Python values: hashable, comparable, and
    nothing for a jitted step to bake in."""
    algorithm = build(name)
    assert isinstance(algorithm, algorithms.Algorithm)
    assert dataclasses.is_dataclass(algorithm)
    with pytest.raises(dataclasses.FrozenInstanceError):
        algorithm.some_new_attribute = 1
    for field in dataclasses.fields(algorithm):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(algorithm, field.name, getattr(algorithm, field.name))
        for leaf in jax.tree.leaves(getattr(algorithm, field.name)):
            # Arrays on a (static) algorithm would be baked into the compiled step.
            assert isinstance(leaf, (bool, int, float, str)), (field.name, type(leaf))
    hash(algorithm)  # usable as a static argument
    assert algorithm == build(name)


@pytest.mark.parametrize("name", NAMES + sorted(COMBINED))
def test_each_program_compiled_once(name):
    """Over the two tasks each jitted program was compiled once (jit's own cache, beside the
    trace counts `check_no_retrace` reads)."""
    trial = harness(name).trial
    assert trial.compiled == dict.fromkeys(testing.harness.PROGRAMS, 1)
