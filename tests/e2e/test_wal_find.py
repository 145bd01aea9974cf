"""``pgvault wal find`` against real PostgreSQL 15 and 18 archiving through pgvault (issue 11, part 2).

Each transaction on the table records its own xid (``txid_current()`` in the same statement);
``wal find`` must list exactly those, with their row counts, from the archived WAL, and the
target it prints, handed to ``restore-cluster``, must give back the rows from just before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.archiving import ArchivingCluster
from support.cli import pgvault
from support.pg_fixtures import pg_majors

from .conftest import make_age_key

MAJORS = pg_majors() or [None]


def _xid(a: ArchivingCluster, dml: str) -> tuple[int, int]:
    """Run ``dml`` (… RETURNING 1) and return (its xid, rows it touched)."""
    out = a.cluster.psql(f"WITH d AS ({dml} RETURNING 1) SELECT txid_current(), count(*) FROM d")
    xid, n = out.split("|")
    return int(xid), int(n)


def _statement_xid(a: ArchivingCluster, sql: str) -> int:
    """Run ``sql`` (TRUNCATE, DROP ...) in a transaction that reports its xid."""
    return int(a.cluster.psql(f"BEGIN; {sql}; SELECT txid_current(); COMMIT;").splitlines()[-1])


def _find(a: ArchivingCluster, *extra: str) -> dict:  # type: ignore[type-arg]
    r = pgvault(["wal", "find", "--table", "public.orgs", "--json", *extra], a.env())
    doc = r.json()
    assert doc["kind"] == "wal_find", doc
    return dict(doc)


def _events(doc: dict) -> list[tuple[int, list[str], int, int]]:  # type: ignore[type-arg]
    return [(e["xid"], e["ops"], e["rows_deleted"], e["rows_updated"]) for e in doc["events"]]


@pytest.mark.parametrize("major", MAJORS)
def test_wal_find_names_each_transaction_and_its_target_restores_the_rows_before_the_mass_delete(
        major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE orgs(id int PRIMARY KEY, name text); CREATE TABLE other(i int);"
                   "INSERT INTO orgs SELECT g, 'org' || g FROM generate_series(1, 1000) g;"
                   "INSERT INTO other SELECT generate_series(1, 100)")
    m = a.basebackup()
    # The manifest maps each database's tables to their files at the backup's start (the anchor).
    [pg] = [d for d in m["relation_maps"] if d["name"] == "postgres"]
    orgs = [r for r in pg["relations"] if r[2:4] == ["public", "orgs"]]
    assert orgs and orgs[0][1] == int(a.cluster.psql("SELECT pg_relation_filenode('orgs')")), pg
    small1 = _xid(a, "DELETE FROM orgs WHERE id BETWEEN 10 AND 12")
    noise = _xid(a, "DELETE FROM other WHERE i < 50")  # another table: never listed
    small2 = _xid(a, "DELETE FROM orgs WHERE id BETWEEN 20 AND 26")
    # Some 40 MB of WAL from another table: the transactions below land in later segments, and
    # records cross segment boundaries (which every batch size must read once, and only once).
    a.cluster.psql("INSERT INTO other SELECT generate_series(1, 400000)")
    before = a.cluster.psql("SELECT count(*), sum(id) FROM orgs")
    mass = _xid(a, "DELETE FROM orgs WHERE id > 300")
    upd = _xid(a, "UPDATE orgs SET name = 'renamed' WHERE id BETWEEN 100 AND 104")
    rolled_back = a.cluster.psql("BEGIN; DELETE FROM orgs WHERE id = 1; ROLLBACK; SELECT 1")
    after = _xid(a, "DELETE FROM orgs WHERE id BETWEEN 200 AND 201")
    a.switch_and_wait()
    assert small1[1] == 3 and small2[1] == 7 and mass[1] == 700 and upd[1] == 5 and after[1] == 2
    assert rolled_back == "1" and noise[1] == 49

    doc = _find(a, "--op", "delete,update,truncate,drop", "--database", "postgres")
    assert _events(doc) == [
        (small1[0], ["delete"], 3, 0), (small2[0], ["delete"], 7, 0), (mass[0], ["delete"], 700, 0),
        (upd[0], ["update"], 0, 5), (after[0], ["delete"], 2, 0)]
    assert doc["complete"] and doc["warnings"] == [] and doc["live_check"]["matches"] is True, doc
    assert [x["rows_deleted"] for x in doc["aborted"]] == [1]
    ev = doc["events"][2]
    assert ev["target"] == ["--target-xid", str(mass[0]), "--target-exclusive"]
    assert ev["restore_cluster"].endswith(f"restore-cluster -D NEW_DATA_DIR --target-xid {mass[0]} --target-exclusive")
    assert f"recover-table --table public.orgs --database postgres --target-xid {mass[0]}" in ev["recover_table"]
    assert doc["segments_read"] >= 3, doc
    for batch in ("1", "2"):  # many pg_waldump runs, each starting after the last record the one before took
        again = _find(a, "--op", "delete,update,truncate,drop", "--batch-segments", batch)
        assert again["events"] == doc["events"] and again["records"] >= doc["records"], batch
    # The default operations leave the UPDATE out; --from/--to narrow by commit time.
    assert [e[0] for e in _events(_find(a))] == [small1[0], small2[0], mass[0], after[0]]
    narrowed = _find(a, "--from", doc["events"][1]["commit_time"], "--to", doc["events"][2]["commit_time"])
    assert [e[0] for e in _events(narrowed)] == [small2[0], mass[0]] and narrowed["warnings"] == []
    early = _find(a, "--from", "2020-01-01 00:00:00+00")
    assert len(early["events"]) == 4 and "not searched" in early["warnings"][0], early
    # The human form shows the same target.
    human = pgvault(["wal", "find", "--table", "orgs"], a.env()).stdout
    assert f"xid {mass[0]}" in human and "DELETE 700 rows" in human and f"--target-xid {mass[0]} --target-exclusive" in human

    # The printed target, handed to restore-cluster: exactly the rows from just before the mass DELETE.
    r, restored = a.restore(*ev["target"])
    assert r.json()["recovery"]["state"] == "paused", r.json()["recovery"]
    assert restored.query("SELECT count(*), sum(id) FROM orgs") == before
    restored.stop()
    # The LSN form stops at the same place.
    _r, restored = a.restore(*ev["target_lsn"])
    assert restored.query("SELECT count(*), sum(id) FROM orgs") == before
    restored.stop()


@pytest.mark.parametrize("major", MAJORS)
def test_wal_find_follows_the_table_through_truncate_and_vacuum_full_to_its_drop(
        major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE orgs(id int PRIMARY KEY, name text);"
                   "INSERT INTO orgs SELECT g, repeat('x', 3000) || g FROM generate_series(1, 200) g")  # toasted
    a.basebackup()
    first = _xid(a, "DELETE FROM orgs WHERE id <= 5")
    truncate = _statement_xid(a, "TRUNCATE orgs")
    after_truncate = a.cluster.psql("SELECT pg_relation_filenode('orgs')")
    a.cluster.psql("INSERT INTO orgs SELECT g, repeat('y', 3000) FROM generate_series(1, 50) g")
    a.cluster.psql("VACUUM FULL orgs")
    after_vacuum = a.cluster.psql("SELECT pg_relation_filenode('orgs')")
    later = _xid(a, "DELETE FROM orgs WHERE id <= 20")
    savepoint = int(a.cluster.psql("BEGIN; DELETE FROM orgs WHERE id = 21; SAVEPOINT s;"
                                   "DELETE FROM orgs WHERE id IN (22, 23); RELEASE s; SELECT txid_current(); COMMIT;")
                    .splitlines()[-1])
    alive = a.cluster.psql("SELECT count(*) FROM orgs")
    a.switch_and_wait()

    doc = _find(a, "--op", "delete,truncate,drop,rewrite")
    assert _events(doc) == [
        (first[0], ["delete"], 5, 0), (truncate, ["truncate"], 0, 0), (doc["events"][2]["xid"], ["rewrite"], 0, 0),
        (later[0], ["delete"], 20, 0), (savepoint, ["delete"], 3, 0)]
    assert doc["events"][1]["new_relfilenode"] == int(after_truncate) and doc["events"][1]["all_rows"]
    assert doc["events"][2]["new_relfilenode"] == int(after_vacuum)
    assert doc["final_relfilenode"] == int(after_vacuum) and doc["live_check"]["matches"] is True, doc

    drop = _statement_xid(a, "DROP TABLE orgs")
    a.switch_and_wait()
    doc = _find(a)
    assert _events(doc)[-1] == (drop, ["drop"], 0, 0) and doc["dropped"] and doc["warnings"] == [], doc
    # Just before the DROP: the table with every row it had then.  The DROP's lock is replayed
    # before its commit, so a server paused there cannot read the table: the command says promote.
    ev = doc["events"][-1]
    assert ev["restore_cluster"].endswith(f"--target-xid {drop} --target-exclusive --target-action promote"), ev
    _r, restored = a.restore(*ev["target"], "--target-action", "promote")
    restored.wait_primary()
    assert restored.query("SELECT count(*) FROM orgs") == alive
    restored.stop()


@pytest.mark.parametrize("major", MAJORS[-1:])
def test_wal_find_errors(major, archiving, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE orgs(id int PRIMARY KEY)")
    a.switch_and_wait()
    r = pgvault(["wal", "find", "--table", "orgs"], a.env(), check=False)
    assert r.returncode == 5 and "no base backup records" in r.stderr, r  # nothing to anchor on yet
    a.basebackup()
    for _ in range(3):
        a.cluster.psql("INSERT INTO orgs SELECT coalesce(max(id), 0) + 1 FROM orgs")
        a.switch_and_wait()
    r = pgvault(["wal", "find", "--table", "public.nope", "--json"], a.env(), check=False)
    assert r.returncode == 5 and "public.nope" in r.stderr and r.json()["error"] == "not_found", r
    r = pgvault(["wal", "find", "--table", "orgs", "--op", "insert"], a.env(), check=False)
    assert r.returncode == 2 and "--op" in r.stderr, r
    # The wrong private key: the decryption error, and no temporary segments left behind.
    other = make_age_key(tmp_path).identity_file
    other.chmod(0o600)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = pgvault(["wal", "find", "--table", "orgs"], {**a.env(), "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(other),
                                                     "TMPDIR": str(tmp)}, check=False)
    assert r.returncode == 6 and "internal error" not in r.stderr and "decrypt" in r.stderr.lower(), r
    assert list(tmp.iterdir()) == []
    # A segment missing in the middle: named, exit 5 like the other archive holes.
    segs = sorted(p for p in Path(a.repo_url).glob("pitr/wal/*/*") if len(p.name.split(".")[0]) == 24
                  and not p.name.endswith(".json"))
    victim = segs[-2]
    victim.unlink()
    rec = victim.parent / (victim.name.split(".")[0] + ".json")
    doc = json.loads(rec.read_text())
    doc["archived_at"] = "2026-01-01T00:00:00+00:00"
    rec.write_text(json.dumps(doc))
    r = pgvault(["wal", "find", "--table", "orgs"], {**a.env(), "TMPDIR": str(tmp)}, check=False)
    assert r.returncode == 5 and victim.name.split(".")[0] in r.stderr and "hole" in r.stderr, r
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("major", MAJORS[-1:])
def test_wal_find_follows_the_newest_timeline(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """Restored before the mass DELETE and promoted (timeline 2, archiving): the search follows
    timeline 2's history, so the mass DELETE (after the switch on timeline 1) is not listed,
    and what happened on timeline 2 is."""
    import time

    a = archiving(major)
    a.cluster.psql("CREATE TABLE orgs(id int PRIMARY KEY); INSERT INTO orgs SELECT generate_series(1, 1000)")
    a.basebackup()
    small = _xid(a, "DELETE FROM orgs WHERE id <= 3")
    mass = _xid(a, "DELETE FROM orgs WHERE id > 500")
    a.switch_and_wait()
    r, promoted = a.restore("--target-xid", str(mass[0]), "--target-exclusive", "--target-action", "promote",
                            "--archive")
    assert r.json()["recovery"]["new_timeline"] == 2
    promoted.wait_primary()
    xid2, n2 = (int(x) for x in promoted.query(
        "WITH d AS (DELETE FROM orgs WHERE id BETWEEN 10 AND 14 RETURNING 1) SELECT txid_current(), count(*) FROM d"
    ).split("|"))
    name = promoted.query("SELECT pg_walfile_name(pg_current_wal_lsn())")
    promoted.query("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 120
    while promoted.query("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < name:
        assert time.monotonic() < deadline, "timeline 2 segment not archived"
        time.sleep(0.2)

    doc = _find(a, "--no-live-check")
    assert doc["timeline"] == 2 and doc["complete"], doc
    assert _events(doc) == [(small[0], ["delete"], 3, 0), (xid2, ["delete"], n2, 0)], doc
    assert n2 == 5 and doc["warnings"] == []
    # The mass DELETE's rows were replayed up to the switch, but it never committed on timeline 2.
    assert [(x["xid"], x["rows_deleted"]) for x in doc["aborted"]] == [(mass[0], 500)]


@pytest.mark.parametrize("major", MAJORS[-1:])
def test_wal_find_reads_an_s3_repository(major, archiving, s3_bucket, seaweed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s3 = {"url": f"s3://{s3_bucket}/prod", "endpoint": seaweed.endpoint_url, "AWS_ACCESS_KEY_ID": seaweed.access_key,
          "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": seaweed.region}
    a = archiving(major, s3=s3)
    a.cluster.psql("CREATE TABLE orgs(id int PRIMARY KEY); INSERT INTO orgs SELECT generate_series(1, 100)")
    a.basebackup()
    gone = _xid(a, "DELETE FROM orgs WHERE id > 60")
    a.switch_and_wait()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = pgvault(["wal", "find", "--table", "orgs", "--json"], {**a.env(), "TMPDIR": str(tmp)})
    assert _events(r.json()) == [(gone[0], ["delete"], 40, 0)], r
    assert list(tmp.iterdir()) == []  # the decrypted segments were on local disk only while it ran


def _fake_bindir(root: Path, major: int, waldump: str) -> Path:
    """A bin directory that passes for PostgreSQL ``major`` (pg_dump --version) with a scripted
    pg_waldump; it sorts before the real ones of that major, so pgvault picks it."""
    bindir = root / "fake-bin"
    bindir.mkdir(parents=True)
    for name, body in (("pg_dump", f'echo "pg_dump (PostgreSQL) {major}.99"'), ("pg_waldump", waldump)):
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)
    return bindir


@pytest.mark.parametrize("major", MAJORS[-1:])
def test_wal_find_sigterm_and_pg_waldump_failures_leave_no_temporary_segments(
        major, archiving, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import time

    a = archiving(major)
    a.cluster.psql("CREATE TABLE orgs(id int PRIMARY KEY)")
    a.basebackup()
    a.cluster.psql("DELETE FROM orgs")
    a.switch_and_wait()
    server_major = int(a.cluster.psql("SHOW server_version_num")) // 10000
    tmp = tmp_path / "tmp"
    tmp.mkdir()

    # pg_waldump of another major (or damaged WAL): its error, exit 10, nothing left behind.
    wrong = _fake_bindir(tmp_path / "wrong", server_major,
                         'echo "pg_waldump: error: could not find a valid record after 0/2000028" >&2; exit 1')
    r = pgvault(["wal", "find", "--table", "orgs"], {**a.env(), "PGVAULT_POSTGRES_BIN_DIRS": str(wrong),
                                                     "TMPDIR": str(tmp)}, check=False)
    assert r.returncode == 10 and "could not find a valid record" in r.stderr, r
    assert list(tmp.iterdir()) == []

    # SIGTERM while pg_waldump reads: 143, pg_waldump killed, the decrypted segments removed.
    pidfile = tmp_path / "waldump.pid"
    hang = _fake_bindir(tmp_path / "hang", server_major, f'echo $$ > {pidfile}; exec sleep 120')
    proc = subprocess.Popen([str(a.launcher), "wal", "find", "--table", "orgs"],
                            env={**a.env(), "PGVAULT_POSTGRES_BIN_DIRS": str(hang), "TMPDIR": str(tmp)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        [work] = list(tmp.iterdir())
        assert work.name.startswith("pgvault-walfind-") and oct(work.stat().st_mode & 0o777) == "0o700"
        assert any(len(f.name) == 24 for f in work.iterdir())  # decrypted segments, while it runs
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert list(tmp.iterdir()) == []
    waldump_pid = int(pidfile.read_text())
    assert not Path(f"/proc/{waldump_pid}").exists() or "zombie" in Path(f"/proc/{waldump_pid}/status").read_text().lower()
