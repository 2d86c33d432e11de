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
