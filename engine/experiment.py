"""A run's parts, built and checked once: the object `engine.loop.run` trains.

    experiment = from_config(config)                    # a config names every component
    experiment = from_config(config, algorithm=MyER())  # or an object stands in for one
    result = loop.run(experiment, workdir)

Every slot a config names a component in (`algorithm.name`, `model.name`, `optimizer.name`,
`data.source`, `data.scenario`, `writers.sinks`) takes a registered name or a
"package.module:attr" import path to the user's own class or factory; from Python, the
object itself (`sequax.train`). Every config rule is checked here, once, before any data is
placed or anything compiles: keys and types (`validate.check_config`), the method against
the stream (`validate.check_combination`), the run grid (`runs.make_grid`) and the mesh
against the batch and the runs. Errors are one-line `ConfigError`s naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sequax.core import param_groups
from sequax.core.models import Model
from sequax.core.protocol import Algorithm, missing_hooks
from sequax.data.validation import hold_out
from sequax.engine import runs as runs_lib
from sequax.engine import sharding, validate
from sequax.engine.build import (
    ConfigError,
    as_model,
    build_algorithm,
    build_model,
    build_scenario,
    drawn_scenarios,
)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What a run trains: its resolved config and the objects built from it.

    `scenario` is the task stream; `drawn` each run's own draw of it (`data.draws_per_run`:
    permutations or angles per run) or None when the runs share it. `model` is the network
    the method trains (`algorithm.wrap_model` applied). `optimizer(hparams)` builds the
    optimizer of one run from its swept values (traced under vmap). `grid` lists the runs:
    a single run is a grid of one. `capacity` is every phase's padded size (one shape, one
    compile), a multiple of the mesh's batch split.
    """

    config: Any
    scenario: Any
    drawn: list | None
    model: Model
    algorithm: Algorithm
    optimizer: Any  # (hparams) -> optax.GradientTransformation
    phases: list[list[int]]
    grid: runs_lib.RunGrid
    mesh: jax.sharding.Mesh
    capacity: int
    built_at: float = 0.0  # time.time() when building started (the end of the process's startup)
    build_seconds: float = 0.0  # checking the config and reading the data: the run's "data" time
    configured: bool = False  # the config names every part (no object stood in for one)

    @property
    def batch_size(self) -> int:
        return int(self.config.training.batch_size)

    def parts(self, hparams: dict) -> tuple[Algorithm, optax.GradientTransformation]:
        """The algorithm and the configured optimizer of one run, from its swept values.

        The optimizer is the configured one: whoever steps with it or builds its state wraps
        it once with the method's hook, `algorithm.optimizer(tx)` (`create_state`, the step)."""
        return runs_lib.bind_algorithm(self.algorithm, hparams), self.optimizer(hparams)

    def describe(self) -> str:
        grid, mesh = self.grid, self.mesh
        runs = (
            f"; {grid.size} runs in one program ({', '.join(grid.keys) or 'seeds'})"
            if grid.vmapped
            else ""
        )
        axes = " x ".join(f"{a}={n}" for a, n in mesh.shape.items() if n > 1 or a == "data")
        return (
            f"{self.config.algorithm.name} on {self.scenario.name} ({self.scenario.num_tasks} "
            f"tasks, {self.scenario.setting}-IL, {sum(self.scenario.train_sizes)} training "
            f"examples), batch {self.batch_size}, {self.config.training.epochs} epoch(s) per "
            f"task{runs}{'; mesh ' + axes if mesh.size > 1 else ''}"
        )


def _check_trainable(model: Model, scenario, config) -> None:
    """A `Model.trainable` mask that matches nothing is one line before any compile (shapes
    only: `eval_shape` initialises no weights)."""
    if model.trainable is None:
        return
    x = jax.ShapeDtypeStruct((1, *scenario.source.train_x.shape[1:]), jnp.float32)
    params, _ = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    try:
        model.trainable(params)
    except ValueError as error:
        raise ConfigError(
            f"config.model.trainable={config.model.get('trainable')!r}: {error}"
        ) from None


def from_config(config, *, scenario=None, model=None, algorithm=None, optimizer=None):
    """Builds and checks every part of `config`'s run; objects given here replace the parts
    the config would build (`sequax.train` passes the user's own)."""
    built_at, t0 = time.time(), time.perf_counter()
    validate.check_config(config)  # keys, types, ranges: before any data is read
    configured = all(part is None for part in (scenario, model, algorithm, optimizer))
    if scenario is None:
        scenario = build_scenario(config.data)
    elif config.data.get("validation"):  # the user's own stream: held out the same way
        scenario = hold_out(scenario, float(config.data.validation), seed=config.data.seed)
    algorithm = build_algorithm(config.algorithm) if algorithm is None else _method(algorithm)
    validate.check_combination(config, scenario, algorithm)  # method x stream
    if model is None:
        model = build_model(config.model, scenario.num_classes, config.data)
    model = as_model(model, scenario.num_classes)
    try:  # the network the method trains (HAT: the MLP with task embeddings and gates)
        model = algorithm.wrap_model(model)
    except ValueError as error:
        raise ConfigError(f"config.algorithm.name={config.algorithm.name!r}: {error}") from None
    _check_trainable(model, scenario, config)
    grid = runs_lib.make_grid(config, algorithm, optimizer_object=optimizer is not None)
    mesh = _mesh(config, grid)
    phases = algorithm.phases(scenario.num_tasks)
    batch_size, ways = int(config.training.batch_size), sharding.batch_size_of(mesh)
    if batch_size % ways:
        raise ConfigError(
            f"config.training.batch_size={batch_size} must divide evenly over the {ways} devices "
            f"of the mesh (data x fsdp); use a multiple of {ways}"
        )
    sizes = [sum(scenario.train_sizes[t] for t in phase) for phase in phases]
    if min(sizes) < batch_size:
        raise ConfigError(
            f"config.training.batch_size={batch_size} exceeds the smallest task "
            f"({min(sizes)} examples); lower the batch size"
        )
    cache = int(getattr(algorithm, "cache_examples", 0) or 0)
    if 0 < cache < max(sizes):  # a frozen-feature cache must hold the largest phase
        raise ConfigError(
            f"config.algorithm.cache_examples={cache} is below the largest task ({max(sizes)} "
            f"examples); set it to {max(sizes)} (or 0: no cache)"
        )
    scenario, drawn = drawn_scenarios(config.data, scenario, grid.seeds, grid.vmapped)
    if optimizer is None:
        # A schedule counts optimizer updates: a phase's batches times the glances at each
        # (epochs placed with the first phase's count when tasks differ in size).
        steps = sizes[0] // batch_size * int(config.training.get("glances", 1))
        epochs = int(config.training.epochs)
        build = lambda hparams: runs_lib.bind_optimizer(  # noqa: E731
            config.optimizer, hparams, steps_per_epoch=steps, epochs_per_task=epochs
        )
    else:
        fixed = _optimizer(optimizer)
        build = lambda hparams: fixed  # noqa: E731
    if model.trainable is not None:  # a frozen part (a pretrained backbone): zero updates
        configured_build = build
        build = lambda hparams: param_groups.frozen(configured_build(hparams), model.trainable)  # noqa: E731
    return Experiment(
        config=config,
        scenario=scenario,
        drawn=drawn,
        model=model,
        algorithm=algorithm,
        optimizer=build,
        phases=phases,
        grid=grid,
        mesh=mesh,
        capacity=-(-max(sizes) // ways) * ways,
        built_at=built_at,
        build_seconds=time.perf_counter() - t0,
        configured=configured,
    )


def _mesh(config, grid) -> jax.sharding.Mesh:
    cfg = dict(config.get("mesh") or {})
    try:
        mesh = sharding.make_mesh(
            int(cfg.get("data", -1)), int(cfg.get("fsdp", 1)), runs=int(cfg.get("runs", 1))
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if grid.size % mesh.shape["runs"]:
        raise ConfigError(
            f"config.mesh.runs={mesh.shape['runs']} must divide the {grid.size} run(s) of "
            f"config.runs x config.sweep; use a divisor of {grid.size}"
        )
    return mesh


def _method(obj) -> Algorithm:
    missing = missing_hooks(obj)
    if missing:
        raise ConfigError(
            f"the algorithm {type(obj).__name__} is not a method: it lacks {', '.join(missing)}; "
            f"subclass sequax.Algorithm (every hook has a default)"
        )
    return obj


def _optimizer(obj) -> optax.GradientTransformation:
    if isinstance(obj, optax.GradientTransformation):
        return obj
    raise ConfigError(
        f"the optimizer {type(obj).__name__} is not an optax GradientTransformation; give one "
        f"(e.g. optax.adamw(1e-3)) or set config.optimizer.name"
    )
