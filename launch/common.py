"""Pieces every absl launcher shares: config-override errors and the several-hosts flags."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from pathlib import Path

from absl import app, flags

from sequax.engine import distributed

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Several hosts, started by hand: host:port of process 0 (its host's address and a free "
    "port), the same on every process; give with --num_processes and --process_id. Leave all "
    "three out on one host, and on a Cloud TPU pod slice, SLURM or Open MPI (detected "
    "automatically).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes",
    None,
    "Several hosts, started by hand: how many processes take part (one per host), the same "
    "on every process; with --coordinator_address and --process_id.",
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    None,
    "Several hosts, started by hand: this process's number, 0..num_processes-1, 0 on the "
    "coordinator's host; with --coordinator_address and --num_processes.",
)


def initialize_distributed() -> bool:
    """Joins the other processes from the flags or the platform (one line and exit 2 if the
    flags are inconsistent); call it before anything touches a device."""
    try:
        return distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except distributed.DistributedError as error:
        print(f"sequax: error: {error}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv):
    """absl's parser, but an override of a key the config lacks is one line, not a traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as error:  # raised by config_flags for --config.<unknown>
        # ml_collections nests the key's repr in the message and may add a "Did you mean" line.
        message = str(error)
        key = re.search(r"[^'\\\"]+", message)
        hint = re.search(r'Did you mean "[^"]+"', message)
        name = repr(key.group()) if key else message
        hint = f"; {hint.group()}?" if hint else ""
        print(
            f"sequax: error: a --config override names the unknown key {name}{hint}; overrides "
            "must name keys the config has (see configs/common.py base_config)",
            file=sys.stderr,
        )
        sys.exit(2)


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), platform.processor())
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kib = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return dict(cpu=model, cores=os.cpu_count(), ram_gib=mem_kib / 2**20, python=platform.python_version(),
                jax=version("jax"), jaxlib=version("jaxlib"), torch=version("torch"),
                xla_flags=os.environ.get("XLA_FLAGS", "") or "default", load=os.getloadavg())
