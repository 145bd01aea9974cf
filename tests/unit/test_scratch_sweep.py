"""Which drill scratch directories the next drill sweeps: only this host's, only of processes
that are gone (pid and start time), and never one whose server it could not stop."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pgvault.pg import scratch
from pgvault.pg.runner import Runner
from pgvault.procs import host_tag, process_start


def _dead_pid() -> int:
    p = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    return int(p.stdout)


def test_scratch_dirs_are_named_after_their_process(tmp_path: Path) -> None:
    d = scratch.scratch_dir(str(tmp_path), os_user="postgres")
    try:
        pid = os.getpid()
        assert d.name.startswith(f"pgvault-drill.{host_tag()}.{pid}.{process_start(pid)}.")
        assert d.stat().st_mode & 0o777 == 0o700
        assert scratch.sweep_scratch_dirs(Runner(), directory=str(tmp_path)) == []  # ours: alive
        assert d.exists()
    finally:
        d.rmdir()


def test_only_dead_owners_on_this_host_are_swept(tmp_path: Path) -> None:
    me, dead = os.getpid(), _dead_pid()
    mine = tmp_path / f"pgvault-drill.{host_tag()}.{me}.{process_start(me)}.abc"
    reused = tmp_path / f"pgvault-drill.{host_tag()}.{me}.{(process_start(me) or 0) + 1}.abc"  # same pid, other process
    gone = tmp_path / f"pgvault-drill.{host_tag()}.{dead}.12345.abc"
    elsewhere = tmp_path / f"pgvault-drill.otherhost.{dead}.12345.abc"
    unrelated = tmp_path / "pgvault-drill-old-style"
    for d in (mine, reused, gone, elsewhere, unrelated):
        (d / "data").mkdir(parents=True)
    # A stale postmaster.pid naming a dead process: nothing to stop, the directory goes.
    (gone / "data" / "postmaster.pid").write_text(f"{dead}\n{gone / 'data'}\n")
    swept = scratch.sweep_scratch_dirs(Runner(), directory=str(tmp_path))
    assert sorted(swept) == sorted([f"scratch directory {reused} of drill pid {me}",
                                    f"scratch directory {gone} of drill pid {dead}"])
    assert mine.exists() and elsewhere.exists() and unrelated.exists()
    assert not reused.exists() and not gone.exists()


def test_a_pid_file_naming_a_live_non_postgres_process_is_never_signalled(tmp_path: Path) -> None:
    dead = _dead_pid()
    gone = tmp_path / f"pgvault-drill.{host_tag()}.{dead}.1.abc"
    (gone / "data").mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])  # the pid was reused by something else
    try:
        (gone / "data" / "postmaster.pid").write_text(f"{sleeper.pid}\n")
        assert scratch.sweep_scratch_dirs(Runner(), directory=str(tmp_path)) == [f"scratch directory {gone} of drill pid {dead}"]
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
