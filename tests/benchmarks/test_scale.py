"""The benchmark's arithmetic and report plumbing (the measurements themselves are not tests)."""

from __future__ import annotations

import pytest

from sequax.launch import bench_scale


def cell(**overrides):
    base = dict(
        samples_per_s=1000.0,
        train=2.0,
        train_steps=100,
        devices=1,
        step_flops=1e9,
        compile=0.5,
        rss_mib=400.0,
        program_bytes=2**20,
        acc=90.0,
        wall=10.0,
        eval=1.0,
        accs=[90.0],
    )
    return {**base, **overrides}


def test_mfu_counts_every_device_and_uses_the_measured_peak():
    one = bench_scale.derived(cell(), peak_gflops=100.0)
    assert one["achieved"] == pytest.approx(1e9 * 100 / 2.0 / 1e9)  # 50 GFLOP/s
    assert one["mfu"] == pytest.approx(50.0)
    assert one["step_ms"] == pytest.approx(20.0)
    two = bench_scale.derived(cell(devices=2, samples_per_s=1000.0), peak_gflops=100.0)
    assert two["mfu"] == pytest.approx(100.0) and two["per_device"] == pytest.approx(500.0)


def test_tables_and_plots(tmp_path):
    runs = {1: cell(), 8: cell(wall=25.0, train=12.0, accs=[90.0, 91.0, 89.0])}
    table = bench_scale.runs_table(runs, 100.0)
    assert "| 8 | 25.0 | 2.50× | 12.0 | 6.00× |" in table and "90.00 ± 1.00" in table
    assert "| 2 | failed |" in bench_scale.devices_table({1: cell(), 2: None}, 100.0)
    images = bench_scale.plot({1: cell(), 2: cell(devices=2)}, runs, tmp_path, 100.0)
    assert [p.rsplit("/", 1)[1] for p in images] == ["scale_devices.png", "scale_runs.png"]
    assert all(
        (tmp_path / name).stat().st_size > 1000 for name in ("scale_devices.png", "scale_runs.png")
    )


def test_write_section_replaces_only_its_own_block(tmp_path):
    from sequax.launch.bench import write_section

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nhand-written notes\n")
    write_section(str(doc), "scale", "first")
    write_section(str(doc), "compare", "other")
    write_section(str(doc), "scale", "second")
    text = doc.read_text()
    assert (
        "hand-written notes" in text
        and "other" in text
        and "second" in text
        and "first" not in text
    )
    assert text.count("<!-- scale -->") == 1


def test_timed_prints_what_a_cell_reports_or_failed(capsys):
    from sequax.launch import bench

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
