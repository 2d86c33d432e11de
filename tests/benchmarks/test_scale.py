"""The scale suite's arithmetic, tables and plots (`benchmarks/scale.py`; the measurements
themselves are not tests)."""

from __future__ import annotations

import pytest

from benchmarks import scale


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
    one = scale.derived(cell(), peak_gflops=100.0)
    assert one["achieved"] == pytest.approx(1e9 * 100 / 2.0 / 1e9)  # 50 GFLOP/s
    assert one["mfu"] == pytest.approx(50.0)
    assert one["step_ms"] == pytest.approx(20.0)
    two = scale.derived(cell(devices=2, samples_per_s=1000.0), peak_gflops=100.0)
    assert two["mfu"] == pytest.approx(100.0) and two["per_device"] == pytest.approx(500.0)


def test_tables_and_plots(tmp_path):
    runs = {1: cell(), 8: cell(wall=25.0, train=12.0, accs=[90.0, 91.0, 89.0])}
    table = scale.runs_table(runs, 100.0)
    assert "| 8 | 25.0 | 2.50× | 12.0 | 6.00× |" in table and "90.00 ± 1.00" in table
    assert "| 2 | failed |" in scale.devices_table({1: cell(), 2: None}, 100.0)
    images = scale.plot({1: cell(), 2: cell(devices=2)}, runs, tmp_path, 100.0)
    assert [p.rsplit("/", 1)[1] for p in images] == ["scale_devices.png", "scale_runs.png"]
    assert all(
        (tmp_path / name).stat().st_size > 1000 for name in ("scale_devices.png", "scale_runs.png")
    )


def test_plots_and_raw_cells_go_beside_every_document(tmp_path):
    """With --output and --update_docs both documents link img/: each folder gets the plots and
    scale_cells.json; with neither (only printed) nothing is drawn."""
    raw = dict(devices={1: cell(), 2: cell(devices=2)}, runs={"pmnist10": {1: cell()}}, split={})
    own, docs = tmp_path / "runs" / "bench", tmp_path / "docs"
    images = scale.save_images([own, docs], raw, 100.0)
    assert [p.rsplit("/", 1)[1] for p in images] == ["scale_devices.png", "scale_runs.png"]
    for folder in (own, docs):
        names = {p.name for p in (folder / "img").iterdir()}
        assert names == {"scale_devices.png", "scale_runs.png", "scale_cells.json"}
    assert scale.save_images([], raw, 100.0) == []
