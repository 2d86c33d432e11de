"""Several processes (hosts) in one run: joining them, who writes, reading results, failure.

JAX runs one process per host (multi-controller): every process runs the same program,
owns its local devices, and a jitted computation over a mesh of all devices
(`jax.devices()`) communicates across processes. `initialize` joins the processes before
anything touches a device (on CPU over gloo, TCP); host data becomes a global array with
`jax.make_array_from_callback` (`sharding.put`), each process placing only its shards.

    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # () on TPU/SLURM
    with distributed.exit_on_failure():
        metrics = distributed.to_numpy(step(state, batch))  # replicated: any process reads it
        if distributed.is_main_process():
            write(metrics)

When a process dies (SIGKILL), the others stop within about `timeout_s` instead of hanging
(jax 0.10.2; measured with two processes on one CPU host and timeout_s=5, the cases of
`tests/engine/test_distributed.py`):

  * another process died: the coordination service declares it dead after `timeout_s`
    without heartbeats and stops every other process, wherever it waits (a collective on
    CPU, GPU or TPU, a barrier): jax aborts it (SIGABRT) with "Terminating process because
    the JAX distributed service detected fatal errors ... The following tasks are unhealthy
    (stopped sending heartbeats): K", or a barrier of the runtime raises "Task K heartbeat
    timeout" first and `exit_on_failure` reports it (status 1). 5.3-5.4 s after the kill;
  * on CPU gloo may notice the closed connection sooner: with one device per process the
    blocked all-reduce raised at once (< 0.1 s) and `exit_on_failure` reported it; with two
    devices per process it did not, and the heartbeat timeout stopped the survivor;
  * process 0 died: it hosts the coordination service, so the others lose their connection
    and stop at once (< 0.1 s), by jax's abort ("Socket closed") or `exit_on_failure`.

Without `exit_on_failure`, a process whose computation raised waits at Python's exit (jax's
shutdown barrier) for the dead process until `timeout_s`, then aborts; and a process that
raised on its own (a bug, a data file missing on one host) waits there up to jax's 300 s
shutdown timeout while the others stay blocked in a collective with it. jax's abort cannot
be replaced: in jaxlib 0.10.2 a Python `missed_heartbeat_callback` fails to convert its
status argument (`std::bad_cast`), so jax's message, which names the dead process, stays.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

# Seconds without a heartbeat after which the coordination service declares a process dead
# and stops the others. jax's default is 100 s; 60 s still leaves a busy host (compiling,
# swapping) ample time to send one heartbeat.
HEARTBEAT_TIMEOUT_S = 60
# Seconds the processes may take to find the coordinator at start-up (jax's default).
INITIALIZATION_TIMEOUT_S = 300
# Clusters that jax bootstraps from the environment (jax._src.clusters), by class name.
# Kubernetes counts only for an indexed Job (what jax's K8sCluster requires): any other pod
# would otherwise try to bootstrap, or warn that the `kubernetes` package is missing.
_K8S = "K8sCluster"


class DistributedError(ValueError):
    """Flags that cannot start a multi-process run; the message names the flag and the fix."""


def _cluster_env():
    from jax._src import clusters  # jax's own detectors, so that sequax agrees with jax

    for cluster in clusters.ClusterEnv._cluster_types:
        if cluster.opt_in_only_method:  # mpi4py: only when asked for by name
            continue
        if cluster.__name__ == _K8S and "JOB_COMPLETION_INDEX" not in os.environ:
            continue
        if cluster.is_env_present():
            return cluster
    return None


def detect_cluster() -> str | None:
    """The cluster jax.distributed would bootstrap from (`GceTpuCluster`, `GkeTpuCluster`,
    `SlurmCluster`, `OmpiCluster`, `K8sCluster` for an indexed Job), or None. Reads the
    environment (and on a Cloud TPU VM its metadata server); contacts no other process."""
    cluster = _cluster_env()
    return None if cluster is None else cluster.__name__


def _check_flags(coordinator_address, num_processes, process_id) -> None:
    given = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    present = [name for name, value in given.items() if value is not None]
    if present and len(present) < 3:
        missing = [name for name in given if name not in present]
        raise DistributedError(
            f"{' and '.join(present)} given without {' and '.join(missing)}: give all three "
            "(the same --coordinator_address and --num_processes on every process, --process_id "
            "0..N-1), or none for one process or on a TPU pod slice, SLURM or Open MPI, where "
            "they are detected"
        )
    if not present:
        return
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(
            f"--coordinator_address={coordinator_address!r} is not host:port; give process 0's "
            "address and a free port, e.g. --coordinator_address=10.0.0.1:1234"
        )
    if not isinstance(num_processes, int) or num_processes < 1:
        raise DistributedError(
            f"--num_processes={num_processes!r} must be a positive integer: the number of "
            "processes in the run (one per host)"
        )
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise DistributedError(
            f"--process_id={process_id!r} must be in 0..{num_processes - 1} "
            f"(--num_processes={num_processes}); give each process a different id, 0 on the "
            "coordinator's host"
        )


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = HEARTBEAT_TIMEOUT_S,
    initialization_timeout_s: int = INITIALIZATION_TIMEOUT_S,
) -> bool:
    """Joins this process to a multi-process run; returns whether it is one.

    With all three arguments, calls `jax.distributed.initialize` with them; with none, calls
    it without arguments when `detect_cluster()` finds a job of more than one process (TPU
    pod slice, SLURM, Open MPI), which jax then reads; otherwise does nothing (one process).
    Given explicitly, they win over the environment, and every process keeps all its local
    devices (under SLURM or Open MPI, jax's detection gives each process the one GPU of its
    local rank). The arguments mirror the launcher's flags and errors name the flags. Must
    run before anything touches a JAX device.

    `timeout_s`: a process silent for this long is declared dead and every other process
    stops (the bound on how long a survivor waits); `initialization_timeout_s`: how long to
    wait for every process to join.
    """
    _check_flags(coordinator_address, num_processes, process_id)
    if timeout_s < 1 or initialization_timeout_s < 1:
        raise DistributedError(
            f"timeout_s={timeout_s} and initialization_timeout_s={initialization_timeout_s} "
            "must be at least 1 (seconds)"
        )
    if coordinator_address is None:
        cluster = _cluster_env()
        # A job of one process needs no coordinator; under SLURM or Open MPI, jax would also
        # limit it to one GPU (the one numbered by its local rank).
        if cluster is None or cluster.get_process_count() == 1:
            return False
    # CPU: collectives between processes need an implementation, else every cross-process
    # computation fails ("Multiprocess computations aren't implemented on the CPU backend").
    # gloo (TCP) is jax 0.10.2's default; set here so that it does not depend on the default,
    # keeping "mpi" if the user chose it (JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi).
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            # Explicit flags win over the environment: without "deactivate", jax would still
            # read SLURM/Open MPI variables and limit each process to one GPU (its local rank).
            cluster_detection_method=None if coordinator_address is None else "deactivate",
            initialization_timeout=int(initialization_timeout_s),
            heartbeat_timeout_seconds=int(timeout_s),
        )
    except RuntimeError as error:
        if "must be called before" in str(error):
            raise DistributedError(
                "distributed.initialize ran after JAX had started its devices; call it first "
                "(before jax.devices(), device_put or any computation)"
            ) from None
        raise
    return _process_count() > 1


def is_main_process() -> bool:
    """Whether this process writes files and prints (process 0; also the single process)."""
    return jax.process_index() == 0


def to_numpy(tree: Any) -> Any:
    """A pytree of fully replicated (or single-process) arrays as numpy, in any process.

    Reads this process's own copy (`addressable_data(0)`): no communication. A global array
    split across processes raises: replicate it first (`out_shardings` with `P()`).
    """

    def read(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if not x.is_fully_replicated:
            raise ValueError(
                f"an array of shape {x.shape} is split across processes ({x.sharding}); only "
                "replicated arrays can be read in one process: compute it with "
                "out_shardings=NamedSharding(mesh, P())"
            )
        return np.asarray(x.addressable_data(0))

    return jax.tree.map(read, tree)


def barrier(name: str) -> None:
    """Waits until every process reaches `barrier(name)` (a no-op with one process).

    A collective over all devices (`multihost_utils.sync_global_devices`), so a dead
    process makes it fail as any collective does (see the module docstring)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ---------------- Failure: stop at once, so that the other processes stop too --------------


def _process_count() -> int:
    # jax.process_count() would start the backend, which in a multi-process run exchanges
    # topologies with the other processes: not something to do while failing.
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.num_processes if jax.distributed.is_initialized() else 1


def _stop(status: int, message: str | None) -> None:
    """Ends the process now, skipping Python's exit handlers: jax's would wait at the
    distributed runtime's shutdown barrier for processes that are dead or blocked in a
    collective with this one (until `timeout_s`, or jax's 300 s shutdown timeout), then
    abort."""
    if message:
        print(message, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def _failure_message(error: BaseException) -> str:
    """One line: which process stops, why (naming the failed process when jax's error does)."""
    from jax._src import distributed as jax_distributed

    state = jax_distributed.global_state
    me, n = state.process_id, state.num_processes
    text = str(error).strip()
    first = text.splitlines()[0] if text else "(no message)"
    dead = re.search(r"Task (\d+) heartbeat timeout", text)
    if dead:
        cause = f"process {dead.group(1)} stopped sending heartbeats: it died or hangs"
    elif "coordination service" in text and "UNAVAILABLE" in text:
        cause = f"lost process 0 ({state.coordinator_address}), which coordinates the run: it died"
    elif "Gloo" in text and ("closed by peer" in text or "reset by peer" in text):
        cause = f"a collective lost its connection to another process, which died ({first})"
    else:
        cause = f"{type(error).__name__}: {first}"
    return (
        f"sequax: error: process {me} of {n} stops: {cause}. The other processes stop when they "
        f"notice; find the first error in the failed process's log, then restart all {n} processes."
    )


@contextlib.contextmanager
def exit_on_failure() -> Iterator[None]:
    """In a multi-process run, ends the process at once on an exception or a non-zero
    `sys.exit`, after printing it, so that the other processes see it gone and stop too.
    With one process, does nothing.

    Without it, Python's normal exit waits at jax's shutdown barrier for the processes
    still blocked in a collective with this one: after a peer died, until `timeout_s`
    (then jax aborts); after an exception here, up to jax's 300 s shutdown timeout.
    """
    try:
        yield
    except SystemExit as stop:
        if _process_count() == 1 or stop.code in (None, 0):
            raise
        if isinstance(stop.code, int):
            _stop(stop.code, None)  # the caller printed its message
        _stop(1, str(stop.code))
    except BaseException as error:  # KeyboardInterrupt too: the others must not wait for it
        if _process_count() == 1:
            raise
        traceback.print_exc()
        _stop(1, _failure_message(error))
