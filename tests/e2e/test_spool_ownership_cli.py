"""Issue 9: ``wal push`` / ``wal fetch`` run by hand as root on the database host must not break
PostgreSQL's archiving.

The WAL spool (``PGDATA/pg_wal/pgvault``) and what the fast paths keep there (the pusher's records
and lock, the fast index, the prefetch spool) used to be created by whoever ran the command: after
an operator's ``wal push`` as root, the archiver (postgres) could no longer take the pusher's lock
or write its records, and archiving stalled while WAL piled up in pg_wal.  Now what root creates
in the spool takes the owner of the nearest existing parent (the data directory's owner), like the
repository's files (tests/e2e/test_repository_ownership_cli.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from support.archiving import as_postgres, chown_pg, daemons

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as root and as postgres")


def _roots_daemons(data_dir: str) -> list[int]:
    out = []
    for pid in daemons(data_dir):
        try:
            if os.stat(f"/proc/{pid}").st_uid == 0:
                out.append(pid)
        except FileNotFoundError:
            pass  # gone meanwhile
    return out


def _stop_roots_daemons(data_dir: str) -> None:
    """Root's pusher / prefetcher exits after 15-30 s idle; killed here to save the wait (the state
    they leave is the same)."""
    deadline = time.monotonic() + 10
    while pids := _roots_daemons(data_dir):
        assert time.monotonic() < deadline, f"root's daemons {pids} do not stop"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _archiving(a, on: bool) -> None:  # type: ignore[no-untyped-def]
    """Off: archive_command '' (segments stay .ready); on: back to the cluster's pgvault wal push."""
    a.cluster.psql("ALTER SYSTEM RESET archive_command" if on else "ALTER SYSTEM SET archive_command = ''")
    a.cluster.psql("SELECT pg_reload_conf()")
    time.sleep(0.5)


def _archiver_errors(a) -> str:  # type: ignore[no-untyped-def]
    lines = a.cluster.logfile.read_text(errors="replace").splitlines()
    return "\n".join([ln for ln in lines if "pgvault" in ln or "archive command failed" in ln][-6:])


def _failed(a) -> int:  # type: ignore[no-untyped-def]
    return int(a.cluster.psql("SELECT failed_count FROM pg_stat_archiver"))


@pytest.mark.parametrize("how", ["push", "push --pgdata", "fetch"])
def test_a_manual_wal_command_as_root_leaves_a_spool_the_archiver_can_use(how: str, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(None)
    data = a.cluster.datadir
    first = a.switch_and_wait()  # the archiver (postgres) made its spool and fast index
    spool = data / "pg_wal" / "pgvault"
    pg_uid = data.stat().st_uid
    assert spool.is_dir() and spool.stat().st_uid == pg_uid
    # The worst case: root is the first to create the spool (a fresh cluster, or one archived
    # synchronously until now).
    shutil.rmtree(spool)
    if how.startswith("push"):
        # Archiving is stuck (here: switched off), so the operator pushes a ready segment by hand.
        _archiving(a, False)
        a.cluster.psql("SELECT pg_current_xact_id()")
        name = a.cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        a.cluster.psql("SELECT pg_switch_wal()")
        assert (data / "pg_wal" / "archive_status" / f"{name}.ready").exists()
        if how == "push":
            cmd, cwd = [str(a.launcher), "wal", "push", f"pg_wal/{name}"], str(data)
        else:
            cmd, cwd = [str(a.launcher), "wal", "push", "--pgdata", str(data), f"pg_wal/{name}"], "/"
    else:
        out = a.work / "fetched-by-root"
        out.mkdir()
        cmd, cwd = [str(a.launcher), "wal", "fetch", first, str(out / first), "--pgdata", str(data)], "/"
    r = subprocess.run(cmd, cwd=cwd, env=a.env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _stop_roots_daemons(str(data))
    if how.startswith("push"):
        _archiving(a, True)
    failed = _failed(a)
    # PostgreSQL's archiver (postgres) keeps archiving through the spool root touched.
    for _ in range(3):
        try:
            a.switch_and_wait(timeout=45)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_archiver_errors(a)}") from None
    assert _failed(a) == failed, f"archive_command failed after root's wal command\n{_archiver_errors(a)}"
    # And a wal fetch as postgres (its prefetch spool) still works.
    into = a.work / "fetched-by-postgres"
    into.mkdir()
    chown_pg(into)
    fetched = subprocess.run(as_postgres([str(a.launcher), "wal", "fetch", first, str(into / first), "--pgdata", str(data)]),
                             cwd="/", env=a.env(), capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0 and (into / first).exists(), fetched.stderr
    # ... and its prefetcher's work is served: the next segment comes from the spool (its record consumed).
    after = f"{first[:16]}{int(first[16:], 16) + 1:08X}"
    records = list(spool.glob(f"*/fetch/{after}.ok"))
    deadline = time.monotonic() + 30
    while not records:
        assert time.monotonic() < deadline, "the prefetcher (postgres) did not prefetch the next segment"
        time.sleep(0.1)
        records = list(spool.glob(f"*/fetch/{after}.ok"))
    fetched = subprocess.run(as_postgres([str(a.launcher), "wal", "fetch", after, str(into / after), "--pgdata", str(data)]),
                             cwd="/", env=a.env(), capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0 and (into / after).exists(), fetched.stderr
    assert not records[0].exists(), "the prefetched segment was not served from the spool"
    owners = {p.relative_to(data).as_posix(): p.stat().st_uid for p in [spool, *spool.rglob("*")]}
    assert set(owners.values()) == {pg_uid}, owners
    _stop_daemons_quietly(str(data))


def _stop_daemons_quietly(data_dir: str) -> None:
    for pid in daemons(data_dir):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

