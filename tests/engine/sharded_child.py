"""Child process of test_sharding.py: tiny runs on however many (fake) devices it was given.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python sharded_child.py OUT.npz naive er

For each algorithm it saves the accuracy matrices and the final parameters, flattened.
"""

from __future__ import annotations

import sys
import tempfile

import jax
import numpy as np

from sequax.configs import common
from sequax.engine import loop

jax.config.update("jax_disable_most_optimizations", True)  # as in conftest: fast compiles

HYPERPARAMETERS = {
    "naive": {},
    "ewc": {"lam": 10.0},
    "er": {"capacity": 64, "replay_batch": 16},
    "derpp": {"capacity": 64, "replay_batch": 16, "alpha": 0.3, "beta": 0.5},
}


def tiny_config(name: str):
    """`name` is an algorithm, or "ALGORITHM+fsdp" for a (data 4, fsdp 2) mesh, or
    "ALGORITHM+runs" for 2 vmapped seeds split over a (runs 2, data 4) mesh."""
    algorithm, _, mode = name.partition("+")
    config = common.der_config("split", algorithm, 0.1, **HYPERPARAMETERS[algorithm])
    if mode == "fsdp":  # the 784x32 kernel (25,088 elements) is split in two
        config.mesh.fsdp = 2
        config.mesh.fsdp_min_size = 1000
    if mode == "runs":
        config.runs = 2
        config.mesh.runs = 2
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 3  # enough tasks for replay and the penalty to act on old ones
    config.checkpoint.enabled = False  # not what these runs compare (test_resume.py does)
    config.data.train_per_task = 320
    config.data.test_per_task = 96
    config.model.widths = (32,)
    config.training.batch_size = 16  # divides over 8 devices: 2 examples each
    config.training.steps_per_dispatch = 7  # several dispatches per task
    return config


def main(out: str, algorithms: list[str]) -> None:
    results = {"devices": jax.device_count()}
    for name in algorithms:
        with tempfile.TemporaryDirectory() as workdir:
            result = loop.run(tiny_config(name), workdir, verbose=False)
        results[f"{name}/class_il"] = result.class_il
        results[f"{name}/task_il"] = result.task_il
        leaves = jax.tree.leaves(result.state.params)
        if name.endswith("+runs"):  # run 0 (seed 0) is the single run of the other process
            results[f"{name}/class_il"], results[f"{name}/task_il"] = (
                result.class_il[0],
                result.task_il[0],
            )
            results[f"{name}/params"] = np.concatenate([np.asarray(p)[0].ravel() for p in leaves])
        else:
            results[f"{name}/params"] = np.concatenate([np.asarray(p).ravel() for p in leaves])
        specs = {str(p.sharding.spec) for p in leaves}
        if name.startswith(("er", "derpp")):
            specs |= {
                "buffer " + str(jax.tree.leaves(result.state.algo.buffer.items)[0].sharding.spec)
            }
        results[f"{name}/specs"] = np.array(sorted(specs))
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
