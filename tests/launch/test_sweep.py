"""`python -m sequax.launch.sweep`: grids of shape-changing values, point by point, one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from sequax.configs import common
from sequax.engine.build import ConfigError
from sequax.launch import sweep


def tiny_er():
    config = common.der_config("split", "er", 0.1, capacity=20, replay_batch=5)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 2
    config.data.train_per_task = 100
    config.data.test_per_task = 50
    config.model.widths = (16,)
    return config


def test_parse_grid_reads_python_literals():
    assert sweep.parse_grid(["algorithm.capacity=20,40", "model.init=torch"]) == [
        ("algorithm.capacity", [20, 40]),
        ("model.init", ["torch"]),
    ]
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        sweep.parse_grid(["algorithm.capacity"])


def test_bad_points_are_refused_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match="not in the config"):
        sweep.sweep(tiny_er(), tmp_path, [("algorithm.capacty", [20])])
    # replay_batch 5 > capacity 4: the second point is invalid, so nothing runs at all.
    with pytest.raises(ConfigError, match=r"grid point \{'algorithm.capacity': 4\}"):
        sweep.sweep(tiny_er(), tmp_path, [("algorithm.capacity", [20, 4])])
    # A value check_config refuses, and a buffer larger than the stream (checked against the
    # stream, read once): refused before the first, valid point trains.
    with pytest.raises(ConfigError, match=r"grid point \{'data.seed': -1\}: config.data.seed=-1"):
        sweep.sweep(tiny_er(), tmp_path, [("data.seed", [0, -1])])
    with pytest.raises(ConfigError, match=r"'algorithm.capacity': 999\}.*larger than the whole"):
        sweep.sweep(tiny_er(), tmp_path, [("algorithm.capacity", [20, 999])])
    assert not any(tmp_path.iterdir())


def test_sweep_runs_each_point_collects_one_table_and_resumes(tmp_path, capsys):
    config = tiny_er()
    config.runs = 2  # each point is itself two vmapped seeds
    rows = sweep.sweep(config, tmp_path, [("algorithm.capacity", [20, 40])], verbose=False)
    assert [row["point"] for row in rows] == [{"capacity": 20}, {"capacity": 40}]
    assert all(row["seeds"] == [0, 1] for row in rows)
    for name in ("capacity=20", "capacity=40"):
        assert (tmp_path / name / "summary.json").is_file()
    table = (tmp_path / "sweep.md").read_text()
    assert table.splitlines()[0].startswith("| capacity | seeds | class_il acc")
    assert json.loads((tmp_path / "sweep.json").read_text()) == json.loads(json.dumps(rows))
    again = sweep.sweep(config, tmp_path, [("algorithm.capacity", [20, 40])], verbose=False)
    assert again == json.loads(json.dumps(rows)) and "read back" in capsys.readouterr().out


@pytest.mark.parametrize(
    "workdir, grid, message",
    [
        (
            "",
            "algorithm.capacty=50,100",
            "--grid key 'algorithm.capacty' is not in the config; grid keys must name existing "
            "keys",
        ),
        (
            "a_file",  # checked before the config's points are built or anything is read
            "algorithm.capacity=50",
            "--workdir={tmp_path}/a_file is a file, not a folder; give a folder's path",
        ),
    ],
)
def test_command_line_error_is_one_line(tmp_path, workdir, grid, message):
    (tmp_path / "a_file").write_text("not a folder")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sequax.launch.sweep",
            "--config=configs/smnist_er.py:local",
            f"--workdir={tmp_path / workdir if workdir else tmp_path}",
            f"--grid={grid}",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"sequax: error: {message.format(tmp_path=tmp_path)}"
    ]
