"""Whole compiled programs kept between runs: a warm rerun neither traces nor lowers them.

JAX's persistent compilation cache (`engine/compilation.py`) saves XLA's compile, but a rerun
still traces every program in Python and lowers it to MLIR to find its cache key. On the
2-core CPU that was 0.6 s of the 0.8 s a warm SMNIST-5 ER run spent compiling its 10
programs (`run_steps` alone: 0.26 s tracing, 0.09 s lowering). This cache keeps each compiled
executable itself (`jax.experimental.serialize_executable`) in the compilation cache's folder
(`programs/` inside it, cleared with it), keyed by everything that decides the program
without tracing it:

- the run's config (every key but the cache's own folder) and its stream's shape: classes
  per task, examples per task. The cache is used only when the config names every component
  (`Experiment.configured`): an object given to `sequax.train` is not in the config;
- the program's name and its arguments' types, shapes, shardings and static values;
- JAX's and jaxlib's versions, the devices, `XLA_FLAGS`, the `JAX_*` environment and JAX's
  own config.

Each entry also lists every Python module loaded when it was compiled, with its size and
modification time. An entry whose modules changed since (sequax itself, the user's method
file, a library upgraded) is stale: the program is traced and compiled again and the entry
replaced. What no key can see is data a model reads from a file while it is traced or built
(pretrained weights baked into `init`): so `init` is taken from this cache only for the
built-in models (`model.name` registered, no factory), and `config.compilation_cache="off"`
(or `SEQUAX_COMPILATION_CACHE=off`) turns both caches off.

Programs wrap their `jax.jit` with `cached(jitted, name)`; outside `ProgramCache(...)` (tests,
an unconfigured run, several processes) the wrapper is the plain jitted function.

    with ProgramCache(folder, key_parts, compilations, enabled=True):
        state = cached(jax.jit(init), "init")(*args)    # loaded, or compiled and saved
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np

# `SEQUAX_PROGRAM_CACHE=off` (or the compilation cache off) turns the program cache off.
# In-process test suites set `IN_PROCESS = False`: a test that patches code in memory (a
# monkeypatch is in no file) must not save programs that later tests would load.
ENV = "SEQUAX_PROGRAM_CACHE"
IN_PROCESS = True
_ACTIVE: list[ProgramCache] = []
_LOCK = threading.Lock()
FORMAT = 1  # bump when an entry's layout changes


def _environment() -> dict:
    """What decides a compiled program besides its own code and inputs."""
    import jaxlib

    devices = [(d.platform, d.device_kind, d.id, d.process_index) for d in jax.devices()]
    skip = ("jax_compilation_cache_dir", "jax_persistent_cache")
    values = {k: repr(v) for k, v in jax.config.values.items() if not k.startswith(skip)}
    return {
        "format": FORMAT,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": sys.version,
        "devices": devices,
        "processes": jax.process_count(),
        "env": {k: v for k, v in os.environ.items() if k == "XLA_FLAGS" or k.startswith("JAX_")},
        "config": values,
    }


def _modules() -> dict[str, tuple[int, int]]:
    """{file: (size, mtime_ns)} of every loaded Python module with a file."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path not in files:
            try:
                stat = os.stat(path)
            except OSError:
                continue
            files[path] = (stat.st_size, stat.st_mtime_ns)
    return files


def _leaf(x) -> tuple:
    """An argument's part of a program's key: type, shape, weak type and placement."""
    if isinstance(x, jax.Array):
        aval = jax.typeof(x)
        return ("array", str(aval), aval.weak_type, repr(x.sharding), x.committed)
    if isinstance(x, (np.ndarray, np.generic)):
        return ("numpy", str(x.dtype), tuple(np.shape(x)))
    if isinstance(x, (bool, int, float, complex)):
        return ("python", type(x).__name__)
    raise TypeError(f"{type(x).__name__} argument")  # anything else: not cached


class ProgramCache:
    """The cache of one run (a context manager); `enabled=False` or no folder: inactive."""

    def __init__(self, folder, key_parts: dict, compilations=None, *, enabled: bool = True,
                 built_in_model: bool = True):  # fmt: skip
        self.folder = Path(folder) / "programs" if folder and enabled else None
        self.compilations, self.built_in_model = compilations, built_in_model
        text = json.dumps([key_parts, _environment()], sort_keys=True, default=repr)
        self.base = hashlib.sha256(text.encode()).hexdigest()
        self.memo: dict[str, object] = {}
        self.loaded = self.saved = 0
        self._stats: dict[str, tuple[int, int] | None] = {}

    def __enter__(self) -> ProgramCache:
        if self.folder is not None:
            with _LOCK:
                _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with _LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)

    def compiled(self, program: Cached, args: tuple):
        """`program`'s executable for `args`: from memory, from disk, or compiled (and saved)."""
        statics = {i: repr(args[i]) for i in program.static_argnums}
        dynamic = [a for i, a in enumerate(args) if i not in statics]
        try:
            leaves, tree = jax.tree.flatten(dynamic)
            signature = [program.name, str(tree), [_leaf(x) for x in leaves], statics]
        except TypeError:
            return program.jitted.lower(*args).compile()  # an argument with no stable key
        key = hashlib.sha256(f"{self.base}{signature}".encode()).hexdigest()
        if key in self.memo:
            return self.memo[key]
        path = self.folder / f"{program.name}-{key[:32]}.bin"
        cacheable = program.cacheable(self)
        compiled = self._load(program.name, path) if cacheable else None
        if compiled is None:
            before = self._xla_counts()
            compiled = program.jitted.lower(*args).compile()
            # Only a program XLA compiled here and now is saved: on XLA:CPU (jax 0.10) an
            # executable loaded from XLA's own cache (or reused from this process's memory, once
            # loaded from there), serialised again, loses its functions ("Function ... not
            # found" when it runs). Such a run is as fast as one without this cache.
            after = self._xla_counts()
            fresh = before is not None and after[0] > before[0] and after[1] == before[1]
            if cacheable and fresh:
                self._save(path, compiled)
        self.memo[key] = compiled
        return compiled

    def _xla_counts(self) -> tuple[int, int] | None:
        """(XLA compiles, XLA cache loads) so far, from the run's account."""
        c = self.compilations
        return None if c is None else (c.count, c.cache_hits)

    def _load(self, name: str, path: Path):
        from jax.experimental import serialize_executable

        start = time.perf_counter()
        try:
            header, trees, executable = _read_entry(path)
            if header.get("format") != FORMAT or not self._unchanged(header["modules"]):
                return None
            in_tree, out_tree = _TreeUnpickler(io.BytesIO(trees)).load()
            compiled = serialize_executable.deserialize_and_load(executable, in_tree, out_tree)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - a torn, foreign or refused entry: compile it again
            return None
        self.loaded += 1
        if self.compilations is not None:
            self.compilations.loaded(name, time.perf_counter() - start)
        return compiled

    def _unchanged(self, modules: dict) -> bool:
        for path, stat in modules.items():
            if path not in self._stats:
                try:
                    s = os.stat(path)
                    self._stats[path] = (s.st_size, s.st_mtime_ns)
                except OSError:
                    self._stats[path] = None
            if self._stats[path] != tuple(stat):
                return False
        return True

    def _save(self, path: Path, compiled) -> None:
        from jax.experimental import serialize_executable

        if not isinstance(compiled, jax.stages.Compiled):
            return  # e.g. the host loop of convolutional steps on XLA:CPU: compiled each run
        start = time.perf_counter()
        try:
            executable, in_tree, out_tree = serialize_executable.serialize(compiled)
            trees = pickle.dumps((in_tree, out_tree), protocol=pickle.HIGHEST_PROTOCOL)
            header = {"format": FORMAT, "modules": _modules(),
                      "sizes": [len(trees), len(executable)]}  # fmt: skip
            _write_entry(path, header, trees, executable)
        except Exception:  # noqa: BLE001 - unserialisable (host callbacks), full disk, read-only
            return  # the cache only saves time: the program still runs
        finally:
            if self.compilations is not None:
                self.compilations.add_seconds(time.perf_counter() - start)
        self.saved += 1


MAGIC = b"sequax-program\n"


def _write_entry(path: Path, header: dict, trees: bytes, executable: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    text = json.dumps(header).encode()
    with open(partial, "wb") as file:
        file.write(MAGIC + len(text).to_bytes(8, "little") + text)
        file.write(trees)
        file.write(executable)
    os.replace(partial, path)  # a reader sees the whole entry or none


def _read_entry(path: Path) -> tuple[dict, bytes, bytes]:
    """An entry's JSON header, its pickled tree structures and JAX's serialised executable."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError("not a program entry")
    at = len(MAGIC) + 8
    length = int.from_bytes(data[len(MAGIC) : at], "little")
    header = json.loads(data[at : at + length])
    trees_size, executable_size = header["sizes"]
    at += length
    if len(data) != at + trees_size + executable_size:
        raise ValueError("torn entry")
    return header, data[at : at + trees_size], data[at + trees_size :]


class _TreeUnpickler(pickle.Unpickler):
    """Reads back the two tree structures of an entry and nothing else: a `PyTreeDef`, JAX's
    registry, and the node types a state is made of (named tuples, dataclasses, flax's
    FrozenDict) from modules already imported. Any other global refuses the entry."""

    _JAX = {
        ("jaxlib._jax.pytree", "PyTreeDef"),
        ("jax._src.tree_util", "default_registry"),
        ("jax._src.tree_util", "tracing_registry"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._JAX:
            return super().find_class(module, name)
        found = sys.modules.get(module)
        for part in name.split("."):
            found = getattr(found, part, None)
        if isinstance(found, type) and (
            (issubclass(found, tuple) and hasattr(found, "_fields"))
            or dataclasses.is_dataclass(found)
            or f"{found.__module__}.{found.__qualname__}" == "flax.core.frozen_dict.FrozenDict"
        ):
            return found
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def eval_shape(fn, *args, name: str):
    """`jax.eval_shape(fn, *args)`, kept in the active cache like a program: a warm run does
    not trace `fn` to learn its output's shapes (the state's, before `init` is loaded)."""
    cache = _current()
    if cache is None:
        return jax.eval_shape(fn, *args)
    try:
        leaves, tree = jax.tree.flatten(list(args))
        signature = [name, "shapes", str(tree), [_leaf(x) for x in leaves]]
    except TypeError:
        return jax.eval_shape(fn, *args)
    key = hashlib.sha256(f"{cache.base}{signature}".encode()).hexdigest()
    path = cache.folder / f"{name}-shapes-{key[:32]}.bin"
    try:
        header, trees, _ = _read_entry(path)
        if header.get("format") == FORMAT and cache._unchanged(header["modules"]):
            (out_tree,) = _TreeUnpickler(io.BytesIO(trees)).load()
            structs = [jax.ShapeDtypeStruct(tuple(s), np.dtype(d)) for s, d in header["leaves"]]
            return jax.tree.unflatten(out_tree, structs)
    except Exception:  # noqa: BLE001 - missing, torn or refused: trace it
        pass
    shapes = jax.eval_shape(fn, *args)
    out_leaves, out_tree = jax.tree.flatten(shapes)
    try:
        trees = pickle.dumps((out_tree,), protocol=pickle.HIGHEST_PROTOCOL)
        leaves = [[list(x.shape), np.dtype(x.dtype).name] for x in out_leaves]
        header = {"format": FORMAT, "modules": _modules(), "leaves": leaves,
                  "sizes": [len(trees), 0]}  # fmt: skip
        _write_entry(path, header, trees, b"")
    except Exception:  # noqa: BLE001 - the cache only saves time
        pass
    return shapes


def _current() -> ProgramCache | None:
    return _ACTIVE[-1] if _ACTIVE else None


class Cached:
    """A jitted function whose executables come from the active `ProgramCache`; without one,
    the jitted function itself. The same calls: `f(*args)`, `f.lower(*args).compile()`."""

    def __init__(self, jitted, name: str, static_argnums=(), *, model_dependent: bool = False):
        self.jitted, self.name = jitted, name
        self.static_argnums = tuple(static_argnums)
        self.model_dependent = model_dependent  # bakes the model's initial weights (init)
        self.__wrapped__ = getattr(jitted, "__wrapped__", jitted)

    def cacheable(self, cache: ProgramCache) -> bool:
        return cache.built_in_model or not self.model_dependent

    def __getattr__(self, name):  # the rest of a jitted function's API (`trace`, `_cache_size`)
        if name == "jitted":
            raise AttributeError(name)
        return getattr(self.jitted, name)

    def __call__(self, *args):
        cache = _current()
        if cache is None:
            return self.jitted(*args)
        compiled = cache.compiled(self, args)
        return compiled(*(a for i, a in enumerate(args) if i not in self.static_argnums))

    def lower(self, *args):
        cache = _current()
        if cache is None:
            return self.jitted.lower(*args)
        return _Lowered(lambda: cache.compiled(self, args))


class _Lowered:
    """`lower(...)`'s stand-in under a cache: `compile()` loads or compiles."""

    def __init__(self, compile_fn):
        self.compile = compile_fn


def cached(jitted, name: str | None = None, static_argnums=(), *, model_dependent=False) -> Cached:
    """`jitted` (a `jax.jit` function, or anything with the same `lower`) as a `Cached` program
    named `name` (default: the wrapped function's name)."""
    name = name or getattr(getattr(jitted, "__wrapped__", jitted), "__name__", "program")
    return Cached(jitted, name, static_argnums, model_dependent=model_dependent)


def run_cache(experiment, folder, compilations) -> ProgramCache:
    """The program cache of `experiment`'s run in the compilation cache's `folder` (None: off).

    Off unless the config names every part (`Experiment.configured`) and the run is one
    process (each host of a multi-host run compiles its own)."""
    config = experiment.config.to_dict()
    config.pop("compilation_cache", None)
    scenario = experiment.scenario
    key_parts = {
        "config": config,
        "stream": [scenario.name, scenario.setting, scenario.num_classes,
                   [list(map(int, c)) for c in scenario.task_classes],
                   list(map(int, scenario.train_sizes)), list(map(int, scenario.test_sizes))],
        "phases": experiment.phases,
        "capacity": experiment.capacity,
    }  # fmt: skip
    model = str(experiment.config.model.get("name", "mlp"))
    key_parts["method code"] = _code_digest(type(experiment.algorithm))
    enabled = (
        IN_PROCESS
        and experiment.configured
        and jax.process_count() == 1
        and os.environ.get(ENV, "").strip().lower() not in ("off", "none", "false", "0")
    )
    return ProgramCache(folder, key_parts, compilations, enabled=enabled,
                        built_in_model=model in ("mlp", "resnet18"))  # fmt: skip


def _code_digest(cls) -> str:
    """A digest of the bytecode of the method's class and its bases (sequax's `Algorithm`
    included): a hook redefined in memory (a notebook, a patch) is in no file's stat."""
    digest = hashlib.sha256()
    for klass in cls.__mro__:
        for name, value in sorted(vars(klass).items()):
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None:
                digest.update(f"{klass.__qualname__}.{name}".encode())
                _digest_code(digest, code)
    return digest.hexdigest()


def _digest_code(digest, code) -> None:
    """A code object's bytecode and constants, the same in every process (nested code objects
    by their own digest, not their address; sets sorted, not in hash order)."""
    digest.update(code.co_code + repr(code.co_names).encode())
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            _digest_code(digest, const)
        elif isinstance(const, frozenset):
            digest.update(repr(sorted(map(repr, const))).encode())
        else:
            digest.update(repr(const).encode())
