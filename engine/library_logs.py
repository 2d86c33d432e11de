"""orbax's log lines go to a file in the workdir, not the console.

orbax-checkpoint logs through absl (and Python's logging) from its writer threads: a save
that fails on a full disk or a read-only folder logs each failed writer with its traceback,
some 200 lines before sequax's own one-line message. The console is for progress and that
one line, so while a run is in flight every record logged from orbax's modules goes to
WORKDIR/logs/orbax.log instead (created only when orbax logs something, so a refused or
quiet run writes no such file), with the "Exception ignored" reports of the callbacks a
failed write leaves behind. Other libraries' warnings still reach the console.

    with orbax_logs_to(workdir):
        ...  # saves and restores
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

LOG = Path("logs") / "orbax.log"


def _from_orbax(record: logging.LogRecord) -> bool:
    return record.name.startswith("orbax") or "/orbax/" in record.pathname.replace("\\", "/")


class _Divert(logging.Filter):
    """Passes every record but orbax's, which it hands to `sink` (a file handler) instead."""

    def __init__(self, sink: logging.Handler):
        super().__init__()
        self.sink, self.last = sink, None

    def filter(self, record: logging.LogRecord) -> bool:
        if not _from_orbax(record):
            return True
        if record is not self.last and record.levelno >= self.sink.level:  # once per record
            self.last = record
            self.sink.handle(record)
        return False


@contextlib.contextmanager
def orbax_logs_to(workdir: Path, enabled: bool = True) -> Iterator[Path | None]:
    """Diverts orbax's records (INFO and above) to WORKDIR/logs/orbax.log while in the block.

    The filter sits on every handler of the root logger and of the "absl" logger (absl's
    own handler prints to stderr), so records reach the file whichever logger they were
    logged to. `enabled=False` (processes other than 0, which write no files) drops them."""
    import absl.logging  # noqa: F401 - installs absl's console handler now, so it is filtered

    path = Path(workdir) / LOG
    sink: logging.Handler = _LazyFile(path) if enabled else logging.NullHandler()
    sink.setLevel(logging.INFO)
    sink.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    divert = _Divert(sink)
    handlers = {h for name in ("", "absl") for h in logging.getLogger(name).handlers}
    for handler in handlers:
        handler.addFilter(divert)
    previous_hook = sys.unraisablehook

    def unraisable(info) -> None:
        # A failed orbax write leaves tensorstore callbacks that post to orbax's closed event
        # loop; Python reports each as "Exception ignored" with a traceback. Logged, not shown.
        frames = traceback.extract_tb(info.exc_traceback) if info.exc_traceback else []
        if "Event loop is closed" in str(info.exc_value) or any(
            "/orbax/" in f.filename or "/tensorstore/" in f.filename for f in frames
        ):
            sink.handle(logging.makeLogRecord({
                "name": "orbax.unraisable", "levelno": logging.ERROR, "levelname": "ERROR",
                "msg": "".join(traceback.format_exception(info.exc_value)).rstrip()}))  # fmt: skip
        else:
            previous_hook(info)

    sys.unraisablehook = unraisable
    try:
        yield path if enabled else None
    finally:
        sys.unraisablehook = previous_hook
        for handler in handlers:
            handler.removeFilter(divert)
        sink.close()


class _LazyFile(logging.FileHandler):
    """A file handler that creates its folder and file at the first record only."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(path, delay=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.stream is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            super().emit(record)
        except OSError:  # the disk that failed orbax's write is full for this file too
            pass

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # as above: logging's own report would print a traceback to the console
