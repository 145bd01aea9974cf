"""operations/workers.py: pool workers die with their parent; the layout lock outlives the parent
while a forked worker still holds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pgvault.errors import LockedError
from pgvault.operations.workers import layout_lock


def test_a_second_layout_waits_then_refuses(tmp_path: Path) -> None:
    target = tmp_path / "data"
    with layout_lock(target):
        t0 = time.monotonic()
        with pytest.raises(LockedError, match=str(target)):
            with layout_lock(target, wait=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
    with layout_lock(target, wait=0):  # released
        pass
    assert (tmp_path / ".data.pgvault-lock").exists()  # beside the data directory


def test_a_forked_worker_keeps_the_lock_after_its_parent_let_go(tmp_path: Path) -> None:
    target = tmp_path / "data"
    with layout_lock(target):
        child = os.fork()
        if child == 0:  # a worker still unpacking
            time.sleep(1.0)
            os._exit(0)
    with pytest.raises(LockedError):
        with layout_lock(target, wait=0.2):
            pass
    os.waitpid(child, 0)
    with layout_lock(target, wait=0):
        pass


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os, sys, time
        from pgvault.operations.workers import worker_pool

        def pid_then_sleep(_):
            return os.getpid()

        def sleep(_):
            time.sleep(600)

        with worker_pool(2) as pool:
            print(*sorted(set(pool.map(pid_then_sleep, range(8)))), flush=True)
            list(pool.map(sleep, range(2)))
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert workers and parent.pid not in workers
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in workers):
        assert time.monotonic() < deadline, "a worker outlived its parent"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_postmaster_pid_file_left_by_kill_9_is_not_a_live_server(tmp_path: Path) -> None:
    from pgvault.operations.archive.background import postmaster_alive

    assert not postmaster_alive(tmp_path)  # no file: stopped cleanly
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "postmaster.pid").write_text(f"{dead.pid}\n{tmp_path}\n")
    assert not postmaster_alive(tmp_path)
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n{tmp_path}\n")
    assert postmaster_alive(tmp_path)
    (tmp_path / "postmaster.pid").write_text("")  # being written at start-up: not a reason to give up
    assert postmaster_alive(tmp_path)
