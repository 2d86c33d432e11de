"""absl entry points: `train` (one experiment), `sweep`, `reproduce`, `report`, `bench` and more.

Started as `python -m sequax.launch.NAME`, a launcher's first second or two go to importing
JAX and torch; Ctrl-C then would print a traceback from deep inside an import. So while this
package is imported for such a command (Python sets sys.argv[0] to "-m" until the module
runs), SIGINT ends the process with one line and status 130. `common.stops_in_one_line`
takes over when the launcher's main starts, and `engine.interrupts` during training.
"""

import os
import signal
import sys
import threading


def _interrupted_while_starting(signum, frame) -> None:
    sys.stderr.write("sequax: interrupted by SIGINT while starting; nothing was trained or saved\n")
    sys.stderr.flush()
    os._exit(128 + signum)


if sys.argv[:1] == ["-m"] and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _interrupted_while_starting)
