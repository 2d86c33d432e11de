"""Ctrl-C and SIGTERM at any moment of a command give one line, never a traceback (issue
17.4): while importing (sequax/launch/__init__.py), while reading data or compiling
(`common.stops_in_one_line`), while training (`engine.interrupts`: the position is saved).
The kill test (tests/engine/test_resume.py) checks that a run stopped so resumes bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sequax.engine.build import ConfigError
from sequax.engine.checkpoint import NoSpaceLeft
from sequax.engine.integrity import Unwritable
from sequax.engine.interrupts import Interrupted
from sequax.launch.common import stops_in_one_line

REPO = Path(__file__).resolve().parents[2]
SAVED = Path("/w/checkpoints/step_00000050")


@pytest.mark.parametrize(
    "error, code, line",
    [
        (ConfigError("config.x=1 is wrong; fix it"), 2, "sequax: error: config.x=1 is wrong"),
        (NoSpaceLeft("no space left on the disk of /w"), 2, "sequax: error: no space left"),
        (Unwritable("/w/checkpoints is not writable"), 2, "sequax: error: /w/checkpoints is"),
        (
            Interrupted(signal.SIGTERM, "at step 50 (task 3/3, epoch 1)", SAVED, True),
            143,
            f"sequax: interrupted by SIGTERM at step 50 (task 3/3, epoch 1); saved {SAVED}, the "
            "same command resumes; to resume: python -m sequax.launch.sweep",
        ),
        (
            Interrupted(signal.SIGINT, "before training anything", None, True),
            130,
            "sequax: interrupted by SIGINT before training anything; nothing new to save",
        ),
        (
            Interrupted(signal.SIGINT, "at step 5 (task 1/5, epoch 1)", None, False),
            130,
            "sequax: interrupted by SIGINT at step 5 (task 1/5, epoch 1); checkpoints are off",
        ),
        (KeyboardInterrupt(), 130, "sequax: interrupted by SIGINT outside training"),
    ],
)
def test_each_stop_is_one_line_with_its_status(error, code, line, capsys):
    with pytest.raises(SystemExit) as stopped:
        with stops_in_one_line("sequax.launch.sweep"):
            raise error
    assert stopped.value.code == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(line), err
    assert ("to resume:" in err) == (
        isinstance(error, Interrupted) and error.checkpoint is not None
    )


@pytest.mark.parametrize("when", [0.3, 2.5, "training"])
def test_ctrl_c_at_any_moment_is_one_line(tmp_path, when):
    """While importing (0.3 s after the start), reading data or compiling (2.5 s), training
    (once the first progress line is out): status 130 and one line on stderr; in training,
    the line names the checkpoint of the position reached."""
    child = subprocess.Popen(
        [sys.executable, "-m", "sequax.launch.train", "--config=configs/quickstart.py:local",
         f"--workdir={tmp_path / 'run'}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    if when == "training":
        for line in child.stdout:
            if line.startswith("task 1/"):
                break
    else:
        time.sleep(when)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sequax: interrupted by SIGINT"), err[-3000:]
    if when == "training":
        assert "; saved " in lines[0] and "to resume: python -m sequax.launch.train" in lines[0]


def test_ctrl_c_to_the_whole_group_with_grain_workers(tmp_path):
    """A terminal's Ctrl-C reaches every process of its group: the grain worker processes
    (`data.pipeline=stream`, 2 workers) ignore it and the run's process stops them after
    saving. Before, the workers died with tracebacks and the run waited for them forever.
    One task of 30 epochs (about 20 s): its workers start once, and the signal comes a second
    after the first progress line, once they run (a Ctrl-C in the moment a phase's workers
    start can still stop one, and the run waits for it: docs/errors.md; a second Ctrl-C ends
    it)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "sequax.launch.train", "--config=configs/quickstart.py:local",
         f"--workdir={tmp_path / 'run'}", "--config.data.pipeline=stream",
         "--config.data.stream.workers=2", "--config.data.num_tasks=1",
         "--config.training.epochs=30"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )  # fmt: skip
    try:
        for line in child.stdout:
            if line.startswith("task 1/"):
                break
        time.sleep(1.0)
        os.killpg(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    # (grain's resource tracker may add a warning about shared memory it frees at exit)
    assert err.startswith("sequax: interrupted by SIGINT at step "), err[-3000:]
