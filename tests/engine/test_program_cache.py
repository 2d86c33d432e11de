"""The program cache (`engine/program_cache.py`): whole compiled programs kept between runs.

What each test shows:
  * a rerun of the same config loads every program (no trace, no lowering) and gives the
    bit-identical accuracy matrix of a run with the cache off;
  * an edited module (its size or modification time), a torn entry, or an entry naming a
    global outside the tree structures' allow-list is compiled again, never trusted;
  * a hook redefined in memory changes the key; objects given instead of config names, and
    the `SEQUAX_PROGRAM_CACHE=off` switch, keep the cache out;
  * a model not built into sequax never takes `init` from the cache (its weights may come
    from a file no key sees).
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import sys

import numpy as np
import pytest
from test_loop import tiny_config

from sequax.engine import loop, program_cache


@pytest.fixture
def cache_on(monkeypatch):
    """The program cache on in this test process (conftest turns it off for the others)."""
    monkeypatch.setattr(program_cache, "IN_PROCESS", True)
    monkeypatch.delenv(program_cache.ENV, raising=False)


def small(cache):
    config = tiny_config("split", "naive", num_tasks=2)
    config.checkpoint.enabled = False
    config.compilation_cache = str(cache)
    return config


def entries(cache) -> dict:
    folder = cache / "programs"
    return {p.name.rsplit("-", 1)[0]: p for p in folder.glob("*.bin")} if folder.exists() else {}


def test_a_rerun_loads_every_program_and_gives_the_same_matrix(tmp_path, cache_on):
    cache = tmp_path / "xla"
    cold = loop.run(small(cache), tmp_path / "cold", verbose=False)
    saved = {name for name in entries(cache) if not name.endswith("-shapes")}
    assert {"init_one", "run_steps", "evaluate", "order_one", "end_task_one"} <= saved
    assert "init_one-shapes" in entries(cache)  # the state's shapes, without tracing init
    warm = loop.run(small(cache), tmp_path / "warm", verbose=False)
    programs = warm.timings["compilations"]
    assert warm.timings["cache_hits"] == warm.timings["compile_count"] >= len(saved)
    for name in saved:  # loaded whole: nothing traced or lowered
        assert programs[name]["trace"] == programs[name]["lower"] == 0, (name, programs[name])
    off = small("off")
    reference = loop.run(off, tmp_path / "off", verbose=False)
    np.testing.assert_array_equal(warm.class_il, cold.class_il)
    np.testing.assert_array_equal(warm.class_il, reference.class_il)
    assert warm.timings["compile"] < cold.timings["compile"]


def test_an_edited_module_makes_its_entries_stale(tmp_path, cache_on, monkeypatch):
    module = tmp_path / "user_helpers_for_cache_test.py"
    module.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("user_helpers_for_cache_test")  # loaded: listed in every entry
    try:
        cache = tmp_path / "xla"
        loop.run(small(cache), tmp_path / "a", verbose=False)
        stat = os.stat(module)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "edited"
        rerun = loop.run(small(cache), tmp_path / "b", verbose=False)
        assert rerun.timings["compilations"]["run_steps"]["trace"] > 0  # traced again
        # ... and loaded from XLA's cache (the same program): such an executable is not saved
        # again (it would lose its functions), so the next run traces too, as before this cache.
        assert rerun.timings["cache_hits"] == rerun.timings["compile_count"]
        again = loop.run(small(cache), tmp_path / "c", verbose=False)
        assert again.timings["compilations"]["run_steps"]["trace"] > 0
        np.testing.assert_array_equal(again.class_il, rerun.class_il)
    finally:
        sys.modules.pop("user_helpers_for_cache_test", None)


def test_a_torn_entry_is_compiled_again(tmp_path, cache_on):
    cache = tmp_path / "xla"
    first = loop.run(small(cache), tmp_path / "a", verbose=False)
    path = entries(cache)["run_steps"]
    path.write_bytes(path.read_bytes()[:-100])  # a write cut short (another tool, a full disk)
    rerun = loop.run(small(cache), tmp_path / "b", verbose=False)
    assert rerun.timings["compilations"]["run_steps"]["trace"] > 0
    np.testing.assert_array_equal(rerun.class_il, first.class_il)


def test_the_tree_reader_refuses_any_other_global():
    payload = pickle.dumps((os.system, "echo never"))
    with pytest.raises(pickle.UnpicklingError, match="unexpected object"):
        program_cache._TreeUnpickler(io.BytesIO(payload)).load()
    import jax

    tree = jax.tree.structure(({"a": 1}, (2, 3)))
    data = pickle.dumps((tree, tree))
    assert program_cache._TreeUnpickler(io.BytesIO(data)).load() == (tree, tree)


def test_a_hook_redefined_in_memory_changes_the_key():
    from sequax.algorithms.naive import Naive

    before = program_cache._code_digest(Naive)

    class Patched(Naive):
        def loss(self, params, state, batch, rng, model):
            return super().loss(params, state, batch, rng, model)

    assert program_cache._code_digest(Patched) != before
    assert program_cache._code_digest(Naive) == before


def test_objects_and_the_switch_keep_the_cache_out(tmp_path, cache_on, monkeypatch):
    from sequax.algorithms.naive import Naive

    cache = tmp_path / "xla"
    config = small(cache)
    from sequax.engine.experiment import from_config

    loop.run(from_config(config, algorithm=Naive()), tmp_path / "objects", verbose=False)
    assert entries(cache) == {}  # an object stood in for the config's method
    monkeypatch.setenv(program_cache.ENV, "off")
    loop.run(small(cache), tmp_path / "off", verbose=False)
    assert entries(cache) == {}


def test_a_model_from_an_import_path_never_loads_init(tmp_path, cache_on):
    config = small(tmp_path / "xla")
    config.model.name = "sequax.core.models:mlp"  # the same network, named by import path
    loop.run(config, tmp_path / "a", verbose=False)
    saved = entries(tmp_path / "xla")
    assert "run_steps" in saved and "init_one" not in saved
    rerun = loop.run(config, tmp_path / "b", verbose=False)
    assert rerun.timings["compilations"]["init_one"]["trace"] > 0
    assert rerun.timings["compilations"]["run_steps"]["trace"] == 0


def test_the_key_is_the_same_in_every_process():
    import subprocess

    code = (
        "from sequax.algorithms.er import ER; from sequax.engine import program_cache as p; "
        "print(p._code_digest(ER))"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        for seed in (1, 2)
    }  # fmt: skip
    assert len(digests) == 1 and len(next(iter(digests))) == 64, digests
