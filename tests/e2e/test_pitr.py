"""Point-in-time recovery through ``pgvault restore-cluster`` against real servers.

A workload commits one row per transaction (``ticks.i`` = 1, 2, 3, ...), so "exactly the rows
committed up to the target" is the prefix 1..k: each restore must give ``count = max = k``.  The
targets are taken from the source server itself: the row's xid (its xmin), its commit timestamp
(``track_commit_timestamp``) and the start LSN of its commit record (``pg_walinspect``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from support.archiving import ArchivingCluster, Restored
from support.cli import pgvault
from support.pg_fixtures import pg_majors

N_ROWS = 200
RESTORE_POINT_AT = 160




def _run_workload(a: ArchivingCluster, first: int, last: int, *, point: tuple[int, str] | None = None,
                  port: int | None = None) -> None:
    """Commit rows first..last one transaction each; make a restore point after row point[0]."""
    import psycopg

    env = a.cluster.env()
    with psycopg.connect(host=env["PGHOST"], port=port or int(env["PGPORT"]), user=env["PGUSER"],
                         password=env["PGPASSWORD"], dbname="postgres", autocommit=True) as conn:
        for i in range(first, last + 1):
            conn.execute("INSERT INTO ticks VALUES (%s)", (i,))
            if point and i == point[0]:
                penv = {**a.env(), "PGPORT": str(port or env["PGPORT"])}
                r = a.run_as_postgres(["restore-point", point[1], "--json"], env=penv)
                assert json.loads(r.stdout)["name"] == point[1]
            time.sleep(0.003)


def _targets(a: ArchivingCluster, start_lsn: str) -> dict[int, dict[str, str]]:
    """Per row: its xid, commit time and commit record LSN, as the source server reports them."""
    rows = a.cluster.psql(
        "SELECT t.i, t.xmin::text, pg_xact_commit_timestamp(t.xmin), w.start_lsn FROM ticks t"
        f" JOIN pg_get_wal_records_info('{start_lsn}', pg_current_wal_lsn()) w"
        "   ON w.xid::text = t.xmin::text AND w.resource_manager = 'Transaction' AND w.record_type = 'COMMIT'"
        " ORDER BY t.i"
    )
    out = {}
    for line in rows.splitlines():
        i, xid, ts, lsn = line.split("|")
        out[int(i)] = {"xid": xid, "time": ts, "lsn": lsn}
    return out


def _prefix(r: Restored) -> int:
    """The restored rows must be exactly 1..k; returns k."""
    count, mx = r.query("SELECT count(*), coalesce(max(i), 0) FROM ticks").split("|")
    assert count == mx, f"restored rows are not a prefix: count {count}, max {mx}"
    return int(count)


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_pitr_lands_exactly(major, archiving, repo_kind) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major, s3=repo_kind)
    a.cluster.psql("CREATE EXTENSION pg_walinspect; CREATE TABLE ticks(i int PRIMARY KEY)")
    backup = a.basebackup()
    start_lsn = a.cluster.psql("SELECT pg_current_wal_lsn()")
    _run_workload(a, 1, N_ROWS, point=(RESTORE_POINT_AT, "before-mistake"))
    a.switch_and_wait()
    targets = _targets(a, start_lsn)
    assert len(targets) == N_ROWS

    listed = pgvault(["list", "--json"], a.env()).json()["archive"]
    assert listed["recoverable_from"]["backup_id"] == backup["backup_id"] and listed["gaps"] == []
    assert [p["name"] for p in listed["restore_points"]] == ["before-mistake"]

    cases: list[tuple[list[str], int]] = [
        (["--target-xid", targets[40]["xid"]], 40),
        (["--target-xid", targets[40]["xid"], "--target-exclusive"], 39),
        (["--target-time", targets[80]["time"]], 80),
        (["--target-time", targets[80]["time"], "--target-exclusive"], 79),
        (["--target-lsn", targets[120]["lsn"]], 120),
        (["--target-lsn", targets[120]["lsn"], "--target-exclusive"], 119),
        (["--target-name", "before-mistake"], RESTORE_POINT_AT),
    ]
    if repo_kind is not None:  # on S3 one of each kind is enough; local runs the full matrix
        cases = [cases[0], cases[3], cases[4], cases[6]]
    for args, expected in cases:
        r, restored = a.restore(*args)
        doc = r.json()
        assert doc["plan"]["backup_id"] == backup["backup_id"]
        assert doc["recovery"]["state"] == "paused" and doc["recovery"]["stop_detail"], doc["recovery"]
        assert _prefix(restored) == expected, (args, doc["recovery"])
        restored.stop()

    # The default target, the end of the archive, promotes with every archived row.
    _r, restored = a.restore()
    restored.wait_primary()
    assert _prefix(restored) == N_ROWS
    assert restored.query("SHOW archive_mode") == "off"  # the copy does not archive into production


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_timelines_restore_promote_archive_and_restore_again(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE EXTENSION pg_walinspect; CREATE TABLE ticks(i int PRIMARY KEY)")
    a.basebackup()
    start_lsn = a.cluster.psql("SELECT pg_current_wal_lsn()")
    _run_workload(a, 1, 100)
    a.switch_and_wait()
    t50 = _targets(a, start_lsn)[50]["time"]

    # "One minute before the mistake": back to row 50, promote, and archive as the new primary.
    r, first = a.restore("--target-time", t50, "--target-action", "promote", "--archive")
    rec = r.json()["recovery"]
    assert rec["state"] == "promoted" and rec["new_timeline"] == 2, rec
    first.wait_primary()
    assert _prefix(first) == 50
    first.query("INSERT INTO ticks SELECT generate_series(1001, 1100)")
    _run_workload(a, 1101, 1120, point=(1120, "on-timeline-2"), port=first.port)

    listed = pgvault(["list", "--json"], a.env()).json()["archive"]
    assert 2 in listed["timelines"]

    r, second = a.restore("--target-name", "on-timeline-2")
    doc = r.json()
    assert doc["plan"]["timeline"] == 2 and doc["recovery"]["state"] == "paused", doc
    assert second.query("SELECT count(*) FROM ticks") == str(50 + 100 + 20)
    assert second.query("SELECT max(i) FROM ticks WHERE i < 1000") == "50"  # nothing of timeline 1 after row 50

    # Timeline 1 is still reachable explicitly: the original kept running on it.
    r, third = a.restore("--target-timeline", "1", "--target-immediate")
    assert r.json()["plan"]["timeline"] == 1


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_corrupt_wal_stops_recovery_instead_of_promoting(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY)")
    m = a.basebackup()
    _run_workload(a, 1, 50)
    a.cluster.psql("INSERT INTO ticks SELECT generate_series(1000, 30000)")
    last = a.switch_and_wait()
    victims = sorted(p for p in Path(a.repo_url).glob("pitr/wal/*/*.zst.age") if m["last_wal"] < p.name.split(".")[0] <= last)
    assert victims
    data = bytearray(victims[0].read_bytes())
    data[len(data) // 2] ^= 0x40
    victims[0].write_bytes(bytes(data))

    r, restored = a.restore(check=False)
    assert r.returncode == 12, r
    assert "recovery failed" in r.stderr and victims[0].name.split(".")[0] in (r.stderr + _log(restored))
    # Nothing was promoted: the server stopped in recovery instead of opening with missing commits.
    assert "database system is ready to accept connections" not in _log(restored)


def _log(r: Restored) -> str:
    """This restore's server log (one file per run, beside the data directory)."""
    logs = sorted(r.data_dir.parent.glob(f"{r.data_dir.name}-recovery-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text() if logs else ""


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_restore_refuses_and_explains(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY)")
    before = a.cluster.psql("SELECT now() - interval '1 hour'")
    m = a.basebackup()
    a.switch_and_wait()
    # A target before the only backup: no backup can reach it, and the message says why.
    r = pgvault(["restore-cluster", "-D", str(a.work / "x"), "--target-time", before], a.env(), check=False)
    assert r.returncode == 5 and m["backup_id"] in r.stderr and "after the target time" in r.stderr
    assert not (a.work / "x").exists()
    # A non-empty data directory is refused unless --force.
    (a.work / "busy").mkdir()
    (a.work / "busy" / "precious").write_text("x")
    r = pgvault(["restore-cluster", "-D", str(a.work / "busy")], a.env(), check=False)
    assert r.returncode == 11 and (a.work / "busy" / "precious").exists()
    # A hole in the archive: status shows it, and a target behind it is refused with its name.
    names = [a.switch_and_wait() for _ in range(3)]
    for f in Path(a.repo_url).glob(f"pitr/wal/*/{names[1]}.*"):
        f.unlink()
    st = pgvault(["status", "--json"], a.env(), check=False)
    assert st.returncode == 2  # CRITICAL: a hole in the archive
    archive = st.json()["archive"]
    assert archive["gaps"] == [{"from": names[1], "to": names[1]}]
    past = a.cluster.psql("SELECT pg_current_wal_lsn()")
    r = pgvault(["restore-cluster", "-D", str(a.work / "z"), "--target-lsn", past], a.env(), check=False)
    assert r.returncode == 5 and names[1] in r.stderr and not (a.work / "z").exists()
    # The end of the archive lies behind the hole: refused up front, naming it (never promoted at it).
    r = pgvault(["restore-cluster", "-D", str(a.work / "y"), "--dry-run"], a.env(), check=False)
    assert r.returncode == 5 and f"hole at {names[1]}" in r.stderr and not (a.work / "y").exists(), r
    # --dry-run shows the plan only; a target before the hole is planned.
    r = pgvault(["restore-cluster", "-D", str(a.work / "y"), "--dry-run", "--json", "--target-immediate"], a.env())
    assert r.json()["plan"]["backup_id"] == m["backup_id"] and not (a.work / "y").exists()


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_backup_under_load_with_a_moved_tablespace_restores_consistent(major, archiving) -> None:  # type: ignore[no-untyped-def]
    import threading

    from support.archiving import chown_pg

    a = archiving(major)
    space = a.work / "space1"
    space.mkdir()
    chown_pg(space)
    a.cluster.psql(f"CREATE TABLESPACE space1 LOCATION '{space}'")
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY) TABLESPACE space1")
    stop = threading.Event()

    def load() -> None:  # committed rows keep arriving while the backup runs
        n = 0
        while not stop.is_set():
            n += 1
            a.cluster.psql(f"INSERT INTO ticks VALUES ({n})")

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    try:
        a.basebackup()
    finally:
        stop.set()
        writer.join()
    committed = int(a.cluster.psql("SELECT count(*) FROM ticks"))
    a.switch_and_wait()
    # On the production host the recorded location is the live tablespace: refused, even with --force.
    r = pgvault(["restore-cluster", "-D", str(a.work / "same-host"), "--force"], a.env(), check=False)
    assert r.returncode == 11 and "--tablespace" in r.stderr and not (a.work / "same-host").exists()
    assert int(a.cluster.psql("SELECT count(*) FROM ticks")) == committed
    moved = a.work / "space1-moved"  # absent: restore-cluster creates it
    r, restored = a.restore("--tablespace", f"space1={moved}")
    assert r.json()["tablespaces"] and list(r.json()["tablespaces"].values()) == [str(moved)]
    restored.wait_primary()
    assert _prefix(restored) == committed
    assert restored.query("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'space1'") == str(moved)
    assert restored.query("SELECT count(*) FROM ticks WHERE i > 0") == str(committed)


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_a_recovery_target_inherited_from_the_backup_never_stops_a_restore_early(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """A backup of a server that was itself restored to a point in time carries that restore's
    recovery_target_* lines in postgresql.auto.conf.  A restore to the end of the archive must not
    obey them (it would stop at the old target and lose everything after it)."""
    a = archiving(major)
    c = a.cluster
    c.psql("CREATE TABLE ticks(i int)")
    c.psql("ALTER SYSTEM SET recovery_target_xid = '3'")  # ignored by a running primary
    c.psql("ALTER SYSTEM SET recovery_target_inclusive = 'off'")
    a.basebackup()
    c.psql("INSERT INTO ticks SELECT generate_series(1, 50)")
    a.switch_and_wait()
    r, restored = a.restore()
    try:
        assert restored.query("SELECT count(*) FROM ticks") == "50"
        conf = (restored.data_dir / "postgresql.auto.conf").read_text()
        assert "recovery_target_xid" not in conf and "recovery_target_inclusive" not in conf
    finally:
        restored.stop()
