"""absl entry points: `train` (one experiment), `sweep`, `reproduce`, `report`, `bench` and more.

Started as `python -m sequax.launch.NAME`, a launcher's first second or two go to importing
JAX and torch; Ctrl-C then would print a traceback from deep inside an import. So while this
package is imported for such a command (Python sets sys.argv[0] to "-m" until the module
runs), SIGINT ends the process with one line and status 130. `common.stops_in_one_line`
takes over when the launcher's main starts, and `engine.interrupts` during training.
"""

import multiprocessing
import os
import signal
import sys
import threading


def _interrupted_while_starting(signum, frame) -> None:
    sys.stderr.write("sequax: interrupted by SIGINT while starting; nothing was trained or saved\n")
    sys.stderr.flush()
    os._exit(128 + signum)


# A worker process (grain's, spawned): it imports the launcher's module first, while
# multiprocessing marks it as `_inheriting` (parent_process() is set only after). Ctrl-C
# reaches the whole process group; the launcher's process stops its workers itself.
if multiprocessing.parent_process() is not None or getattr(
    multiprocessing.current_process(), "_inheriting", False
):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
elif sys.argv[:1] == ["-m"] and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _interrupted_while_starting)
