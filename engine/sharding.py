"""Where every array of a run lives: the device mesh and the rules that shard the state.

One mesh with three axes, built from `config.mesh`:

  runs  vmapped runs (seeds, sweep points) are split across it: each device group trains
        its own runs, with no communication between groups (size 1 unless asked for);
  data  the batch axis: every step's batch is split across it (data parallelism);
  fsdp  an optional parameter axis: large parameters are split across it (fully sharded
        data parallelism, FSDP); the batch is split across `data` × `fsdp`.

The rules, applied to the shapes of the whole `CLState` (nothing is annotated by hand):

  * parameters are replicated, except that with `fsdp > 1` a parameter of at least
    `fsdp_min_size` elements is split along its largest dimension divisible by `fsdp`;
  * every parameter-shaped subtree of the state (Fisher, anchors, SI's path integral,
    optimizer moments) follows the parameters' sharding, found by tree structure and shapes;
  * a replay reservoir's capacity axis (`ReservoirState.items`) is split across the batch
    axes. It stays ONE global reservoir: insertion slots and replay draws are computed on
    global indices exactly as on one device, and GSPMD turns the scatter and the gather
    into local ones plus a reduction of the replayed rows (see docs/architecture.md);
  * everything else (counters, keys, scalars, the pre-drawn replay batch) is replicated.

Inside compiled code, `constrain_batch` splits a batch across the batch axes of the mesh
in context (`jax.set_mesh`); with no mesh in context it does nothing, so unit tests and
single-device runs trace the same code.

    mesh = make_mesh(data=-1, fsdp=1)                 # -1: every device not used by fsdp
    with jax.set_mesh(mesh):
        specs = state_specs(state_shapes, mesh)       # a PartitionSpec per state leaf
        state = jax.jit(init, out_shardings=named(mesh, specs))(...)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sequax.core.task_data import BATCH_AXES, constrain_batch  # noqa: F401 - the engine's batch split

PyTree = Any
MESH_AXES = ("runs", "data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None, runs: int = 1) -> Mesh:
    """A (runs, data, fsdp) mesh over `devices` (all of them by default), GSPMD (Auto) axes.

    `data=-1` takes every device that `runs` and `fsdp` leave. Axes are `Auto` on purpose:
    `jax.make_mesh` defaults to Explicit axes, whose sharding-in-types rules reject the
    gathers and scatters of the on-device loop.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    for name, ways in (("fsdp", fsdp), ("runs", runs)):
        if ways < 1 or n % ways:
            raise ValueError(
                f"config.mesh.{name}={ways} must divide the {n} device(s); use a divisor of {n}"
            )
    if data == -1:
        data = n // (fsdp * runs)
    if data < 1 or runs * data * fsdp != n:
        raise ValueError(
            f"config.mesh: runs={runs} x data={data} x fsdp={fsdp} must equal the {n} device(s); "
            f"set data=-1 to use every device"
        )
    return jax.make_mesh((runs, data, fsdp), MESH_AXES, (AxisType.Auto,) * 3, devices=devices)


def batch_size_of(mesh: Mesh) -> int:
    """How many ways a batch is split (data × fsdp)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def param_spec(shape: tuple[int, ...], mesh: Mesh, fsdp_min_size: int) -> P:
    """Replicated, or (FSDP) split on `fsdp` along the largest divisible dimension."""
    ways = mesh.shape["fsdp"]
    if ways == 1 or math.prod(shape) < fsdp_min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % ways == 0:
            return P(*([None] * d), "fsdp")
    return P()


def _leading_spec(shape: tuple[int, ...], mesh: Mesh) -> P:
    """Split the leading (examples) axis across the batch axes when it divides evenly."""
    if shape and shape[0] % batch_size_of(mesh) == 0:
        return P(BATCH_AXES)
    return P()


def state_specs(
    state: PyTree, params: PyTree, mesh: Mesh, *, fsdp_min_size: int = 2**18, runs: bool = False
):
    """A PartitionSpec for every leaf of `state` (arrays or ShapeDtypeStructs), by the rules.

    `params` is the parameter subtree (its shapes decide what "parameter-shaped" means).
    With `runs=True` every leaf has a leading run axis (vmapped runs), split over the mesh's
    `runs` axis when it divides evenly.
    """
    from sequax.algorithms.reservoir import ReservoirState  # here: algorithms import the engine

    strip = (lambda s: tuple(s.shape[1:])) if runs else (lambda s: tuple(s.shape))
    param_tree = jax.tree.structure(params)
    param_shapes = [strip(p) for p in jax.tree.leaves(params)]
    param_specs = jax.tree.map(lambda p: param_spec(strip(p), mesh, fsdp_min_size), params)

    def is_param_shaped(node) -> bool:
        if jax.tree.structure(node) != param_tree or not param_shapes:
            return False
        return [strip(leaf) for leaf in jax.tree.leaves(node)] == param_shapes

    def is_special(node) -> bool:
        return isinstance(node, ReservoirState) or (not _is_leaf(node) and is_param_shaped(node))

    def spec_of(node):
        if isinstance(node, ReservoirState):
            items = jax.tree.map(lambda a: _leading_spec(strip(a), mesh), node.items)
            return ReservoirState(items=items, num_seen=P())
        if not _is_leaf(node):
            return param_specs
        return P()

    specs = jax.tree.map(spec_of, state, is_leaf=is_special)
    if runs:
        count = jax.tree.leaves(state)[0].shape[0]
        lead = "runs" if mesh.shape.get("runs", 1) > 1 and count % mesh.shape["runs"] == 0 else None
        specs = jax.tree.map(lambda s: P(lead, *s), specs, is_leaf=lambda s: isinstance(s, P))
    return specs


def _is_leaf(node) -> bool:
    return isinstance(node, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) or np.isscalar(node)


def named(mesh: Mesh, specs: PyTree) -> PyTree:
    """PartitionSpecs → NamedShardings on `mesh` (same tree)."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def examples_sharding(
    mesh: Mesh, shape: tuple[int, ...], *, run_axis: bool = False
) -> NamedSharding:
    """Host data with a leading examples axis: split across the batch axes when it divides.
    `run_axis=True`: the examples axis comes second, after a run axis that is kept whole."""
    if run_axis:
        return NamedSharding(mesh, P(None, *_leading_spec(shape[1:], mesh)))
    return NamedSharding(mesh, _leading_spec(shape, mesh))


def runs_sharding(mesh: Mesh, count: int) -> NamedSharding:
    """Per-run host data ([runs, ...], e.g. each run's epoch order): split over `runs`."""
    ways = mesh.shape.get("runs", 1)
    return NamedSharding(mesh, P("runs") if ways > 1 and count % ways == 0 else P())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds; each process places only the
    shards its own devices own (so several hosts each feed their part)."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
