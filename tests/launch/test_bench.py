"""The throughput benchmark's report plumbing (`sequax.launch.bench`; the measurements
themselves are not tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from absl import flags

from sequax.launch import bench
from sequax.launch.common import DOCS_VARIABLE

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_write_section_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nhand-written notes\n")
    bench.write_section(str(doc), "scale", "first")
    bench.write_section(str(doc), "compare", "other")
    bench.write_section(str(doc), "scale", "second")
    text = doc.read_text()
    assert (
        "hand-written notes" in text
        and "other" in text
        and "second" in text
        and "first" not in text
    )
    assert text.count("<!-- scale -->") == 1


def test_timed_prints_what_a_cell_reports_or_failed(capsys):
    out = bench.timed(
        "PMNIST-10 naive sequax", lambda: {"samples_per_s": 12345.6, "acc": 80.0, "wall": 3.25}
    )
    assert out["acc"] == 80.0
    assert bench.timed("S-CIFAR-10 er torch", lambda: None) is None
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "PMNIST-10 naive sequax ... 12,346 samples/s, acc 80.00%, wall 3.2s ("
    )
    assert lines[1] == "S-CIFAR-10 er torch ... failed"


def _cell(time_to_result, train, eval_, compile_=0.3, **extra):
    sections = dict(startup=0.5, data=0.2, compile=compile_, train=train, end_task=0.0,
                    eval=eval_, checkpoint=0.0, other=0.0)  # fmt: skip
    return {**sections, "time_to_result": time_to_result, "compile_count": 12,
            "cache_hits": 12, "acc": 80.0, **extra}  # fmt: skip


def test_time_targets_from_hand_made_cells():
    """The time suite's verdicts: outside share, warm compile and the ratios against torch."""
    from sequax.launch import time_to_result as ttr

    results = {
        ("pmnist10", "naive", "cold"): _cell(12.0, 6.0, 3.0, compile_=3.0),
        ("pmnist10", "naive", "warm"): _cell(10.0, 6.0, 3.0, compile_=0.4),  # 10 % outside
        ("pmnist10", "naive", "torch"): _cell(30.0, 15.0, 6.0),
        ("smnist5", "er", "warm"): _cell(4.0, 1.0, 0.5),
        ("smnist5", "er", "torch"): _cell(7.0, 5.0, 0.5),  # 1.75x: short of 2x
    }
    verdicts = {name: (measured, verdict) for name, measured, verdict in ttr.targets(results)}
    outside = verdicts["PMNIST-10 naive: outside train+eval ≤ 15 % of the wall (warm)"]
    assert outside == ("10 %", "PASS")
    assert verdicts["PMNIST-10 naive: warm rerun compiles ≤ 0.5 s in total"][1] == "PASS"
    assert verdicts["PMNIST-10 naive: time to result ≥ 2.5× shorter than torch (warm)"] == (
        "3.00×", "PASS")  # fmt: skip
    assert verdicts["SMNIST-5 ER: time to result ≥ 2× shorter than torch (warm)"] == (
        "1.75×", "FAIL")  # fmt: skip
    table = ttr.tables(results, {"pmnist10": "PMNIST-10", "smnist5": "SMNIST-5",
                                 "rmnist20": "R-MNIST-20"})  # fmt: skip
    assert "| R-MNIST-20 | naive | cold | failed |" in table  # a missing cell says so


def test_sections_go_to_the_output_and_to_the_docs_only_with_update_docs(tmp_path, monkeypatch):
    """bench has no workdir: its document defaults to runs/bench/benchmarks.md under the current
    folder, never the repository's docs/benchmarks.md, which `--update_docs` adds (here a copy:
    the docs folder named by $SEQUAX_REPOSITORY_DOCS)."""
    assert flags.FLAGS["output"].default == "runs/bench/benchmarks.md"
    own = tmp_path / "runs" / "bench" / "benchmarks.md"
    assert bench.documents(str(own), False) == [own]
    assert bench.documents("", False) == []  # --output= only prints
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text("# Benchmarks\n\n<!-- time -->\nold\n<!-- /time -->\n")
    monkeypatch.setenv(DOCS_VARIABLE, str(docs))
    paths = bench.documents(str(own), True)
    assert paths == [own, docs / "benchmarks.md"]
    bench.publish("time", "new", paths)
    assert own.read_text() == "# Benchmarks\n\n<!-- time -->\nnew\n<!-- /time -->\n"
    assert (docs / "benchmarks.md").read_text() == own.read_text()


def test_update_docs_without_a_docs_folder_is_one_line_before_anything_runs(tmp_path):
    env = {**os.environ, DOCS_VARIABLE: str(tmp_path / "nowhere")}
    done = subprocess.run(
        [sys.executable, "-m", "sequax.launch.bench", "--update_docs", f"--output={tmp_path}/b.md"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"sequax: error: --update_docs: no repository docs folder at {tmp_path / 'nowhere'} "
        f"(${DOCS_VARIABLE}); drop --update_docs, the document is written in the workdir (or "
        "--output) anyway"
    ]
    assert not any(tmp_path.iterdir())
