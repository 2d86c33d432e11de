"""Several processes: flag checks, two local processes against one, a process killed mid-run.

The multi-process tests start `distributed_child.py` as separate Python processes on
localhost (a free port, gloo over TCP, two CPU devices each), as on two hosts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import pytest
from conftest import REPO_ROOT

from sequax.engine import distributed

CHILD = Path(__file__).with_name("distributed_child.py")
START_S = 60  # generous: two processes importing jax on a busy 2-core machine
KILL_BOUND_S = 60  # a survivor must stop within this many seconds of the kill
HEARTBEAT_S = 5  # the children's timeout_s for the heartbeat test
CLUSTER_VARS = ("SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "KUBERNETES_", "JAX_COORDINATOR")


# ---------------- Flag checks: one line naming the flag, before contacting anyone -----------


@pytest.mark.parametrize(
    "args, flag",
    [
        (
            dict(num_processes=2),
            "--num_processes given without --coordinator_address and --process_id",
        ),
        (dict(coordinator_address="h:1", process_id=0), "--num_processes"),
        (
            dict(coordinator_address="10.0.0.1", num_processes=2, process_id=0),
            "--coordinator_address",
        ),
        (
            dict(coordinator_address="h:99999", num_processes=2, process_id=0),
            "--coordinator_address",
        ),
        (dict(coordinator_address="h:1", num_processes=0, process_id=0), "--num_processes=0"),
        (
            dict(coordinator_address="h:1", num_processes=2, process_id=2),
            "--process_id=2 must be in 0..1",
        ),
        (dict(coordinator_address="h:1", num_processes=2, process_id=-1), "--process_id=-1"),
    ],
)
def test_bad_flags_are_one_line_errors(args, flag):
    with pytest.raises(distributed.DistributedError) as error:
        distributed.initialize(**args)
    assert flag in str(error.value) and "\n" not in str(error.value)
    assert not jax.distributed.is_initialized()


def test_initialize_after_devices_started_says_so():
    jax.devices()  # this test process has started its backend: jax refuses before any contact
    with pytest.raises(distributed.DistributedError, match="before jax.devices"):
        distributed.initialize("127.0.0.1:1", 2, 0)
    assert not jax.distributed.is_initialized()


def _no_cluster(monkeypatch):
    for name in list(os.environ):
        if name.startswith(CLUSTER_VARS):
            monkeypatch.delenv(name)


def test_no_flags_and_no_cluster_is_one_process(monkeypatch):
    _no_cluster(monkeypatch)
    assert distributed.detect_cluster() is None
    assert distributed.initialize() is False
    assert not jax.distributed.is_initialized() and distributed.is_main_process()


def test_detection_follows_jax_but_a_one_task_job_stays_single(monkeypatch):
    _no_cluster(monkeypatch)
    slurm = dict(
        SLURM_JOB_ID="7",
        SLURM_STEP_NODELIST="node1",
        SLURM_NTASKS="1",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
    )
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert distributed.detect_cluster() == "SlurmCluster"
    assert distributed.initialize() is False  # one task: no coordinator (and all local GPUs)
    assert not jax.distributed.is_initialized()
    _no_cluster(monkeypatch)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # any pod: not an indexed Job
    assert distributed.detect_cluster() is None


def test_launcher_rejects_partial_flags(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sequax.launch.train",
            "--config=configs/quickstart.py:local",
            f"--workdir={tmp_path}",
            "--num_processes=2",
        ],
        cwd=REPO_ROOT,
        env=_env(1),
        capture_output=True,
        text=True,
        timeout=START_S,
        check=False,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("sequax: error:")]
    assert len(errors) == 1 and "--coordinator_address" in errors[0], run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "config.json").exists()


def test_to_numpy_single_process():
    x = jax.numpy.arange(6.0).reshape(2, 3)
    out = distributed.to_numpy({"x": x, "n": 3})
    assert out["x"].tolist() == [[0, 1, 2], [3, 4, 5]] and int(out["n"]) == 3


# ---------------- Child processes ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARS)}
    # XLA's passes on (conftest turns them off for speed): the one-process and two-process
    # programs then reduce in the same order, which the bit-for-bit comparisons need.
    env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={devices}",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class Child:
    """A child process whose merged stdout/stderr is collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"child never printed {text!r}; output:\n{self.output[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child still running after {timeout} s; output:\n{self.output[-3000:]}")
        self._reader.join(timeout=5)
        return code

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _result(child: Child) -> dict:
    assert child.finish(START_S) == 0, child.output[-3000:]
    return json.loads(next(line for line in child.lines if line.startswith("{")))


def _slurm(i: int, port: int) -> dict[str, str]:
    """What `srun --ntasks=2` on one node sets for task i (the variables jax reads)."""
    return dict(
        SLURM_JOB_ID="7",
        SLURM_STEP_NODELIST="localhost",
        SLURM_NTASKS="2",
        SLURM_PROCID=str(i),
        SLURM_LOCALID=str(i),
        JAX_COORDINATOR_PORT=str(port),
    )


def _launch(mode: str, *, victim=1, timeout_s=60, devices=2, how="flags") -> list[Child]:
    port = _free_port()
    children = []
    for i in range(2):
        flags = [f"127.0.0.1:{port}", "2", str(i)]
        extra, args = {
            "flags": ({}, flags),
            "slurm": (_slurm(i, port), ["-", "0", "0"]),  # detected: no flags
            "flags-in-slurm": (_slurm(1 - i, _free_port()), flags),  # the flags win
        }[how]
        children.append(Child([mode, *args, str(victim), str(timeout_s)], _env(devices, **extra)))
    return children


@pytest.mark.parametrize("how", ["flags", "slurm", "flags-in-slurm"])
def test_two_processes_compute_exactly_what_one_does(how):
    single = Child(["compute", "none", "1", "0"], _env(4))
    children = _launch("compute", how=how)
    try:
        one = _result(single)
        results = [_result(child) for child in children]
    finally:
        for child in (single, *children):
            child.kill()
    assert one["devices"] == 4 and one["processes"] == 1
    for i, result in enumerate(results):
        assert result["process"] == i and result["processes"] == 2 and result["main"] == (i == 0)
        assert result["devices"] == 4 and result["local_devices"] == 2
        assert result["rows"] == [
            [32 * i, 32 * i + 16],
            [32 * i + 16, 32 * (i + 1)],
        ]  # own shards only
        assert result["value"] == one["value"]  # bit for bit
        assert result["replicated"] == one["replicated"]
        assert result["split_readable"] is False  # to_numpy refuses an array split over processes
        # SLURM detection gives each task the GPU of its local rank; explicit flags keep all
        assert result["gpus"] == (str(i) if how == "slurm" else "all")


# jax's abort, a runtime barrier's error, or exit_on_failure's line: each names process 1
HEARTBEAT_VERDICT = re.compile(
    r"stopped sending heartbeats\):\s*1\b"
    r"|Task 1 heartbeat timeout"
    r"|process 1 stopped sending heartbeats"
)


@pytest.mark.parametrize(
    "mode, victim, devices, expect",
    [
        ("collective", 1, 1, "at once"),  # gloo sees the closed connection
        ("collective", 1, 2, "heartbeat"),  # gloo does not: the coordination service decides
        ("collective", 0, 2, "at once"),  # the coordination service itself is gone
        ("barrier", 1, 2, "heartbeat"),  # a runtime barrier (orbax's) waits for heartbeats
    ],
    ids=["collective-1dev", "collective-2dev", "collective-coordinator", "barrier"],
)
def test_survivor_stops_when_a_process_is_killed(mode, victim, devices, expect):
    children = _launch(mode, victim=victim, timeout_s=HEARTBEAT_S, devices=devices)
    dead, survivor = children[victim], children[1 - victim]
    try:
        dead.wait_for("READY", START_S)
        survivor.wait_for("WAITING", START_S)
        time.sleep(0.5)  # let the survivor block in the all-reduce / the barrier
        killed_at = time.monotonic()
        dead.process.send_signal(signal.SIGKILL)
        code = survivor.finish(KILL_BOUND_S)
        took = time.monotonic() - killed_at
    finally:
        for child in children:
            child.kill()
    out = survivor.output
    print(
        f"{mode}, {devices} device(s) each, process {victim} killed: exit {code} after {took:.1f} s"
    )
    assert code != 0 and "PASSED BARRIER" not in out, out[-3000:]
    ours = f"sequax: error: process {1 - victim} of 2 stops:"
    jax_abort = "Terminating process because the JAX distributed service detected fatal errors"
    assert ours in out or jax_abort in out, out[-3000:]
    if expect == "at once":
        assert took < HEARTBEAT_S - 1, out[-3000:]
    else:
        assert HEARTBEAT_S / 2 < took < HEARTBEAT_S + 20, out[-3000:]
        assert HEARTBEAT_VERDICT.search(out), out[-3000:]  # names the dead process
