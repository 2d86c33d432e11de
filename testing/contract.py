"""The contract every method passes, as functions to call on your own (in the style of chex's
assertions): each raises `ContractError`, naming the method and the broken property.

    import sequax.testing
    report = sequax.testing.check_algorithm(MyER(capacity=16))    # every property, or raises
    sequax.testing.check_no_retrace(MyER(capacity=16), glances=2)   # one property

The checks train the method with the engine's own programs (`harness.Harness`: create_state,
make_train_step in make_run_steps' loop, start_task, end_task, predict, all jitted) on a
two-task stream of random images built in memory (`synthetic.synthetic_stream`), so they
hold the method to what the engine runs. Each check takes the method, or a `Harness` already
built for it (its compiled programs are then shared), and the keywords of `Harness`: `model`,
`num_classes`, `optimizer`, `glances`, `stream`, `seed`, `name`.

  protocol       every hook of `sequax.core.protocol.HOOKS`, called with the engine's arguments;
                 Python values only on the method; `optimizer(tx)` an optax transformation;
                 `phases` covering each task once; `loss` returning (scalar, aux with
                 "model_state" and "metrics"); `predict` returning [B, num_classes] logits
  jits           init, the train step, start_task, end_task and predict trace, compile and run
  stable         the state's tree structure and every leaf's shape and dtype unchanged by the
                 train step (`update`), `end_task` and `start_task`
  no retrace     over two tasks of different sizes (padded to one capacity) no program traces
                 twice; the message names the leaf whose type changed (a weak type, typically)
  deterministic  two runs from one seed agree bit for bit, and every program traces to the
                 same program again (no Python or numpy randomness or state read while tracing)
  checkpoint     the state after the first task, saved with orbax (`StandardCheckpointer`, as
                 `engine/checkpoint.py`) and restored into the structure `init` gives, equals it
                 bit for bit, and training continues from it exactly as without the round trip
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from sequax.testing.harness import PROGRAMS, Harness
from sequax.testing.properties import (
    CHECKPOINT,
    DETERMINISTIC,
    NO_RETRACE,
    PROPERTIES,
    PROTOCOL,
    STABLE_END_TASK,
    STABLE_START_TASK,
    STABLE_UPDATE,
    ContractError,
    reason,
)
from sequax.testing.trees import (
    aval,
    host_bits,
    is_key_array,
    layout_difference,
    path_name,
    program_difference,
    structure_difference,
    value_difference,
)


@dataclasses.dataclass(frozen=True)
class ContractReport:
    """What `check_algorithm` found: every property holds (it raises otherwise)."""

    method: str
    properties: tuple[str, ...]
    compiled: dict[str, int]  # compiled versions of each program over the tasks (1 each)
    state_arrays: int
    state_bytes: int
    algo_bytes: int
    seconds: float

    def __str__(self) -> str:
        once = all(n == 1 for n in self.compiled.values())
        return (
            f"{self.method} holds the contract ({len(self.properties)} properties); state of "
            f"{self.state_arrays} arrays, "
            f"{self.state_bytes / 1e3:.1f} kB (algo {self.algo_bytes / 1e3:.1f} kB); "
            f"{'each program compiled once' if once else f'compiled {self.compiled}'}; "
            f"{self.seconds:.1f} s"
        )


def check_algorithm(
    algorithm,
    *,
    model=None,
    num_classes: int = 10,
    optimizer=None,
    glances: int = 1,
    stream=None,
    seed: int = 0,
    name: str | None = None,
) -> ContractReport:
    """Checks every property of the contract, in order (`properties.PROPERTIES`); raises
    `ContractError` at the first broken one.

    Args:
      algorithm: the method (a `sequax.Algorithm`), or a `Harness` built for it (which holds
        its own model, stream and so on: the keywords below are then not used).
      model: a `sequax.Model` or a flax linen module; default `mlp(num_classes, widths=(16,))`
        (the method's `wrap_model` is applied to it).
      num_classes: classes of the default stream and model.
      optimizer: an optax transformation; default `optax.sgd(0.1)`.
      glances: times each batch is trained on (`config.training.glances`).
      stream: a `SyntheticStream`; default `synthetic_stream(num_classes=num_classes)`: two
        tasks of 43 and 29 random 28x28x1 images, batches of 8.
      seed: the run's seed.
      name: the method's name in messages; default its class name.
    """
    options = dict(model=model, num_classes=num_classes, optimizer=optimizer, glances=glances)
    options.update(stream=stream, seed=seed, name=name)
    start = time.perf_counter()
    harness = algorithm if isinstance(algorithm, Harness) else Harness(algorithm, **options)
    for check in (_protocol, _stable, _jits, _no_retrace, _deterministic, _checkpoint):
        check(harness)
    state = harness.trial.states[-1]
    return ContractReport(
        method=harness.name,
        properties=PROPERTIES,
        compiled=dict(harness.trial.compiled),
        state_arrays=len(jax.tree.leaves(state)),
        state_bytes=_nbytes(state),
        algo_bytes=_nbytes(state.algo),
        seconds=time.perf_counter() - start,
    )


def check_protocol(algorithm, **options) -> None:
    """Every hook present and taking the engine's arguments; `loss` and `predict` returning
    what the engine reads (see the module docstring)."""
    _protocol(_harness(algorithm, options))


def check_jits(algorithm, **options) -> None:
    """init, the train step, start_task, end_task and predict trace and run under `jax.jit`."""
    _jits(_harness(algorithm, options))


def check_state_stable(algorithm, **options) -> None:
    """The state's structure, shapes and dtypes are unchanged by `update` (the train step),
    `end_task` and `start_task`."""
    _stable(_harness(algorithm, options))


def check_no_retrace(algorithm, **options) -> None:
    """Over two tasks of different sizes, each jitted program is traced for the first only."""
    _no_retrace(_harness(algorithm, options))


def check_deterministic(algorithm, **options) -> None:
    """The same seed gives bit-identical states, and each program traces the same way again."""
    _deterministic(_harness(algorithm, options))


def check_checkpoint_round_trip(algorithm, **options) -> None:
    """The state survives orbax bit for bit, and training continues identically from it."""
    _checkpoint(_harness(algorithm, options))


def _harness(algorithm, options: dict) -> Harness:
    if isinstance(algorithm, Harness):
        if options:
            raise TypeError(f"options {sorted(options)} belong to the Harness, built already")
        return algorithm
    return Harness(algorithm, **options)


# ---- the properties ------------------------------------------------------------------------
def _protocol(h: Harness) -> None:
    fail = lambda detail: ContractError(h.name, PROTOCOL, detail)  # noqa: E731
    held = _array_attribute(h.algorithm)
    if held:
        raise fail(
            f"{held}; arrays belong in the state `init` returns (a jitted method reading "
            f"arrays from self bakes in their first value)"
        )
    if not (callable(getattr(h.model, "init", None)) and callable(getattr(h.model, "apply", None))):
        raise fail(f"wrap_model returned a {type(h.model).__name__}, not a model (init, apply)")
    tx = h.call_hook("optimizer", h.optimizer)
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise fail(f"optimizer(tx) returned a {type(tx).__name__}, not an optax transformation")
    num_tasks = h.stream.num_tasks
    phases = h.call_hook("phases", num_tasks)
    try:
        tasks = sorted(int(t) for phase in phases for t in phase)
        covered = tasks == list(range(num_tasks)) and all(len(phase) for phase in phases)
    except (TypeError, ValueError):
        covered = False
    if not covered:
        raise fail(f"phases({num_tasks}) returned {phases!r}, not task lists holding each once")

    try:
        loss = jax.eval_shape(h.functions["loss"], *h.inputs("loss"))
    except ContractError:
        raise
    except Exception as error:  # noqa: BLE001 - a user's loss may raise anything
        raise h.failure("loss", "does not trace under jax.jit", error) from None
    if not (isinstance(loss, tuple) and len(loss) == 2):
        raise fail(f"loss returned {_shown(loss)}, not a pair (loss, aux)")
    value, aux = loss
    shape, dtype, _ = aval(value)
    if shape != () or not np.issubdtype(dtype, np.floating):
        raise fail(f"loss returned a {dtype}{list(shape or [])} loss, not a float scalar")
    missing = [k for k in ("model_state", "metrics") if not isinstance(aux, dict) or k not in aux]
    if missing:
        raise fail(f"loss's aux lacks {', '.join(missing)} (aux: {_shown(aux)})")
    if not isinstance(aux["metrics"], dict):
        raise fail(f"loss's aux['metrics'] is {_shown(aux['metrics'])}, not a dict of scalars")

    logits = h.trace("predict").out
    expected = (h.stream.batch_size, h.num_classes)
    shape, dtype, _ = aval(logits) if isinstance(logits, jax.ShapeDtypeStruct) else (None,) * 3
    if shape != expected or not np.issubdtype(dtype, np.floating):
        raise fail(
            f"predict returned {_shown(logits)} for a batch of {expected[0]}, not float logits "
            f"of shape {expected}"
        )


def _stable(h: Harness) -> None:
    state = h.trace("init").out
    stepped = h.trace("train step").out[0]
    found = layout_difference(state, stepped)
    if found:
        raise ContractError(h.name, STABLE_UPDATE, found)
    for program, prop in (("end_task", STABLE_END_TASK), ("start_task", STABLE_START_TASK)):
        found = layout_difference(state.algo, h.trace(program).out, prefix="algo")
        if found:
            raise ContractError(h.name, prop, found)


def _jits(h: Harness) -> None:
    for program in PROGRAMS:
        h.trace(program)
    h.trial  # noqa: B018 - compiles and runs every program over the tasks


def _no_retrace(h: Harness) -> None:
    counts = h.trial.traces
    for task in range(1, len(counts)):
        for program in PROGRAMS:
            before = counts[task - 1][program]
            if counts[task][program] > before:
                first, again = h.traces[program][0], h.traces[program][before]
                why = layout_difference(first, again, weak_types=True)
                raise ContractError(
                    h.name,
                    NO_RETRACE,
                    f"the {program} was traced again for task {task}: "
                    + (why or "with arguments of the same types (a new function each call?)"),
                )


def _deterministic(h: Harness) -> None:
    first, second = h.trial, h.run(h.seed)
    for task, (a, b) in enumerate(zip(first.states, second.states)):
        found = value_difference(a, b)
        if found:
            raise ContractError(
                h.name,
                DETERMINISTIC,
                f"two runs from seed {h.seed} differ after task {task}: {found}",
            )
    for task, (a, b) in enumerate(zip(first.logits, second.logits)):
        found = value_difference(a, b, prefix="logits")
        if found:
            raise ContractError(
                h.name,
                DETERMINISTIC,
                f"predict differs between two runs after task {task}: {found}",
            )
    for program in PROGRAMS:
        before = h.trace(program)
        found = program_difference(before.jaxpr, h.retrace(program, before.inputs).jaxpr)
        if found:
            raise ContractError(
                h.name,
                DETERMINISTIC,
                f"the {program} traces to a different program each time (Python or numpy "
                f"randomness, or Python state on the method, read while tracing): {found}",
            )


def _checkpoint(h: Harness) -> None:
    fail = lambda detail: ContractError(h.name, CHECKPOINT, detail)  # noqa: E731
    trial = h.trial
    saved = trial.states[0]
    unsavable = _unsavable(saved)
    if unsavable:
        raise fail(unsavable)
    # A resumed run restores into the structure a fresh trace of `init` gives (engine/loop.py).
    shapes = h.retrace("init", h.trace("init").inputs).out
    device = h.stream.tasks[0].y.sharding  # where the run's states live
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
    import orbax.checkpoint as ocp  # imported here: orbax takes a second to import

    with tempfile.TemporaryDirectory() as folder:
        checkpointer = ocp.StandardCheckpointer()
        try:
            path = (Path(folder) / "state").absolute()
            checkpointer.save(path, saved)
            checkpointer.wait_until_finished()
            restored = checkpointer.restore(path, target)
        except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many types
            raise fail(f"orbax cannot save and restore the state: {reason(error)}") from None
        finally:
            checkpointer.close()
    found = value_difference(saved, restored)
    if found:
        hint = (
            " (a checkpoint holds the arrays only: the rest of the state comes back as a fresh "
            "`init` makes it, so Python objects in the state do not survive)"
            if structure_difference(saved, restored)
            else ""
        )
        raise fail(f"the state restored after task 0 differs from the one saved: {found}{hint}")
    continued = h.run(h.seed, start=restored, first_task=1)
    last = len(trial.states) - 1
    found = value_difference(trial.states[-1], continued.states[-1])
    if found:
        raise fail(
            f"training continued from the restored state differs after task {last} from "
            f"training without the round trip: {found}"
        )


# ---- helpers -------------------------------------------------------------------------------
def _array_attribute(obj, prefix: str = "self", depth: int = 0) -> str | None:
    """'self.<name> holds an array ...' for the first array among the method's attributes
    (and its parts' attributes, for a combination)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = [(f.name, getattr(obj, f.name, None)) for f in dataclasses.fields(obj)]
    else:
        items = list(getattr(obj, "__dict__", {}).items())
    for name, value in items:
        for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
            where = path_name(path, f"{prefix}.{name}")
            if isinstance(leaf, (jax.Array, np.ndarray)):
                shape, dtype, _ = aval(leaf)
                return f"{where} holds an array ({dtype}{list(shape)})"
            if depth < 3 and callable(getattr(leaf, "loss", None)) and leaf is not obj:
                found = _array_attribute(leaf, where, depth + 1)  # a part of a combination
                if found:
                    return found
    return None


def _unsavable(state) -> str | None:
    """A leaf orbax cannot write, named with what to do instead."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = path_name(path)
        if is_key_array(leaf):
            return (
                f"{name} is a typed PRNG key array ({leaf.dtype}), which orbax cannot save; "
                f"keep raw uint32 keys in the state (jax.random.key_data, jax.random.PRNGKey)"
            )
        if not isinstance(leaf, jax.Array):
            return f"{name} is a {type(leaf).__name__}, not an array"
        if leaf.size == 0:
            return (
                f"{name} has no elements (shape {tuple(leaf.shape)}), which orbax cannot save; "
                f"allocate it at its final size with a mask"
            )
    return None


def _nbytes(tree) -> int:
    return sum(host_bits(leaf).nbytes for leaf in jax.tree.leaves(tree))


def _shown(tree) -> str:
    """A short description of an abstract output: its leaf types, and structure if a tree."""
    try:
        leaves = [f"{dtype}{list(shape)}" for shape, dtype, _ in map(aval, jax.tree.leaves(tree))]
        treedef = jax.tree.structure(tree)
        if treedef.num_nodes == 1 and treedef.num_leaves == 1:
            return leaves[0]
        return f"{treedef} with leaves {', '.join(leaves) or '(none)'}"
    except Exception:  # noqa: BLE001
        return type(tree).__name__
