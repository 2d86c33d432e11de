"""Signals: a run stopped by Ctrl-C or a scheduler keeps its work; the kill test's kill points.

SIGINT (Ctrl-C) and SIGTERM (what preemptible TPU/GPU jobs, Kubernetes and SLURM send some
seconds before they kill) do not stop a run in the middle of a step or a checkpoint write.
The first one is noted; the loop finishes the chunk of steps in flight, writes a checkpoint
of exactly that position (complete and read back verified, like every checkpoint), and stops
with `Interrupted`. The launcher reports it in one line naming the checkpoint and the
command that resumes, and exits with the shell's status for the signal (130 for SIGINT, 143
for SIGTERM). Resuming gives bit-for-bit the run that was never interrupted
(tests/engine/test_resume.py). A second SIGINT or SIGTERM exits at once: a save in flight may
then be left half-written, and the next start removes it (`Checkpoints.restore`).

With several processes, every process checks the same points and they agree on one answer
(the first signal any of them received), so all of them save the same step and stop together.

    with Interrupts() as interrupts:             # handlers installed in the main thread only
        ...
        signum = interrupts.requested()          # the same answer on every process
        saved = checkpoints.save_chunk(...) if signum else None
        interrupts.stop_if(signum, checkpoints, saved, "at step 60 (task 3/5, epoch 1)")  # raises
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

# Test-only: the kill test sets SEQUAX_TEST_KILL_AT="<point>:<index>" (e.g. "end_task:2",
# "train_chunk:25", "checkpoint_written:step_00000030") and the run SIGKILLs itself there;
# "<point>:<index>@TERM" (or @INT, @INT2: twice) sends itself that signal instead.
KILL_ENV = "SEQUAX_TEST_KILL_AT"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run stopped on SIGINT or SIGTERM after saving its position (a KeyboardInterrupt, so
    code that handles Ctrl-C handles it too).

    Attributes:
      signum: the signal received.
      checkpoint: the checkpoint folder that holds the position, or None (checkpoints are off,
        or nothing was trained since the one the run started from).
      exit_code: the shell's status for that signal, 128 + signum.
    """

    def __init__(self, signum: int, where: str, checkpoint: Path | None, enabled: bool):
        self.signum, self.where, self.checkpoint = signum, where, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        if checkpoint is not None:
            text = f"interrupted by {name} {where}; saved {checkpoint}, the same command resumes"
        elif enabled:
            text = f"interrupted by {name} {where}; nothing new to save"
        else:
            text = (
                f"interrupted by {name} {where}; checkpoints are off "
                "(config.checkpoint.enabled=False), so this run's training is lost"
            )
        super().__init__(text)

    def __str__(self) -> str:
        return str(self.args[0])


class Interrupts:
    """Notes the first SIGINT/SIGTERM instead of raising; a second one exits at once.

    Installed only in the main thread (Python delivers signals there; elsewhere this is a
    no-op and signals keep their usual effect); the previous handlers are put back on exit.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            return
        # The second signal: the user (or the scheduler) insists. No cleanup, no traceback.
        sys.stderr.write(
            f"sequax: {signal.Signals(signum).name} again: stopped at once; a checkpoint being "
            "written is removed at the next start, which resumes from the newest complete one\n"
        )
        sys.stderr.flush()
        os._exit(128 + signum)

    def requested(self) -> int:
        """The signal to stop on (0: none), the same on every process."""
        mine = np.int32(self.received or 0)
        if jax.process_count() == 1:
            return int(mine)
        from jax.experimental import multihost_utils

        received = np.asarray(multihost_utils.process_allgather(mine))
        return int(received[received > 0][0]) if (received > 0).any() else 0

    @staticmethod
    def stop_if(signum: int, checkpoints, saved: Path | None, where: str) -> None:
        """Raises `Interrupted` when `signum` (from `requested()`) is a signal, once `saved`
        (the checkpoint of the current position, or None) is complete and verified."""
        if not signum:
            return
        if saved is not None:
            checkpoints.wait()  # complete and verified before the line names it
        raise Interrupted(signum, where, saved, checkpoints.enabled)


def kill_point(point: str, index: Any, settle=None) -> None:
    """Test-only: SIGKILLs this process when `SEQUAX_TEST_KILL_AT` is `f"{point}:{index}"`, so
    the kill test stops a run at an exact place (mid-epoch, in end_task, mid-checkpoint).
    `settle()` runs first (the loop's: wait for the save in flight), so that which checkpoints
    exist at the kill does not depend on the background thread's timing; a trailing "!"
    (`train_chunk:25!`) kills without settling, whatever the save in flight has written.
    A suffix "@TERM", "@INT" or "@INT2" sends that signal (twice for @INT2) instead, as a
    scheduler or a user pressing Ctrl-C would."""
    wanted, _, sent = os.environ.get(KILL_ENV, "").partition("@")
    if wanted.rstrip("!") != f"{point}:{index}":
        return
    if sent:
        for _ in range(2 if sent.endswith("2") else 1):
            os.kill(os.getpid(), getattr(signal, "SIG" + sent.rstrip("2")))
            time.sleep(0.05)  # the handler runs before the next one is sent
        return
    if settle is not None and not wanted.endswith("!"):
        settle()
    os.kill(os.getpid(), signal.SIGKILL)
