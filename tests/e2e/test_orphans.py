"""Nothing pgvault starts outlives what it serves: restore-cluster's unpack workers die with a
``kill -9``'d restore-cluster (and a rerun never lays out a directory they still write to); the
background WAL pusher stops soon after its postmaster was killed with -9."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.cli import pgvault, start


def _wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else (fields[0], int(fields[1]))


def _children(parent: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st is not None and st[1] == parent:
                out.append(int(d.name))
    return out


def _gone_within(pids: list[int], timeout: float) -> float:
    t0 = time.monotonic()
    _wait_for(lambda: all(_stat(p) is None for p in pids), timeout=timeout, what=f"processes {pids} gone")
    return time.monotonic() - t0


def test_kill_9_of_restore_cluster_takes_its_workers_along_and_a_rerun_waits_for_them(archiving: Any) -> None:
    a = archiving(None, cluster_name="orphans")
    a.cluster.psql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((-g)::text) AS t FROM generate_series(1, 400000) g")
    backup = a.basebackup()
    assert backup["base"]["parts"], "two parts, so two unpack workers"
    target = a.work / "restored-orphans"
    argv = ["restore-cluster", "-D", str(target), "--json", "--pgvault-command", str(a.launcher)]
    first = start(argv, a.env())
    workers: list[int] = []
    try:
        workers = _wait_for(lambda: len(_children(first.pid)) >= 2 and _children(first.pid), what="two unpack workers")
        for pid in workers:  # frozen mid-unpack: without help they would stay for ever
            os.kill(pid, signal.SIGSTOP)

        # While they live, a rerun must not empty and refill the directory under them.
        t0 = time.monotonic()
        rerun = pgvault([*argv, "--force"], a.env(), check=False, timeout=120)
        assert rerun.returncode == 7, rerun
        assert "another restore-cluster" in rerun.stderr and str(target) in rerun.stderr
        print(f"rerun refused after {time.monotonic() - t0:.1f}s")

        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        took = _gone_within(workers, timeout=5)
        print(f"workers gone {took:.2f}s after kill -9 of their parent")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # With them gone the lock is free at once, and the rerun lays the directory out cleanly.
    t0 = time.monotonic()
    again = pgvault([*argv, "--force"], a.env(), timeout=300)
    assert again.json()["plan"]["backup_id"] == backup["backup_id"], again
    assert "waiting for an earlier restore-cluster" not in again.stderr
    assert (target / "PG_VERSION").exists()
    print(f"rerun took {time.monotonic() - t0:.1f}s")


def _pusher_pids(data_dir: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"archive-daemon" in argv and str(data_dir).encode() in argv and _stat(int(d.name)) is not None:
                pids.append(int(d.name))
    return pids


def test_the_pusher_stops_soon_after_its_postmaster_was_killed(archiving: Any) -> None:
    a = archiving(None, cluster_name="pusher")
    a.switch_and_wait()
    data_dir = a.cluster.datadir
    pushers = _wait_for(lambda: _pusher_pids(data_dir), what="the background pusher")
    a.switch_and_wait()  # busy just now: an idle pusher would stay 30 s
    postmaster = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    os.kill(postmaster, signal.SIGKILL)
    assert (data_dir / "postmaster.pid").exists(), "kill -9 leaves postmaster.pid behind"
    took = _gone_within(pushers, timeout=10)
    print(f"pusher exited {took:.2f}s after kill -9 of the postmaster")


def test_sigterm_of_restore_cluster_stops_its_workers_and_removes_what_it_created(archiving: Any) -> None:
    a = archiving(None, cluster_name="termrc")
    a.cluster.psql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((-g)::text) AS t FROM generate_series(1, 400000) g")
    a.basebackup()
    target = a.work / "restored-term"
    proc = start(["restore-cluster", "-D", str(target), "--pgvault-command", str(a.launcher)], a.env())
    workers: list[int] = []
    try:
        workers = _wait_for(lambda: len(_children(proc.pid)) >= 2 and _children(proc.pid), what="two unpack workers")
        for pid in workers:  # mid-unpack, and in no hurry to finish
            os.kill(pid, signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        took = _gone_within(workers, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 143, err
    print(f"workers gone {took:.2f}s after SIGTERM returned")
    assert not target.exists(), "the data directory this run created is removed"
