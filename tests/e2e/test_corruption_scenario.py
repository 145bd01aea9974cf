"""The corruption scenario of the runbook, end to end (README "Corruption", runbook scenarios.py).

A server with data checksums archives with pgvault and holds the generated sample database; a base
backup is taken, more transactions commit and are archived.  Then 64 bytes in the middle of a data
page of ``configs`` are overwritten on disk behind PostgreSQL's back (as a failing disk or
controller would).  The test checks the three ways the runbook gives to confirm it (the checksum
error on a query, ``pg_checksums --check`` on the stopped server, ``pg_amcheck``), then rebuilds the
cluster with ``pgvault restore-cluster -D NEW --start`` (latest base backup + WAL to the end of the
archive): the copy holds every committed row and ``pg_amcheck --all --heapallindexed`` finds
nothing.  The time restore-cluster took is printed (``pytest -s``), not asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from support.archiving import ArchivingCluster, Restored, as_postgres
from support.cli import pgvault
from support.pg_fixtures import pg_majors
from support.pgcluster import PgClusterError

from .conftest import table_counts

DB = "app"
TABLE = "configs"
#: Where the damage goes: 64 bytes 4000 bytes into block 1 (tuple data, not the page header).
BLOCK = 1
OFFSET = 8192 * BLOCK + 4000
GARBAGE = bytes(range(64))


class _RestoredDb:
    """``table_counts`` needs ``psql(sql, dbname=)``: this gives it one on the restored server."""

    def __init__(self, r: Restored) -> None:
        self.r = r

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        return _psql(self.r.cluster, self.r.port, sql, dbname)


def _psql(cluster, port: int, sql: str, dbname: str) -> str:  # type: ignore[no-untyped-def]
    cmd = [str(cluster.bindir.program("psql")), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
           "-p", str(port), "-U", "postgres", "-d", dbname, "-c", sql]
    r = subprocess.run(cmd, env=cluster.client_env(), capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"{sql}: {r.stderr}"
    return r.stdout.strip()


def _amcheck(cluster, port: int) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """``pg_amcheck --all --heapallindexed`` over TCP, as the drill runs it (a client: root may run it);
    ``--install-missing`` because amcheck is an extension no database has by default."""
    program = cluster.bindir.program("pg_amcheck")
    if not program.exists():
        pytest.skip(f"{program} is not installed")
    cmd = [str(program), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
           "--all", "--install-missing", "--heapallindexed"]
    return subprocess.run(cmd, env=cluster.client_env(), capture_output=True, text=True, timeout=600, check=False)


def _write_more(a: ArchivingCluster) -> None:
    """Transactions after the base backup, so the restore has WAL to replay into the damaged table:
    configs updates (the audit trigger adds config_history rows) and new organizations."""
    for n in range(5):
        a.cluster.psql(
            f"UPDATE configs SET value = jsonb_build_object('round', {n}, 'old', value), version = version + 1"
            f" WHERE id % 7 = {n};"
            f" INSERT INTO organizations (slug, name) SELECT 'after-backup-{n}-' || g, 'After ' || g"
            " FROM generate_series(1, 20) g",
            dbname=DB,
        )


def _scribble(a: ArchivingCluster) -> str:
    """Stop the server, overwrite bytes in the middle of a page of TABLE, start it; returns the file."""
    c = a.cluster
    rel = c.psql(f"SELECT pg_relation_filepath('{TABLE}')", dbname=DB)
    pages = int(c.psql(f"SELECT pg_relation_size('{TABLE}') / 8192", dbname=DB))
    assert pages > BLOCK, f"{TABLE} has only {pages} page(s)"
    c.stop()  # a clean shutdown: its checkpoint writes every dirty page first, so ours is the last write
    path = c.datadir / rel
    with open(path, "r+b") as f:
        f.seek(OFFSET)
        f.write(GARBAGE)
        f.flush()
        os.fsync(f.fileno())
    return rel


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_corrupted_page_is_detected_and_restore_cluster_rebuilds_a_clean_copy(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major, data_checksums=True, cluster_name="corrupt")
    c = a.cluster
    assert c.psql("SHOW data_checksums") == "on"
    c.load_sample(DB)
    backup = a.basebackup()
    _write_more(a)
    c.psql("CHECKPOINT")
    committed = table_counts(c, DB)
    assert committed[f"public.{TABLE}"] > 0
    a.switch_and_wait()  # every committed row is in the archive: restore-cluster must bring back all of them

    rel = _scribble(a)

    # 1. pg_checksums on the stopped server names the file and the block.
    r = subprocess.run(as_postgres([str(c.bindir.program("pg_checksums")), "--check", "-D", str(c.datadir)]),
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "checksum verification failed" in r.stderr and f"{rel}\", block {BLOCK}" in r.stderr, r.stderr
    print(f"\n[pg{c.major}] pg_checksums --check: {r.stderr.strip().splitlines()[0]}")

    # 2. A query that reads the page fails with the checksum error (the server's log has the WARNING).
    c.start()
    with pytest.raises(PgClusterError) as err:
        c.psql(f"SELECT count(*) FROM {TABLE}", dbname=DB)
    # PostgreSQL 18 quotes the path, earlier majors do not.
    assert re.search(f'invalid page in block {BLOCK} of relation "?{re.escape(rel)}"?$', str(err.value), re.M), err.value
    log = c.logfile.read_text(errors="replace")
    assert "page verification failed, calculated checksum" in log
    print(f"[pg{c.major}] query: {str(err.value).splitlines()[-1]}")

    # 3. pg_amcheck reports it too (and exits non-zero).
    r = _amcheck(c, c.port)
    assert r.returncode != 0, r.stdout + r.stderr
    assert f"invalid page in block {BLOCK}" in r.stdout + r.stderr, r.stdout + r.stderr
    print(f"[pg{c.major}] pg_amcheck (exit {r.returncode}): " + " | ".join((r.stdout + r.stderr).strip().splitlines()[:3]))

    # The repository is not what is damaged: verify and a physical drill (which restores into a scratch
    # directory and runs pg_amcheck there) both pass.  Neither reads the live data files, so neither
    # would have noticed this damage; they prove the backups the rebuild will use.
    r = pgvault(["verify", "--all", "--json"], a.env(), check=False)
    assert r.returncode == 0, str(r)
    r = pgvault(["drill", "--json", "--kind", "physical", "--pgvault-command", str(a.launcher)], a.env(), check=False)
    assert r.returncode == 0 and r.json()["drill"]["ok"], str(r)

    # The rebuild: latest base backup + WAL to the end of the archive, into a new data directory.
    t0 = time.monotonic()
    result, restored = a.restore(name="rebuilt")
    took = time.monotonic() - t0
    doc = result.json()
    assert doc["plan"]["backup_id"] == backup["backup_id"]
    restored.wait_primary()
    rec = doc["recovery"]
    print(f"[pg{c.major}] restore-cluster --start (latest base backup + WAL to the end of the archive): {took:.1f} s"
          f" (unpack {doc['restore_seconds']:.1f} s, recovery {rec['seconds']:.1f} s, "
          f"{rec['segments_restored']} WAL segments)")

    assert table_counts(_RestoredDb(restored), DB) == committed
    r = _amcheck(c, restored.port)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _psql(c, restored.port, "SHOW data_checksums", "postgres") == "on"
