"""Time to result: the wall-time account (engine.clock) and the compilation cache and log
(engine.compilation).

What each test shows:
  * a run's timings break its wall time down into sections that sum to it, and `compile`
    is the sum of every program's compile seconds, each named (none hides in train or eval);
  * a second run of the same config loads every program from a fresh persistent cache
    (in-process and, through the command line, in a new process), and compiles for less time;
  * "off", the environment variable, the default folder, and the setting restored afterwards.
"""

from __future__ import annotations

import json
import time

import jax
import pytest
from conftest import run_module
from test_loop import tiny_config

from sequax.engine import clock, compilation, loop


def small(cache: str):
    config = tiny_config("split", "naive", num_tasks=2)
    config.checkpoint.enabled = False
    config.compilation_cache = cache
    return config


@pytest.fixture(scope="module")
def cold_and_warm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    cache = str(folder / "xla")
    cold = loop.run(small(cache), folder / "cold", verbose=False).timings
    warm = loop.run(small(cache), folder / "warm", verbose=False).timings
    return cold, warm


def test_sections_sum_to_the_wall_and_compile_is_every_program(cold_and_warm):
    cold, _ = cold_and_warm
    sections = sum(cold[key] for key in clock.SECTIONS)
    assert sections == pytest.approx(cold["wall"], rel=1e-6)
    assert all(cold[key] >= 0 for key in clock.SECTIONS)
    assert cold["time_to_result"] == pytest.approx(cold["wall"])  # one process, not resumed
    programs = cold["compilations"]
    assert {"run_steps", "evaluate", "init_one", "order_one"} <= set(programs)
    assert cold["compile_count"] == sum(p["count"] for p in programs.values()) >= 4
    total = sum(p["seconds"] for p in programs.values())
    assert cold["compile"] == pytest.approx(total, abs=1e-3 * len(programs))
    assert programs["run_steps"]["compile"] > 0 and cold["train"] > 0 and cold["eval"] > 0


def test_a_second_run_loads_every_program_from_the_cache(cold_and_warm):
    cold, warm = cold_and_warm
    assert cold["cache_hits"] == 0  # a fresh folder: everything compiled
    assert warm["cache_hits"] == warm["compile_count"] >= 4
    cold_xla = sum(p["compile"] for p in cold["compilations"].values())
    warm_xla = sum(p["compile"] for p in warm["compilations"].values())
    assert warm_xla < 0.5 * cold_xla, (cold_xla, warm_xla)
    # Not `warm["compile"] < cold["compile"]`: with XLA's passes off (conftest) tracing is most
    # of both totals, and under a loaded machine they crossed (1.75 s warm, 1.44 s cold, on a
    # clean clone at 18:06 UTC, 2026-12-07). Whole-program loads are tested in
    # tests/engine/test_program_cache.py; the totals are benchmarked by `bench --suites=time`.


def test_a_rerun_in_a_new_process_compiles_nothing(tmp_path):
    cache = f"--config.compilation_cache={tmp_path / 'xla'}"
    flags = ("--config=configs/quickstart.py:local", "--config.data.num_tasks=2",
             "--config.checkpoint.enabled=False", cache)  # fmt: skip
    first = run_module("sequax.launch.train", *flags, f"--workdir={tmp_path / 'a'}")
    run_module("sequax.launch.train", *flags, f"--workdir={tmp_path / 'b'}")
    cold = json.loads((tmp_path / "a" / "summary.json").read_text())["timings"]
    warm = json.loads((tmp_path / "b" / "summary.json").read_text())["timings"]
    assert cold["cache_hits"] == 0 and warm["cache_hits"] == warm["compile_count"] > 0
    assert warm["startup"] > 0  # a new process: its interpreter and imports are counted
    assert "compilations (0 from the cache)" in first.stdout  # the console's last line


def test_off_the_environment_and_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(compilation.CACHE_ENV, str(tmp_path / "env"))
    assert compilation.cache_dir("") == str(tmp_path / "env")
    assert compilation.cache_dir(str(tmp_path / "key")) == str(tmp_path / "key")  # key first
    assert compilation.cache_dir("off") is None
    monkeypatch.setenv(compilation.CACHE_ENV, "off")
    assert compilation.cache_dir("") is None
    monkeypatch.delenv(compilation.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation.default_cache_dir() == tmp_path / "xdg" / "sequax" / "xla"


def test_a_run_restores_the_jax_setting_it_found(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    with compilation.compilation_cache(str(tmp_path / "other")) as folder:
        assert jax.config.jax_compilation_cache_dir == folder == str(tmp_path / "other")
        jax.jit(lambda x: x + 41)(1)
    assert jax.config.jax_compilation_cache_dir == before
    assert any((tmp_path / "other").iterdir())  # the program went to the run's folder
    with compilation.compilation_cache("off") as folder:
        assert folder is None and jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_compilation_cache_dir == before


def test_a_cache_folder_that_cannot_be_created_is_one_warning_and_no_cache(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    with compilation.compilation_cache(str(tmp_path / "a_file" / "xla")) as folder:
        assert folder is None  # the run goes on, compiling without a cache
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sequax: warning: config.compilation_cache=")
    assert "compiling without the cache (give a writable folder, or 'off')" in lines[0]


def test_process_start_is_before_now():
    assert time.time() - 3600 < clock.process_start() < time.time()
