"""Which sessions keep a restore from replacing an existing database (exit 8, TargetBusyError):
client sessions do, background workers do not.  An autovacuum worker visiting the target used to
be listed as a "connected session" and refused the restore, at random, on any busy server."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.cli import clean_env, pgvault
from support.pgcluster import PgCluster


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not seen within {timeout:.0f}s")


def test_an_autovacuum_worker_does_not_block_a_restore_but_a_client_session_does(
        make_pg_cluster: Callable[..., PgCluster], tmp_path: Path) -> None:
    # naptime 1s: the launcher visits each database every second instead of every minute.
    pg = make_pg_cluster(settings={"autovacuum_naptime": "1s"})
    db = "busy"
    pg.create_database(db)
    # Dead tuples and an autovacuum throttled to a crawl (a few pages a second): its worker stays
    # connected to the database for minutes, exactly what a restore may meet on a busy server.
    pg.psql("CREATE TABLE t (i int, pad text) WITH (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,"
            " autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1);"
            " INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g;"
            " DELETE FROM t WHERE i > 10;", dbname=db)
    env = clean_env(**pg.env(), PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"), PGVAULT_CLUSTER="sessions")
    pgvault(["backup", "-d", db, "--no-globals"], env)

    def autovacuum() -> str:
        return pg.psql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{db}' AND backend_type = 'autovacuum worker'")

    worker = _wait_for(autovacuum, 60, "an autovacuum worker in the target database")
    res = pgvault(["restore", "latest", "-d", db, "--clean"], env, check=False)
    assert res.returncode == 0, res  # before: exit 8, "has 1 connected session(s): pid N (?, active)"
    assert "connected session" not in res.stderr
    assert pg.psql("SELECT count(*) FROM t", dbname=db) == "10"
    assert pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {worker}") == "0"  # PostgreSQL ended it

    # An idle client session still counts: refused, named, nothing changed.
    holder = subprocess.Popen([str(pg.bindir.program("psql")), "-X", "-d", db],
                              env={**pg.client_env(), "PGAPPNAME": "idle-holder"}, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        _wait_for(lambda: pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"
                                  " AND application_name = 'idle-holder' AND state = 'idle'") == "1", 30, "the idle session")
        oid = pg.psql(f"SELECT oid FROM pg_database WHERE datname = '{db}'")
        busy = pgvault(["restore", "latest", "-d", db, "--clean"], env, check=False)
        assert busy.returncode == 8, busy
        assert "1 connected session(s)" in busy.stderr and "idle-holder" in busy.stderr, busy.stderr
        assert pg.psql(f"SELECT oid FROM pg_database WHERE datname = '{db}'") == oid  # not replaced
    finally:
        holder.kill()
        holder.wait()
