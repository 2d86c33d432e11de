"""Exact resume and checkpoint integrity (`sequax.engine.checkpoint`, the loop's restore).

The kill test runs `resume_child.py` in fresh processes and SIGKILLs them at named points
(the test-only hook `SEQUAX_TEST_KILL_AT`) and at a random time; restarted with the same
workdir, the run must end bit for bit where an uninterrupted one does (CPU). The other tests
run the loop in this process: corrupt and half-written checkpoints, retention, a config
mismatch, a diverged loss and a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sequax.configs import common
from sequax.engine import checkpoint, interrupts, loop, programs
from sequax.engine import results as results_lib
from sequax.engine.build import ConfigError
from sequax.engine.checkpoint import (
    Checkpoints,
    CheckpointWarning,
    NoSpaceLeft,
    Position,
    TrainingDiverged,
)

CHILD = Path(__file__).with_name("resume_child.py")
TIMEOUT_S = 120


# ---------------------------------------------------------------- the kill test ------------
def start_child(workdir: Path, kill_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(interrupts.KILL_ENV, None)
    if kill_at:
        env[interrupts.KILL_ENV] = kill_at
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(workdir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_child(workdir: Path, kill_at: str | None = None, kill_after_s: float | None = None):
    child = start_child(workdir, kill_at)
    try:
        out, err = child.communicate(
            timeout=kill_after_s if kill_after_s is not None else TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        assert kill_after_s is not None, "the child did not finish in time"
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=TIMEOUT_S)
    return child.returncode, out, err


def run_launcher(workdir: Path, kill_at: str):
    """The same run through the command line (resume_child.py is also its config file)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", interrupts.KILL_ENV: kill_at}
    done = subprocess.run(
        [sys.executable, "-m", "sequax.launch.train", f"--config={CHILD}", f"--workdir={workdir}"],
        env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def final(workdir: Path):
    state = dict(np.load(workdir / "final_state.npz"))
    matrix = json.loads((workdir / "accuracy_matrix.json").read_text())
    return state, matrix


def checkpoints_in(workdir: Path) -> list[str]:
    folder = workdir / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_killed_runs_resume_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    code, out, err = run_child(reference)
    assert code == 0, err[-3000:]
    expected_state, expected_matrix = final(reference)
    assert "resuming" not in out
    workdir = tmp_path / "killed"

    # 1. During end_task of task 1: only the mid-epoch checkpoint of step 15 exists.
    code, out, err = run_child(workdir, "end_task:0")
    assert code == -signal.SIGKILL, err[-3000:]
    assert checkpoints_in(workdir) == ["step_00000015"]

    # 2. Resumed mid-epoch (task 1's second epoch, 5 steps in), killed mid-epoch in task 2.
    code, out, err = run_child(workdir, "train_chunk:25")
    assert code == -signal.SIGKILL, err[-3000:]
    assert (
        f"resuming from {workdir / 'checkpoints' / 'step_00000015'} (task 1/3, epoch 2, step 15)"
        in out
    )
    assert checkpoints_in(workdir) == ["step_00000015", "step_00000020_phase0_done"]

    # 3. During a checkpoint write: orbax has written step 45's arrays, its manifest is missing.
    code, out, err = run_child(workdir, "checkpoint_written:step_00000045")
    assert code == -signal.SIGKILL, err[-3000:]
    assert "(task 1/3 done, step 20)" in out
    half = workdir / "checkpoints" / "step_00000045"
    assert (half / "state").is_dir() and not (half / checkpoint.MANIFEST).exists()
    assert checkpoints_in(workdir) == [
        "step_00000030",
        "step_00000040_phase1_done",
        "step_00000045",
    ]  # keep=2

    # 4. The half-written checkpoint is named in a warning and the previous good one used;
    #    step 45 is saved again, whole, and the run killed mid-epoch after it.
    code, out, err = run_child(workdir, "train_chunk:55")
    assert code == -signal.SIGKILL, err[-3000:]
    assert f"{half} is half-written" in err and "resuming from" in err, err[-3000:]
    assert "(task 2/3 done, step 40)" in out
    assert (half / checkpoint.MANIFEST).is_file()

    # 5. SIGTERM (a scheduler's preemption) through the command line, at the chunk reaching
    #    step 50: the chunk finishes, its position is saved and verified, one line names it and
    #    the command that resumes, exit 143.
    code, out, err = run_launcher(workdir, "train_chunk:50@TERM")
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    saved = workdir / "checkpoints" / "step_00000050"
    assert line.startswith(
        f"sequax: interrupted by SIGTERM at step 50 (task 3/3, epoch 1); saved {saved}, "
        "the same command resumes; to resume: python -m sequax.launch.train --config="
    ), line
    assert (saved / checkpoint.MANIFEST).is_file()

    # 6. Ctrl-C twice at step 55 (resumed from step 50): stopped at once, one line, exit 130,
    #    nothing saved there.
    code, out, err = run_launcher(workdir, "train_chunk:55@INT2")
    assert code == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("sequax: SIGINT again: stopped at once")
    assert "resuming from" in out and "step_00000055" not in checkpoints_in(workdir)

    # 7. At a random time (seeded; printed on failure), then 8. to the end.
    seed = random.randrange(10**6)
    kill_after = random.Random(seed).uniform(0.5, 6.0)
    code, out, err = run_child(workdir, kill_after_s=kill_after)
    assert code in (0, -signal.SIGKILL), (
        f"random kill after {kill_after:.2f}s (seed {seed}): {err[-3000:]}"
    )
    code, out, err = run_child(workdir)
    assert code == 0, err[-3000:]

    state, matrix = final(workdir)
    assert matrix == expected_matrix  # every row, and the random-init accuracies
    assert not np.isnan(np.asarray(matrix["class_il"])).any()
    assert set(state) == set(expected_state)
    for key in expected_state:  # bit for bit: params, momentum, Fisher, anchors, reservoir
        np.testing.assert_array_equal(
            state[key], expected_state[key], err_msg=f"{key} (seed {seed})"
        )
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    resumes = [r for r in records if r["kind"] == "resume"]
    assert len(resumes) >= 4 and resumes[0]["step"] == 15 and resumes[0]["start"] == 5
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["class_il"] == json.loads((reference / "summary.json").read_text())["class_il"]
    assert summary["timings"]["train_samples"] == 3 * 20 * 10  # counted once, across the restarts

    # 9. Killed while the asynchronous save of step 15 may still be in flight (the next chunk
    #    takes milliseconds): whatever it left, the rerun ends bit for bit where the reference did.
    fresh = tmp_path / "in_flight"
    code, out, err = run_child(fresh, "train_chunk:20!")
    assert code == -signal.SIGKILL, err[-3000:]
    code, out, err = run_child(fresh)
    assert code == 0, err[-3000:]
    state, matrix = final(fresh)
    assert matrix == expected_matrix
    for key in expected_state:
        np.testing.assert_array_equal(state[key], expected_state[key], err_msg=key)


# ---------------------------------------------------------------- in-process runs ----------
def small_config(**checkpoint_options):
    """2 tasks of 10 steps (chunks of 5); a checkpoint after each task by default."""
    config = common.der_config("split", "er", 0.1, capacity=20, replay_batch=10)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 2
    config.data.train_per_task = 100
    config.data.test_per_task = 50
    config.model.widths = (16,)
    config.training.steps_per_dispatch = 5
    config.checkpoint.update(checkpoint_options)
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted run: (workdir, result)."""
    workdir = tmp_path_factory.mktemp("finished")
    return workdir, loop.run(small_config(), workdir, verbose=False)


def assert_same_result(result, expected):
    np.testing.assert_array_equal(result.class_il, expected.class_il)
    jax.tree.map(np.testing.assert_array_equal, result.state.params, expected.state.params)
    jax.tree.map(np.testing.assert_array_equal, result.state.algo, expected.state.algo)


def flip_bytes_of_largest_data_file(folder: Path) -> Path:
    files = [p for p in (folder / "state").rglob("*") if p.is_file() and "ocdbt.process" in str(p)]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):  # same size: orbax cannot tell
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("damage", ["corrupt", "half-written"])
def test_damaged_latest_checkpoint_warns_and_uses_previous(finished, tmp_path, damage):
    source, expected = finished
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    latest = workdir / "checkpoints" / "step_00000020_phase1_done"
    if damage == "corrupt":
        flip_bytes_of_largest_data_file(latest)
    else:
        (latest / checkpoint.MANIFEST).unlink()
    with pytest.warns(
        CheckpointWarning, match=f"{latest} is {damage}.*resuming from .*step_00000010_phase0_done"
    ):
        result = loop.run(small_config(), workdir, verbose=False)
    assert_same_result(result, expected)  # task 2 trained again from the good checkpoint
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert (
        records[-1]["kind"] == "summary"
        and [r for r in records if r["kind"] == "resume"][-1]["step"] == 10
    )
    assert (latest / checkpoint.MANIFEST).is_file()  # saved again, whole


def test_retention_keeps_the_newest_and_never_the_unverified(tmp_path, monkeypatch):
    config = small_config(keep=2)
    folder = tmp_path / "checkpoints"
    checkpoints = Checkpoints(folder, config, num_phases=2)
    state = {"w": jnp.arange(6.0), "step": jnp.int32(0)}
    results = {"class_il": np.zeros((2, 2))}
    for step in (5, 10, 15):
        checkpoints.save({**state, "step": jnp.int32(step)}, step, Position(0, 0, step), results)
    checkpoints.wait()  # saves finish in the background (config.checkpoint.asynchronous)
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000010", "step_00000015"]
    assert checkpoints.last_good == folder / "step_00000015"

    # A new checkpoint that does not read back verified deletes nothing.
    real_read = Checkpoints._read

    def read_fails_for_20(self, path, abstract):
        if path.name == "step_00000020":
            raise checkpoint._Unusable("is corrupt (simulated)")
        return real_read(self, path, abstract)

    monkeypatch.setattr(Checkpoints, "_read", read_fails_for_20)
    with pytest.warns(CheckpointWarning, match="step_00000020 is corrupt"):
        checkpoints.save(state, 20, Position(0, 0, 20), results)
        checkpoints.wait()
    assert sorted(p.name for p in folder.iterdir()) == [
        "step_00000010",
        "step_00000015",
        "step_00000020",
    ]
    assert checkpoints.last_good == folder / "step_00000015"
    monkeypatch.setattr(Checkpoints, "_read", real_read)

    # keep=1: the next good one replaces all of them; a half-written leftover goes too.
    (folder / "step_00000012").mkdir()
    config.checkpoint.keep = 1
    checkpoints = Checkpoints(folder, config, num_phases=2)
    checkpoints.last_good = folder / "step_00000015"
    checkpoints.save(state, 25, Position(0, 0, 25), results)
    checkpoints.close()
    assert [p.name for p in folder.iterdir()] == ["step_00000025"]


def test_config_mismatch_is_refused_before_compiling(finished, tmp_path, monkeypatch):
    source, _ = finished
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    monkeypatch.setattr(
        programs, "make_train_step", lambda *a, **k: pytest.fail("compiled before the config check")
    )
    config = small_config()
    config.algorithm.capacity = 30
    with pytest.raises(ConfigError) as error:
        loop.run(config, workdir, verbose=False)
    assert str(error.value) == (
        f"{workdir / 'checkpoints'} holds a run of config.algorithm.capacity=20, this config has "
        "30; use a fresh --workdir or the original config"
    )
    # Settings that do not define the state may change: eval batch size, checkpoint intervals.
    config = small_config(every_steps=5)
    config.eval.batch_size = 7
    monkeypatch.undo()
    loop.run(config, workdir, verbose=False)


def test_a_key_added_since_the_checkpoint_at_its_default_is_no_difference():
    """A checkpoint written before sequax grew a config key still resumes when the key holds
    its default (the old behaviour); a non-default value is still refused."""
    current = json.loads(small_config().to_json_best_effort())
    saved = json.loads(json.dumps(current))
    del saved["data"]["draws_per_run"]  # as if written before the key existed (default False)
    assert checkpoint.config_differences(saved, current) == []
    current["data"]["draws_per_run"] = True
    assert checkpoint.config_differences(saved, current) == [
        ("config.data.draws_per_run", "<absent>", True)
    ]
    del saved["algorithm"]["capacity"]  # no base_config default: absent is a difference
    assert ("config.algorithm.capacity", "<absent>", 20) in checkpoint.config_differences(
        saved, current
    )


def test_bad_checkpoint_options_are_config_errors(tmp_path):
    with pytest.raises(
        ConfigError, match=r"config.checkpoint.every_steps=-1 must be an integer >= 0"
    ):
        Checkpoints(tmp_path, small_config(every_steps=-1), num_phases=2)
    with pytest.raises(ConfigError, match="config.checkpoint.keep=0 must be >= 1"):
        Checkpoints(tmp_path, small_config(keep=0), num_phases=2)


def test_nan_loss_stops_without_saving_the_diverged_state(tmp_path):
    config = small_config(every_steps=5)
    config.optimizer.lr = 1e30
    with pytest.raises(TrainingDiverged) as error:
        loop.run(config, tmp_path, verbose=False)
    message = str(error.value)
    assert "\n" not in message
    assert (
        "the mean loss of the chunk ending at step" in message and "(task 1/2, epoch 1)" in message
    )
    assert "lower config.optimizer.lr" in message
    step = int(message.split("ending at step ")[1].split()[0])
    saved = (
        sorted((tmp_path / "checkpoints").glob("step_*"))
        if (tmp_path / "checkpoints").exists()
        else []
    )
    assert all(int(p.name[5:13]) < step for p in saved)  # nothing of the diverged state
    if saved:
        assert f"the last good checkpoint is {saved[-1]}" in message


def test_full_disk_while_checkpointing_keeps_the_previous_one(finished, tmp_path, monkeypatch):
    _, expected = finished
    real_write = checkpoint.write_atomic

    def disk_full_at_step_20(path, data):
        if path.parent.name.startswith("step_00000020") and path.name == checkpoint.MANIFEST:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "write_atomic", disk_full_at_step_20)
    with pytest.raises(NoSpaceLeft) as error:
        loop.run(small_config(), tmp_path, verbose=False)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"no space left on the disk of {tmp_path}")
    assert "free space or use another --workdir" in message
    assert (
        "the last good checkpoint "
        f"{tmp_path / 'checkpoints' / 'step_00000010_phase0_done'} is intact" in message
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000010_phase0_done"
    ]
    monkeypatch.undo()
    assert_same_result(
        loop.run(small_config(), tmp_path, verbose=False), expected
    )  # finished work kept


def test_full_disk_while_writing_results_loses_nothing(finished, tmp_path, monkeypatch):
    _, expected = finished

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results_lib, "write_matrices", disk_full)
    with pytest.raises(OSError) as error:
        loop.run(small_config(), tmp_path, verbose=False)
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    t0 = time.perf_counter()
    result = loop.run(
        small_config(), tmp_path, verbose=False
    )  # resumes after the last task: no training
    assert result.timings["train_samples"] == expected.timings["train_samples"]
    np.testing.assert_array_equal(
        json.loads((tmp_path / "accuracy_matrix.json").read_text())["class_il"], expected.class_il
    )
    assert time.perf_counter() - t0 < 30
    line = checkpoint.no_space_message(
        tmp_path, "the results", checkpoint.last_good(tmp_path / "checkpoints")
    )
    assert (
        "step_00000020_phase1_done is intact" in line
        and "free space or use another --workdir" in line
    )


class Stopped(Exception):
    """Raised in place of the SIGKILL, to stop an in-process run at a kill point."""


def test_stream_pipeline_resumes_mid_epoch_from_the_grain_state(tmp_path, monkeypatch):
    # data.pipeline="stream": the checkpoint holds grain's iterator state (the position after
    # the last chunk trained on); the resumed phase continues from it, bit for bit.
    config = small_config(every_steps=5)
    config.data.pipeline = "stream"
    config.training.epochs = 2
    expected = loop.run(config, tmp_path / "whole", verbose=False)

    def stop_at(point, index, settle=None):
        if (point, index) == (
            "train_chunk",
            40,
        ):  # the last save: step 35 (task 2, epoch 2, 5 steps in)
            raise Stopped

    monkeypatch.setattr(loop, "kill_point", stop_at)
    with pytest.raises(Stopped):
        loop.run(config, tmp_path / "stopped", verbose=False)
    monkeypatch.undo()
    progress = json.loads(
        (tmp_path / "stopped" / "checkpoints" / "step_00000035" / checkpoint.PROGRESS).read_text()
    )
    assert progress["position"] == {"phase": 1, "epoch": 1, "start": 5, "phase_done": False}
    assert progress["stream"]["phase"] == 1 and progress["stream"]["start_step"] == 20
    assert_same_result(loop.run(config, tmp_path / "stopped", verbose=False), expected)
