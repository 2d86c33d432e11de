"""The throughput benchmark's report plumbing (`sequax.launch.bench`; the measurements
themselves are not tests)."""

from __future__ import annotations

from sequax.launch import bench


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
