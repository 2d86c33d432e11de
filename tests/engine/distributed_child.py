"""One process of the multi-process tests in `test_distributed.py` (run as a script).

    python tests/engine/distributed_child.py MODE ADDRESS PROCESSES PROCESS_ID [VICTIM TIMEOUT_S]

ADDRESS "-" calls `distributed.initialize()` without arguments (the environment, e.g. SLURM
variables, says who is who); "none" does not call it (a plain single process). Modes:

  compute  place a global array with `make_array_from_callback` (this process provides only
           its shards), run a jitted sharded computation with a cross-device reduction,
           print one JSON line with the result (`float.hex`, exact) and what was placed;
  collective / barrier  after one computation, process VICTIM prints "READY" and sleeps
           (the test kills it); the others print "WAITING" and block in a cross-process
           computation / a barrier of the distributed runtime, inside `exit_on_failure`.

No absl: nothing here parses flags.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import xla_bridge
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sequax.engine import distributed

ROWS, FEATURES = 64, 5  # rows divide over 1, 2 or 4 devices


def host_data() -> tuple[np.ndarray, np.ndarray]:
    """The same host arrays in every process (a fixed seed), as the loop's datasets are."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    w = rng.normal(size=(FEATURES, 3)).astype(np.float32)
    return x, w


@jax.jit
def loss(x, w):  # a cross-device reduction: the mean over rows split across all devices
    return jnp.mean(jnp.tanh(x @ w) ** 2)


def compute() -> dict:
    mesh = jax.make_mesh((jax.device_count(),), ("data",), devices=jax.devices())
    x, w = host_data()
    requested = []

    def shard(index):  # called only for this process's devices
        requested.append([index[0].start or 0, index[0].stop or ROWS])
        return x[index]

    xs = jax.make_array_from_callback(x.shape, NamedSharding(mesh, P("data")), shard)
    ws = jax.make_array_from_callback(w.shape, NamedSharding(mesh, P()), lambda index: w[index])
    value = loss(xs, ws)
    try:  # an array split across processes cannot be read in one process
        distributed.to_numpy(xs)
        split_readable = True
    except ValueError:
        split_readable = False
    return {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "main": distributed.is_main_process(),
        "rows": sorted(requested),
        "value": float(distributed.to_numpy(value)).hex(),
        "split_readable": split_readable if jax.process_count() > 1 else None,
        "replicated": distributed.to_numpy(ws).tolist(),
        "gpus": xla_bridge.CUDA_VISIBLE_DEVICES.value,  # what jax would keep of a GPU host
    }


def main(argv: list[str]) -> None:
    mode, address, num_processes, process_id = argv[1:5]
    victim, timeout_s = (int(argv[5]), int(argv[6])) if len(argv) > 6 else (1, 60)
    if address == "-":
        distributed.initialize(timeout_s=timeout_s)
    elif address != "none":
        distributed.initialize(address, int(num_processes), int(process_id), timeout_s=timeout_s)
    result = compute()
    if mode == "compute":
        print(json.dumps(result), flush=True)
        return
    with distributed.exit_on_failure():
        if jax.process_index() == victim:
            print("READY", flush=True)
            time.sleep(600)
        print("WAITING", flush=True)
        if mode == "collective":
            while True:  # blocks in the all-reduce once the victim stops taking part
                compute()
        from jax._src import distributed as jax_distributed  # orbax's barrier, the runtime's

        jax_distributed.global_state.client.wait_at_barrier("test", 600_000)
        print("PASSED BARRIER", flush=True)


if __name__ == "__main__":
    main(sys.argv)
