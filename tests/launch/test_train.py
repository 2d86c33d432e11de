"""The command line (`python -m sequax.launch.train`), run as a subprocess from the repo root.

This is the one place tests go through `sys.argv`: it checks the exit codes and messages a
user sees. Everything else calls `loop.run(config, workdir)` directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
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


@pytest.mark.parametrize(
    "case", ["missing config", "syntax error", "workdir is a file", "unwritable workdir", "stray"]
)
def test_command_line_mistakes_are_one_line_before_anything_runs(tmp_path, case):
    """Each mistake: exit status 2, one stderr line naming the cause and the fix, no traceback,
    and nothing written (the line comes before any data is read or anything compiles)."""
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    (tmp_path / "a_file").write_text("")
    config, workdir, extra = "configs/quickstart.py:local", tmp_path / "run", []
    expected = {
        "missing config": "cannot load the config file configs/nope.py: OSError: [Errno 2]",
        "syntax error": "SyntaxError: invalid syntax",
        "workdir is a file": "is a file, not a folder",
        "unwritable workdir": "cannot write in /proc",
        "stray": "unexpected argument(s) 'stray'",
    }[case]
    if case == "missing config":
        config = "configs/nope.py"
    elif case == "syntax error":
        config = str(tmp_path / "syntax.py")
    elif case == "workdir is a file":
        workdir = tmp_path / "a_file"
    elif case == "unwritable workdir":
        workdir = "/proc/sequax/run"  # not writable even by root
    else:
        extra = ["stray"]
    run = train(f"--config={config}", f"--workdir={workdir}", *extra)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sequax: error: "), run.stderr
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def finished_er(tmp_path_factory):
    """A finished two-task ER run's workdir, and every file's bytes in it."""
    workdir = tmp_path_factory.mktemp("finished_er")
    run = train("--config=configs/quickstart.py:local", f"--workdir={workdir}",
                "--config.data.num_tasks=2")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return workdir, _files(workdir)


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "flags,cause",
    [
        (["--config=configs/smnist_derpp.py:local"], "holds a run of config.algorithm.name=er"),
        (["--config.data.num_tasks=3"], "holds a run of config.data.num_tasks=2"),
        (["--config.data.source=mnist", "--config.data.root=/nonexistent"], "/nonexistent"),
        (["--config.algorithm.nope=1"], "'nope'"),
        (["--config.algorithm.name=hat"], "HAT"),
        (["stray"], "unexpected argument"),
        (["--config=configs/nope.py"], "cannot load the config file configs/nope.py"),
        (["--config={syntax}"], "SyntaxError"),
        (["--config.model.widths=(100,'x')"], "must be a tuple of positive integers"),
        (["--config.training.batch_size=ten"], "invalid literal for int()"),
        (["--config.seed=7"], "holds a run of config.seed=0"),
        (["--config.checkpoint.keep=0"], "config.checkpoint.keep=0 must be >= 1"),
    ],
)
def test_a_refused_command_leaves_a_finished_workdir_untouched(finished_er, tmp_path, flags, cause):
    """Another config (method, task count, seed), a bad data root, a bad override or type, a
    method the stream refuses, a stray argument, a missing or broken config file, a bad
    checkpoint setting: refused in one line, and every file of the finished run keeps its
    bytes."""
    workdir, before = finished_er
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    flags = [f.format(syntax=tmp_path / "syntax.py") for f in flags]
    config = [] if flags[0].startswith("--config=") else ["--config=configs/quickstart.py:local",
                                                          "--config.data.num_tasks=2"]  # fmt: skip
    run = train(*config, f"--workdir={workdir}", *flags)
    assert run.returncode == 2, run.stderr[-2000:]
    assert cause in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert _files(workdir) == before


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the launcher on two processes, 25 s (pytest -m long); test_distributed holds the engine's
# two-process equality in the default suite
@pytest.mark.long
def test_two_local_processes_train_exactly_what_one_does(tmp_path):
    """The launcher on two processes (one CPU device each, a 2-device data axis over
    localhost, gloo collectives) ends with the accuracy matrix of one process, and only
    process 0 writes the workdir."""
    common = [
        "--config=configs/quickstart.py:local",
        "--config.data.num_tasks=2",
        "--config.data.train_per_task=300",
        "--config.data.test_per_task=100",
    ]
    single = train(*common, f"--workdir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-2000:]
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sequax.launch.train",
                *common,
                f"--workdir={tmp_path / f'two{i}'}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [child.communicate(timeout=TIMEOUT_S) for child in children]
    finally:
        for child in children:
            child.kill()
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err[-2000:]
    assert "mesh data=2" in outputs[0][0]
    assert (
        "sequax" not in outputs[1][0] and "accuracy" not in outputs[1][0]
    )  # process 1 prints no results
    assert not (tmp_path / "two1").exists()  # ... and writes nothing
    one = json.loads((tmp_path / "one" / "accuracy_matrix.json").read_text())
    two = json.loads((tmp_path / "two0" / "accuracy_matrix.json").read_text())
    for view in ("class_il", "task_il"):
        assert np.allclose(two[view], one[view], atol=1 / 100 + 1e-9), (view, two[view], one[view])
