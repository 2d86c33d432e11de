"""Compilations: the persistent cache a run compiles into, and an account of every compile.

**The cache.** A run turns on JAX's persistent compilation cache, so a second run of the same
config loads its programs from disk instead of compiling them. Where it lives, first match:

    config.compilation_cache = "PATH" | "off"     # this run
    SEQUAX_COMPILATION_CACHE=PATH | off           # every run of this environment
    jax_compilation_cache_dir already set         # the user's own JAX setting is kept
    $XDG_CACHE_HOME/sequax/xla (~/.cache/sequax/xla)

It holds XLA executables keyed by the program, the JAX version and the device, so nothing
stale is ever loaded; `rm -rf ~/.cache/sequax/xla` clears it. Every program is cached, however
fast it compiled (JAX's default skips those under a second, which here are most of them).
The setting is restored when the run ends, so one run's choice does not leak into the next.

**The account.** `Compilations` listens to JAX's own monitoring events (`jax.monitoring`):
per program name, how many times it was traced, lowered and compiled (or loaded from the
cache) and the seconds each took. A run reports them in `timings["compilations"]`, and their
sum as `timings["compile"]`, so no compile hides inside the train or eval time.

    with compilation_cache(config), Compilations() as compiles:
        ...                                  # anything that jits
    compiles.seconds, compiles.count, compiles.by_program()
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from sequax.data.decoded_cache import cache_root

CACHE_ENV = "SEQUAX_COMPILATION_CACHE"
OFF = ("off", "none", "false", "0")

# jax._src.dispatch's event names (stable since JAX 0.4.30): trace, lower to MLIR, compile.
_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/sequax/xla, or ~/.cache/sequax/xla."""
    return cache_root() / "xla"


def cache_dir(setting: str = "") -> str | None:
    """The folder a run with `config.compilation_cache = setting` compiles into (None: off)."""
    for value in (setting, os.environ.get(CACHE_ENV, "")):
        value = str(value or "").strip()
        if value:
            return None if value.lower() in OFF else str(Path(value).expanduser())
    current = jax.config.jax_compilation_cache_dir
    return current if current else str(default_cache_dir())


@contextlib.contextmanager
def compilation_cache(setting: str = ""):
    """Runs the block with the persistent cache at `cache_dir(setting)`, then restores JAX's
    previous setting. Yields the folder (None when off)."""
    folder = cache_dir(setting)
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")  # fmt: skip
    before = {key: getattr(jax.config, key) for key in keys}
    wanted = {keys[0]: folder, keys[1]: 0.0, keys[2]: 0}
    if folder is not None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as error:  # an unwritable cache only costs compile time: run without it
            if str(setting or "").strip():  # but a folder the user named: say why it is unused
                print(
                    f"sequax: warning: config.compilation_cache={setting!r}: cannot create "
                    f"{folder} ({error.strerror or error}); compiling without the cache (give a "
                    "writable folder, or 'off')",
                    file=sys.stderr,
                )
            wanted[keys[0]] = folder = None
    changed = wanted != before
    if changed:
        _apply(wanted)
    try:
        yield folder
    finally:
        if changed:
            _apply(before)


def _apply(values: dict) -> None:
    for key, value in values.items():
        jax.config.update(key, value)
    # JAX decides once whether and where it caches: ask it again (quietly: it logs the reset
    # at INFO, which an absl program's console would show).
    quiet = logging.getLogger("jax._src.compilation_cache")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        jax_cache.reset_cache()
    finally:
        quiet.setLevel(level)


class Compilations:
    """Every trace, lowering and compile while active (a context manager), per program."""

    def __init__(self):
        self.programs: dict[str, dict[str, float]] = {}
        self.cache_hits = 0
        self.seconds = 0.0  # trace + lower + compile, all programs: grows as they happen

    def __enter__(self) -> Compilations:
        _listen()
        with _LOCK:
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with _LOCK:
            _ACTIVE.remove(self)

    @property
    def count(self) -> int:
        """How many programs were compiled or loaded from the cache."""
        return int(sum(p.get("compile_count", 0) for p in self.programs.values()))

    def by_program(self) -> dict[str, dict[str, float]]:
        """{program: {"count", "seconds", "trace", "lower", "compile"}}, slowest first."""
        out = {}
        for name, p in self.programs.items():
            seconds = p.get("trace", 0.0) + p.get("lower", 0.0) + p.get("compile", 0.0)
            parts = {k: round(p.get(k, 0.0), 4) for k in ("trace", "lower", "compile")}
            out[name] = {"count": int(p.get("compile_count", 0)), "seconds": round(seconds, 4),
                         **parts}  # fmt: skip
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["seconds"]))

    def loaded(self, name: str, seconds: float) -> None:
        """A whole program loaded from `engine.program_cache` (no trace, no lowering): a
        compile served from the cache."""
        with _LOCK:
            self._record("compile", name, seconds)
            self.cache_hits += 1

    def add_seconds(self, seconds: float) -> None:
        """Compile-time work no program owns (saving an executable to the program cache)."""
        with _LOCK:
            self.seconds += seconds
            self.programs.setdefault("(program cache)", {})["compile"] = (
                self.programs.get("(program cache)", {}).get("compile", 0.0) + seconds
            )

    def _record(self, kind: str, name: str, seconds: float) -> None:
        p = self.programs.setdefault(_program(name), {})
        p[kind] = p.get(kind, 0.0) + seconds
        if kind == "compile":
            p["compile_count"] = p.get("compile_count", 0) + 1
        self.seconds += seconds


def _program(name: str) -> str:
    """`jit(run_steps)` and `jit_run_steps` (the lowered module's name) as one program."""
    name = str(name)
    for prefix in ("jit(", "pjit("):
        if name.startswith(prefix) and name.endswith(")"):
            return name[len(prefix) : -1]
    return name[4:] if name.startswith("jit_") else name


_LOCK = threading.Lock()
_ACTIVE: list[Compilations] = []
_LISTENING = False


def _listen() -> None:
    """Registers the two listeners once per process (jax.monitoring cannot unregister)."""
    global _LISTENING
    with _LOCK:
        if _LISTENING:
            return
        _LISTENING = True

    def on_duration(event: str, seconds: float, **kwargs) -> None:
        kind = _EVENTS.get(event)
        if kind is not None:
            for log in list(_ACTIVE):
                log._record(kind, kwargs.get("fun_name", "?"), seconds)

    def on_event(event: str, **kwargs) -> None:
        if event == _CACHE_HIT:
            for log in list(_ACTIVE):
                log.cache_hits += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
