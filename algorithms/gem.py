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
masked out: `num_tasks` fixes every shape. `loss` computes the g_k (a vmapped nested
`jax.grad` at the stopped parameters) and passes them in aux["tx_args"];
`gradient_transform` projects in front of the optimizer. As in mammoth's gem.py at the DER
paper's release, a task's examples are drawn uniformly without replacement when it ends
(later mammoth versions rebalance the whole buffer over the tasks seen so far).

    algorithm = GEM(capacity=500, num_tasks=5, gamma=0.5)

Departures: the memory forwards (train mode, one per task, vmapped) do not update the model
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

from sequax.algorithms.protocol import is_number
from sequax.algorithms.agem import task_sample
from sequax.algorithms.losses import cross_entropy, forward_cross_entropy
from sequax.algorithms.projection import gem_projection


class GEMState(NamedTuple):
    memory: Any  # {"x": [num_tasks, per_task, ...], "y": [num_tasks, per_task]}: zeros until stored
    valid: jax.Array  # bool [num_tasks, per_task]: rows holding a stored example
    stored: jax.Array  # int32 scalar: tasks stored so far (the next task's row)



@dataclasses.dataclass(frozen=True)
class GEM:
    """Gradient Episodic Memory.

    Attributes:
      capacity: episodic memory size in examples over all tasks (the DER table's buffer).
      num_tasks: tasks in the stream; each stores `capacity // num_tasks` examples when it
        ends, and the QP has one (masked) variable per task. Tasks beyond it are not stored.
      gamma: the margin γ ≥ 0 ("memory strength"), a lower bound on every dual variable,
        so a projected gradient leans γ·g_k further towards each past task. May be traced.
      eps: ridge added to the QP's Gram matrix (> 0; mammoth's 1e-3). May be traced.
    """

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
        memory, valid = state.algo.memory, state.algo.valid

        def task_loss(p, x, y, rows, key):
            out, _ = model.apply(p, model_state, x, train=True, rng=key)
            return cross_entropy(out["logits"], y, rows)

        keys = jax.random.split(jax.random.fold_in(rng, 1), self.num_tasks)
        task_grad = jax.vmap(jax.value_and_grad(task_loss), in_axes=(None, 0, 0, 0, 0))
        task_ce, memories = task_grad(
            jax.lax.stop_gradient(params), memory["x"], memory["y"], valid, keys
        )
        seen = valid.any(axis=1)
        memory_ce = (task_ce * seen).sum() / jnp.maximum(seen.sum(), 1)
        aux = {
            "model_state": model_state,
            "metrics": {"ce": ce, "memory_ce": memory_ce},
            "outputs": outputs,
            "tx_args": {"memories": memories, "seen": seen},
        }
        return ce, aux

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
