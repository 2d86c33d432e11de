"""Sharding rules, and the same run on 8 fake CPU devices as on one (the scale contract).

The equality test runs `sharded_child.py` twice in fresh processes (the device count is
fixed when JAX starts): once on 1 device, once with
`--xla_force_host_platform_device_count=8`, where every batch is split 8 ways, the task
data and the replay reservoir's capacity axis are split across the devices, and (for the
"+fsdp" run) the large kernel is split across a 2-way fsdp axis.

Tolerance: the split batch changes only the order of floating-point sums (per-device
partial gradients, then an all-reduce), so final parameters agree to 1e-5 (measured:
2e-7) and every accuracy entry to within one test example (1/96; measured: identical).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from sequax import algorithms
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.engine import sharding

CHILD = Path(__file__).with_name("sharded_child.py")
METHODS = ["naive", "ewc", "er", "derpp"]


def _child(out: Path, devices: int, names: list[str]) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    done = subprocess.run(
        [sys.executable, str(CHILD), str(out), *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def one_and_eight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    one = _child(folder / "one.npz", 1, METHODS)
    eight = _child(folder / "eight.npz", 8, [*METHODS, "naive+fsdp", "ewc+runs"])
    return one, eight


@pytest.mark.parametrize("method", METHODS)
def test_eight_devices_match_one(one_and_eight, method):
    one, eight = one_and_eight
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    for view in ("class_il", "task_il"):
        np.testing.assert_allclose(
            eight[f"{method}/{view}"], one[f"{method}/{view}"], atol=1 / 96 + 1e-9
        )
    np.testing.assert_allclose(eight[f"{method}/params"], one[f"{method}/params"], atol=1e-5)
    if method in ("er", "derpp"):  # the reservoir really is split across the 8 devices
        assert any(s.startswith("buffer P(") and "data" in s for s in eight[f"{method}/specs"])


def test_fsdp_splits_the_large_kernel_and_matches_one_device(one_and_eight):
    one, eight = one_and_eight
    assert "P(None, 'fsdp')" in set(eight["naive+fsdp/specs"]) or "P('fsdp',)" in set(
        eight["naive+fsdp/specs"]
    )
    np.testing.assert_allclose(
        eight["naive+fsdp/class_il"], one["naive/class_il"], atol=1 / 96 + 1e-9
    )
    np.testing.assert_allclose(eight["naive+fsdp/params"], one["naive/params"], atol=1e-5)


def test_runs_split_over_devices_match_one_device(one_and_eight):
    """Two vmapped seeds on a (runs 2, data 4) mesh: run 0 is the one-device single run."""
    one, eight = one_and_eight
    assert any(spec.startswith("P('runs'") for spec in eight["ewc+runs/specs"])
    np.testing.assert_allclose(eight["ewc+runs/class_il"], one["ewc/class_il"], atol=1 / 96 + 1e-9)
    np.testing.assert_allclose(eight["ewc+runs/params"], one["ewc/params"], atol=1e-5)


# ---------------------------------------------------------------- the rules, on abstract meshes


def _state(name: str, momentum: float | None = None, **hyperparameters):
    model = mlp(10, widths=(64,))
    algorithm = algorithms.make(name, **hyperparameters)
    batch = {
        "x": np.zeros((8, 28, 28, 1), np.float32),
        "y": np.zeros(8, np.int32),
        "task": np.zeros(8, np.int32),
    }
    tx = optax.sgd(0.1, momentum=momentum)
    return jax.eval_shape(lambda: create_state(model, algorithm, tx, batch, 0))


def test_params_replicated_and_parameter_shaped_state_follows_them():
    mesh = AbstractMesh((4, 2), ("data", "fsdp"))
    state = _state("ewc", momentum=0.9)
    specs = sharding.state_specs(state, state.params, mesh, fsdp_min_size=1000)
    kernel = specs.params["Dense_0"]["kernel"]  # 784 x 64: split on its largest dim
    assert kernel == P("fsdp")
    assert specs.params["Dense_0"]["bias"] == P()  # 64 elements: under fsdp_min_size
    # EWC's importance and anchor and SGD's momentum follow the parameters exactly.
    assert specs.algo.importance == specs.params and specs.algo.anchor == specs.params
    assert jax.tree.leaves(specs.opt_state, is_leaf=lambda s: isinstance(s, P)) == jax.tree.leaves(
        specs.params, is_leaf=lambda s: isinstance(s, P)
    )
    assert specs.step == P() and specs.key == P()


def test_no_fsdp_means_everything_but_the_reservoir_replicated():
    mesh = AbstractMesh((8, 1), ("data", "fsdp"))
    state = _state("er", capacity=64, replay_batch=8)
    specs = sharding.state_specs(state, state.params, mesh)
    flat = jax.tree.leaves(specs.params, is_leaf=lambda s: isinstance(s, P))
    assert set(flat) == {P()}
    assert specs.algo.buffer.items["x"] == P(("data", "fsdp"))
    assert specs.algo.buffer.num_seen == P()
    odd = _state("er", capacity=60, replay_batch=8)  # 60 slots do not split 8 ways: replicated
    assert sharding.state_specs(odd, odd.params, mesh).algo.buffer.items["x"] == P()


def test_runs_axis_is_prepended_and_split_when_it_divides():
    state = _state("er", capacity=64, replay_batch=8)
    stacked = jax.tree.map(lambda s: jax.ShapeDtypeStruct((4, *s.shape), s.dtype), state)
    replicated_runs = sharding.state_specs(
        stacked, stacked.params, AbstractMesh((1, 2, 1), ("runs", "data", "fsdp")), runs=True
    )
    assert replicated_runs.algo.buffer.items["x"] == P(None, ("data", "fsdp"))
    assert replicated_runs.step == P(None)
    split = sharding.state_specs(
        stacked, stacked.params, AbstractMesh((2, 1, 1), ("runs", "data", "fsdp")), runs=True
    )
    assert split.step == P("runs") and split.params["Dense_0"]["kernel"] == P("runs")
    three = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((3, *s.shape[1:]), s.dtype), stacked
    )  # 3 runs, 2 ways
    assert sharding.state_specs(
        three, three.params, AbstractMesh((2, 1, 1), ("runs", "data", "fsdp")), runs=True
    ).step == P(None)


def test_make_mesh_errors_name_the_key():
    with pytest.raises(ValueError, match="config.mesh.fsdp=3"):
        sharding.make_mesh(fsdp=3, devices=jax.devices() * 1)
    with pytest.raises(ValueError, match="config.mesh.runs=2"):
        sharding.make_mesh(runs=2, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="runs=1 x data=2 x fsdp=1"):
        sharding.make_mesh(data=2, devices=jax.devices()[:1])
    mesh = sharding.make_mesh()
    assert mesh.shape == {"runs": 1, "data": jax.device_count(), "fsdp": 1}


def test_constrain_batch_is_a_no_op_without_a_mesh():
    x = np.ones((4, 3), np.float32)
    assert sharding.constrain_batch({"x": x})["x"] is x
