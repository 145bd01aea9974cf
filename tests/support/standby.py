"""A streaming standby of a test cluster: ``pg_basebackup`` from the primary (over its Unix socket,
where initdb's pg_hba trusts replication connections), run as the server's OS user, then started on a
port of its own.  It keeps the primary's settings (archive_mode = on archives nothing on a standby).

``primary_conninfo`` is written here, not by ``pg_basebackup -R``: the PostgreSQL 18 from PyPI loads
the system's older libpq in its WAL receiver, which rejects the options 18's -R writes
("invalid connection option sslnegotiation")."""

from __future__ import annotations

import shutil
import time

from support.pgcluster import PG_OS_USER, PgCluster, _running_as_root, free_port, postgres_tmpdir


def make_standby(primary: PgCluster, *, timeout: float = 60) -> PgCluster:
    """A hot standby streaming from ``primary``, started and streaming; :meth:`PgCluster.destroy` it."""
    base_dir = postgres_tmpdir("pgvault-standby-")
    socket_dir = base_dir / "run"
    socket_dir.mkdir()
    if _running_as_root():
        for d in (base_dir, socket_dir):
            shutil.chown(d, PG_OS_USER, PG_OS_USER)
    standby = PgCluster(bindir=primary.bindir, base_dir=base_dir, port=free_port(), password=primary.password,
                        socket_dir=socket_dir)
    standby._run_server_cmd(
        [primary.bindir.program("pg_basebackup"), "-D", standby.datadir, "-h", str(primary.socket_dir),
         "-p", str(primary.port), "-U", primary.user, "-X", "stream", "-c", "fast", "--no-sync"],
        what="pg_basebackup -R", timeout=180,
    )
    standby.settings = {**primary.settings,
                        "primary_conninfo": f"host={primary.socket_dir} port={primary.port} user={primary.user}"}
    standby._write_settings()  # its own port and socket directory
    signal = standby.datadir / "standby.signal"
    signal.touch()
    if _running_as_root():
        shutil.chown(signal, PG_OS_USER, PG_OS_USER)
    try:
        standby.start()
        wait_streaming(standby, timeout=timeout)
    except BaseException:
        standby.destroy()
        raise
    return standby


def wait_streaming(standby: PgCluster, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while standby.psql("SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), '')") != "streaming":
        assert time.monotonic() < deadline, f"standby {standby!r} is not streaming"
        time.sleep(0.1)


def wait_replayed(standby: PgCluster, primary: PgCluster, *, timeout: float = 60) -> None:
    """Until ``standby`` has replayed everything ``primary`` had written when this was called."""
    target = primary.psql("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + timeout
    while standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") != "t":
        assert time.monotonic() < deadline, f"standby did not replay up to {target}"
        time.sleep(0.1)


def promote(standby: PgCluster, *, timeout: float = 60) -> None:
    """``pg_ctl promote -w``: returns once the standby accepts writes."""
    standby._run_server_cmd([standby.bindir.program("pg_ctl"), "-D", standby.datadir, "-w", "-t", str(int(timeout)),
                             "promote"], what="pg_ctl promote")
