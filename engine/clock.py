"""Where a run's wall time goes, from the process's start to its summary.

    clock = Clock(timings, compilations)
    with clock("train"):          # the block's seconds, less any compile inside it
        ...
    clock.finish()                # "other", "wall" and "time_to_result"

Sections: `startup` (process start to the run's first step: interpreter, imports, config),
`data` (checking the config, reading and placing the data), `compile` (every trace, lowering
and XLA compile, or cache load, wherever it happened: `engine.compilation`), `train`,
`end_task` (the task boundaries: start_task, end_task), `eval`, `checkpoint`, and `other` (the
rest: the loop itself, writers, the summary's files). They sum to `wall`. A resumed run adds
each process's time, so `wall` is the time spent on the run, not the time since it began.
"""

from __future__ import annotations

import contextlib
import os
import time

SECTIONS = ("startup", "data", "compile", "train", "end_task", "eval", "checkpoint", "other")
_IMPORTED_AT = time.time()  # the fallback for a process start the OS does not tell
_first_run = True  # startup counts once per process: a second run in it starts warm


def process_start() -> float:
    """time.time() at this process's start: from /proc on Linux (10 ms resolution), else
    when sequax's engine was first imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: since boot, in ticks
        return time.time() - (uptime - started)
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


class Clock:
    """Adds each section's seconds to `timings` (a run's, resumed ones included)."""

    def __init__(self, timings: dict, compilations, experiment=None):
        global _first_run
        self.timings, self.compilations = timings, compilations
        for key in SECTIONS:
            timings.setdefault(key, 0.0)
        self._start = time.perf_counter()
        self._compiled_before = compilations.seconds
        self.startup = 0.0
        if _first_run:  # the process started for this run: its imports are the run's cost
            began = experiment.built_at if experiment and experiment.built_at else time.time()
            self.startup = max(0.0, min(began, time.time()) - process_start())
            _first_run = False
        built = experiment.build_seconds if experiment else 0.0
        self._start -= built  # the experiment was built just before: count it as data
        timings["startup"] += self.startup
        timings["data"] += built

    def adopt(self, timings: dict) -> None:
        """Moves the account into `timings` (a resumed run's, holding earlier processes'
        seconds), adding what was counted so far."""
        for key in SECTIONS:
            timings[key] = timings.get(key, 0.0) + self.timings.get(key, 0.0)
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, section: str):
        t0, c0 = time.perf_counter(), self.compilations.seconds
        try:
            yield
        finally:
            compiled = self.compilations.seconds - c0
            self.timings[section] += max(0.0, time.perf_counter() - t0 - compiled)

    def so_far(self) -> float:
        """This process's seconds on the run so far (its startup included)."""
        return self.startup + time.perf_counter() - self._start

    def current(self) -> dict:
        """The timings as they stand (what a checkpoint saves): compile and wall brought up
        to now, `other` the rest, `time_to_result` this process's seconds so far."""
        t = dict(self.timings)
        this_process = self.so_far()
        t["compile"] += self.compilations.seconds - self._compiled_before
        t["wall"] = t.get("wall", 0.0) + this_process
        t["other"] = max(0.0, t["wall"] - sum(t[k] for k in SECTIONS if k != "other"))
        t["time_to_result"] = this_process
        return t

    def finish(self) -> dict:
        """Closes the account into `timings` (the run's summary reads them)."""
        self.timings.update(self.current())
        return self.timings
