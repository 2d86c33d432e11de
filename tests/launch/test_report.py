"""`python -m sequax.launch.report`: figures and the comparison table from real workdirs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sequax.configs import common
from sequax.engine import loop
from sequax.launch import report

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_config(runs: int = 1):
    config = common.der_config("split", "er", 0.1, capacity=50, replay_batch=10)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 3
    config.data.options.classes_per_task = 2
    config.data.train_per_task = 100
    config.data.test_per_task = 50
    config.model.widths = (16,)
    config.runs = runs
    return config


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    loop.run(tiny_config(), root / "er", verbose=False)
    loop.run(tiny_config(runs=2), root / "er_seeds", verbose=False)  # vmapped: runs/000, runs/001
    return root / "er", root / "er_seeds"


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the report's first table (the comparison; each run's section has its own)."""
    text = markdown.splitlines()
    first = next(i for i, line in enumerate(text) if line.startswith("|"))
    end = next((i for i in range(first, len(text)) if not text[i].startswith("|")), len(text))
    lines = text[first:end]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        for line in lines[2:]
    ]


def test_report_files_and_table_equal_the_summaries(workdirs, tmp_path):
    single, vmapped = workdirs
    files = report.render([single, vmapped], tmp_path / "out")
    names = {f.name for f in files}
    for stem in ("er", "er_seeds"):
        assert {
            f"{stem}_accuracy_matrix.png",
            f"{stem}_task_curves.png",
            f"{stem}_train_loss.png",
        } <= names
    assert {"report.md", "comparison.png"} <= names
    for f in files:
        assert f.is_file() and f.stat().st_size > 1000 or f.suffix == ".md"
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == PNG

    rows = table_rows((tmp_path / "out" / "report.md").read_text())
    assert [(r["run"], r["view"]) for r in rows] == [
        ("er", "class-IL"),
        ("er", "task-IL"),
        ("er_seeds", "class-IL"),
        ("er_seeds", "task-IL"),
    ]
    summary = json.loads((single / "summary.json").read_text())
    for row, view in zip(rows[:2], ("class_il", "task_il")):
        for metric, column in report.METRICS:  # "–" where the run has no such metric
            expected = summary[view].get(metric)
            assert row[column] == ("–" if expected is None else f"{100 * expected:.2f}")
        assert (
            row["seeds"] == "1"
            and row["method"] == "er"
            and row["stream"] == "split mnist_packaged"
        )
    # The vmapped workdir: one row per view, the summary's mean ± std over its two seeds.
    (point,) = json.loads((vmapped / "summary.json").read_text())["table"]
    for row, view in zip(rows[2:], ("class_il", "task_il")):
        for metric, column in report.METRICS:
            if metric not in point[view]:  # no anytime evaluation: no AAA
                assert row[column] == "–"
                continue
            mean, std = point[view][metric]
            assert row[column] == f"{100 * mean:.2f} ± {100 * std:.2f}", (view, metric)
        assert row["seeds"] == "2"


def test_a_vmapped_workdir_is_reported_as_the_mean_of_its_seeds(workdirs):
    _, vmapped = workdirs
    (run,) = report.load_workdir(vmapped)
    per_run = [
        json.loads((vmapped / "runs" / f"{r:03d}" / "accuracy_matrix.json").read_text())
        for r in (0, 1)
    ]
    mean, std = run.matrices["class_il"]
    assert mean[-1, 0] == pytest.approx(
        (per_run[0]["class_il"][-1][0] + per_run[1]["class_il"][-1][0]) / 2
    )
    assert std is not None and std.shape == mean.shape == (3, 3)
    steps, _, phase_starts = run.loss
    assert len(phase_starts) == 2 and steps[0] < phase_starts[0] < phase_starts[1] <= steps[-1]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda w: shutil.rmtree(w), r"is not a folder: give the --workdir of a finished run"),
        (
            lambda w: (w / "summary.json").unlink(),
            r"summary\.json is missing: the run has not finished",
        ),
        (lambda w: (w / "config.json").unlink(), r"config\.json is missing: not a sequax workdir"),
        (
            lambda w: (w / "accuracy_matrix.json").write_text('{"class_il": [[0.5'),
            r"accuracy_matrix\.json is not valid JSON",
        ),
    ],
)
def test_a_bad_workdir_names_the_file(workdirs, tmp_path, damage, message):
    workdir = tmp_path / "er"
    shutil.copytree(workdirs[0], workdir)
    damage(workdir)
    with pytest.raises(report.ReportError, match=message):
        report.render([workdirs[1], workdir], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # every workdir is read before anything is drawn


def test_an_unwritable_out_folder_is_one_line(workdirs, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    for out in (tmp_path / "a_file" / "report", "/proc/sequax/report"):
        with pytest.raises(report.ReportError, match="cannot write the report in .*; give a"):
            report.render([workdirs[0]], out)


def test_a_vmapped_workdir_missing_a_run_names_it(workdirs, tmp_path):
    workdir = tmp_path / "seeds"
    shutil.copytree(workdirs[1], workdir)
    (workdir / "runs" / "001" / "accuracy_matrix.json").unlink()
    with pytest.raises(report.ReportError, match=r"runs/001/accuracy_matrix\.json is missing"):
        report.load_workdir(workdir)


def test_the_command_line(workdirs, tmp_path):
    command = [
        sys.executable,
        "-m",
        "sequax.launch.report",
        str(workdirs[0]),
        f"--out={tmp_path / 'cli'}",
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli" / "er_accuracy_matrix.png").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "sequax.launch.report", str(tmp_path / "nowhere")],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"sequax: error: {tmp_path / 'nowhere'} is not a folder: give the --workdir "
        "of a finished run"
    ]
    none = subprocess.run(  # no workdir at all: one line, not absl's --help
        [sys.executable, "-m", "sequax.launch.report"],
        check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert none.returncode == 2
    assert none.stderr.strip().splitlines() == [
        "sequax: error: give at least one WORKDIR: python -m sequax.launch.report WORKDIR "
        "[WORKDIR ...] [--out=FOLDER]"
    ]


def test_several_workdirs_are_reported_beside_them_not_in_the_current_folder(workdirs, tmp_path):
    """Without --out the report goes into the folder holding the workdirs (here run from the
    repository root: it gains no report/ folder, and its docs stay byte for byte)."""
    single, vmapped = workdirs
    assert report.default_out([str(single)]) == single / "report"
    assert report.default_out([str(single), str(vmapped)]) == single.parent.resolve() / "report"
    with pytest.raises(report.ReportError, match="share no folder but /: give"):
        report.default_out(["/tmp/a", "/proc/b"])
    images = REPO_ROOT / "docs" / "img"
    before = {path: path.read_bytes() for path in images.iterdir()}
    existed = (REPO_ROOT / "report").exists()
    done = subprocess.run(
        [sys.executable, "-m", "sequax.launch.report", str(single), str(vmapped)],
        check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (single.parent / "report" / "report.md").is_file()
    assert (REPO_ROOT / "report").exists() == existed
    assert {path: path.read_bytes() for path in images.iterdir()} == before
