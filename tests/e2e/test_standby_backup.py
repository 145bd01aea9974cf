"""Base backups taken on a streaming standby (issue 13 §2).

The primary archives into the repository (``pgvault wal push``, ``archive_timeout`` so that an
idle primary still closes the segment a standby backup ends in); the standby streams from it with
its own ``archive_mode = on`` (which archives nothing on a standby).  The backup runs on the standby
while the primary commits one row per transaction (``ticks.i`` = 1, 2, 3 ...), so "exactly the rows
committed up to the target" is the prefix 1..k.  A promotion in the middle of a backup must fail
it cleanly: non-zero exit, a clear message, no manifest, no object left.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.archiving import ArchivingCluster, as_postgres
from support.cli import pgvault
from support.pg_fixtures import pg_majors
from support.pgcluster import PgCluster
from support.standby import make_standby, promote, wait_replayed

PRIMARY_SETTINGS = {"archive_timeout": "2s"}


class _Load:
    """Commits ticks rows on the primary, one per transaction, until stopped."""

    def __init__(self, a: ArchivingCluster) -> None:
        self.a = a
        self.done = threading.Event()
        self.last = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psycopg

        env = self.a.cluster.env()
        try:
            with psycopg.connect(host=env["PGHOST"], port=int(env["PGPORT"]), user=env["PGUSER"],
                                 password=env["PGPASSWORD"], dbname="postgres", autocommit=True) as conn:
                while not self.done.is_set():
                    conn.execute("INSERT INTO ticks VALUES (%s)", (self.last + 1,))
                    self.last += 1
                    time.sleep(0.002)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self) -> int:
        self.done.set()
        self.thread.join(timeout=30)
        assert self.error is None, self.error
        return self.last


def _standby_env(a: ArchivingCluster, standby: PgCluster, **extra: str) -> dict[str, str]:
    return {**a.env(), "PGPORT": str(standby.port), **extra}


def _prefix(rows: str) -> int:
    count, mx = rows.split("|")
    assert count == mx, f"restored rows are not a prefix: count {count}, max {mx}"
    return int(count)


def _setup(archiving, major: int | None) -> tuple[ArchivingCluster, PgCluster]:  # type: ignore[no-untyped-def]
    a = archiving(major, cluster_name="standby", settings=PRIMARY_SETTINGS)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY);"
                   " CREATE TABLE bulk(i int, t text); INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
    standby = make_standby(a.cluster)
    wait_replayed(standby, a.cluster)
    return a, standby


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_standby_backup_under_primary_load_restores_exactly(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a, standby = _setup(archiving, major)
    try:
        load = _Load(a)
        time.sleep(0.5)
        r = a.run_as_postgres(["basebackup", "--json", "--archive-timeout", "120"], env=_standby_env(a, standby))
        backup = json.loads(r.stdout)["backup"]
        assert backup["from_standby"] is True
        assert "BACKUP FROM: standby" in backup["backup_label"]
        assert backup["relation_maps"] and backup["relation_maps"][0]["lsn"]  # read at the replay position
        after = load.last + 1  # committed once the backup was complete
        while load.last < after + 200:
            time.sleep(0.05)
        total = load.stop()
        assert after > 1 and total > after

        listed = pgvault(["list", "--json"], a.env()).json()
        row = next(b for b in listed["backups"] if b["backup_id"] == backup["backup_id"])
        assert row["from_standby"] is True and row["stop_lsn"] == backup["stop_lsn"]
        assert "(standby)" in pgvault(["list"], a.env()).stdout

        a.switch_and_wait()
        xid = a.cluster.psql(f"SELECT xmin FROM ticks WHERE i = {after + 100}")
        res, restored = a.restore("--target-xid", xid)
        assert res.json()["plan"]["backup_id"] == backup["backup_id"]
        assert _prefix(restored.query("SELECT count(*), coalesce(max(i), 0) FROM ticks")) == after + 100
        restored.stop()

        _res, restored = a.restore()
        restored.wait_primary()
        assert _prefix(restored.query("SELECT count(*), coalesce(max(i), 0) FROM ticks")) == total
        digest = "SELECT count(*), sum(hashtext(t)) FROM bulk"
        assert restored.query(digest) == a.cluster.psql(digest)
        restored.stop()
    finally:
        standby.destroy()


@pytest.mark.parametrize("major", pg_majors() or [None])
@pytest.mark.parametrize("point", ["copy", "stop"])
def test_a_standby_promoted_during_the_backup_fails_it_cleanly(major, point, archiving) -> None:  # type: ignore[no-untyped-def]
    """``copy``: promoted while the files are copied (pgvault's watch of pg_is_in_recovery() stops
    the parts); ``stop``: promoted after the copy, before pg_backup_stop (which refuses it)."""
    a, standby = _setup(archiving, major)
    try:
        load = _Load(a)
        pause = a.work / "pause-basebackup"
        env = _standby_env(a, standby, PGVAULT_TEST_HOOK_BASEBACKUP_PAUSE=f"{point}:{pause}")
        proc = subprocess.Popen(as_postgres([str(a.launcher), "basebackup", "--json", "--archive-timeout", "60"]),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not pause.exists():  # pg_backup_start has run on the standby
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "basebackup never reached its pause"
                time.sleep(0.05)
            load.stop()
            promote(standby)
            pause.unlink()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 3, (proc.returncode, err)
        assert "the standby was promoted during the backup: the copy is discarded, take a new one" in err
        doc = json.loads(out)
        assert doc["error"] == "database" and doc["exit_code"] == 3 and doc["message"].startswith("the standby was promoted")

        assert pgvault(["list", "--json"], a.env()).json()["backups"] == []
        base = Path(a.repo_url) / "standby" / "base"
        left = [p for p in base.rglob("*") if p.is_file()] if base.exists() else []
        assert left == [], left  # every part aborted or deleted, no manifest
    finally:
        standby.destroy()


def test_an_idle_primary_that_never_closes_the_stop_segment_is_named_in_the_error(archiving) -> None:  # type: ignore[no-untyped-def]
    """No archive_timeout, no traffic: the standby cannot switch WAL, so the bounded wait ends with
    an error that says what to set on the primary."""
    a = archiving(None, cluster_name="standby")
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY)")
    a.switch_and_wait()
    standby = make_standby(a.cluster)
    try:
        # A checkpoint in the open segment: the standby's restartpoint (its backup's start) and
        # minRecoveryPoint (its stop) are then in a segment only the primary can close.
        a.cluster.psql("INSERT INTO ticks VALUES (1); CHECKPOINT")
        wait_replayed(standby, a.cluster)
        r = a.run_as_postgres(["basebackup", "--json", "--archive-timeout", "3"], env=_standby_env(a, standby),
                              check=False)
        assert r.returncode == 1, r.stderr
        assert "did not reach" in r.stderr and "set archive_timeout on the primary" in r.stderr, r.stderr
        assert "pg_switch_wal()" in r.stderr
        assert pgvault(["list", "--json"], a.env()).json()["backups"] == []
    finally:
        standby.destroy()


def test_an_incremental_on_the_standby_chains_on_its_full_and_restores_exactly(archiving) -> None:  # type: ignore[no-untyped-def]
    a, standby = _setup(archiving, None)
    try:
        a.cluster.psql("VACUUM (FREEZE) bulk")  # hint bits set now, not counted as changes later
        wait_replayed(standby, a.cluster)
        env = _standby_env(a, standby)
        full = json.loads(a.run_as_postgres(["basebackup", "--json", "--type", "full", "--archive-timeout", "120"],
                                            env=env).stdout)["backup"]
        a.cluster.psql("UPDATE bulk SET t = 'changed' WHERE i BETWEEN 100 AND 300; INSERT INTO ticks SELECT generate_series(1, 50)")
        wait_replayed(standby, a.cluster)
        incr = json.loads(a.run_as_postgres(["basebackup", "--json", "--type", "incr", "--archive-timeout", "120"],
                                            env=env).stdout)["backup"]
        assert (incr["backup_type"], incr["reference"], incr["from_standby"]) == ("incr", full["backup_id"], True)
        assert incr["stored_size"] < full["stored_size"]
        a.switch_and_wait()
        res, restored = a.restore()
        assert res.json()["plan"]["backup_id"] == incr["backup_id"]
        restored.wait_primary()
        digest = "SELECT count(*), sum(hashtext(t)) FROM bulk"
        assert restored.query(digest) == a.cluster.psql(digest)
        assert _prefix(restored.query("SELECT count(*), coalesce(max(i), 0) FROM ticks")) == 50
        restored.stop()
    finally:
        standby.destroy()
