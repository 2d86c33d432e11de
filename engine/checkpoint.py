"""Checkpoints of a run, verified: the whole `CLState`, its position and its results so far.

A checkpoint is a folder `WORKDIR/checkpoints/<name>/` holding
  state/          the `CLState`, written by orbax-checkpoint (`StandardCheckpointer`)
  progress.json   the position (phase, epoch, next chunk start, or "phase done"), the
                  accuracy-matrix rows and random-init accuracies so far, the train counters
                  and timings so far, the grain stream's state (`data.pipeline="stream"`) and
                  the resolved config
  manifest.json   a blake2b checksum of every array of the state and of progress.json,
                  written last, atomically (temporary name, fsync, rename)
A folder without a manifest is half-written (the run stopped while saving it). orbax does not
notice a corruption that keeps a file's size, so a restore checks every array against the
manifest; a half-written or corrupt newest checkpoint gives a warning naming it and the
previous good one is used. Retention (`config.checkpoint.keep`) deletes older checkpoints
only once a newer one is complete and read back verified, so the last good one survives.

Names sort by time: `step_00001200` after a chunk, `step_00001200_phase2_done` once phase 2's
`end_task` and evaluation are done (the same step, later in the run).

    checkpoints = Checkpoints(workdir / "checkpoints", config)  # ConfigError: holds another run
    restored = checkpoints.restore(shapes, state_sharding)      # None: nothing saved yet
    checkpoints.save(state, position, results, stream_state)    # verified, then old ones pruned
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sequax.engine.build import ConfigError
from sequax.engine.config_match import config_differences, show
from sequax.engine.distributed import barrier
from sequax.engine.integrity import (
    Unwritable,
    array_checksums,
    digest,
    first_mismatch,
    is_no_space,
    is_unwritable,
    lacks_room,
    no_space_message,
    unwritable_folder,
    write_atomic,
)
from sequax.engine.interrupts import kill_point
from sequax.engine.program_cache import cached

STATE, PROGRESS, MANIFEST = "state", "progress.json", "manifest.json"
FORMAT = 1  # of progress.json and manifest.json; a change refuses old checkpoints


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step, the metric and the last
    good checkpoint (no checkpoint of the diverged state is written)."""


class NoSpaceLeft(OSError):
    """The disk under the workdir is full; finished work (the last good checkpoint) is intact."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


class CheckpointWarning(UserWarning):
    """A checkpoint that cannot be used (half-written or corrupt); an older one is used instead."""


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a checkpoint sits in the run. `phase_done`: phase `phase`'s end_task and evaluation
    are done (the next phase starts fresh); otherwise training of `phase` continues at epoch
    `epoch`, step `start` of that epoch (`epoch == epochs`: training done, end_task next)."""

    phase: int
    epoch: int = 0
    start: int = 0
    phase_done: bool = False

    def name(self, step: int) -> str:
        return f"step_{step:08d}" + (f"_phase{self.phase}_done" if self.phase_done else "")

    def finished(self, phase: int) -> bool:
        """Phase `phase` was trained, evaluated and saved before this checkpoint."""
        return phase < self.phase or (phase == self.phase and self.phase_done)


@dataclasses.dataclass
class Restored:
    """A verified checkpoint: the state on its shardings and progress.json's contents."""

    folder: Path
    state: Any
    position: Position
    step: int
    results: dict  # class_il, task_il, random_init, timings, train_samples, train_steps (numpy)
    stream: dict | None  # PhaseStream.get_state() of the position's phase, or None

    def results_so_far(self) -> tuple:
        """(class_il, task_il, random_init, timings, train_samples, train_steps)."""
        r = self.results
        return (
            r["class_il"],
            r["task_il"],
            r["random_init"],
            dict(r["timings"]),
            int(r["train_samples"]),
            int(r["train_steps"]),
        )

    def describe(self, phases, num_tasks: int) -> str:
        """E.g. "task 3/5, epoch 1, step 1200" or "task 2/5 done, step 600" (1-based)."""
        tasks = phases[self.position.phase]
        where = (
            f"task {tasks[0] + 1}/{num_tasks}"
            if len(tasks) == 1
            else f"phase {self.position.phase + 1}/{len(phases)}"
        )
        if self.position.phase_done:
            return f"{where} done, step {self.step}"
        return f"{where}, epoch {self.position.epoch + 1}, step {self.step}"

    def position_record(self) -> dict:
        return {
            "phase": self.position.phase,
            "epoch": self.position.epoch,
            "start": self.position.start,
            "phase_done": self.position.phase_done,
        }


class Checkpoints:
    """The run's checkpoint folder: config check, restore of the newest good one, saves.

    Args:
      folder: WORKDIR/checkpoints.
      config: the run's resolved config; `config.checkpoint` holds `enabled` (False: neither
        save nor resume), `every_steps` (save when the global step passes a multiple of it,
        checked at chunk boundaries; 0 = never), `every_epochs` (after every n-th epoch of a
        phase; 0), `every_tasks` (after every n-th phase's evaluation, and after the last;
        0 = never) and `keep` (complete checkpoints kept, >= 1).
      num_phases: training phases of the run (the last one is always saved, with every_tasks > 0).
      main: this process writes files (process 0 of several).

    Raises ConfigError (before anything compiles) for a bad `config.checkpoint` and when the
    folder holds a run of another config.
    """

    def __init__(self, folder: Path, config, *, num_phases: int, main: bool = True):
        # Several processes: all of them read and write process 0's folder (orbax writes every
        # process's shards into one checkpoint), whatever workdir the others were given.
        self.folder = Path(_from_process_0(str(Path(folder).absolute())))
        self.main, self.num_phases = main, num_phases
        self.epochs = int(config.training.epochs)
        options = dict(config.get("checkpoint") or {})
        self.enabled = bool(options.get("enabled", True))
        self.every_steps, self.every_epochs, self.every_tasks, self.keep = (
            _interval(options, key, default)
            for key, default in (
                ("every_steps", 0),
                ("every_epochs", 0),
                ("every_tasks", 1),
                ("keep", 2),
            )
        )
        if self.keep < 1:
            raise ConfigError(
                f"config.checkpoint.keep={self.keep} must be >= 1: the last good "
                "checkpoint is always kept"
            )
        self.config = json.loads(config.to_json_best_effort())
        self.last_good: Path | None = None
        self._checkpointer = None
        # Saves finish in a background thread with one process; several processes save in
        # step (a save's barriers are collectives that must not interleave with training's).
        self.asynchronous = bool(options.get("asynchronous", True)) and jax.process_count() == 1
        self._executor, self._pending = None, None
        if self.enabled:
            self._check_config()
            problem = unwritable_folder(self.folder) if main else None
            if problem:  # before anything is trained that could not be saved
                raise Unwritable(
                    f"{problem}: this run could not save or prune checkpoints; make it writable "
                    f"(the same command then resumes), or use another --workdir"
                )

    # ------------------------------------------------------------------ restore ----
    def candidates(self) -> list[Path]:
        """Checkpoint folders, newest first (orbax's own temporary folders excluded)."""
        if not self.folder.is_dir():
            return []
        return sorted(
            (p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith("step_")),
            reverse=True,
        )

    def _check_config(self) -> None:
        """Refuses, in one line, a folder whose newest complete checkpoint is of another config."""
        for folder in self.candidates():
            if (folder / MANIFEST).is_file():
                try:
                    saved = json.loads((folder / PROGRESS).read_text())["config"]
                    if not isinstance(saved, dict):
                        raise TypeError(saved)
                except (OSError, ValueError, KeyError, TypeError, RecursionError):
                    continue  # unreadable: restore() warns about it and falls back
                differences = config_differences(saved, self.config)
                if differences:
                    key, was, now = differences[0]
                    more = (
                        f" (and {len(differences) - 1} more: "
                        f"{', '.join(d[0] for d in differences[1:4])})"
                        if len(differences) > 1
                        else ""
                    )
                    raise ConfigError(
                        f"{self.folder} holds a run of {key}={show(was)}, this config has "
                        f"{show(now)}{more}; use a fresh --workdir or the original config"
                    )
                return

    def restore(self, shapes, shardings) -> Restored | None:
        """The newest checkpoint that verifies, on `shardings` (a tree matching `shapes`, the
        state's `jax.eval_shape`); None when there is none (or checkpoints are disabled)."""
        if not self.enabled:
            return None
        abstract = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
        )
        problems, restored = [], None
        for folder in self.candidates():
            try:
                restored = self._read(folder, abstract)
            except _Unusable as problem:
                problems.append(f"{folder} {problem}")
                continue
            self.last_good = folder
            break
        instead = (
            f"resuming from {restored.folder} instead"
            if restored
            else "no good checkpoint left, starting from the beginning"
        )
        for problem in problems if self.main else ():
            warnings.warn(f"checkpoint {problem}; {instead}", CheckpointWarning, stacklevel=2)
        if self.main:  # a save cut short (SIGKILL, a second Ctrl-C) can never be used: removed
            for folder in self.candidates():
                if not (folder / MANIFEST).is_file():
                    shutil.rmtree(folder, ignore_errors=True)
        barrier("sequax_checkpoint_restored")  # no process lists a folder process 0 removes
        return restored

    def _read(self, folder: Path, abstract) -> Restored:
        if not (folder / MANIFEST).is_file():
            raise _Unusable(
                f"is half-written (no {MANIFEST}: the run stopped while saving it; removed)"
            )
        try:  # JSON only: whatever a folder holds, reading it runs no code (no pickle anywhere)
            manifest = json.loads((folder / MANIFEST).read_text())
            progress_bytes = (folder / PROGRESS).read_bytes()
        except (OSError, ValueError, RecursionError) as error:
            raise _Unusable(f"is unreadable ({_brief(error)})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("arrays"), dict):
            raise _Unusable(f"is corrupt ({MANIFEST} is not the manifest sequax writes)")
        if manifest.get("format") != FORMAT:
            raise _Unusable(f"has format {manifest.get('format')}, this sequax reads {FORMAT}")
        if digest(progress_bytes) != manifest.get("progress"):
            raise _Unusable(f"is corrupt ({PROGRESS} does not match its checksum)")
        # The checksum is no signature: a file written by another tool (or forged with its
        # checksum) is refused here, before orbax reads anything, not with a traceback later.
        try:
            position, step, results, stream = _parse_progress(progress_bytes)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
            raise _Unusable(f"is corrupt ({PROGRESS}: {_brief(error)})") from None
        try:
            state = self._orbax().restore((folder / STATE).absolute(), abstract)
        except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged files
            raise _Unusable(f"is corrupt (orbax cannot read it: {_brief(error)})") from None
        bad = first_mismatch(array_checksums(state), manifest["arrays"])
        if bad:
            raise _Unusable(f"is corrupt (array {bad} does not match its checksum)")
        return Restored(folder, state, position, step, results, stream)

    # ------------------------------------------------------------------ save -------
    def due_after_chunk(
        self, phase: int, epoch: int, start: int, stop: int, steps: int, step: int
    ) -> bool:
        """A save after the chunk `[start, stop)` of epoch `epoch` (of `steps` steps) of phase
        `phase`, which brought the global step to `step`. The phase's last chunk is not saved
        when the phase's own save follows (after end_task and evaluation)."""
        if not self.enabled:
            return False
        epoch_end = epoch + 1 if stop == steps else None
        if epoch_end == self.epochs and self.due_after_phase(phase):
            return False
        step_before = step - (stop - start)
        by_steps = (
            self.every_steps > 0 and step // self.every_steps > step_before // self.every_steps
        )
        by_epochs = (
            self.every_epochs > 0 and epoch_end is not None and epoch_end % self.every_epochs == 0
        )
        return by_steps or by_epochs

    def due_after_phase(self, phase: int) -> bool:
        """Every `every_tasks`-th phase is saved after its evaluation, and the last one."""
        return (
            self.enabled
            and self.every_tasks > 0
            and ((phase + 1) % self.every_tasks == 0 or phase + 1 == self.num_phases)
        )

    def save_chunk(
        self,
        state,
        step: int,
        phase: int,
        epoch: int,
        stop: int,
        steps: int,
        results: dict,
        stream: dict | None,
    ) -> Path:
        """Saves after a chunk: the position is the next chunk's start."""
        position = Position(phase, epoch + 1, 0) if stop == steps else Position(phase, epoch, stop)
        return self.save(state, step, position, results, stream)

    def save_phase(self, state, step: int, phase: int, results: dict) -> Path:
        """Saves once phase `phase` is trained, its end_task done and every task evaluated."""
        return self.save(state, step, Position(phase, phase_done=True), results)

    def check_finite(self, means: dict, *, step: int, label: str, epoch: int) -> None:
        """Raises `TrainingDiverged` when a chunk's mean loss (or another mean metric) is NaN or
        infinite, naming the step, the task, the epoch, the metric and the last good checkpoint."""
        for name in ["loss", *sorted(k for k in means if k != "loss")]:
            value = np.asarray(means.get(name, 0.0))
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                kept = (
                    f"the last good checkpoint is {self.last_good}"
                    if self.last_good
                    else "no checkpoint was written before"
                )
                raise TrainingDiverged(
                    f"training diverged: the mean {name} of the chunk ending at step {step} "
                    f"({label}, epoch {epoch + 1}) is {show(value.tolist())}; the diverged state "
                    f"was not saved ({kept}); lower config.optimizer.lr or check the data"
                )

    def save(
        self, state, step: int, position: Position, results: dict, stream: dict | None = None
    ) -> Path:
        """Writes a checkpoint, reads it back verified, then prunes old ones (`keep`).

        Asynchronous (`config.checkpoint.asynchronous`, one process): this returns once a copy
        of the state is dispatched on the devices (the loop donates `state` to its next step);
        checksums, orbax's write, the manifest, the verification and the pruning go on in a
        background thread while training continues, and the next save, `wait()` or `close()`
        waits for them (and raises their error). A full disk raises `NoSpaceLeft` after
        removing the partial checkpoint; the previous ones are untouched."""
        self.wait()  # one save in flight at most: the previous one is complete and verified
        folder = self.folder / position.name(step)
        assert folder != self.last_good, (
            f"{folder} is the last good checkpoint; it is never overwritten"
        )
        short = lacks_room(self.folder, state) if self.main else None
        if short:  # before orbax starts: its writer threads would log every failure
            raise NoSpaceLeft(no_space_message(self.folder.parent, f"checkpoint {folder.name}",
                                               self.last_good, short))  # fmt: skip
        try:
            if self.main and folder.exists():  # a half-written or corrupt one of the same name
                shutil.rmtree(folder)
            if self.main:
                folder.mkdir(parents=True)
            barrier("sequax_checkpoint_folder")  # the folder exists before any process writes
            # Serialised now: the loop goes on filling the results' matrices in place.
            progress = {
                "format": FORMAT,
                "step": step,
                "position": dataclasses.asdict(position),
                "results": _jsonable(results),
                "stream": stream,
                "config": self.config,
            }
            progress_bytes = json.dumps(progress, indent=1).encode()
        except BaseException as error:
            self._failed(folder, error)
        if self.asynchronous:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="sequax-checkpoint")
            self._pending = self._executor.submit(
                self._write, folder, _device_copy(state), progress_bytes
            )
        else:
            self._write(folder, state, progress_bytes)
        return folder

    def _write(self, folder: Path, state, progress_bytes: bytes) -> None:
        """The save itself: checksums, the arrays (orbax), progress.json, the manifest (last),
        then the checkpoint read back verified and older ones pruned."""
        try:
            checksums = array_checksums(state)
            checkpointer = self._orbax()
            checkpointer.save((folder / STATE).absolute(), state)
            checkpointer.wait_until_finished()
            if self.main:
                write_atomic(folder / PROGRESS, progress_bytes)
                kill_point("checkpoint_written", folder.name)  # arrays, progress; no manifest
                manifest = {"format": FORMAT, "progress": digest(progress_bytes),
                            "arrays": checksums}  # fmt: skip
                write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
            barrier("sequax_checkpoint_manifest")  # every process reads it back next
        except BaseException as error:
            self._failed(folder, error)
        self._verify_and_prune(folder, _abstract(state))

    def _failed(self, folder: Path, error: BaseException):
        """A save that failed: its partial folder removed; a full disk in one line."""
        if self.main:
            shutil.rmtree(folder, ignore_errors=True)  # a partial checkpoint is worth nothing
        if is_no_space(error):
            raise NoSpaceLeft(
                no_space_message(self.folder.parent, f"checkpoint {folder.name}", self.last_good)
            ) from None
        if is_unwritable(error):
            kept = (
                f"the last good checkpoint {self.last_good} is intact and the same command "
                "resumes from it once the folder is writable"
                if self.last_good
                else "no checkpoint was complete yet, so this run's training is lost"
            )
            raise Unwritable(
                f"cannot write checkpoint {folder.name} in {self.folder} "
                f"({type(error).__name__}: {getattr(error, 'strerror', None) or error}); {kept}"
            ) from None
        raise error

    def wait(self) -> None:
        """Waits for the save in flight, if any, and raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _verify_and_prune(self, folder: Path, abstract) -> None:
        try:
            self._read(folder, abstract)
        except _Unusable as problem:  # written but not readable back: keep the older ones
            if self.main:
                warnings.warn(
                    f"checkpoint {folder} {problem} right after saving; older checkpoints are kept",
                    CheckpointWarning,
                    stacklevel=3,
                )
            return
        self.last_good = folder
        barrier("sequax_checkpoint_verified")  # no process still reads what process 0 prunes
        if not self.main:
            return
        complete = 0
        for other in self.candidates():  # newest first
            if other.name > folder.name:
                # newer leftovers (a corrupt one we fell back from) are overwritten when reached
                continue
            if (other / MANIFEST).is_file():
                complete += 1
                if complete <= self.keep:
                    continue
            shutil.rmtree(other, ignore_errors=True)

    def _orbax(self):
        if self._checkpointer is None:
            import orbax.checkpoint as ocp  # imported on first use: orbax takes ~1 s to import

            self._checkpointer = ocp.StandardCheckpointer()
        return self._checkpointer

    def settle(self) -> None:
        """Completes the save in flight of a run that stopped on an error (its own error is
        dropped: the run's is the one to report), then releases orbax; a no-op after close."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - secondary to the error the run stops on
            pass

    def close(self) -> None:
        """Waits for the save in flight (raising its error), then releases orbax."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None


class _Unusable(Exception):
    """Why a checkpoint folder cannot be restored (the text follows its path)."""


def _brief(error: BaseException) -> str:
    """An exception in a few words on one line, for a warning about a damaged file."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


def _parse_progress(data: bytes) -> tuple:
    """progress.json's (position, step, results, stream), its structure checked as `save`
    writes it; ValueError, KeyError or TypeError for anything else."""
    progress = json.loads(data)
    p, results, stream = progress["position"], progress["results"], progress.get("stream")
    position = Position(int(p["phase"]), int(p["epoch"]), int(p["start"]), p["phase_done"])
    if not (isinstance(position.phase_done, bool) and isinstance(results, dict)
            and isinstance(progress["config"], dict)
            and (stream is None or isinstance(stream, dict))):  # fmt: skip
        raise TypeError("its position, results, config or stream is not what sequax writes")
    return position, int(progress["step"]), {k: _arrays(v) for k, v in results.items()}, stream


def _from_process_0(text: str) -> str:
    """Process 0's `text` on every process (itself with one process)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buffer = np.zeros(size, np.uint8)
    buffer[: min(size, len(data))] = data[:size]
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode()


def device_copy(state):
    """A copy of the state in new device buffers (jnp.copy is not elided under jit)."""
    return jax.tree.map(jnp.copy, state)


_device_copy = cached(jax.jit(device_copy), "device_copy")


def _abstract(state):
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state
    )


def checkpoint_folder(workdir) -> Path:
    """Where a run keeps its checkpoints: WORKDIR/checkpoints."""
    return Path(workdir) / "checkpoints"


def last_good(folder: Path) -> Path | None:
    """The newest checkpoint with a manifest (not verified: for messages only)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return next(
        (p for p in sorted(folder.iterdir(), reverse=True) if (p / MANIFEST).is_file()), None
    )


def _interval(options: dict, key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"config.checkpoint.{key}={value!r} must be an integer >= 0 (0 = never)")
    return value


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def _arrays(value):
    """Lists back to float arrays (accuracy matrices), dicts of them likewise; numbers stay."""
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return np.asarray(value, np.float64)
    return value
