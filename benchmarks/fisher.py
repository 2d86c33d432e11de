"""Times EWC's `end_task` (the diagonal Fisher) on one Permuted-MNIST-sized task.

    python -m benchmarks.fisher                 # 1 run and 3 vmapped runs, both paths
    python -m benchmarks.fisher --runs=3 --paths=dense --fisher_labels=sampled

One task of 60,000 random 28x28 images (timing does not depend on the pixels), the DER MLP
784-100-100-10, online EWC as in the DER P-MNIST row (lam 1.4, empirical Fisher weighted by
p(y|x), chunks of 128). "dense" is the dense-layer fast path (`algorithms.fisher`),
"per_example" the `vmap(grad)` path it replaces. Each cell: compile (first call), then the
best of `--repeats` calls. Prints one line per cell; writes nothing.
"""

from __future__ import annotations

import contextlib
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from sequax.algorithms import EWC, fisher
from sequax.core.models import mlp
from sequax.core.state import CLState
from sequax.core.task_data import task_arrays

_EXAMPLES = flags.DEFINE_integer("examples", 60_000, "Examples in the task.")
_RUNS = flags.DEFINE_list("runs", ["1", "3"], "Run counts to time (more than 1: vmapped).")
_PATHS = flags.DEFINE_list("paths", ["dense", "per_example"], "Fisher paths to time.")
_LABELS = flags.DEFINE_enum("fisher_labels", "empirical", ["empirical", "sampled"], "EWC labels.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls per cell (the best is reported).")


def run_states(model, algorithm, runs: int) -> CLState:
    """`runs` states with different parameters, stacked on a leading axis when runs > 1."""

    def one(seed):
        params, model_state = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1)))
        return CLState(
            step=jnp.zeros((), jnp.int32),
            task=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=(),
            algo=algorithm.init(params, model_state, None, None),
            key=jax.random.PRNGKey(seed),
        )

    states = [one(seed) for seed in range(runs)]
    return states[0] if runs == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def main(argv):
    del argv
    model = mlp(10, widths=(100, 100))
    algorithm = EWC(
        lam=1.4, online=True, gamma=1.0, fisher_labels=_LABELS.value, likelihood_weighted=True
    )
    rng = np.random.default_rng(0)
    n = _EXAMPLES.value
    data = task_arrays(
        rng.integers(0, 256, (n, 28, 28, 1), np.uint8), rng.integers(0, 10, n), np.zeros(n), n
    )
    print(f"{jax.devices()[0].device_kind}, {n:,} examples, EWC {algorithm}")
    for path in _PATHS.value:
        for runs in map(int, _RUNS.value):
            state = run_states(model, algorithm, runs)
            keys = (
                jax.random.split(jax.random.PRNGKey(1), runs) if runs > 1 else jax.random.PRNGKey(1)
            )

            def end_task(state, data, key, path=path):
                # "per_example": the dense path disproved, as for a network it does not cover.
                per_example = mock.patch.object(fisher, "dense_layers", lambda *args: None)
                with per_example if path == "per_example" else contextlib.nullcontext():
                    return algorithm.end_task(state, data, key, model)

            compiled = jax.jit(jax.vmap(end_task, (0, None, 0)) if runs > 1 else end_task)
            start = time.perf_counter()
            jax.block_until_ready(compiled(state, data, keys))
            first = time.perf_counter() - start
            times = []
            for _ in range(_REPEATS.value):
                start = time.perf_counter()
                jax.block_until_ready(compiled(state, data, keys))
                times.append(time.perf_counter() - start)
            print(
                f"{path:12s} runs={runs}: end_task {min(times):7.2f} s (first call, with compile: "
                f"{first:.2f} s)"
            )


if __name__ == "__main__":
    app.run(main)
