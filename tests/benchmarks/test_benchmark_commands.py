"""Each benchmark suite starts as its own command from the repository root (`python -m
benchmarks.NAME`) and runs one tiny cell the way its suite runs every cell (`--single`, in a
child process), so a suite's plumbing breaks here rather than an hour into a run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, run_module

from sequax.launch.common import DOCS_VARIABLE

run = run_module


@pytest.mark.long  # a whole command (7-11 s): pytest -m long tests/benchmarks
def test_scale_runs_one_cell_of_the_throughput_benchmark(tmp_path):
    out = tmp_path / "cell.json"
    run(
        "benchmarks.scale",
        "--single=smnist5,naive,sequax",
        f"--json_out={out}",
        "--tasks=2",
        "--train_per_task=100",
    )
    cell = json.loads(out.read_text())
    assert cell["framework"] == "sequax" and cell["devices"] == 1 and cell["runs"] == 1
    assert cell["samples_per_s"] > 0 and cell["train_steps"] == 2 * 100 // 10  # batch 10
    assert len(cell["matrix"]) == 2 and 0.0 <= cell["acc"] <= 100.0


def test_stream_runs_one_iterating_cell(tmp_path):
    out = tmp_path / "cell.json"
    run("benchmarks.stream", "--single=stream,arrays,128,0", f"--json_out={out}")
    cell = json.loads(out.read_text())
    assert cell["chunk"] == 2560 // 128 and cell["samples_per_s"] > 0
    assert cell["samples"] % 128 == 0 and cell["samples"] > 0


@pytest.mark.long  # a whole command (7-11 s): pytest -m long tests/benchmarks
def test_fisher_times_the_dense_path():
    done = run("benchmarks.fisher", "--examples=256", "--runs=1", "--paths=dense", "--repeats=1")
    assert "256 examples" in done.stdout
    assert "dense        runs=1: end_task" in done.stdout


@pytest.mark.long  # a whole command with a CNN (about 20 s): pytest -m long tests/benchmarks
def test_end_task_times_ewc_on_a_convolutional_network():
    done = run("benchmarks.end_task", "--models=ds_cnn", "--examples=64", "--modes=auto")
    row = [line for line in done.stdout.splitlines() if line.startswith("| ds_cnn | auto |")]
    assert len(row) == 1, done.stdout
    train, end_task = (float(cell) for cell in row[0].split("|")[3:5])
    assert train > 0 and end_task > 0


def gpu_results(folder) -> str:
    """A results file of `benchmarks.gpu --results` with one pair of cells (no GPU needed)."""
    cell = dict(samples_per_s=1000.0, wall=10.0, compile=1.0, train=8.0, acc=90.0)
    info = dict(cpu="test cpu", cores=2, ram_gib=8.0, python="3", jax="0", jaxlib="0")
    info.update(torch="0", gpu="test gpu", gpu_memory_gib=80.0)
    timed = dict(time_to_result=2.5, compile=0.1, train=1.0, eval=0.5, acc=90.0)
    results = dict(
        info=info,
        pmnist={"naive,sequax": cell, "naive,torch": cell},
        time={
            "pmnist10,warm": timed,
            "cifar,warm": timed,
            "cifar,torch": {**timed, "time_to_result": 6.0},
        },
        seconds={"pmnist": 60.0},
        command="python -m benchmarks.gpu --parts=pmnist",
    )
    (folder / "gpu.json").write_text(json.dumps(results))
    return f"--report={folder / 'gpu.json'}"


def test_gpu_writes_its_section_from_a_results_file(tmp_path):
    """`--report` (no GPU needed): the section lands between its markers in --output, naming
    the command that produced the results."""
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nnotes\n")
    run("benchmarks.gpu", gpu_results(tmp_path), f"--output={doc}")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nnotes") and text.count("<!-- gpu -->") == 1
    assert "    python -m benchmarks.gpu --parts=pmnist" in text
    assert "| PMNIST-10 | naive | sequax | 1,000 | 1.00× |" in text
    assert "| PMNIST-10 naive | warm | 2.50 | 0.10 | 1.00 | 0.50 | 90.00 |" in text
    assert "| PMNIST-10 naive | cold | failed |" in text  # a missing cell is said
    assert (
        "| S-CIFAR-10 ResNet-18: time to result ≥ 2× shorter than torch (warm) | 2.40× | PASS |"
        in text
    )


def test_a_suite_writes_the_repository_docs_only_with_update_docs(tmp_path):
    """Without flags the section goes to runs/bench/benchmarks.md under the current folder and
    the repository's docs/ stay byte for byte; `--update_docs` writes the docs folder's copy
    (here one named by $SEQUAX_REPOSITORY_DOCS), keeping its other sections."""
    real = {p: p.read_bytes() for p in [REPO_ROOT / "docs" / "benchmarks.md"]}
    real.update({p: p.read_bytes() for p in (REPO_ROOT / "docs" / "img").iterdir()})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # `benchmarks` from another folder
    command = [sys.executable, "-m", "benchmarks.gpu", gpu_results(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    own = (tmp_path / "runs" / "bench" / "benchmarks.md").read_text()
    assert "| PMNIST-10 | naive | sequax | 1,000 |" in own
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(REPO_ROOT / "docs" / "benchmarks.md", docs)
    env[DOCS_VARIABLE] = str(docs)
    done = subprocess.run([*command, "--update_docs", "--output="], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = (docs / "benchmarks.md").read_text()
    assert "| PMNIST-10 | naive | sequax | 1,000 |" in text and "<!-- compare -->" in text
    assert all(path.read_bytes() == content for path, content in real.items())


def test_the_gpu_time_part_runs_cold_warm_and_torch_cells_on_one_cache(tmp_path):
    from benchmarks import gpu_time

    calls = []

    def child(kind):
        def run(run, env):
            calls.append((kind, run, env["SEQUAX_COMPILATION_CACHE"]))
            return {"time_to_result": 1.0}

        return run

    cells = gpu_time.time_part(str(tmp_path), child("pmnist"), child("cifar"), lambda _, f: f())
    assert [c[:2] for c in calls] == [(k, r) for k in ("pmnist", "cifar") for r in gpu_time.RUNS]
    assert len({c[2] for c in calls}) == 1 and calls[0][2].startswith(str(tmp_path))
    assert set(cells) == {f"{w},{r}" for w, _ in gpu_time.CELLS for r in gpu_time.RUNS}
