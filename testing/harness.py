"""The engine's own programs for one method, run on a tiny stream, with every trace recorded.

`Harness` builds, from the engine's building blocks, what a run compiles for a method:
`create_state` under jit, the train step in `make_run_steps`'s loop (state donated, epoch
order from `epoch_order`), `start_task`, `end_task` and `predict`, each jitted once. It
trains the method over the two tasks of a `synthetic_stream` as the loop does (task set,
`start_task`, one epoch, `end_task`, evaluation; one phase per task, whatever the method's
`phases`) and keeps what the contract's checks read:

    harness = Harness(MyER(capacity=16), num_classes=10)
    harness.trace("train step").out      # the step's output shapes, from an abstract trace
    trial = harness.trial                # two tasks trained; trial.states[t] after task t
    harness.traces["end_task"]           # the argument types of each trace of end_task
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sequax.core.models import from_linen, mlp
from sequax.core.protocol import HOOKS, missing_hooks
from sequax.core.state import STREAM_TASK, CLState, create_state, stream_key
from sequax.engine.step import epoch_order, make_run_steps, make_train_step
from sequax.testing.properties import (
    JITS,
    PROTOCOL,
    ContractError,
    is_signature_error,
    method_name,
    reason,
)
from sequax.testing.synthetic import SyntheticStream, synthetic_stream
from sequax.testing.trees import abstract, device_copy

# The compiled programs of a run, as messages name them.
PROGRAMS = ("init", "train step", "start_task", "end_task", "predict")

_order = jax.jit(epoch_order, static_argnums=3)  # the same program for every harness


class Trace(NamedTuple):
    """One abstract trace (`jax.make_jaxpr`) of a program."""

    jaxpr: Any  # ClosedJaxpr: the program and the constants it captured
    out: Any  # its outputs' ShapeDtypeStructs
    inputs: tuple  # the abstract arguments it was traced with


class Trial(NamedTuple):
    """A run over every task of the stream, through the compiled programs."""

    states: tuple[CLState, ...]  # device copies of the state after each task's end_task
    logits: tuple[np.ndarray, ...]  # predict on each task's first batch, after that task
    traces: tuple[dict[str, int], ...]  # traces of each program so far, after each task
    compiled: dict[str, int]  # versions of each jitted program compiled by the end of it


def task_key(state: CLState) -> jax.Array:
    """The key of the phase `state.task` (end_task's; start_task folds in 1), as the engine's."""
    return stream_key(state.key, STREAM_TASK, state.task)


class Harness:
    """One method's programs and records (see the module docstring).

    Args:
      algorithm: the method, a `sequax.Algorithm` (or any object with every hook).
      model: a `sequax.Model` or a flax linen module; default `mlp(num_classes, widths=(16,))`.
      num_classes: classes of the default stream and model.
      optimizer: an optax transformation (the method's `optimizer` hook wraps it); default
        `optax.sgd(0.1)`.
      glances: times each batch is trained on (`config.training.glances`; La-MAML's protocol).
      stream: a `SyntheticStream`; default `synthetic_stream(num_classes=num_classes)`.
      seed: the run's seed.
      name: the method's name in messages; default its class name.
    """

    def __init__(
        self,
        algorithm,
        *,
        model=None,
        num_classes: int = 10,
        optimizer: optax.GradientTransformation | None = None,
        glances: int = 1,
        stream: SyntheticStream | None = None,
        seed: int = 0,
        name: str | None = None,
    ):
        self.algorithm = algorithm
        self.name = name or method_name(algorithm)
        missing = missing_hooks(algorithm)
        if missing:
            raise ContractError(
                self.name,
                PROTOCOL,
                f"{type(algorithm).__name__} lacks the hook(s) {', '.join(missing)}; "
                f"subclass sequax.Algorithm (every hook has a default)",
            )
        self.stream = stream if stream is not None else synthetic_stream(num_classes=num_classes)
        if self.stream.num_tasks < 2:
            raise ValueError("the contract trains two tasks or more: give a stream of two at least")
        self.num_classes = self.stream.num_classes
        if model is None:
            model = mlp(self.num_classes, widths=(16,))
        elif isinstance(model, nn.Module):
            model = from_linen(model, self.num_classes)
        self.optimizer = optax.sgd(0.1) if optimizer is None else optimizer
        self.seed = seed
        self.model = self.call_hook("wrap_model", model)
        self.traces: dict[str, list] = defaultdict(list)  # program -> argument types per trace
        self._traced: dict[str, Trace] = {}

        algorithm, model, tx = self.algorithm, self.model, self.optimizer
        self.functions = {  # the pure programs, as the engine builds them (engine/programs.py)
            "init": lambda batch, seed: create_state(model, algorithm, tx, batch, seed),
            "train step": make_train_step(model, algorithm, tx, glances=glances),
            "start_task": lambda state, data: algorithm.start_task(
                state, data, jax.random.fold_in(task_key(state), 1), model
            ),
            "end_task": lambda state, data: algorithm.end_task(state, data, task_key(state), model),
            "predict": lambda params, model_state, algo, x, task: algorithm.predict(
                params, model_state, algo, x, task, model
            ),
            "loss": lambda params, state, batch, rng: algorithm.loss(
                params, state, batch, rng, model
            ),
        }
        arguments = {
            "init": ("batch", "seed"),
            "train step": ("state", "batch"),
            "start_task": ("state", "data"),
            "end_task": ("state", "data"),
            "predict": ("params", "model_state", "algo", "x", "task"),
        }
        counted = {name: self._counted(name, arguments[name]) for name in PROGRAMS}
        self.init = jax.jit(counted["init"])
        self.run_steps = make_run_steps(
            counted["train step"],
            self.stream.batch_size,
            host_loop=False,
            with_index=bool(getattr(algorithm, "example_index", False)),
        )
        self.start_task = jax.jit(counted["start_task"])
        self.end_task = jax.jit(counted["end_task"])
        self.predict = jax.jit(counted["predict"])
        self.programs = dict(
            zip(PROGRAMS, (self.init, self.run_steps, self.start_task, self.end_task, self.predict))
        )

    # ---- hooks called directly, and abstract traces -----------------------------------------
    def call_hook(self, hook: str, *args):
        """`algorithm.<hook>(*args)` outside jit (wrap_model, optimizer, phases)."""
        try:
            return getattr(self.algorithm, hook)(*args)
        except Exception as error:  # noqa: BLE001 - a user's hook may raise anything
            raise ContractError(self.name, PROTOCOL, f"{hook} fails: {reason(error)}") from None

    def failure(self, program: str, what: str, error: BaseException) -> ContractError:
        """The error for a program that fails to trace or run: the protocol's when a hook does
        not take the arguments the engine gives it, otherwise 'jits'."""
        hook = _hook_in_traceback(error)
        if is_signature_error(error):
            detail = f"{hook or program} does not take the arguments the engine gives it"
            return ContractError(self.name, PROTOCOL, f"{detail}: {reason(error)}")
        where = f" (in {hook})" if hook and hook != program else ""
        return ContractError(self.name, JITS, f"{program} {what}{where}: {reason(error)}")

    def trace(self, program: str) -> Trace:
        """The program's abstract trace on the first task (cached: the first trace)."""
        if program not in self._traced:
            self._traced[program] = self.retrace(program, self.inputs(program))
        return self._traced[program]

    def retrace(self, program: str, inputs: tuple) -> Trace:
        """A fresh abstract trace of `program` (a new process would trace it so)."""
        fn = self.functions[program]
        fresh = lambda *args: fn(*args)  # noqa: E731 - a new function: jax caches traces per function
        try:
            jaxpr, out = jax.make_jaxpr(fresh, return_shape=True)(*inputs)
        except Exception as error:  # noqa: BLE001
            raise self.failure(program, "does not trace under jax.jit", error) from None
        return Trace(jaxpr, out, inputs)

    def inputs(self, program: str) -> tuple:
        """Abstract arguments of `program`: the initial state, the first task and its batch."""
        batch = abstract(self.stream.first_batch(0))
        if program == "init":
            return batch, jax.ShapeDtypeStruct((), jnp.int32)
        state = self.trace("init").out
        if program == "train step":
            return state, batch
        if program in ("start_task", "end_task"):
            return state, abstract(self.stream.tasks[0])
        if program == "predict":
            return state.params, state.model_state, state.algo, batch["x"], batch["task"]
        if program == "loss":  # the key the step gives `loss`: a raw uint32[2] key
            return state.params, state, batch, jax.ShapeDtypeStruct((2,), jnp.uint32)
        raise ValueError(f"unknown program {program!r}; known: {', '.join(PROGRAMS)}, loss")

    # ---- the compiled run --------------------------------------------------------------------
    @functools.cached_property
    def trial(self) -> Trial:
        """The first run through the compiled programs (with `seed`)."""
        return self.run(self.seed)

    def run(self, seed: int, *, start: CLState | None = None, first_task: int = 0) -> Trial:
        """Trains tasks `first_task...` from `start` (default: the state `init` gives), as the
        loop does: the task set, `start_task`, one epoch, `end_task`, then `predict`."""
        stream = self.stream
        # Every input committed to the stream's device, as a restored state is: one cache entry.
        put = functools.partial(jax.device_put, device=stream.tasks[0].y.sharding)
        if start is None:
            state = self._run("init", self.init, stream.first_batch(0), put(np.int32(seed)))
        else:
            state = start
        states, logits, counts = [], [], []
        for t in range(first_task, stream.num_tasks):
            data, batch = stream.tasks[t], stream.first_batch(t)
            state = state._replace(task=put(np.int32(t)))
            state = state._replace(algo=self._run("start_task", self.start_task, state, data))
            order = _order(state.key, state.step, data.size, stream.capacity)
            bounds = put(np.int32(0)), put(np.int32(stream.steps(t)))
            state, _ = self._run("train step", self.run_steps, state, data, order, *bounds)
            state = state._replace(algo=self._run("end_task", self.end_task, state, data))
            args = state.params, state.model_state, state.algo, batch["x"], batch["task"]
            logits.append(np.asarray(self._run("predict", self.predict, *args)))
            states.append(device_copy(state))
            counts.append({program: len(self.traces[program]) for program in PROGRAMS})
        compiled = {program: self.programs[program]._cache_size() for program in PROGRAMS}
        return Trial(tuple(states), tuple(logits), tuple(counts), compiled)

    def _run(self, program: str, fn, *args):
        try:
            return jax.block_until_ready(fn(*args))
        except Exception as error:  # noqa: BLE001
            raise self.failure(program, "fails under jax.jit", error) from None

    def _counted(self, program: str, names: tuple[str, ...]):
        """`program`'s function, recording its argument types each time it is traced (a Python
        counter inside the traced function, as `chex.assert_max_traces` keeps)."""
        fn, log = self.functions[program], self.traces[program]

        def traced(*args):
            log.append(abstract(dict(zip(names, args))))
            return fn(*args)

        return traced


def _hook_in_traceback(error: BaseException) -> str | None:
    """The innermost hook of a method (`algorithm`, or a part of it) the error passed through."""
    found, tb = None, error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name in HOOKS and owner is not None and not missing_hooks(owner):
            found = frame.f_code.co_name
        tb = tb.tb_next
    return found
