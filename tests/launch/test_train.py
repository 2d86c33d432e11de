"""The command line (`python -m sequax.launch.train`), run as a subprocess from the repo root.

This is the one place tests go through `sys.argv`: it checks the exit codes and messages a
user sees. Everything else calls `loop.run(config, workdir)` directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

TIMEOUT_S = 120


def train(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sequax.launch.train", *flags],
        check=False,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_quickstart_local_two_tasks(tmp_path):
    run = train(
        "--config=configs/quickstart.py:local", f"--workdir={tmp_path}", "--config.data.num_tasks=2"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= {"class_il", "task_il", "timings"}
    matrix = json.loads((tmp_path / "accuracy_matrix.json").read_text())
    assert len(matrix["class_il"]) == 2 and len(matrix["class_il"][0]) == 2  # the override applied
    assert json.loads((tmp_path / "config.json").read_text())["data"]["num_tasks"] == 2


def test_unknown_override_is_one_line_error(tmp_path):
    run = train(
        "--config=configs/quickstart.py:local", f"--workdir={tmp_path}", "--config.algorithm.nope=1"
    )
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("sequax: error:")]
    assert len(errors) == 1 and "'nope'" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "summary.json").exists()


def test_missing_data_root_is_one_line_error(tmp_path):
    run = train(
        "--config=configs/quickstart.py:local",
        f"--workdir={tmp_path}",
        "--config.data.source=mnist",
        "--config.data.root=/nonexistent",
    )
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("sequax: error:")]
    assert len(errors) == 1 and "/nonexistent" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
