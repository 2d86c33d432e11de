"""`launch/reevaluate.py`: a finished run's final state, evaluated again with other
evaluation-only settings, without training and without touching the run's folder."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from sequax.engine import loop
from sequax.engine.build import ConfigError
from sequax.launch import reevaluate
from tests.algorithms.small_streams import small_split_config


def test_same_settings_give_the_reported_row_and_a_changed_field_changes_only_earlier_tasks(
    tmp_path,
):
    config = small_split_config(
        "kcl", num_tasks=2, coreset_size=10, classes_per_task=2, num_features=32
    )
    config.data.num_tasks = 2
    config.runs = 2
    run = tmp_path / "run"
    loop.run(config, run, verbose=False)
    before = sorted(p.name for p in run.rglob("*"))
    same = reevaluate.reevaluate(config, run)
    for view, (reported, again) in same.items():
        assert reported.shape == again.shape == (2, 2), view
        np.testing.assert_allclose(
            again, reported, atol=1e-6
        )  # the restored state, evaluated as the run did
    latest = reevaluate.reevaluate(config, run, batch_size=7, overrides={"eval_ridge": "latest"})
    reported, again = latest["task_il"]
    # The last task's own ridge parameters are the latest: its accuracy moves only with the
    # batch size (KCL's min-max normalisation is per batch), within a few test examples.
    np.testing.assert_allclose(again[:, -1], reported[:, -1], atol=0.05)
    assert sorted(p.name for p in run.rglob("*")) == before  # the run's folder is untouched
    with pytest.raises(ConfigError, match="--set: .*eval_ridge='last'"):
        reevaluate.reevaluate(config, run, overrides={"eval_ridge": "last"})
    with pytest.raises(ConfigError, match="no finished run"):
        reevaluate.reevaluate(config, tmp_path / "nothing")


def test_values_parse_as_numbers_booleans_or_text():
    assert [reevaluate.parse_value(v) for v in ("3", "0.5", "true", "latest")] == [
        3,
        0.5,
        True,
        "latest",
    ]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--table=nope", "flag --table=nope: value should be one of <der|mirzadeh>"),
        ("--eval_batch_size=-5", "--eval_batch_size=-5 must be >= 0 (0 keeps the run's)"),
    ],
)
def test_a_bad_flag_is_one_line_before_any_run_is_read(tmp_path, flag, message):
    done = subprocess.run(
        [sys.executable, "-m", "sequax.launch.reevaluate", f"--workdir={tmp_path}", flag],
        cwd=REPO_ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"sequax: error: {message}"]
