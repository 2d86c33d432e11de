"""Writers (`sequax.engine.writers`): every sink gets the records, only process 0 writes, and
a failing writer never changes a run."""

from __future__ import annotations

import io
import json
import struct
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from sequax.configs import common
from sequax.engine import loop
from sequax.engine import metrics as cl_metrics
from sequax.engine import writers as writers_lib
from sequax.engine.build import ConfigError

# R[i, j] after each of 3 tasks; b: the untrained model's accuracies.
R = np.array([[0.9, 0.1, 0.2], [0.6, 0.8, 0.3], [0.5, 0.7, 0.95]])
B = np.array([0.1, 0.12, 0.3])


def records(runs: int = 1) -> list[dict]:
    lead = (lambda a: np.stack([a] * runs)) if runs > 1 else (lambda a: a)
    out = [
        {
            "kind": "start",
            "algorithm": "er",
            "scenario": "split_test",
            "setting": "class",
            "num_tasks": 3,
            "phases": [[0], [1], [2]],
            "runs": runs,
        },
        {"kind": "eval", "phase": -1, "class_il": lead(B), "task_il": lead(B)},
    ]
    for p in range(3):
        for k in range(2):
            out.append(
                {
                    "kind": "train",
                    "phase": p,
                    "epoch": 0,
                    "step": 10 * p + 5 * k + 5,
                    "loss": lead(np.float32(1.0 / (10 * p + 5 * k + 5))),
                }
            )
        out.append(
            {
                "kind": "eval",
                "phase": p,
                "tasks": [p],
                "class_il": lead(R[p]),
                "task_il": lead(R[p]),
            }
        )
    out.append(
        {
            "kind": "summary",
            "class_il": cl_metrics.summary(R, B),
            "task_il": cl_metrics.summary(R, B),
            **(
                {}
                if runs > 1
                else {
                    "per_class_acc": [0.5, None, 0.75],
                    "phases": [{"epochs": 1, "wall_s": 2.0, "device_peak_bytes": None}],
                }
            ),  # fmt: skip
            "timings": {"wall": 12.5},
        }
    )
    # An anytime point inside task 1 (eval.every_steps), before the summary.
    out.insert(-2, {"kind": "anytime", "step": 12, "task": 1, "class_il": lead(R[1] / 2),
                    "task_il": lead(R[1])})  # fmt: skip
    return out


def writers_config(tensorboard=False, wandb=False, mode="offline"):
    config = common.base_config()
    config.writers.tensorboard, config.writers.wandb, config.writers.wandb_mode = (
        tensorboard,
        wandb,
        mode,
    )
    return config


def read_events(logdir: Path) -> dict[str, list[tuple[int, object]]]:
    """tag -> [(step, value)] from tensorboardX event files: TFRecord framing (length u64, its
    crc, the Event proto, its crc) read by hand, so no TensorFlow or tensorboard is needed."""
    from tensorboardX.proto import event_pb2

    tags: dict[str, list[tuple[int, object]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                payload = value.simple_value if kind == "simple_value" else getattr(value, kind)
                tags.setdefault(value.tag, []).append((event.step, payload))
    return tags


class FakeWandb(types.ModuleType):
    """Records what the W&B sink asks of the wandb module (the real one is tested below when
    installed)."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logs, self.summary, self.finished = [], [], {}, 0
        fake = self

        class Run:
            summary = self.summary

            def log(self, values, step=None):
                fake.logs.append((step, values))

            def finish(self):
                fake.finished += 1

        self.Run = Run
        self.Settings = lambda **kwargs: kwargs
        self.Table = lambda columns, data: {"columns": columns, "data": data}

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self.Run()


def test_every_sink_receives_the_records(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    console = io.StringIO()
    writers = writers_lib.make_writers(
        writers_config(tensorboard=True, wandb=True), tmp_path, main=True, stream=console
    )
    assert [s.name for s in writers.sinks] == ["jsonl", "console", "tensorboard", "wandb"]
    for record in records():
        writers.write(record)
    writers.close()

    # JSONL: every record, in order.
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in lines] == [r["kind"] for r in records()]
    np.testing.assert_allclose(lines[-2]["class_il"], R[2])

    # Console: the matrix after each task, as the loop printed it before (format_matrix).
    text = console.getvalue()
    assert text.count("accuracy (%), class-IL") == 3 and text.count("accuracy (%), task-IL") == 3
    assert cl_metrics.format_matrix(R, title="accuracy (%), class-IL") in text

    # TensorBoard: train metrics by step, accuracies and metrics so far by phase, the image.
    events = read_events(tmp_path / "tensorboard")
    assert [s for s, _ in events["train/loss"]] == [5, 10, 15, 20, 25, 30]
    np.testing.assert_allclose(
        [v for _, v in events["train/loss"]],
        [1 / 5, 1 / 10, 1 / 15, 1 / 20, 1 / 25, 1 / 30],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        [v for _, v in events["accuracy/class_il/task_1"]], R[:, 1], rtol=1e-6
    )
    final = cl_metrics.summary(R, B)
    for name in ("acc", "bwt", "fwt", "forgetting"):
        steps, values = zip(*events[f"metrics/class_il/{name}"])
        assert steps == (0, 1, 2)
        assert values[-1] == pytest.approx(
            final[name], abs=1e-6
        )  # after the last task: the summary
        assert values[1] == pytest.approx(cl_metrics.summary(R[:2, :2], B[:2])[name], abs=1e-6)
    assert events["summary/class_il/acc"][0][1] == pytest.approx(final["acc"])
    assert events["timings/wall"][0][1] == pytest.approx(12.5)
    (_, text_tensor) = events["accuracy_matrix/task_il/text_summary"][-1]  # tensorboardX's text tag
    assert "after task 2" in text_tensor.string_val[0].decode()
    ((_, image),) = events["accuracy_matrix"]
    assert image.width > 100 and image.height > 100 and image.encoded_image_string[:4] == b"\x89PNG"
    # The anytime point at its step; per-class accuracy by class; each phase's costs by phase.
    assert events["anytime/class_il/task_1"] == [(12, pytest.approx(R[1, 1] / 2))]
    assert [s for s, _ in events["per_class_acc/class_2"]] == [2]
    assert "per_class_acc/class_1" not in events  # a class without test examples
    assert events["phases/wall_s"] == [(0, pytest.approx(2.0))]

    # W&B: offline by default, the same content, finished at close.
    (init,) = fake.inits
    assert (
        init["mode"] == "offline" and init["dir"] == str(tmp_path) and init["project"] == "sequax"
    )
    assert init["config"]["writers"]["wandb"] is True
    train = [(step, v["train/loss"]) for step, v in fake.logs if "train/loss" in v]
    assert [s for s, _ in train] == [5, 10, 15, 20, 25, 30]
    last_eval = [v for _, v in fake.logs if "metrics/class_il/acc" in v][-1]
    assert last_eval["metrics/class_il/bwt"] == pytest.approx(final["bwt"])
    assert last_eval["accuracy/task_il/task_2"] == pytest.approx(R[2, 2])
    assert fake.summary["summary/class_il/forgetting"] == pytest.approx(final["forgetting"])
    assert fake.summary["per_class_acc/class_0"] == 0.5
    assert fake.summary["phases/wall_s/phase_0"] == 2.0
    assert any(v.get("anytime/task_il/task_1") == pytest.approx(R[1, 1]) for _, v in fake.logs)
    table = next(v for _, v in fake.logs if "accuracy_matrix/class-IL" in v)[
        "accuracy_matrix/class-IL"
    ]
    assert table["data"][1][1:] == pytest.approx(list(R[1]))
    assert fake.finished == 1


def test_vmapped_records_show_the_mean_over_runs(tmp_path):
    console = io.StringIO()
    writers = writers_lib.make_writers(
        writers_config(tensorboard=True), tmp_path, main=True, stream=console
    )
    for record in records(runs=3):
        writers.write(record)
    writers.close()
    assert "accuracy (%), class-IL, mean of 3 runs" in console.getvalue()
    events = read_events(tmp_path / "tensorboard")
    assert events["metrics/class_il/acc"][-1][1] == pytest.approx(cl_metrics.average_accuracy(R))
    assert events["train/loss"][0][1] == pytest.approx(1 / 5)


def test_real_wandb_writes_an_offline_run(tmp_path):
    pytest.importorskip(
        "wandb",
        reason="wandb is optional (pip install 'sequax[wandb]'); the fake above covers the sink",
    )
    writers = writers_lib.make_writers(
        writers_config(wandb=True), tmp_path, main=True, verbose=False
    )
    for record in records():
        writers.write(record)
    writers.close()
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    assert (run_dir / f"run-{run_id}.wandb").stat().st_size > 0


def test_wandb_configuration_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "wandb", None
    )  # as if not installed: import raises ImportError
    with pytest.raises(
        ConfigError, match=r"pip install 'sequax\[wandb\]'.*config.writers.wandb=False"
    ):
        writers_lib.make_writers(writers_config(wandb=True), tmp_path, main=True)
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb())
    with pytest.raises(ConfigError, match="wandb_mode='cloud' is unknown; use one of 'offline'"):
        writers_lib.make_writers(writers_config(wandb=True, mode="cloud"), tmp_path, main=True)


def test_a_sink_that_cannot_start_is_skipped(tmp_path, monkeypatch, capsys):
    fake = FakeWandb()
    fake.init = lambda **kwargs: (_ for _ in ()).throw(
        RuntimeError("api_key not configured (no-tty)")
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    writers = writers_lib.make_writers(
        writers_config(tensorboard=True, wandb=True, mode="online"),
        tmp_path,
        main=True,
        verbose=False,
    )
    assert [s.name for s in writers.sinks] == ["jsonl", "tensorboard"]
    assert (
        "the wandb writer could not start (RuntimeError: api_key not configured"
        in capsys.readouterr().err
    )


def test_only_process_zero_writes(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    writers = writers_lib.make_writers(
        writers_config(tensorboard=True, wandb=True), tmp_path
    )  # main from jax
    for record in records():
        writers.write(record)
    writers.close()
    assert writers.sinks == [] and list(tmp_path.iterdir()) == [] and fake.inits == []


def tiny_run_config(**writers):
    config = common.der_config("split", "er", 0.1, capacity=50, replay_batch=10)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 2
    config.data.options.classes_per_task = 2
    config.data.train_per_task = 100
    config.data.test_per_task = 50
    config.model.widths = (16,)
    for key, value in writers.items():
        config.writers[key] = value
    return config


def flat_params(result) -> np.ndarray:
    return np.concatenate([np.asarray(p).ravel() for p in jax.tree.leaves(result.state.params)])


def test_a_failing_writer_never_changes_the_run(tmp_path, monkeypatch, capsys):
    quiet = loop.run(tiny_run_config(), tmp_path / "quiet", verbose=False)

    calls = []

    def broken(self, record):  # TensorBoard fails on its third record, mid-training
        calls.append(record["kind"])
        if len(calls) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers_lib.TensorBoardSink, "write", broken)
    failing = loop.run(tiny_run_config(tensorboard=True), tmp_path / "failing", verbose=False)
    assert len(calls) == 3  # dropped after failing: not called again
    assert (
        "the tensorboard writer failed (OSError: [Errno 28] No space left on device)"
        in capsys.readouterr().err
    )
    np.testing.assert_array_equal(failing.class_il, quiet.class_il)
    np.testing.assert_array_equal(flat_params(failing), flat_params(quiet))
    kinds = [
        json.loads(line)["kind"]
        for line in (tmp_path / "failing" / "metrics.jsonl").read_text().splitlines()
    ]
    assert kinds[0] == "start" and kinds[-1] == "summary"  # the other sinks kept writing


def test_the_loop_writes_nothing_on_other_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    config = tiny_run_config(tensorboard=True)
    # orbax's save waits for process 0, which this one-process simulation does not have.
    config.checkpoint.enabled = False
    result = loop.run(config, tmp_path / "other", verbose=False)
    assert result.class_il.shape == (2, 2)
    assert not (tmp_path / "other").exists()
