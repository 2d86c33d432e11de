"""Online, task-free streams and anytime evaluation (issue 18, items 2 and 4).

A task-free run hides the boundaries from the method (no start_task/end_task, state.task and
every batch's task are -1), refuses a method that declares it needs them, and is the same
compiled program as any run. Anytime evaluation adds accuracy points every N steps, which
reach anytime.json, the summary (AAA, A_AUC), the JSONL and a resumed run's results.
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from sequax import Algorithm
from sequax.configs import common
from sequax.data import blurry
from sequax.engine import interrupts, loop
from sequax.engine.build import ConfigError, build_scenario
from sequax.engine.experiment import from_config
from sequax.engine.interrupts import Interrupted
from sequax.launch import report


def online_config(method: str = "er", **algorithm):
    """3 tasks of 100 examples, batch 10 (10 steps each), one pass, boundaries hidden."""
    config = common.der_config("split", method, 0.1, **algorithm)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 3
    config.data.train_per_task = 100
    config.data.test_per_task = 40
    config.model.widths = (16,)
    config.training.task_free = True
    config.training.steps_per_dispatch = 5
    config.eval.every_steps = 4
    config.checkpoint.enabled = False
    return config


@dataclasses.dataclass(frozen=True)
class Witness(Algorithm):
    """Naive fine-tuning that counts the boundary hooks and records what the step sees."""

    def init(self, params, model_state, example_batch, rng):
        zero = jnp.zeros((), jnp.int32)
        return {"starts": zero, "ends": zero, "task_max": zero - 9, "state_task": zero - 9,
                "first_y": jnp.full((10,), -1, jnp.int32), "steps": zero}  # fmt: skip

    def start_task(self, state, task_data, rng, model):
        return {**state.algo, "starts": state.algo["starts"] + 1}

    def end_task(self, state, task_data, rng, model):
        return {**state.algo, "ends": state.algo["ends"] + 1}

    def update(self, algo, state, batch, aux, rng):
        first = algo["steps"] == 0
        return {**algo, "task_max": jnp.maximum(algo["task_max"], batch["task"].max()),
                "state_task": state.task, "steps": algo["steps"] + 1,
                "first_y": jnp.where(first, batch["y"], algo["first_y"])}  # fmt: skip


def test_task_free_hides_boundaries_from_the_method(tmp_path):
    config = online_config("naive")
    result = loop.run(from_config(config, algorithm=Witness()), tmp_path, verbose=False)
    algo = result.state.algo
    assert int(algo["starts"]) == 0 and int(algo["ends"]) == 0
    assert int(algo["task_max"]) == -1 and int(algo["state_task"]) == -1
    assert int(algo["steps"]) == 30  # one pass: 3 tasks x 10 batches
    # The accuracy matrix still has a row per segment, with class-IL over the classes seen.
    assert result.class_il.shape == (3, 3) and np.isfinite(result.class_il).all()

    config.training.task_free = False  # the same stream with its boundaries told
    told = loop.run(from_config(config, algorithm=Witness()), tmp_path / "told", verbose=False)
    assert int(told.state.algo["starts"]) == 3 and int(told.state.algo["ends"]) == 3
    assert int(told.state.algo["task_max"]) == 2


def test_a_method_that_needs_boundaries_is_refused_with_its_reason(tmp_path):
    config = online_config("ewc", lam=1.0)
    with pytest.raises(ConfigError, match=r"EWC needs task boundaries \(the Fisher") as error:
        loop.run(config, tmp_path, verbose=False)
    assert "\n" not in str(error.value) and "task_free=False" in str(error.value)
    assert not (tmp_path / "summary.json").exists()
    combined = online_config("er+ewc")
    combined.algorithm = {"name": "er+ewc", "er": {"capacity": 20}, "ewc": {"lam": 1.0}}
    with pytest.raises(ConfigError, match=r"config.algorithm.ewc.name: EWC needs"):
        loop.run(combined, tmp_path / "c", verbose=False)


@pytest.fixture(scope="module")
def er_online(tmp_path_factory):
    """One task-free ER run with anytime evaluation: (workdir, result)."""
    workdir = tmp_path_factory.mktemp("er_online")
    config = online_config("er", capacity=40, replay_batch=10)
    return workdir, loop.run(config, workdir, verbose=False)


def test_anytime_points_reach_the_files_and_the_summary(er_online):
    tmp_path, result = er_online
    curve = json.loads((tmp_path / "anytime.json").read_text())
    # Every 4 steps inside a task, plus each task's end (steps 10, 20, 30).
    assert curve["step"] == [4, 8, 10, 12, 16, 20, 24, 28, 30]
    assert curve["task"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert curve["samples"] == [10 * s for s in curve["step"]]
    # A task's end point is the accuracy matrix's row.
    ends = [i for i, s in enumerate(curve["step"]) if s % 10 == 0]
    np.testing.assert_allclose(np.array(curve["class_il"])[ends], result.class_il)
    summary = json.loads((tmp_path / "summary.json").read_text())["class_il"]
    seen = [np.mean(row[: t + 1]) for row, t in zip(curve["class_il"], curve["task"])]
    assert summary["aaa"] == pytest.approx(np.mean(seen))
    assert 0 < summary["acc_auc"] <= 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "anytime"] == [4, 8, 12, 16, 24, 28]
    # The report draws accuracy against steps and the confusion, and tables AAA and A_AUC.
    written = {f.name for f in report.render([tmp_path], tmp_path / "report")}
    assert {f"{tmp_path.name}_anytime.png", f"{tmp_path.name}_confusion.png"} <= written
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| AAA | A_AUC |" in table and f"{100 * summary['aaa']:.2f}" in table
    assert "| phase | epochs | wall (s) |" in table and "Per-class class-IL accuracy" in table


def test_phase_end_details_reach_summary_json(er_online):
    """Top-5 (a 10-class head), nearest-mean accuracy (ER holds a buffer), per-class accuracy
    from the last phase's confusion counts, and each phase's wall time and peak memory."""
    tmp_path, _ = er_online
    summary = json.loads((tmp_path / "summary.json").read_text())
    confusion = np.array(json.loads((tmp_path / "confusion.json").read_text())["confusion"])
    assert confusion.shape == (3, 10, 10)  # the head's 10 classes; the stream uses 6
    final = confusion[-1]
    assert final.sum() == 3 * 40  # every test example of the 3 tasks, counted once
    assert summary["per_class_acc"][6:] == [None] * 4  # classes with no test example
    np.testing.assert_allclose(summary["per_class_acc"][:6], np.diag(final)[:6] / final.sum(1)[:6])
    matrix = json.loads((tmp_path / "accuracy_matrix.json").read_text())["class_il"]
    assert summary["class_il"]["acc_top5"] >= np.mean(matrix[-1]) - 1e-9
    assert 0 < summary["class_il"]["acc_nme"] <= 1
    assert "acc_nme" not in summary["task_il"]
    assert [set(p) for p in summary["phases"]] == [
        {"epochs", "wall_s", "device_peak_bytes", "host_peak_rss_bytes"}
    ] * 3
    assert all(p["wall_s"] > 0 and p["host_peak_rss_bytes"] > 1e6 for p in summary["phases"])


def test_anytime_curve_survives_an_interrupt_and_resume(er_online, tmp_path, monkeypatch):
    config = online_config("er", capacity=40, replay_batch=10)
    config.checkpoint.enabled = True  # the uninterrupted run (er_online) saved nothing
    monkeypatch.setenv(interrupts.KILL_ENV, "train_chunk:16@INT")  # SIGINT mid-task 2
    with pytest.raises(Interrupted):
        loop.run(config, tmp_path / "cut", verbose=False)
    monkeypatch.delenv(interrupts.KILL_ENV)
    loop.run(config, tmp_path / "cut", verbose=False)
    whole = json.loads((er_online[0] / "anytime.json").read_text())
    assert json.loads((tmp_path / "cut" / "anytime.json").read_text()) == whole


def test_an_ordered_stream_is_read_in_its_order(tmp_path):
    config = online_config("naive")
    config.data.blurry.kind = "iblurry"
    scenario = build_scenario(config.data)
    assert scenario.ordered and scenario.name.endswith("_iblurry50-10")
    result = loop.run(from_config(config, algorithm=Witness()), tmp_path, verbose=False)
    first = scenario.source.train_y[scenario.train_indices[0][:10]]
    np.testing.assert_array_equal(np.asarray(result.state.algo["first_y"]), first)


def test_blurry_options_are_checked_before_anything_runs(tmp_path):
    config = online_config("naive")
    config.data.blurry.kind = "foggy"
    with pytest.raises(Exception, match="blurry kind 'foggy' is unknown"):
        loop.run(config, tmp_path, verbose=False)
    config = online_config("naive")
    config.data.scenario, config.data.blurry.kind = "permuted", "linear_decay"
    config.data.options = {}
    with pytest.raises(Exception, match="not a class-incremental split"):
        loop.run(config, tmp_path, verbose=False)
    assert blurry.KINDS == ("none", "linear_decay", "iblurry")


@pytest.mark.parametrize(
    "method, options",
    [
        ("mir", {"capacity": 40, "replay_batch": 5, "subsample": 10}),
        ("er_aml", {"capacity": 40, "replay_batch": 5, "task_free": True}),
    ],  # fmt: skip
)
def test_replay_methods_replay_on_a_task_free_stream(tmp_path, method, options):
    loop.run(online_config(method, **options), tmp_path, verbose=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    replayed = [r["replay_ce"] for r in records if r["kind"] == "train" and r["phase"] > 0]
    assert replayed and min(replayed) > 0  # task -1 excludes nothing from the candidates


def test_er_aml_names_its_task_free_switch(tmp_path):
    with pytest.raises(ConfigError, match=r"set config.algorithm.task_free=True"):
        loop.run(online_config("er_aml", capacity=40, replay_batch=5), tmp_path, verbose=False)
