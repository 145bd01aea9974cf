"""A whole repository on a WORM bucket: S3 Object Lock (GOVERNANCE) on SeaweedFS, which enforces it.

One server archives WAL through pgvault into a lock-enabled bucket with
``repository.s3.object_lock: governance`` and a short retention; base and logical backups, a second
push of an archived segment, scheduled-job records, a lock held by another host and a stale lock
taken over all work without any object being rewritten (every key has exactly one version). Before
the dates ``expire`` deletes nothing and reports what is retained (exit 0); the store refuses a
direct delete of a locked version; after the dates ``expire`` removes the versions for good (no
delete markers left behind). ``verify``, ``restore-cluster`` and a logical restore work from the
bucket, and ``status`` reports the lock.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from collections import Counter
from typing import Any

import botocore.exceptions as bce
import pytest

from support.archiving import ArchivingCluster
from support.cli import clean_env, pgvault
from support.seaweed import SeaweedServer, new_bucket_name

RETENTION = 100  # seconds: long enough for the writes before the first expire, short enough to wait out
PREFIX = "prod/worm/"


def _versions(c: Any, bucket: str, prefix: str = PREFIX) -> tuple[Counter[str], list[str]]:
    """Versions per key and the keys of delete markers, under the repository."""
    pages = c.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
    counts: Counter[str] = Counter()
    markers: list[str] = []
    for page in pages:
        counts.update(v["Key"] for v in page.get("Versions", []))
        markers += [m["Key"] for m in page.get("DeleteMarkers", [])]
    return counts, markers


def _lock_doc(heartbeat: dt.datetime) -> bytes:
    return json.dumps({"host": "another-host", "pid": 4242, "token": "t0ken0ther", "operation": "logical-backup",
                       "heartbeat_at": heartbeat.isoformat(), "ttl_seconds": 180}).encode()


@pytest.fixture
def worm(archiving, seaweed: SeaweedServer) -> tuple[ArchivingCluster, str]:  # type: ignore[no-untyped-def]
    bucket = new_bucket_name("pgvault-worm")
    seaweed.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3 = {"url": f"s3://{bucket}/prod", "endpoint": seaweed.endpoint_url, "AWS_ACCESS_KEY_ID": seaweed.access_key,
          "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": seaweed.region}
    a = archiving(None, s3=s3, cluster_name="worm", pgvault_settings={
        "repository.s3.object_lock": "governance", "repository.s3.object_lock_retention": f"{RETENTION}s",
        "retention.logical.keep_last": 1, "retention.physical.keep_last": 1})
    return a, bucket  # the locked versions stay in the session's SeaweedFS data directory, removed with it


def test_a_whole_repository_on_a_worm_bucket(worm: tuple[ArchivingCluster, str], seaweed: SeaweedServer) -> None:
    a, bucket = worm
    c = seaweed.client()
    env = a.env()
    datadir = str(a.cluster.datadir)
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 1000)")
    logical1 = pgvault(["backup", "-d", "postgres", "--json"], env).json()["backup"]["backup_id"]
    base1 = a.basebackup()["backup_id"]
    a.switch_and_wait()
    a.cluster.psql("INSERT INTO ticks SELECT generate_series(1001, 2000)")
    seg = a.switch_and_wait()
    # A second push of an archived segment (PostgreSQL retries after a lost answer): nothing is written.
    copy = a.work / seg
    pgvault(["wal", "fetch", seg, str(copy), "--pgdata", datadir], env)
    again = pgvault(["wal", "push", str(copy), "--pgdata", datadir, "--json"], env).json()
    assert again["already_archived"] is True

    # A logical backup while another host holds the lock: refused (exit 7), the lock untouched.
    lock_key = f"{PREFIX}locks/logical-backup.lock"
    live = _lock_doc(dt.datetime.now(dt.UTC))
    c.put_object(Bucket=bucket, Key=lock_key, Body=live)
    held = pgvault(["backup", "-d", "postgres"], env, check=False)
    assert held.returncode == 7 and "another-host" in held.stderr, held
    assert c.get_object(Bucket=bucket, Key=lock_key)["Body"].read() == live
    c.delete_object(Bucket=bucket, Key=lock_key, VersionId=c.head_object(Bucket=bucket, Key=lock_key)["VersionId"])
    # A stale lock (no heartbeat for an hour) is taken over: the backup runs.
    c.put_object(Bucket=bucket, Key=lock_key, Body=_lock_doc(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))
    logical2 = pgvault(["backup", "-d", "postgres", "--json"], env).json()["backup"]["backup_id"]
    base2 = a.basebackup()["backup_id"]
    a.switch_and_wait()

    # Nothing was rewritten: one version per key, no delete marker; locks and takeover markers are gone.
    counts, markers = _versions(c, bucket)
    assert markers == [] and set(counts.values()) == {1}, (markers, counts)
    assert not [k for k in counts if "/locks/" in k]
    assert any(k.startswith(f"{PREFIX}jobs/backup/") for k in counts)  # write-once job records
    assert any(k.startswith(f"{PREFIX}jobs/basebackup/") for k in counts)
    manifest1 = next(k for k in counts if logical1 in k and k.endswith("manifest.json"))
    retention = c.get_object_retention(Bucket=bucket, Key=manifest1)["Retention"]
    assert retention["Mode"] == "GOVERNANCE"
    if retention["RetainUntilDate"] <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5):
        pytest.fail(f"the machine is too slow for a {RETENTION}s retention: the first expire would come after the dates")

    st = pgvault(["status", "--json", "--no-connect"], env, check=False).json()
    assert st["object_lock"]["configured"] == "governance" and st["object_lock"]["bucket"]["enabled"] is True
    assert st["object_lock"]["retention_seconds"] == RETENTION
    assert not [r for r in st["reasons"] if r["code"].startswith("object_lock")]
    human = pgvault(["status", "--no-connect"], env, check=False).stdout
    assert "the bucket enforces Object Lock" in human and "pgvault locks every object governance for 1m40s" in human

    # Before the dates: the policy (keep_last 1) would delete logical1, base1 and their WAL; all is retained.
    t0 = time.monotonic()
    early = pgvault(["expire", "--apply", "--json"], env)
    early_s = time.monotonic() - t0
    doc = early.json()
    assert early.returncode == 0
    assert doc["deleted"]["logical"] == [] and doc["deleted"]["physical"] == [] and doc["deleted"]["wal_files"] == 0
    held_what = {h["what"] for h in doc["retained"]}
    assert {f"logical backup {logical1}", f"physical backup {base1}"} <= held_what, held_what
    by_id = {d["backup_id"]: d for d in doc["logical"] + doc["physical"]}
    assert by_id[logical1]["action"] == "keep" and "(object lock)" in by_id[logical1]["reasons"][0]
    assert by_id[base1]["action"] == "keep"
    text = pgvault(["expire"], env).stdout
    assert f"logical backup {logical1}: retained until" in text
    assert _versions(c, bucket)[1] == []  # expire wrote no delete marker
    assert pgvault(["verify", "--all"], env, check=False).returncode == 0
    # The store itself refuses to delete a locked version (what an attacker with the key would try).
    vid = c.head_object(Bucket=bucket, Key=manifest1)["VersionId"]
    with pytest.raises(bce.ClientError) as refused:
        c.delete_object(Bucket=bucket, Key=manifest1, VersionId=vid)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    # After the dates: expire deletes for good.
    counts, _ = _versions(c, bucket)
    latest = max(c.get_object_retention(Bucket=bucket, Key=k)["Retention"]["RetainUntilDate"]
                 for k in counts if logical1 in k or base1 in k or "/wal/" in k)
    time.sleep(max(0.0, (latest - dt.datetime.now(dt.UTC)).total_seconds()) + 2)
    t0 = time.monotonic()
    late = pgvault(["expire", "--apply", "--json"], env).json()
    late_s = time.monotonic() - t0
    assert late["deleted"]["logical"] == [logical1] and late["deleted"]["physical"] == [base1]
    assert late["deleted"]["wal_files"] >= 1
    assert late["deleted"]["versions_swept"]["job_records"] >= 1  # superseded per-run job records
    counts, markers = _versions(c, bucket)
    assert markers == [], markers
    assert not [k for k in counts if logical1 in k or base1 in k], "versions of deleted backups remain"
    assert set(counts.values()) == {1}, counts
    assert pgvault(["verify", "--all"], env, check=False).returncode == 0

    # Restores from the WORM bucket.
    r, restored = a.restore()
    assert r.json()["recovery"]["state"] == "promoted"
    assert restored.query("SELECT count(*), max(i) FROM ticks") == "2000|2000"
    res = pgvault(["restore", logical2, "-d", "postgres", "-t", "worm_restored", "--json"], env).json()["restore"]
    assert res["verified"] is True
    assert a.cluster.psql("SELECT count(*) FROM ticks", dbname="worm_restored") == "2000"
    assert base2 != base1 and logical2 != logical1
    print(f"expire before the dates: {early_s:.2f}s, {len(doc['retained'])} item(s) retained; after: {late_s:.2f}s, "
          f"{late['deleted']['objects']} object(s) deleted, {late['deleted']['versions_swept']}; "
          f"{sum(counts.values())} object versions left")


def test_object_lock_on_a_bucket_without_it_is_refused_and_warned(pg_latest, s3_env, s3_bucket: str,  # type: ignore[no-untyped-def]
                                                                   seaweed: SeaweedServer) -> None:
    env = clean_env(**pg_latest.env(), **{k: v for k, v in s3_env.items() if k.startswith("AWS_")},
                    PGVAULT_REPOSITORY_URL=f"s3://{s3_bucket}/prod", PGVAULT_CLUSTER="plain",
                    PGVAULT_REPOSITORY_S3_ENDPOINT_URL=s3_env["PGVAULT_S3_ENDPOINT_URL"],
                    PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE="true", PGVAULT_REPOSITORY_S3_OBJECT_LOCK="compliance",
                    PGVAULT_REPOSITORY_S3_OBJECT_LOCK_RETENTION="30d")
    check = pgvault(["config", "check", "--json"], env).json()
    assert check["object_lock"] == {"mode": "compliance", "retention_seconds": 30 * 86400.0, "retention": "30d"}
    r = pgvault(["backup", "-d", "postgres"], env, check=False)
    assert r.returncode == 4, r
    assert "has no Object Lock configuration" in r.stderr and "object-lock-enabled-for-bucket" in r.stderr
    assert seaweed.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0  # nothing written
    st = pgvault(["status", "--json", "--no-connect"], env, check=False).json()
    assert st["object_lock"]["bucket"]["enabled"] is False
    assert "object_lock_missing" in {x["code"] for x in st["reasons"]}


def test_expire_dry_run_reports_what_apply_keeps_for_its_retention(archiving, seaweed: SeaweedServer) -> None:  # type: ignore[no-untyped-def]
    """Outside test: a dry run must tell what ``--apply`` will do. The policy releases WAL between
    an old and a new base backup while some of it is still under retention (its date is later than
    the old backup's: it was written after it); ``--apply`` keeps it and says so -- the dry run
    said it would be deleted."""
    bucket = new_bucket_name("pgvault-worm")
    c = seaweed.client()
    c.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3 = {"url": f"s3://{bucket}/prod", "endpoint": seaweed.endpoint_url, "AWS_ACCESS_KEY_ID": seaweed.access_key,
          "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": seaweed.region}
    a = archiving(None, s3=s3, cluster_name="dry", pgvault_settings={
        "repository.s3.object_lock": "governance", "repository.s3.object_lock_retention": "2s",
        "retention.physical.keep_last": 1})
    a.cluster.psql("CREATE TABLE ticks (i int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 100)")
    a.switch_and_wait()
    a.basebackup()
    a.cluster.psql("INSERT INTO ticks SELECT generate_series(101, 200)")
    a.switch_and_wait()
    a.basebackup()
    time.sleep(3)  # every date has passed
    env = a.env()
    plan = pgvault(["expire", "--json"], env).json()
    assert [d for d in plan["physical"] if d["action"] == "delete"] and plan["wal"]["delete_files"] >= 1, (plan["physical"], plan["wal"])
    name = plan["wal"]["delete"][0]["first"]
    # That WAL file is retained longer (what a later put would have had): extend its date.
    key = next(o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="prod/dry/wal/")["Contents"]
               if o["Key"].rsplit("/", 1)[-1].startswith(name) and not o["Key"].endswith(".json"))
    c.put_object_retention(Bucket=bucket, Key=key, Retention={
        "Mode": "GOVERNANCE", "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)})
    dry = pgvault(["expire", "--json"], env).json()
    applied = pgvault(["expire", "--apply", "--json"], env).json()
    held = {h["what"] for h in applied["retained"]}
    assert f"WAL {name}" in held, applied["retained"]
    assert {h["what"] for h in dry["retained"]} == held  # the dry run tells what apply keeps
    assert pgvault(["expire", "--apply", "--json"], env).json()["retained"] == applied["retained"]  # a second run
    assert key in {o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="prod/dry/wal/")["Contents"]}
    assert pgvault(["verify", "--all"], env, check=False).returncode == 0


def test_a_logical_backup_cut_short_by_sigterm_on_a_worm_bucket(pg_latest, s3_env, seaweed: SeaweedServer) -> None:  # type: ignore[no-untyped-def]
    """Outside test: ``backup --all`` SIGTERMed while pg_dump waits for a locked table. What it
    wrote (globals, the other databases' dumps) is locked and has no manifest: debris. ``expire``
    keeps it while retained -- dry run and apply say the same, nothing hidden behind a delete
    marker -- and removes every version after the date; the next backup runs at once."""
    import subprocess
    import uuid

    from support.cli import start

    bucket = new_bucket_name("pgvault-worm")
    c = seaweed.client()
    c.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    env = clean_env(**pg_latest.env(), **{k: v for k, v in s3_env.items() if k.startswith("AWS_")},
                    PGVAULT_REPOSITORY_URL=f"s3://{bucket}/prod", PGVAULT_CLUSTER="cut",
                    PGVAULT_REPOSITORY_S3_ENDPOINT_URL=s3_env["PGVAULT_S3_ENDPOINT_URL"],
                    PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE="true", PGVAULT_REPOSITORY_S3_OBJECT_LOCK="governance",
                    PGVAULT_REPOSITORY_S3_OBJECT_LOCK_RETENTION="12s", PGVAULT_RETENTION_DEBRIS_GRACE="1s",
                    PGVAULT_RETENTION_LOGICAL_KEEP_LAST="1")
    db = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(db)
    pg_latest.psql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)", dbname=db)
    app = f"blocker-{db}"
    blocker = subprocess.Popen([str(pg_latest.bindir.program("psql")), "-X", "-d", db],
                               env={**pg_latest.client_env(), "PGAPPNAME": app}, stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        assert blocker.stdin is not None
        blocker.stdin.write("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);\n")
        blocker.stdin.flush()
        deadline = time.monotonic() + 60
        while pg_latest.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' "
                             "AND wait_event = 'PgSleep'") != "1":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc = start(["backup", "--all"], env)
        deadline = time.monotonic() + 120
        while pg_latest.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' "
                             "AND query LIKE 'LOCK TABLE%' AND wait_event_type = 'Lock'") == "0":
            assert time.monotonic() < deadline and proc.poll() is None, "pg_dump never waited"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
    finally:
        pg_latest.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}'")
        blocker.kill()
        blocker.wait()
        pg_latest.drop_database(db)
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix="prod/cut/logical/").get("Contents", [])]
    assert keys and not [k for k in keys if k.endswith("manifest.json")], keys
    time.sleep(1.5)  # older than the debris grace, younger than the lock
    dry = pgvault(["expire", "--json"], env).json()
    early = pgvault(["expire", "--apply", "--json"], env).json()
    held = {h["what"] for h in early["retained"]}
    assert any(w.startswith("debris ") for w in held), early["retained"]
    assert {h["what"] for h in dry["retained"]} == held
    assert early["deleted"]["debris"] == []
    counts, markers = _versions(c, bucket, "prod/cut/")
    assert markers == [] and all(k in counts for k in keys)  # nothing hidden behind a delete marker
    until = max(c.get_object_retention(Bucket=bucket, Key=k)["Retention"]["RetainUntilDate"] for k in keys)
    time.sleep(max(0.0, (until - dt.datetime.now(dt.UTC)).total_seconds()) + 1.5)
    late = pgvault(["expire", "--apply", "--json"], env).json()
    assert len(late["deleted"]["debris"]) == 1, late["deleted"]
    counts, markers = _versions(c, bucket, "prod/cut/")
    assert not [k for k in counts if k in keys] and markers == [], (counts, markers)
    assert pgvault(["backup", "-d", "postgres"], env, timeout=120).returncode == 0  # no lock left in the way
