"""The PostgreSQL test harness itself: real clusters of each major start, load the third-party
sample databases (skipped without ../shared/testdata, see support/testdata.py), and enforce
password authentication over TCP.  The generated sample database: test_sample_db.py."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from support.pg_fixtures import pg_majors
from support.pgcluster import PgCluster, PgClusterError
from support.testdata import CHINOOK, PAGILA, require_testdata

pytestmark = pytest.mark.pg


def _pagila_copy_counts() -> dict[str, int]:
    """Rows per table in pagila-data.sql, counted from its COPY blocks."""
    counts: dict[str, int] = {}
    table: str | None = None
    with (require_testdata(*PAGILA) / "pagila" / "pagila-data.sql").open(encoding="utf-8") as f:
        for line in f:
            if table is None:
                if line.startswith("COPY "):
                    table = line.split()[1]
                    counts[table] = 0
            elif line.startswith("\\."):
                table = None
            else:
                counts[table] += 1
    return counts


def _psql_as(cluster: PgCluster, env: dict[str, str], sql: str = "SELECT 1") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [str(cluster.bindir.program("psql")), "-X", "-A", "-t", "-w", "-d", "postgres", "-c", sql],
        env={**base, "PGPASSFILE": os.devnull, "PGCONNECT_TIMEOUT": "10", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_cluster_runs_its_major(pg_cluster: PgCluster) -> None:
    version = pg_cluster.psql("SELECT version()")
    assert version.startswith(f"PostgreSQL {pg_cluster.major}."), version
    assert int(pg_cluster.psql("SHOW server_version_num")) // 10000 == pg_cluster.major
    assert pg_cluster.bindir.major == pg_cluster.major
    assert pg_cluster.psql("SHOW listen_addresses") == "127.0.0.1"
    assert pg_cluster.psql("SHOW wal_level") == "replica"
    assert pg_cluster.psql("SHOW server_encoding") == "UTF8"
    assert int(pg_cluster.psql("SHOW port")) == pg_cluster.port
    assert Path(pg_cluster.psql("SHOW data_directory")) == pg_cluster.datadir


def test_server_runs_as_postgres_user_when_root(pg_cluster: PgCluster) -> None:
    if os.geteuid() != 0:
        pytest.skip("only meaningful when the tests run as root")
    pid = int((pg_cluster.datadir / "postmaster.pid").read_text().split()[0])
    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    import pwd

    assert int(uid) == pwd.getpwnam("postgres").pw_uid
    assert not (pg_cluster.base_dir / "pwfile").exists()  # the initdb password file is gone


def test_session_fixtures_cover_expected_majors(pg15: PgCluster, pg_latest: PgCluster) -> None:
    majors = pg_majors()
    assert pg15.major == 15
    assert pg_latest.major == max(majors)
    if not os.environ.get("PGVAULT_TEST_PG_MAJORS"):
        assert {15, 18} <= set(majors), f"setup.sh should provide PostgreSQL 15 and 18, found {majors}"


def test_pagila_loads_completely(pg_cluster: PgCluster, fresh_db: str) -> None:
    expected = _pagila_copy_counts()
    pg_cluster.load_pagila(fresh_db)
    assert expected["public.film"] == 1000 and expected["public.rental"] == 16044
    actual = {
        table: int(pg_cluster.psql(f"SELECT count(*) FROM ONLY {table}", dbname=fresh_db)) for table in expected
    }
    assert actual == expected
    assert pg_cluster.psql("SELECT count(*) FROM payment", dbname=fresh_db) == str(
        sum(n for t, n in expected.items() if t.startswith("public.payment_p"))
    )
    # views and functions came along too
    assert pg_cluster.psql("SELECT count(DISTINCT fid) FROM film_list", dbname=fresh_db) == "997"
    assert pg_cluster.psql("SELECT inventory_in_stock(1)", dbname=fresh_db) == "t"


def test_chinook_loads(pg_cluster: PgCluster) -> None:
    require_testdata(*CHINOOK)
    db = pg_cluster.load_chinook()
    assert db == "chinook_auto_increment"
    counts = {
        t: int(pg_cluster.psql(f"SELECT count(*) FROM {t}", dbname=db))
        for t in ("artist", "album", "track", "invoice", "invoice_line", "playlist_track")
    }
    assert counts == {
        "artist": 275, "album": 347, "track": 3503, "invoice": 412, "invoice_line": 2240, "playlist_track": 8715,
    }
    pg_cluster.drop_database(db)


def test_fresh_db_is_empty(pg_cluster: PgCluster, fresh_db: str) -> None:
    assert fresh_db.startswith("t_")
    assert pg_cluster.database_exists(fresh_db)
    tables = pg_cluster.psql(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        dbname=fresh_db,
    )
    assert tables == "0"


def test_password_auth_enforced_over_tcp(pg_cluster: PgCluster) -> None:
    good = _psql_as(pg_cluster, pg_cluster.env())
    assert good.returncode == 0 and good.stdout.strip() == "1", good.stderr

    wrong = _psql_as(pg_cluster, {**pg_cluster.env(), "PGPASSWORD": pg_cluster.password + "x"})
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr

    no_password = {k: v for k, v in pg_cluster.env().items() if k != "PGPASSWORD"}
    missing = _psql_as(pg_cluster, no_password)
    assert missing.returncode != 0
    assert "no password supplied" in missing.stderr

    rules = pg_cluster.psql("SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'")
    assert rules.splitlines() == ["scram-sha-256"]


def test_dsn_works_with_psycopg(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.dsn()
    assert pg_cluster.password not in dsn and "password" not in dsn
    with psycopg.connect(dsn, password=pg_cluster.password, connect_timeout=10) as conn:
        row = conn.execute("SELECT current_user, inet_server_port()").fetchone()
    assert row == ("postgres", pg_cluster.port)


def test_psql_errors_carry_stderr(pg_cluster: PgCluster) -> None:
    with pytest.raises(PgClusterError, match="no_such_table"):
        pg_cluster.psql("SELECT * FROM no_such_table")
    # several statements, and later ones are not run after an error
    assert pg_cluster.psql("SELECT 1; SELECT 2") == "1\n2"


def test_private_cluster_stop_start_restart_destroy(make_pg_cluster: Callable[..., PgCluster]) -> None:
    cluster = make_pg_cluster()
    cluster.psql("CREATE TABLE kept(i int); INSERT INTO kept VALUES (42)")
    cluster.stop()
    assert not cluster.is_running()
    assert _psql_as(cluster, cluster.env()).returncode != 0
    cluster.start()
    assert cluster.psql("SELECT i FROM kept") == "42"
    cluster.set_config(work_mem="7MB")
    cluster.restart()
    assert cluster.psql("SHOW work_mem") == "7MB"
    base, port = cluster.base_dir, cluster.port
    cluster.destroy()
    assert not base.exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_start_failure_reports_log_tail(make_pg_cluster: Callable[..., PgCluster]) -> None:
    cluster = make_pg_cluster()
    cluster.stop()
    cluster.set_config(shared_buffers="not-a-size")
    with pytest.raises(PgClusterError) as info:
        cluster.start()
    assert "shared_buffers" in str(info.value)
