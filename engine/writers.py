"""Observers of a run: a console progress bar, console tables and a JSONL log.

Writers read values the loop hands them; they never touch training state.

    log = JsonlWriter(workdir / "metrics.jsonl"); log.write({"kind": "eval", ...})
    bar = ProgressBar(total=12000, label="task 1/5"); bar.update(1000, loss=0.31); bar.close()
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    return value


class JsonlWriter:
    """Appends one JSON object per line; the file is flushed after every record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_jsonable(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def format_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


class ProgressBar:
    """A one-line progress bar with samples/s and ETA.

    On a terminal it redraws in place; otherwise (CI logs, files) it prints a line at every
    quarter so logs stay short.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 24):
        self.total, self.label, self.width = max(total, 1), label, width
        self.stream = stream or sys.stdout
        self.done = 0
        self.start = time.perf_counter()
        self._interactive = self.stream.isatty()
        self._next_quarter = 0.25

    def _line(self, metrics: dict[str, float]) -> str:
        fraction = min(self.done / self.total, 1.0)
        filled = int(fraction * self.width)
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        shown = " ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())
        bar = "#" * filled + "." * (self.width - filled)
        return (
            f"{self.label} [{bar}] {fraction:4.0%} {self.done}/{self.total} "
            f"{rate:,.0f} samples/s ETA {format_duration(eta)} {shown}"
        ).rstrip()

    def update(self, samples: int, **metrics: float) -> None:
        self.done += samples
        if self._interactive:
            self.stream.write("\r" + self._line(metrics))
            self.stream.flush()
        elif self.done / self.total >= self._next_quarter:
            self.stream.write(self._line(metrics) + "\n")
            while self.done / self.total >= self._next_quarter:
                self._next_quarter += 0.25

    def close(self) -> None:
        if self._interactive:
            self.stream.write("\n")
            self.stream.flush()
