"""End-of-task programs whose loops over a convolutional network run from the host on XLA:CPU.

Why: inside a `while` loop XLA:CPU runs a network's backward convolutions through its slow
generic emitter (`engine.step.HostLoopSteps`, the same finding for the training step). A
method's end of task typically folds over the task's examples in chunks
(`core.task_data.scan_batches`: EWC's Fisher, MAS's importance), a `scan`, which lowers to
such a loop. On the 2-core CPU, 128 per-example gradients of the reduced ResNet-18 took
3.9-6.7 s inside the scan, against 0.6-0.8 s as one batched (vmapped) gradient in a program
of its own.

`HostLoops(fn, out_shardings=...)` is `jax.jit(fn, out_shardings=...)` with the same calls
(`f(*args)`, `f.lower(*args).compile()`). On XLA:CPU, when the traced program holds a
top-level `scan` whose body holds a convolution, it runs the program in pieces instead: the
equations before and after each such scan as jitted programs, and the scan itself as a
host loop over one jitted program of its body. The pieces compute the same values as the
one program; their floats may differ in the last bits (XLA fuses each piece on its own).
Elsewhere (GPU, TPU, no convolution in a loop) it is the one jitted program.

While the program is traced for the host loops, `core.task_data.loops_on_host()` is true, so a
per-example gradient inside the loop's body takes one `vmap` (batched convolutions, fast
outside a `while`) instead of a scan over the examples (`algorithms.fisher`).
"""

from __future__ import annotations

import jax
import jax.extend.core as jcore
import jax.numpy as jnp

from sequax.algorithms.patch_gradients import convolution_groups
from sequax.core.task_data import host_loops_tracing


def _loops(jaxpr) -> list[int]:
    """The top-level equations to run from the host: scans over a convolution."""
    return [
        i
        for i, eqn in enumerate(jaxpr.eqns)
        if eqn.primitive.name == "scan" and convolution_groups(eqn.params["jaxpr"].jaxpr)
    ]


class HostLoops:
    """`jax.jit(fn, **jit_kwargs)` whose convolutional loops run from the host on XLA:CPU."""

    def __init__(self, fn, **jit_kwargs):
        self.fn, self.jitted, self.jit_kwargs = fn, jax.jit(fn, **jit_kwargs), jit_kwargs
        self.out_shardings = jit_kwargs.get("out_shardings")
        self.__wrapped__ = fn
        self._programs: dict = {}

    def lower(self, *args):
        if jax.default_backend() != "cpu":
            return self.jitted.lower(*args)
        traced = self.jitted.trace(*args)
        if not _loops(traced.jaxpr.jaxpr):
            return traced.lower()
        # Traced again, as a new function (jit's trace cache does not see the context):
        # per-example gradients in the loop's body are then batched.
        fresh = jax.jit(lambda *a: self.fn(*a), **self.jit_kwargs)
        with host_loops_tracing():
            traced = fresh.trace(*args)
        return _Pieces(traced, self.out_shardings)

    def __call__(self, *args):
        leaves, tree = jax.tree.flatten(args)
        key = (str(tree), tuple(str(jax.typeof(x)) for x in leaves))
        if key not in self._programs:
            self._programs[key] = self.lower(*args).compile()
        return self._programs[key](*args)


class _Pieces:
    """`lower(...)`'s result when the loops run from the host: `compile()` gives the callable."""

    def __init__(self, traced, out_shardings):
        self.traced, self.out_shardings = traced, out_shardings

    def compile(self):
        closed, out_tree = self.traced.jaxpr, self.traced.out_tree
        run = _split(closed.jaxpr, closed.consts)
        shardings = self.out_shardings

        def call(*args):
            out = jax.tree.unflatten(out_tree, run(jax.tree.leaves(args)))
            return out if shardings is None else jax.device_put(out, shardings)

        return call


def _read(env, v):
    return v.val if isinstance(v, jcore.Literal) else env[v]


def _bind(eqn, invals):
    """One equation, as `jax.core.eval_jaxpr` evaluates it."""
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    return out if eqn.primitive.multiple_results else [out]


def _split(jaxpr, consts):
    """A callable (flat inputs -> flat outputs) running `jaxpr`'s equations in jitted pieces,
    its convolutional scans as host loops."""
    loops = set(_loops(jaxpr))
    steps, piece = [], []
    for i, eqn in enumerate(jaxpr.eqns):
        if i in loops:
            if piece:
                steps.append(("ops", piece))
            steps.append(("loop", eqn))
            piece = []
        else:
            piece.append(eqn)
    if piece:
        steps.append(("ops", piece))
    # What each piece reads from before it and must hand on to what follows.
    needed_after = [set() for _ in steps]
    later = {v for v in jaxpr.outvars if isinstance(v, jcore.Var)}
    for k in range(len(steps) - 1, -1, -1):
        needed_after[k] = set(later)
        eqns = steps[k][1] if steps[k][0] == "ops" else [steps[k][1]]
        for eqn in eqns:
            later |= {v for v in eqn.invars if isinstance(v, jcore.Var)}
    compiled = []
    for (kind, what), after in zip(steps, needed_after):
        if kind == "loop":
            compiled.append(("loop", what, _host_scan(what)))
            continue
        defined = {v for eqn in what for v in eqn.outvars if isinstance(v, jcore.Var)}
        inputs = sorted(
            {v for eqn in what for v in eqn.invars if isinstance(v, jcore.Var)} - defined,
            key=id,
        )
        outputs = sorted(defined & after, key=id)
        compiled.append(("ops", (inputs, outputs), jax.jit(_piece(what, inputs, outputs))))

    def run(flat_args):
        env = dict(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, flat_args))
        for kind, what, fn in compiled:
            if kind == "loop":
                outs = fn([_read(env, v) for v in what.invars])
                env.update((v, o) for v, o in zip(what.outvars, outs) if isinstance(v, jcore.Var))
            else:
                inputs, outputs = what
                env.update(zip(outputs, fn(*[env[v] for v in inputs])))
        return [_read(env, v) for v in jaxpr.outvars]

    return run


def _piece(eqns, inputs, outputs):
    def piece(*values):
        env = dict(zip(inputs, values))
        for eqn in eqns:
            outs = _bind(eqn, [_read(env, v) for v in eqn.invars])
            env.update((v, o) for v, o in zip(eqn.outvars, outs) if isinstance(v, jcore.Var))
        return [env[v] for v in outputs]

    return piece


def _host_scan(eqn):
    """A `scan` equation as a host loop over its body, one jitted program."""
    params = eqn.params
    body = jax.jit(jcore.jaxpr_as_fun(params["jaxpr"]))
    num_consts, num_carry, length = params["num_consts"], params["num_carry"], params["length"]

    def loop(invals):
        consts = invals[:num_consts]
        carry = invals[num_consts : num_consts + num_carry]
        xs = invals[num_consts + num_carry :]
        ys = []
        order = range(length - 1, -1, -1) if params["reverse"] else range(length)
        for i in order:
            out = body(*consts, *carry, *[x[i] for x in xs])
            carry, y = list(out[:num_carry]), out[num_carry:]
            ys.append(y)
        if params["reverse"]:
            ys.reverse()
        stacked = [jnp.stack(column) for column in zip(*ys)] if ys else []
        if not ys:  # a loop of length 0: its outputs' stacked shapes, empty
            stacked = [jnp.zeros(v.aval.shape, v.aval.dtype) for v in eqn.outvars[num_carry:]]
        return [*carry, *stacked]

    return loop
