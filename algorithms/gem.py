"""Gradient Episodic Memory (GEM): gradient surgery against every past task's memory gradient.

An episodic memory holds `capacity // num_tasks` examples of each finished task. Each step
computes, at the same parameters, the gradient g of the cross-entropy on the current batch
and one gradient g_k per stored task (the mean cross-entropy over that task's memory). If
any constraint <g, g_k> >= 0 is violated, the optimizer gets g projected by the dual QP of
the reference code's `project2cone2` (margin γ on the dual variables, ridge eps); otherwise
g passes unchanged:

    min_v  v'Pv/2 + (Mg)'v   s.t.  v >= γ,    P = sym(MM') + eps I,    g~ = g + M'v

with M the stored tasks' gradients as rows, all parameters as one flat vector
(`projection.gem_project`). The QP is solved inside the compiled step by an exact
active-set method (`projection.solve_nonnegative_qp`), with the tasks not yet stored
masked out: `num_tasks` fixes every shape. `loss` computes the g_k (a nested `jax.grad`
at the stopped parameters) and passes them in aux["tx_args"]; `gradient_transform`
projects in front of the optimizer. As in mammoth's gem.py at the DER paper's release, a
task's examples are drawn uniformly without replacement when it ends (later mammoth
versions rebalance the whole buffer over the tasks seen so far).

The g_k are computed for the stored tasks only, one per iteration of an in-jit loop to
`stored` (`first_rows`), into [num_tasks, ...] buffers whose other rows stay 0: a step
costs the batch's gradient plus one memory gradient per stored task, where a vmap over all
`num_tasks` rows (masked afterwards, as before) costs the full memory from the first task.
On 20-task P-MNIST (buffer 5120, 2 CPU cores) a step takes 1/4 of the all-rows time with
no task stored, about the same with 19, so ~1.6x less over the stream. Under the engine's
vmap over runs, one loop serves every run, to the largest count.

    algorithm = GEM(capacity=500, num_tasks=5, gamma=0.5)

Departures: the memory forwards (train mode, one per stored task) do not update the model
state (BatchNorm statistics; the MNIST MLP has none), and the QP is solved in float32 rather
than quadprog's float64 (the projected gradient agrees to 1e-5 of |g|, ~1e-7 typically;
see the tests).

References:
  Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017
  (facebookresearch/GradientEpisodicMemory); Buzzega et al., NeurIPS 2020
  (aimagelab/mammoth `models/gem.py`, followed here).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sequax.algorithms.agem import task_sample
from sequax.algorithms.losses import cross_entropy, forward_cross_entropy
from sequax.algorithms.projection import gem_projection
from sequax.core.protocol import Algorithm, is_number


class GEMState(NamedTuple):
    memory: Any  # {"x": [num_tasks, per_task, ...], "y": [num_tasks, per_task]}: zeros until stored
    valid: jax.Array  # bool [num_tasks, per_task]: rows holding a stored example
    stored: jax.Array  # int32 scalar: tasks stored so far (the next task's row)


@dataclasses.dataclass(frozen=True)
class GEM(Algorithm):
    """Gradient Episodic Memory.

    Attributes:
      capacity: episodic memory size in examples over all tasks (the DER table's buffer).
      num_tasks: tasks in the stream; each stores `capacity // num_tasks` examples when it
        ends, and the QP has one (masked) variable per task. Tasks beyond it are not stored.
      gamma: the margin γ ≥ 0 ("memory strength"), a lower bound on every dual variable,
        so a projected gradient leans γ·g_k further towards each past task. May be traced.
      eps: ridge added to the QP's Gram matrix (> 0; mammoth's 1e-3). May be traced.
    """

    needs_boundaries = "one memory and one constraint per task, filled when a task ends"

    capacity: int = 500
    num_tasks: int = 5
    gamma: float = 0.5
    eps: float = 1e-3

    def __post_init__(self):
        if not 0 < self.num_tasks <= self.capacity:
            raise ValueError(
                f"GEM num_tasks={self.num_tasks} must be in [1, capacity={self.capacity}]"
            )
        if is_number(self.gamma) and self.gamma < 0:
            raise ValueError(f"GEM gamma={self.gamma} must be >= 0")
        if is_number(self.eps) and not self.eps > 0:
            raise ValueError(f"GEM eps={self.eps} must be > 0")

    def init(self, params, model_state, example_batch, rng):
        rows = (self.num_tasks, self.capacity // self.num_tasks)
        example = {"x": example_batch["x"][0], "y": example_batch["y"][0]}
        memory = jax.tree.map(lambda e: jnp.zeros(rows + jnp.shape(e), jnp.result_type(e)), example)
        return GEMState(memory, jnp.zeros(rows, bool), jnp.zeros((), jnp.int32))

    def loss(self, params, state, batch, rng, model):
        outputs, model_state, ce = forward_cross_entropy(
            model, params, state, batch["x"], batch["y"], rng
        )
        task_ce, memories = self.memory_gradients(params, model_state, state.algo, rng, model)
        seen = state.algo.valid.any(axis=1)
        memory_ce = (task_ce * seen).sum() / jnp.maximum(seen.sum(), 1)
        aux = {
            "model_state": model_state,
            "metrics": {"ce": ce, "memory_ce": memory_ce},
            "outputs": outputs,
            "tx_args": {"memories": memories, "seen": seen},
        }
        return ce, aux

    def memory_gradients(self, params, model_state, algo, rng, model):
        """(task_ce [num_tasks], g_k stacked on a leading [num_tasks] axis), computed for the
        stored rows only (`first_rows`); the other rows are 0, and `seen` masks them.

        Row k's key is the k-th of one split into num_tasks keys, whatever is stored. The
        parameters and model state are stopped so that no tangent reaches the loop: the
        step's reverse-mode differentiation of `loss` could not go through it (a loop with a
        traced bound is a while_loop, and a custom_vmap call has no transpose either)."""
        params, model_state = jax.lax.stop_gradient((params, model_state))
        keys = jax.random.split(jax.random.fold_in(rng, 1), self.num_tasks)  # one per row

        def task_loss(params, model_state, x, y, rows, key):
            out, _ = model.apply(params, model_state, x, train=True, rng=key)
            return cross_entropy(out["logits"], y, rows)

        def task(k, params, model_state, memory, valid, keys):
            return jax.value_and_grad(task_loss)(
                params, model_state, memory["x"][k], memory["y"][k], valid[k], keys[k]
            )

        operands = (params, model_state, algo.memory, algo.valid, keys)
        return first_rows(task, algo.stored, self.num_tasks, *operands)

    def optimizer(self, tx):
        return optax.chain(self.gradient_transform(), tx)

    def gradient_transform(self):
        return gem_projection(self.gamma, self.eps)

    def update(self, algo, state, batch, aux, rng):
        return algo

    def end_task(self, state, task_data, rng, model):
        algo = state.algo
        examples, valid = task_sample(task_data, self.capacity // self.num_tasks, rng)
        row = algo.stored  # past num_tasks, the writes are dropped
        memory = jax.tree.map(lambda m, new: m.at[row].set(new, mode="drop"), algo.memory, examples)
        return GEMState(memory, algo.valid.at[row].set(valid, mode="drop"), algo.stored + 1)


def first_rows(row, count, num_rows: int, *operands):
    """`row(k, *operands)` for k < min(count, num_rows), stacked on a leading [num_rows]
    axis; the rows from `count` on are zeros and never computed.

    A while loop writes row k into preallocated buffers. Under `jax.vmap` (the engine's runs)
    `count` is batched, and JAX batches a while_loop with a batched bound by keeping each
    finished run's carry with a select over the whole buffers at every iteration, which on
    the CPU costs more than a row's gradient (GEM's step at 19 of 20 tasks took twice as
    long as the vmap over all rows). So the custom vmap rule runs one loop, to the largest
    count, computes row k for every run and writes only that row, zeroed past the run's own
    count. A vmap around that (two levels) is batched by JAX's rule: correct, not faster.
    `operands` hold every array `row` reads: a custom_vmap function closes over no tracer.
    """

    def zeros(row, batch, *operands):
        shapes = jax.eval_shape(row, 0, *operands)
        return jax.tree.map(
            lambda s: jnp.zeros((*s.shape[:batch], num_rows, *s.shape[batch:]), s.dtype), shapes
        )

    @jax.custom_batching.custom_vmap
    def rows(count, *operands):
        def body(k, out):
            return jax.tree.map(lambda o, v: o.at[k].set(v), out, row(k, *operands))

        init = zeros(row, 0, *operands)
        return jax.lax.fori_loop(0, jnp.minimum(count, num_rows), body, init)

    @rows.def_vmap
    def rows_vmap(axis_size, in_batched, count, *operands):
        count_batched, *operands_batched = in_batched
        counts = count if count_batched else jnp.broadcast_to(count, (axis_size,))
        in_axes = [jax.tree.map(lambda b: 0 if b else None, b) for b in operands_batched]
        batched_row = jax.vmap(row, in_axes=(None, *in_axes), axis_size=axis_size)

        def body(k, out):
            keep = k < counts
            values = jax.tree.map(
                lambda v: jnp.where(keep.reshape(-1, *[1] * (v.ndim - 1)), v, 0),
                batched_row(k, *operands),
            )
            return jax.tree.map(lambda o, v: o.at[:, k].set(v), out, values)

        init = zeros(batched_row, 1, *operands)
        out = jax.lax.fori_loop(0, jnp.minimum(counts.max(), num_rows), body, init)
        return out, jax.tree.map(lambda _: True, out)

    return rows(count, *operands)
