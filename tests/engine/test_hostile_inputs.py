"""Hostile inputs stay inert: no file a run reads (a data file, a checkpoint, a decoded-data
cache) runs code when it is read.

A pickle runs code when it is unpickled (here its `__reduce__` runs a shell command that creates
a marker file), and a `.npy`/`.npz` holding an object array is pickles inside. Each test puts such
a file where sequax reads one and checks that the marker never appears and that the file is
refused in one line or skipped with a one-line warning (the previous good checkpoint, or the
data decoded again, taking its place). The first test shows the files do run code when read
carelessly, so a missing marker means sequax did not unpickle them. The last tests scan the
package's source, so that no later change slips in an unpickling read.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from fake_image_datasets import write_cifar10, write_tiny_imagenet
from test_resume import assert_same_result, small_config  # 2 tasks of 10 steps, ER

import sequax
from sequax.data import DataError, decoded_cache, load_source
from sequax.data.tiny_imagenet import CACHE_NAME, load_tiny_imagenet
from sequax.engine import checkpoint, loop
from sequax.engine.checkpoint import CheckpointWarning


# ---------------------------------------------------------------- the crafted files --------
class RunsCode:
    """Unpickled, this runs `touch MARKER` (pickle calls what `__reduce__` names)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def crafted_pickle(marker: Path) -> bytes:
    """A dict shaped like a CIFAR batch (protocol 2, bytes keys) whose data runs code."""
    return pickle.dumps(
        {b"batch_label": b"training batch 1 of 5", b"labels": [0], b"data": RunsCode(marker)},
        protocol=2,
    )


def crafted_npy(marker: Path) -> bytes:
    """A .npy of an object array whose element runs code when the array is loaded."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def crafted_npz(marker: Path) -> bytes:
    """A TinyImageNet cache (.npz) whose every array is an object array that runs code."""
    buffer = io.BytesIO()
    arrays = {k: np.array([RunsCode(marker)], dtype=object) for k in ("train_x", "wnids")}
    np.savez(buffer, **arrays, train_y=np.zeros(1), test_x=np.zeros(1), test_y=np.zeros(1))
    return buffer.getvalue()


def test_the_crafted_files_run_code_when_read_carelessly(tmp_path):
    pickle.loads(crafted_pickle(tmp_path / "pickle"))
    np.load(io.BytesIO(crafted_npy(tmp_path / "npy")), allow_pickle=True)
    with np.load(io.BytesIO(crafted_npz(tmp_path / "npz")), allow_pickle=True) as archive:
        archive["wnids"]
    assert {p.name for p in tmp_path.iterdir()} == {"pickle", "npy", "npz"}


# ---------------------------------------------------------------- data folders -------------
def cifar_folder_with_crafted_batch(root: Path, marker: Path) -> Path:
    """The official CIFAR-10 layout, data_batch_1 replaced by the crafted pickle."""
    write_cifar10(root, per_batch=20, test=20)
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(crafted_pickle(marker))
    return batch


def test_a_crafted_cifar_batch_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "marker"
    batch = cifar_folder_with_crafted_batch(tmp_path / "data", marker)
    with pytest.raises(DataError) as info:
        load_source("cifar10", tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"corrupt CIFAR file: {batch} (unexpected object ")
    assert ".system)" in message and "cifar-10-python.tar.gz" in message
    assert not marker.exists()


def test_a_crafted_cifar_batch_stops_the_command_with_one_line(tmp_path):
    marker = tmp_path / "marker"
    batch = cifar_folder_with_crafted_batch(tmp_path / "data", marker)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sequax.launch.train",
            "--config=configs/scifar10_er.py:local",
            f"--config.data.root={tmp_path / 'data'}",
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("sequax: error:")]
    assert len(errors) == 1 and f"corrupt CIFAR file: {batch}" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    assert not marker.exists()


def test_a_crafted_tiny_imagenet_cache_is_decoded_again_with_one_warning(tmp_path):
    marker = tmp_path / "marker"
    wnids, train_x, train_y, _, _ = write_tiny_imagenet(tmp_path / "data")
    cache = tmp_path / "data" / "tiny-imagenet-200" / CACHE_NAME  # the data folder's own file
    cache.write_bytes(crafted_npz(marker))
    with pytest.warns(UserWarning, match="unreadable cache") as warned:
        source = load_tiny_imagenet(tmp_path / "data")
    assert len(warned) == 1 and "\n" not in str(warned[0].message)
    assert "allow_pickle=False" in str(warned[0].message)
    np.testing.assert_array_equal(source.train_y, train_y)
    assert source.train_x.shape == train_x.shape
    with np.load(cache, allow_pickle=False) as rewritten:  # the decoded arrays replaced it
        assert rewritten["wnids"].tolist() == wnids
    assert not marker.exists()


# ---------------------------------------------------------------- checkpoints --------------
FIRST, LAST = "step_00000010_phase0_done", "step_00000020_phase1_done"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted run: (workdir, result)."""
    workdir = tmp_path_factory.mktemp("finished")
    return workdir, loop.run(small_config(), workdir, verbose=False)


def resume_warns_once(workdir: Path, damaged: Path, problem: str):
    """Reruns `workdir`: exactly one one-line warning names `damaged` and `problem` and the
    first task's checkpoint it resumes from instead. Returns the run's result."""
    with pytest.warns(CheckpointWarning) as warned:
        result = loop.run(small_config(), workdir, verbose=False)
    messages = [str(w.message) for w in warned if issubclass(w.category, CheckpointWarning)]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert re.fullmatch(
        rf"checkpoint {re.escape(str(damaged))} {problem}.*; resuming from "
        rf"{re.escape(str(workdir / 'checkpoints' / FIRST))} instead",
        messages[0],
    ), messages[0]
    return result


def plant_beside(folder: Path, marker: Path) -> None:
    """Crafted files where orbax writes none: never read, whatever their names promise."""
    (folder / "state" / "checkpoint.pkl").write_bytes(crafted_pickle(marker))
    (folder / "state" / "arrays.npy").write_bytes(crafted_npy(marker))
    (folder / "state.pickle").write_bytes(crafted_pickle(marker))


def largest_array_file(folder: Path) -> Path:
    files = [p for p in (folder / "state").rglob("*") if p.is_file() and "ocdbt.process" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize(
    "target, problem",
    [
        ("an orbax array file", r"is corrupt \(orbax cannot read it"),
        ("orbax's _METADATA", r"is corrupt \(orbax cannot read it"),
        ("progress.json, its checksum forged", r"is corrupt \(progress\.json: UnicodeDecodeError"),
        ("manifest.json", r"is unreadable \(UnicodeDecodeError"),
        (
            "progress.json of another structure, its checksum forged",
            r"is corrupt \(progress\.json: TypeError: its position, results, config or stream",
        ),
    ],
    ids=[
        "array file",
        "_METADATA",
        "forged progress.json",
        "manifest.json",
        "foreign progress.json",
    ],
)
def test_a_crafted_file_in_a_finished_runs_checkpoint_is_never_unpickled(
    finished, tmp_path, target, problem
):
    source, expected = finished
    workdir, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(source, workdir)
    latest = workdir / "checkpoints" / LAST
    payload = crafted_pickle(marker)
    if target == "an orbax array file":
        largest_array_file(latest).write_bytes(payload)
    elif target == "orbax's _METADATA":
        (latest / "state" / "_METADATA").write_bytes(payload)
    elif target == "manifest.json":
        (latest / checkpoint.MANIFEST).write_bytes(payload)
    else:  # the manifest's checksum is no signature: a forger rewrites it too
        if target.startswith("progress.json of another"):  # JSON, its stream no grain state
            progress = json.loads((latest / checkpoint.PROGRESS).read_text())
            payload = json.dumps({**progress, "stream": payload.hex()}).encode()
        (latest / checkpoint.PROGRESS).write_bytes(payload)
        manifest = json.loads((latest / checkpoint.MANIFEST).read_text())
        manifest["progress"] = checkpoint.digest(payload)
        (latest / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    plant_beside(latest, marker)
    result = resume_warns_once(workdir, latest, problem)
    assert_same_result(result, expected)  # task 2 trained again from the first task's checkpoint
    assert not marker.exists()


class Stopped(Exception):
    """Raised at a kill point instead of the SIGKILL: the run stops as an interrupted one."""


def test_a_forged_checkpoint_and_data_cache_of_an_interrupted_run_are_never_unpickled(
    finished, tmp_path, monkeypatch
):
    _, expected = finished
    workdir, marker = tmp_path / "run", tmp_path / "marker"
    monkeypatch.setenv(decoded_cache.CACHE_ENV, str(tmp_path / "data_cache"))

    def stop_in_the_last_end_task(point, index, settle=None):
        if (point, index) == ("end_task", 1):
            raise Stopped

    with monkeypatch.context() as patch:
        patch.setattr(loop, "kill_point", stop_in_the_last_end_task)
        with pytest.raises(Stopped):
            loop.run(small_config(), workdir, verbose=False)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [FIRST]

    # A newer checkpoint of crafted files, its manifest made to match them.
    forged = workdir / "checkpoints" / "step_00000015"
    (forged / "state" / "d").mkdir(parents=True)
    payload = crafted_pickle(marker)
    (forged / checkpoint.PROGRESS).write_bytes(payload)
    manifest = {"format": checkpoint.FORMAT, "progress": checkpoint.digest(payload), "arrays": {}}
    (forged / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    (forged / "state" / "_METADATA").write_bytes(payload)
    (forged / "state" / "d" / "0").write_bytes(crafted_npy(marker))
    # The decoded copies of the packaged MNIST files the resumed run reads its data from.
    copies = sorted((tmp_path / "data_cache").glob("*.npy"))
    assert len(copies) == 2
    for copy in copies:
        copy.write_bytes(crafted_npy(marker))

    result = resume_warns_once(workdir, forged, r"is corrupt \(progress\.json: UnicodeDecodeError")
    assert_same_result(result, expected)
    for copy in copies:  # read, refused, decoded again and rewritten as plain arrays
        assert np.load(copy, allow_pickle=False).dtype == np.uint8
    assert not marker.exists()


# ---------------------------------------------------------------- the source scan ----------
# Reads that unpickle. numpy's need allow_pickle=False, torch's weights_only=True; the others
# are never allowed, except pickle.Unpickler as the base of a restricted unpickler that
# overrides find_class: data/cifar.py's (numpy's array constructors only) and
# engine/program_cache.py's (a PyTreeDef and the node types of a state only).
NEEDS_KEYWORD = {
    "numpy.load": ("allow_pickle", False),
    "numpy.lib.npyio.load": ("allow_pickle", False),
    "numpy.lib.format.read_array": ("allow_pickle", False),
    "torch.load": ("weights_only", True),
}
NEVER = {
    *(f"{m}.{f}" for m in ("pickle", "_pickle", "cloudpickle", "dill") for f in ("load", "loads")),
    *(f"{m}.{f}" for m in ("pickle", "_pickle", "dill") for f in ("Unpickler",)),
    "joblib.load",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "pandas.read_pickle",
    "jax.numpy.load",
    "eval",
    "exec",
    "builtins.eval",
    "builtins.exec",
}
RESTRICTED_UNPICKLER = {
    ("data/cifar.py", "pickle.Unpickler"),
    ("engine/program_cache.py", "pickle.Unpickler"),
}


def unpickling_reads(source: str, where: str) -> list[str]:
    """Every place in `source` (a module at `where`, relative to the package) that reads a file
    with pickle: "line N: name (why)"."""
    tree = ast.parse(source)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def dotted(node) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    found, vetted = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and dotted(node.func) in NEEDS_KEYWORD:
            name = dotted(node.func)
            keyword, value = NEEDS_KEYWORD[name]
            given = [k.value for k in node.keywords if k.arg == keyword]
            if not (given and isinstance(given[0], ast.Constant) and given[0].value is value):
                found.append(f"line {node.lineno}: {name} without {keyword}={value}")
            vetted.add(id(node.func))
        elif isinstance(node, ast.ClassDef):
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            for base in node.bases:
                if (where, dotted(base)) in RESTRICTED_UNPICKLER and "find_class" in methods:
                    vetted.add(id(base))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in vetted:
            name = dotted(node)
            if name in NEVER or (name in NEEDS_KEYWORD and isinstance(node.ctx, ast.Load)):
                found.append(f"line {node.lineno}: {name} (reads pickles)")
    return found


def package_modules() -> dict[str, Path]:
    """Every module of the installed package, by its path inside it (the editable install's
    folder links each subpackage: the walk follows links)."""
    root = Path(sequax.__file__).parent
    modules = {}
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            if name.endswith(".py"):
                path = Path(folder) / name
                modules[path.relative_to(root).as_posix()] = path
    return modules


def test_the_package_source_has_no_unpickling_read():
    modules = package_modules()
    assert {"data/cifar.py", "data/decoded_cache.py", "engine/checkpoint.py"} <= set(modules)
    assert len(modules) > 100, sorted(modules)
    found = {
        where: problems
        for where, path in modules.items()
        if (problems := unpickling_reads(path.read_text(), where))
    }
    assert found == {}


@pytest.mark.parametrize(
    "source, flagged",
    [
        ("import numpy as np\nnp.load(path)", True),
        ("import numpy as np\nnp.load(path, allow_pickle=True)", True),
        ("import numpy\nnumpy.load(path, allow_pickle=False)", False),
        ("from numpy import load\nload(path, mmap_mode='r')", True),
        ("import numpy as np\nloader = np.load", True),
        ("import pickle\npickle.loads(data)", True),
        ("import pickle as p\nread = p.load", True),
        ("from pickle import loads\nloads(data)", True),
        ("import cloudpickle\ncloudpickle.loads(data)", True),
        ("import torch\ntorch.load(path)", True),
        ("import torch\ntorch.load(path, weights_only=True)", False),
        ("import pickle\nclass U(pickle.Unpickler):\n    def find_class(self, m, n): pass", True),
        ("eval(text)", True),
        ("import ast\nast.literal_eval(text)", False),
        ("model.eval()", False),
    ],
    ids=lambda value: value.replace("\n", "; ") if isinstance(value, str) else None,
)
def test_the_scan_flags_each_unpickling_read(source, flagged):
    assert bool(unpickling_reads(source, "engine/x.py")) == flagged


def test_the_scan_allows_only_cifars_restricted_unpickler():
    cifar = package_modules()["data/cifar.py"].read_text()
    assert "class _ArrayUnpickler(pickle.Unpickler)" in cifar
    assert unpickling_reads(cifar, "data/cifar.py") == []
    elsewhere = unpickling_reads(cifar, "data/other.py")  # the same class in another module
    assert len(elsewhere) == 1 and "pickle.Unpickler" in elsewhere[0], elsewhere
    without_the_check = cifar.replace("def find_class(", "def find_klass(")
    assert unpickling_reads(without_the_check, "data/cifar.py") != []
