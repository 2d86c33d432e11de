"""I/O faults (issue 17.3): a full disk, read-only checkpoints and permission errors each give
one line, with orbax's own logging kept out of the console (it goes to WORKDIR/logs/orbax.log),
and say what was kept. The full-disk tests mount a small tmpfs and the read-only test drops to
the `nobody` user (root writes anywhere): both need root, which CI and this machine have."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_resume import small_config  # 2 tasks of 10 steps, ER, checkpoints after each

from sequax.engine import checkpoint, loop
from sequax.engine.integrity import Unwritable
from sequax.engine.library_logs import LOG, orbax_logs_to

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
SMALL = ["--config.data.source=mnist_packaged", "--config.data.num_tasks=2",
         "--config.data.train_per_task=200", "--config.data.test_per_task=100"]  # fmt: skip


@pytest.fixture
def tiny_disk():
    """A 600 kB tmpfs: room for one checkpoint of the quickstart run, not two."""
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs needs root (CI and the dev machine run as root)")
    folder = Path(tempfile.mkdtemp(prefix="sequax-full-disk-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def test_a_full_disk_is_one_line_naming_the_last_good_checkpoint(tiny_disk):
    workdir = tiny_disk / "run"
    done = subprocess.run(
        [sys.executable, "-m", "sequax.launch.train", "--config=configs/quickstart.py:local",
         f"--workdir={workdir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"sequax: error: no space left on the disk of {workdir}"), lines
    assert "MB free" in lines[0]  # refused before orbax started writing


def test_a_disk_filling_during_orbax_s_write_logs_to_the_workdir_not_the_console(
    tiny_disk, monkeypatch, capfd
):
    """The free-space check passed (switched off here), then orbax's writers fail: their ~200
    lines of logged errors and tracebacks go to WORKDIR/logs/orbax.log; the run raises the
    one-line `NoSpaceLeft` naming the checkpoint that is intact."""
    monkeypatch.setattr(checkpoint, "lacks_room", lambda *args, **kwargs: None)
    config = small_config()
    config.model.widths = (256, 256)  # two checkpoints do not fit in 600 kB
    workdir = tiny_disk / "run"
    with pytest.raises(checkpoint.NoSpaceLeft) as error:
        loop.run(config, workdir, verbose=False)
    assert "checkpoint step_" in str(error.value)
    err = capfd.readouterr().err
    assert "orbax" not in err and "Traceback" not in err, err[-3000:]
    assert "RESOURCE_EXHAUSTED" in (workdir / LOG).read_text()


def test_orbax_records_go_to_the_file_and_others_stay_on_the_console(tmp_path, caplog):
    """Every handler of the root logger (here pytest's, in a launcher absl's console handler)
    sees the other libraries' records but not orbax's."""
    with orbax_logs_to(tmp_path):
        logging.getLogger("orbax.checkpoint.fake").error("orbax says boom")
        logging.getLogger("jax.fake").error("jax says hello")
    assert "orbax says boom" not in caplog.text and "jax says hello" in caplog.text
    assert "orbax says boom" in (tmp_path / LOG).read_text()


def test_a_quiet_run_writes_no_log_file(tmp_path):
    with orbax_logs_to(tmp_path):
        logging.getLogger("jax.fake").info("nothing from orbax")
    assert not (tmp_path / "logs").exists()


def test_a_permission_error_while_saving_is_one_line_saying_what_is_kept(tmp_path, monkeypatch):
    def refuse(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint, "write_atomic", refuse)
    with pytest.raises(Unwritable) as error:
        loop.run(small_config(), tmp_path / "run", verbose=False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("cannot write checkpoint step_00000010_phase0_done in ")
    assert "Permission denied" in message and "no checkpoint was complete yet" in message
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # the partial one removed


@pytest.mark.skipif(
    IS_ROOT and shutil.which("setpriv") is None,
    reason="as root, a read-only folder needs another user: setpriv (util-linux) is missing",
)
def test_read_only_checkpoints_are_refused_before_anything_trains():
    """The issue's case: the checkpoints folder is read-only and its newest checkpoint is
    half-written. Before: the run retrained, then died with a 28-line PermissionError from
    removing that folder. Now: one line before any compile, and no file changes."""
    base = Path(tempfile.mkdtemp(prefix="sequax-read-only-"))
    try:
        base.chmod(0o777)
        workdir = base / "run"
        half = workdir / "checkpoints" / "step_00000005"
        (half / "state").mkdir(parents=True)
        (half / "progress.json").write_text("{}")
        (workdir / "checkpoints").chmod(0o555)
        half.chmod(0o555)
        os.chown(workdir, 65534, 65534) if IS_ROOT else None
        before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
        env = {**os.environ, "HOME": str(base), "SEQUAX_COMPILATION_CACHE": "off",
               "SEQUAX_DATA_CACHE": "off"}  # fmt: skip
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if IS_ROOT else []
        done = subprocess.run(
            [*user, sys.executable, "-m", "sequax.launch.train",
             "--config=configs/smnist_naive.py:local", f"--workdir={workdir}", *SMALL],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-3000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr[-3000:]
        assert lines[0] == (
            f"sequax: error: {workdir / 'checkpoints'} is not writable (Permission denied): "
            "this run could not save or prune checkpoints; make it writable (the same command "
            "then resumes), or use another --workdir"
        )
        assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
        assert "sequax:" not in done.stdout  # refused before the run's first line
    finally:
        for folder in base.rglob("*"):
            if folder.is_dir():
                folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
