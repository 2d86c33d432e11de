"""Shared test setup: fast CPU compiles, the repository paths, and the real-MNIST marker.

XLA's optimisation passes dominate these tests' run time (tiny models, a few hundred steps),
so they are switched off: `jax_disable_most_optimizations` cuts compile time by about a
third and changes no result a test relies on (every comparison is within one configuration).

Many tests train the same tiny runs (a naive or ER baseline on two packaged tasks), so the
test processes of one session (the pytest-xdist workers) share a persistent compilation
cache in a temporary folder: a program compiled once is loaded by every later test that
builds it. The subprocesses a test starts (the command-line, kill and multi-process tests)
inherit it through SEQUAX_COMPILATION_CACHE, so a command run twice compiles once. It holds
only this session's programs (and decoded data files, `sequax.data.decoded_cache`) and is
removed when the session ends, so the user's own caches (~/.cache/sequax) are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

from sequax.engine import program_cache

jax.config.update("jax_disable_most_optimizations", True)
# The same for the subprocesses (command-line, example and kill tests): their compile time
# dominates their few hundred steps. (The multi-process exactness tests turn it off: with
# XLA's passes off, one and two processes reduce in different orders.)
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
# XLA:CPU's newer fusion emitters and its parallel code generation cost more compile time than
# they save on these tiny programs: with the older emitters and one code-generation split, the
# algorithm tests run about 30 % faster (76 s -> 51 s for test_kcl, test_si and test_gem on
# the 2-core CI machine). Set before the backend starts, and inherited by every subprocess.
_FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

# The session's cache folder: made by the first process (the xdist controller, whose
# environment the workers inherit), removed by it at the end.
_CACHE_VARIABLE = "SEQUAX_TEST_COMPILATION_CACHE"
_OWNS_CACHE = _CACHE_VARIABLE not in os.environ
if _OWNS_CACHE:
    os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="sequax-test-xla-cache-")
os.environ["SEQUAX_COMPILATION_CACHE"] = os.environ[_CACHE_VARIABLE]  # runs, and subprocesses
os.environ["SEQUAX_DATA_CACHE"] = os.path.join(os.environ[_CACHE_VARIABLE], "data")
jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# The program cache (whole compiled programs, `sequax.engine.program_cache`) stays off in the
# test processes themselves: a test that monkeypatches code would otherwise save programs that
# later tests load. The subprocesses tests start (commands, examples) use it, as users do;
# tests of the cache itself turn it on in their own folders.
program_cache.IN_PROCESS = False


def pytest_unconfigure(config):
    if _OWNS_CACHE:
        shutil.rmtree(os.environ.get(_CACHE_VARIABLE, ""), ignore_errors=True)


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(),
    reason=f"real MNIST files not found under {SHARED_DATA} (the configs' default data root)",
)


def run_module(module: str, *flags: str, status: int = 0) -> subprocess.CompletedProcess:
    """`python -m MODULE FLAGS...` from the repository root, as a user runs a command; its
    exit status must be `status` (stderr's end is the failure message otherwise)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == status, done.stderr[-3000:]
    return done


# The slowest files first (seconds on the 2-core CI machine, 2026-12-07): pytest-xdist's
# `--dist loadfile` hands each worker the next whole file as it finishes one, so a long file
# started last leaves the other worker idle at the end. The rest keep their order.
SLOWEST_FIRST = (
    "tests/engine/test_resume.py",  # 42 s: the kill test's ten processes
    "tests/launch/test_train.py",  # 24-35 s: command lines
    "tests/algorithms/test_contract.py",  # 29 s
    "tests/engine/test_distributed.py",  # 27 s
    "tests/engine/test_distributed_resume.py",  # 22 s
    "tests/engine/test_sharding.py",  # 22 s: the 8-device children
    "tests/engine/test_open_core.py",  # 22 s
    "tests/algorithms/test_kcl.py",  # 22 s
    "tests/data/test_pipelines.py",  # 21 s
    "tests/algorithms/test_gem.py",  # 18 s
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}

    def key(item):
        path = Path(str(item.fspath)).resolve().relative_to(REPO_ROOT).as_posix()
        return rank.get(path, len(rank))

    items.sort(key=key)  # stable: within a file, and among the other files, the order stays
