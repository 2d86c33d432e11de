"""Pieces every absl launcher shares: config-override errors, the several-hosts flags, the
one-line report of a run's expected stops, and `--update_docs` with the repository's docs
folder it writes into."""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import os
import platform
import re
import shlex
import signal
import sys
import threading
from pathlib import Path

from absl import flags

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


# Where `--update_docs` writes instead of the source checkout's docs/ (tests point it at a copy,
# so a test never rewrites the repository's documents).
DOCS_VARIABLE = "SEQUAX_REPOSITORY_DOCS"


def define_update_docs() -> None:
    """`--update_docs`, the same flag with the same meaning on every command that writes a
    document the repository keeps (reproduce, bench, and the repository's benchmark and
    evidence programs). Each such command calls this; absl's flags are one namespace per process
    and a test process imports several of these commands, so the flag is defined once, and made
    a key flag of the calling command so that its `--help` lists it."""
    if "update_docs" not in flags.FLAGS:
        flags.DEFINE_bool(
            "update_docs",
            False,
            "Also write the document into the repository's docs/ (a source checkout only); "
            "without it the command writes into its workdir or --output alone.",
        )
    caller = sys._getframe(1).f_globals.get("__name__", "")
    module = sys.argv[0] if caller == "__main__" else caller  # as absl names the main module
    flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS["update_docs"])


def repository_docs(root: Path | None = None) -> Path:
    """The docs/ folder of the source checkout at `root` (default: the one this package is
    installed from, editable), or $SEQUAX_REPOSITORY_DOCS where set. One line and exit 2 when
    there is none: an installed package has no repository whose documents it could update, and
    a command should say so before it trains for an hour, not after."""
    override = os.environ.get(DOCS_VARIABLE)
    root = root or Path(__file__).resolve().parents[1]
    docs = Path(override) if override else root / "docs"
    if not docs.is_dir() or not (override or (root / "pyproject.toml").is_file()):
        why = f"${DOCS_VARIABLE}" if override else "not a source checkout: an installed package"
        _usage_error(
            f"--update_docs: no repository docs folder at {docs} ({why}); drop --update_docs, "
            f"the document is written in the workdir (or --output) anyway"
        )
    return docs


def initialize_distributed() -> bool:
    """Joins the other processes from the flags or the platform (one line and exit 2 if the
    flags are inconsistent); call it before anything touches a device."""
    from sequax.engine import distributed  # JAX: not imported by a launcher that never runs it

    try:
        return distributed.initialize(
            _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
    except distributed.DistributedError as error:
        print(f"sequax: error: {error}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def stops_in_one_line(module: str, workdir: str | None = None):
    """The stops a user meets, each as one line on stderr, never a traceback: a bad config or
    data file, a diverged loss, a full disk, an unwritable checkpoint folder (exit 2); SIGINT
    or SIGTERM (the run saved its position: the line names it and the command that resumes;
    exit 130 or 143); Ctrl-C before training started (nothing to save; 130). `workdir`: the
    run's, whose last good checkpoint a full disk's line names."""
    from sequax.data import DataError  # JAX and the engine: only for launchers that train
    from sequax.engine.build import ConfigError
    from sequax.engine.checkpoint import NoSpaceLeft, TrainingDiverged, checkpoint_folder, last_good
    from sequax.engine.integrity import Unwritable, no_space_message
    from sequax.engine.interrupts import Interrupted

    if threading.current_thread() is threading.main_thread():  # Ctrl-C: KeyboardInterrupt again
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (see sequax/launch/__init__)
    try:
        yield
    except (ConfigError, DataError, TrainingDiverged, NoSpaceLeft, Unwritable) as error:
        print(f"sequax: error: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stop:  # the position saved (or nothing new to save): one line
        command = " ".join(["python -m", module, *map(shlex.quote, sys.argv[1:])])
        print(f"sequax: {stop}{f'; to resume: {command}' if stop.checkpoint else ''}",
              file=sys.stderr)  # fmt: skip
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside training: reading data, building, compiling
        print("sequax: interrupted by SIGINT outside training; nothing new to save (finished "
              "work is kept)", file=sys.stderr)  # fmt: skip
        sys.exit(130)
    except OSError as error:  # a full disk while writing metrics or results
        if error.errno != errno.ENOSPC:
            raise
        if workdir is None:
            print(f"sequax: error: no space left on the disk ({error}); free space and rerun the "
                  "same command: finished work is kept", file=sys.stderr)  # fmt: skip
        else:
            where = last_good(checkpoint_folder(workdir))
            print(f"sequax: error: {no_space_message(workdir, 'the results', where)}",
                  file=sys.stderr)  # fmt: skip
        sys.exit(2)


def parse_flags(argv):
    """absl's parser, but a bad flag is one line on stderr and exit status 2, not a traceback:
    an override of a key the config lacks (with ml_collections' "did you mean"), a value of the
    wrong type (`--config.training.batch_size=ten`), an error inside the config file itself.

    `--config.algorithm.name=NAME` switches method from any config file: the section becomes
    NAME's hyper-parameters at their defaults (`algorithms.hyperparameters`), and the other
    `--config.algorithm.*` overrides then apply to it, so
    `--config=configs/smnist_naive.py --config.algorithm.name=er --config.algorithm.capacity=500`
    trains ER with a buffer of 500."""
    argv, switch = _split_algorithm_switch(argv)
    if switch is not None:  # ml_collections reads the overrides from sys.argv itself
        sys.argv[:] = [a for a in sys.argv if a in argv or not a.startswith("--config.algorithm.")]
    rest = _parse(argv)
    reject_stray(rest)
    _check_config_loaded(argv)
    if switch is not None:
        _switch_algorithm(*switch)
    return rest


def reject_stray(argv) -> None:
    """One line and exit 2 for positional arguments a command does not take (absl would print
    its whole help)."""
    if len(argv) > 1:
        _usage_error(
            f"unexpected argument(s) {' '.join(map(repr, argv[1:]))}: every option is a "
            f"--flag=value (e.g. --config=FILE --workdir=DIR); see --help"
        )


def _check_config_loaded(argv) -> None:
    """One line and exit 2 when the config file is missing, unreadable or fails to import:
    its path and the Python error's own first line (ml_collections loads it lazily and
    would raise a chained traceback at first use)."""
    if "config" not in flags.FLAGS:
        return
    try:
        config = flags.FLAGS["config"].value  # a lazy stand-in that raises on first use
        if config is not None:
            list(config.keys())
    except Exception as error:  # noqa: BLE001 - whatever the file raised, shown in one line
        _config_file_error(argv, error)


def _config_file_error(argv, error: BaseException) -> None:
    """The config file's own error in one line: the innermost exception of the chain, and of
    a multi-line message (ml_collections lists the paths it tried) the last line."""
    root = error
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    detail = lines[-1] if lines else ""
    path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), "?")
    _usage_error(
        f"cannot load the config file {path}: {type(root).__name__}"
        f"{': ' + detail if detail else ''}; check the path and the file"
    )


def check_workdir(workdir: str) -> Path:
    """One line and exit 2, before anything is read or compiled, when `workdir` is a file or
    a folder (or the nearest existing parent of one to create) this user cannot write in, or
    names an environment variable that is not set; the folder, `~` and `$VAR`s expanded."""
    from sequax.engine.errors import ConfigError
    from sequax.engine.integrity import nearest_existing, workdir_path, write_probe

    try:
        path = workdir_path(workdir)
    except ConfigError as error:
        _usage_error(f"--{error}")
    if path.exists() and not path.is_dir():
        _usage_error(f"--workdir={workdir} is a file, not a folder; give a folder's path")
    existing = nearest_existing(path)
    error = write_probe(existing)
    if error is not None:
        _usage_error(
            f"--workdir={workdir}: cannot write in {existing} ({error.strerror or error}); give "
            f"a --workdir you can write to"
        )
    return path


def _split_algorithm_switch(argv):
    """argv without `--config.algorithm.name=` and the algorithm overrides that follow it, and
    (name, overrides) when the name is there (None otherwise)."""
    name = next(
        (a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config.algorithm.name=")), None
    )
    if name is None:
        return argv, None
    overrides, kept = [], [argv[0]]
    for arg in argv[1:]:
        if arg.startswith("--config.algorithm.") and "=" in arg:
            key, value = arg.removeprefix("--config.algorithm.").split("=", 1)
            if key != "name":
                overrides.append((key, value))
        else:
            kept.append(arg)
    return kept, (name, overrides)


def _switch_algorithm(name: str, overrides) -> None:
    from ml_collections import ConfigDict

    from sequax import algorithms

    config = flags.FLAGS["config"].value
    if config.algorithm.get("name") != name:
        try:
            defaults = algorithms.hyperparameters(name)
        except ValueError as error:
            _usage_error(f"--config.algorithm.name={name}: {error}")
        section = {k: v for k, v in _drop_none(defaults).items()}
        config.algorithm = ConfigDict({"name": name, **section})
    for key, text in overrides:
        *parents, leaf = key.split(".")
        section = config.algorithm
        for parent in parents:
            section = section.get(parent) if hasattr(section, "get") else None
        known = sorted(section.keys()) if hasattr(section, "keys") else []
        if section is None or leaf not in known and _required(name, key) is False:
            _usage_error(
                f"--config.algorithm.{key}: not a hyper-parameter of algorithm {name!r}; "
                f"known: {', '.join(k for k in known if k != 'name') or '(none)'}"
            )
        section[leaf] = _value(text, section.get(leaf))


def _drop_none(values: dict) -> dict:
    """Hyper-parameters with a default (a required one, None, is set by an override)."""
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in values.items()
            if v is not None}  # fmt: skip


def _required(name: str, key: str) -> bool:
    """Whether `key` is a hyper-parameter of `name` without a default."""
    from sequax import algorithms

    values = algorithms.hyperparameters(name)
    for part in key.split("."):
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return values is None


def _value(text: str, default):
    """An override's value, typed as its default is (as ml_collections parses overrides)."""
    import ast

    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            _usage_error(f"give True or False, not {text!r}")
        return text.lower() in ("true", "1")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a string
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if default is not None and not isinstance(value, type(default)):
        _usage_error(f"{text!r} is not a {type(default).__name__}, as the default {default!r} is")
    return value


def _parse(argv):
    try:
        return flags.FLAGS(argv)
    except (SyntaxError, ImportError, OSError) as error:  # the config file, imported eagerly
        _config_file_error(argv, error)
    except (AttributeError, KeyError) as error:  # raised by config_flags for --config.<unknown>
        # ml_collections nests the key's repr in the message and may add a "Did you mean" line.
        message = str(error)
        key = re.search(r"[^'\\\"]+", message)
        hint = re.search(r'Did you mean "([^"]+)"', message)
        name = key.group() if key else message
        override = next(
            (
                a.split("=", 1)[0]
                for a in argv[1:]
                if re.match(rf"--config\.(\S+\.)?{re.escape(name)}(=|$)", a)
            ),
            None,
        )
        name = f"{name!r} ({override})" if override else repr(name)
        if hint and override:
            hint = (
                f"; did you mean --{override.removeprefix('--').rsplit('.', 1)[0]}.{hint.group(1)}?"
            )
        else:
            hint = f"; did you mean {hint.group(1)!r}?" if hint else ""
        # A method's hyper-parameter, a scenario option, a model or optimizer argument left at
        # its default is not in the config's free-form section, so not overridable.
        kinds = {"algorithm.": "a method's hyper-parameter", "data.options.": "a scenario "
                 "option", "model.": "a model argument", "optimizer.args.": "an optimizer "
                 "argument"}  # fmt: skip
        method = next(
            (f"; {kind} must be set in the config file first" for part, kind in kinds.items()
             if part in name),
            "",
        )  # fmt: skip
        _usage_error(
            f"a --config override names the unknown key {name}{hint}; overrides "
            f"must name keys the config has (see engine/schema.py base_config){method}"
        )
    except flags.Error as error:
        # A value of the wrong type ("flag --config.x=ten: invalid literal for int() ..."), or an
        # exception inside the config file, whose traceback absl folds into the message: its last
        # line says what went wrong.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = lines[-1] if lines else type(error).__name__
        if len(lines) > 1:
            message = f"the config file failed: {message}; fix the config file"
        else:
            flag = re.match(r"flag (--config\.[\w.]+)=", message)
            if flag:
                message += (
                    f"; give {flag.group(1)} a value of the type its default has "
                    f"(engine/schema.py base_config)"
                )
        _usage_error(message)


def _usage_error(message: str) -> None:
    print(f"sequax: error: {message}", file=sys.stderr)
    sys.exit(2)


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kib = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0
    )

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return dict(
        cpu=model,
        cores=os.cpu_count(),
        ram_gib=mem_kib / 2**20,
        python=platform.python_version(),
        jax=version("jax"),
        jaxlib=version("jaxlib"),
        torch=version("torch"),
        xla_flags=os.environ.get("XLA_FLAGS", "") or "default",
        load=os.getloadavg(),
    )
