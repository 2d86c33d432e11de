"""Several processes resume (issue 17.5): two local processes (one CPU device each, gloo over
TCP, as on two hosts) train the kill test's run (`resume_child.py`) into process 0's workdir;
SIGTERM to one of them stops both at the same step with a checkpoint, SIGKILL of both mid-task
loses only the chunk in flight, and the restarted pair ends with the accuracy matrix of one
process with both devices, bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT
from test_distributed import _env, _free_port

from sequax.engine import interrupts

CONFIG = Path(__file__).with_name("resume_child.py")  # its get_config(): the kill test's run
TIMEOUT_S = 240


def _train(workdir: Path, *flags: str, devices: int, kill_at: str = "") -> subprocess.Popen:
    env = _env(devices, **({interrupts.KILL_ENV: kill_at} if kill_at else {}))
    return subprocess.Popen(
        [sys.executable, "-m", "sequax.launch.train", f"--config={CONFIG}",
         f"--workdir={workdir}", *flags],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _pair(tmp_path: Path, kill_at: tuple[str, str]) -> list[tuple[int, str, str]]:
    """Both processes, process i with the kill point kill_at[i]; (code, stdout, stderr) each."""
    port = _free_port()
    children = [
        _train(tmp_path / f"process{i}", f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}", devices=1, kill_at=kill_at[i])
        for i in range(2)
    ]  # fmt: skip
    try:
        return [(c.wait(TIMEOUT_S), *c.communicate(timeout=TIMEOUT_S)) for c in children]
    finally:
        for child in children:
            child.kill()


def test_two_processes_preempted_and_killed_resume_to_the_one_process_matrix(tmp_path):
    one = _train(tmp_path / "one", devices=2)
    out, err = one.communicate(timeout=TIMEOUT_S)
    assert one.returncode == 0, err[-3000:]
    expected = json.loads((tmp_path / "one" / "accuracy_matrix.json").read_text())
    workdir, checkpoints = tmp_path / "process0", tmp_path / "process0" / "checkpoints"

    # 1. SIGTERM to process 0 only, at step 25: both agree, save step 25 together, both stop.
    results = _pair(tmp_path, ("train_chunk:25@TERM", ""))
    for code, _out, err in results:
        assert code == 128 + signal.SIGTERM, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert f"interrupted by SIGTERM at step 25 (task 2/3, epoch 1); saved {checkpoints}" in err
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "step_00000020_phase0_done",
        "step_00000025",
    ]
    assert not (tmp_path / "process1").exists()  # only process 0 writes; both read its folder

    # 2. Both SIGKILLed mid-epoch at step 35 (a job killed without warning).
    results = _pair(tmp_path, ("train_chunk:35", "train_chunk:35"))
    assert [code for code, _, _ in results] == [-signal.SIGKILL] * 2, results[0][2][-3000:]
    assert f"resuming from {checkpoints / 'step_00000030'}" not in results[0][1]
    assert f"resuming from {checkpoints / 'step_00000025'}" in results[0][1]

    # 3. Restarted to the end: the one-process matrix, every row, bit for bit.
    results = _pair(tmp_path, ("", ""))
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:]
    assert f"resuming from {checkpoints / 'step_00000030'}" in results[0][1]
    assert json.loads((workdir / "accuracy_matrix.json").read_text()) == expected
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["timings"]["train_samples"] == 3 * 20 * 10  # counted once, across restarts
