"""A second repository in another region (issue 11, part 3), through the CLI.

Two SeaweedFS servers stand for two regions.  A server archives WAL into region A and takes a base
backup and a logical backup there; ``pgvault repo sync`` copies everything to region B (a second
run copies nothing); more writes, another sync; then region A is stopped entirely and the cluster
is restored to a point in time from region B alone (exact rows), and a database is restored
logically from B.  Faults: a sync killed with SIGKILL mid-copy resumes and completes; an object
already on the target under a key the copy writes, with other bytes, is an integrity error and
is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from support.archiving import ArchivingCluster
from support.cli import pgvault
from support.pg_fixtures import pg_majors
from support.seaweed import SeaweedServer, find_weed


class Regions:
    def __init__(self, a: SeaweedServer, b: SeaweedServer) -> None:
        self.a, self.b = a, b

    def creds(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.a.access_key, "AWS_SECRET_ACCESS_KEY": self.a.secret_key,
                "AWS_DEFAULT_REGION": self.a.region}


@pytest.fixture
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regions]:
    """Two SeaweedFS servers (same credentials, like one account in two regions); per test, since
    tests stop region A."""
    if find_weed() is None:
        if os.environ.get("PGVAULT_REQUIRE_S3") == "1":
            pytest.fail("SeaweedFS 'weed' binary not found; PGVAULT_REQUIRE_S3=1 requires it", pytrace=False)
        pytest.skip("SeaweedFS 'weed' binary not found")
    a = SeaweedServer(tmp_path_factory.mktemp("region-a"))
    b = SeaweedServer(tmp_path_factory.mktemp("region-b"), access_key=a.access_key, secret_key=a.secret_key)
    a.start()
    try:
        b.start()
        try:
            yield Regions(a, b)
        finally:
            b.stop()
    finally:
        a.stop()


def _two_region_cluster(archiving: Any, regions: Regions, major: int | None = None) -> tuple[ArchivingCluster, str, str]:
    bucket_a, bucket_b = regions.a.create_bucket(), regions.b.create_bucket()
    a = archiving(major, s3={"url": f"s3://{bucket_a}/prod", "endpoint": regions.a.endpoint_url, **regions.creds()})
    conf = yaml.safe_load(a.conf.read_text())
    conf["repositories"] = {"region-b": {"url": f"s3://{bucket_b}/prod-copy",
                                         "s3": {"endpoint_url": regions.b.endpoint_url, "force_path_style": True,
                                                "retries": 1, "connect_timeout": "3s"}}}
    conf["repository"]["s3"].update({"retries": 1, "connect_timeout": "3s"})
    a.conf.write_text(yaml.safe_dump(conf))
    return a, bucket_a, bucket_b


def _objects(server: SeaweedServer, bucket: str, prefix: str) -> dict[str, str]:
    """Key (below ``prefix``) -> sha256 of the bytes, for every object of the copied areas."""
    client = server.client()
    out: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            rel = o["Key"][len(prefix):]
            if "/" in rel and rel.split("/")[1] in ("locks", "sync", "jobs", "drills"):
                continue  # per-repository state, not copied
            out[rel] = hashlib.sha256(client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()).hexdigest()
    return out


def _sync(a: ArchivingCluster, *extra: str, check: bool = True) -> Any:
    r = pgvault(["repo", "sync", "--to", "region-b", "--json", *extra], a.env(), check=check)
    return r


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_second_region_survives_the_loss_of_the_first(archiving, regions: Regions, major: int | None) -> None:  # type: ignore[no-untyped-def]
    a, bucket_a, bucket_b = _two_region_cluster(archiving, regions, major)
    pg = a.cluster
    pg.psql("CREATE DATABASE app")
    pg.psql("CREATE TABLE items (i int PRIMARY KEY, note text); "
            "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 1000) g", dbname="app")
    pg.psql("CREATE TABLE ticks (i int PRIMARY KEY)")
    pg.psql("INSERT INTO ticks SELECT generate_series(1, 1000)")
    a.switch_and_wait()
    base = a.basebackup()
    logical = pgvault(["backup", "-d", "app", "--json"], a.env()).json()["backup"]

    first = _sync(a).json()["runs"][0]
    assert first["backups_copied"] == 2 and first["wal_copied"] >= 2 and first["bytes_copied"] > 0, first
    src, dst = _objects(regions.a, bucket_a, "prod/"), _objects(regions.b, bucket_b, "prod-copy/")
    assert src == dst, sorted(set(src) ^ set(dst))
    assert any(k.endswith(f"base/{base['backup_id']}/manifest.json") for k in dst)

    again = _sync(a).json()["runs"][0]
    assert (again["wal_copied"], again["backups_copied"], again["objects_copied"], again["bytes_copied"]) == (0, 0, 0, 0)
    assert again["backups_already"] == 2 and again["wal_already"] == first["wal_already"] + first["wal_copied"]

    # More writes after the target: 500 rows before it, 300 after.
    pg.psql("INSERT INTO ticks SELECT generate_series(1001, 1500)")
    time.sleep(1.1)
    target = pg.psql("SELECT now()")
    time.sleep(1.1)
    pg.psql("INSERT INTO ticks SELECT generate_series(1501, 1800)")
    a.switch_and_wait()
    status = json.loads(pgvault(["status", "--json", "--no-connect"], a.env(), check=False).stdout)
    by_name = {r["name"]: r for r in status["repositories"]}
    assert by_name["primary"]["reachable"] and by_name["region-b"]["reachable"], status["repositories"]
    assert by_name["region-b"]["lag"]["wal_segments"] >= 1, by_name["region-b"]
    assert by_name["region-b"]["last_sync"]["ok"] is True

    third = _sync(a).json()["runs"][0]
    assert third["wal_copied"] >= 1 and third["backups_copied"] == 0, third
    status = json.loads(pgvault(["status", "--json", "--no-connect"], a.env(), check=False).stdout)
    lag = {r["name"]: r for r in status["repositories"]}["region-b"]["lag"]
    assert lag["wal_segments"] == 0 and not lag["logical_behind"] and not lag["physical_behind"], lag
    # repo sync is a scheduled job: its outcome is recorded (status, pgvault_job_* metrics, PgvaultJobFailed).
    assert status["jobs"]["repo-sync"]["last_status"] == "ok" and status["jobs"]["repo-sync"]["last_exit_code"] == 0

    # Region A is lost.
    a.cluster.stop(mode="immediate")
    regions.a.stop()
    r = pgvault(["status", "--json", "--no-connect", "--timeout", "30"], a.env(), check=False)
    status = json.loads(r.stdout)
    by_name = {x["name"]: x for x in status["repositories"]}
    assert not by_name["primary"]["reachable"] and by_name["region-b"]["reachable"], status["repositories"]
    assert by_name["region-b"]["newest_physical"] == base["backup_id"]
    assert r.returncode == 2  # CRITICAL: the primary repository cannot be read
    m = pgvault(["metrics", "--no-connect"], a.env(), check=False)
    assert 'pgvault_repository_reachable{cluster="pitr",repository="primary"} 0.0' in m.stdout, m.stdout
    assert 'pgvault_repository_reachable{cluster="pitr",repository="region-b"} 1.0' in m.stdout, m.stdout

    # verify and expire work on the copy alone.
    verified = pgvault(["--repository", "region-b", "verify", "--all", "--json"], a.env()).json()
    assert verified["ok"] is True and verified["summary"]["failures"] == 0, verified
    assert verified["repository"].startswith(f"s3://{bucket_b}/") and verified["summary"]["objects"] > 5, verified
    plan = pgvault(["--repository", "region-b", "expire", "--json"], a.env()).json()
    assert plan["repository"].startswith(f"s3://{bucket_b}/") and plan["applied"] is False
    # A physical drill from the copy: its scratch server's restore_command fetches from region B.
    env = {**a.env(), "PGVAULT_DRILL_SMOKE_QUERIES": json.dumps([{"sql": "SELECT count(*) FROM ticks", "expect": 1800}])}
    drill = pgvault(["--repository", "region-b", "drill", "--json", "--kind", "physical", "--pgvault-command",
                     str(a.launcher)], env, check=False)
    assert drill.returncode == 0 and drill.json()["drill"]["ok"], str(drill)

    res, restored = a.restore("--repository", "region-b", "--target-time", target, "--target-action", "promote")
    assert res.returncode == 0, res
    restored.wait_primary()
    assert restored.query("SELECT count(*), max(i) FROM ticks") == "1500|1500"

    # And a logical restore from region B, into the restored server.
    env = {**a.env(), "PGPORT": str(restored.port), "PGHOST": "127.0.0.1"}
    out = pgvault(["restore", logical["backup_id"], "-d", "app", "-t", "app_from_b", "--repository", "region-b",
                   "--json"], env).json()["restore"]
    assert out["verified"] is True
    count = subprocess.run(
        [str(restored.cluster.bindir.program("psql")), "-X", "-At", "-h", "127.0.0.1", "-p", str(restored.port),
         "-U", "postgres", "-d", "app_from_b", "-c", "SELECT count(*), sum(i) FROM items"],
        env={**restored.cluster.client_env(), "PGPASSWORD": restored.cluster.password}, capture_output=True, text=True,
        check=True, timeout=60).stdout.strip()
    assert count == f"1000|{sum(range(1, 1001))}"


def test_sync_killed_mid_copy_resumes_and_a_different_object_is_never_overwritten(  # type: ignore[no-untyped-def]
        archiving, regions: Regions) -> None:
    a, bucket_a, bucket_b = _two_region_cluster(archiving, regions)
    pg = a.cluster
    pg.psql("CREATE TABLE filler (i int, pad text)")
    for _ in range(6):  # a few segments of WAL, so the copy takes a while
        pg.psql("INSERT INTO filler SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 20000) g")
        a.switch_and_wait()
    base = a.basebackup()

    # SIGKILL once the copy has started writing into region B.
    client_b = regions.b.client()
    proc = subprocess.Popen([sys.executable, "-m", "pgvault", "repo", "sync", "--to", "region-b", "--parallel", "1"],
                            env=a.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        keys = [o["Key"] for o in client_b.list_objects_v2(Bucket=bucket_b, Prefix="prod-copy/pitr/wal/").get("Contents", [])]
        if len(keys) >= 3 or proc.poll() is not None:
            break
        assert time.monotonic() < deadline, "the sync never started copying"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the copy finished before it could be killed: make more WAL"
    assert not any(k.endswith(f"base/{base['backup_id']}/manifest.json")
                   for k in _objects(regions.b, bucket_b, "prod-copy/")), "killed before the backups"

    resumed = _sync(a).json()["runs"][0]
    assert resumed["backups_copied"] == 1 and resumed["wal_copied"] >= 1, resumed
    src, dst = _objects(regions.a, bucket_a, "prod/"), _objects(regions.b, bucket_b, "prod-copy/")
    assert src == dst, sorted(set(src) ^ set(dst))
    assert _sync(a).json()["runs"][0]["bytes_copied"] == 0

    # A new base backup; on B someone already put other bytes under the key of its main object.
    second = a.basebackup()
    base_key = f"prod-copy/pitr/base/{second['backup_id']}/"
    names = [o["Key"] for o in regions.a.client().list_objects_v2(
        Bucket=bucket_a, Prefix=f"prod/pitr/base/{second['backup_id']}/")["Contents"]]
    victim = next(k for k in names if not k.endswith("manifest.json")).rsplit("/", 1)[-1]
    size = regions.a.client().head_object(Bucket=bucket_a, Key=f"prod/pitr/base/{second['backup_id']}/{victim}")["ContentLength"]
    planted = os.urandom(size)  # same size: only the checksum can tell
    client_b.put_object(Bucket=bucket_b, Key=base_key + victim, Body=planted)
    r = _sync(a, check=False)
    assert r.returncode == 6, r
    assert "nothing was overwritten" in r.stderr and victim in r.stderr, r.stderr
    assert client_b.get_object(Bucket=bucket_b, Key=base_key + victim)["Body"].read() == planted
    keys_b = [o["Key"] for o in client_b.list_objects_v2(Bucket=bucket_b, Prefix=base_key)["Contents"]]
    assert base_key + "manifest.json" not in keys_b  # the backup does not exist on B
    run = json.loads(r.stdout)["runs"][0]
    assert run["ok"] is False and victim in run["error"]


def test_the_copy_on_a_worm_bucket_is_locked_and_written_once(archiving, regions: Regions) -> None:  # type: ignore[no-untyped-def]
    """repositories.<name>.s3.object_lock applies to what the copy writes: every object in region B
    carries a retention date, and a second run writes nothing (no second version of any key)."""
    bucket_a, bucket_b = regions.a.create_bucket(), f"pgvault-worm-{os.urandom(4).hex()}"
    regions.b.client().create_bucket(Bucket=bucket_b, ObjectLockEnabledForBucket=True)
    a = archiving(None, s3={"url": f"s3://{bucket_a}/prod", "endpoint": regions.a.endpoint_url, **regions.creds()})
    conf = yaml.safe_load(a.conf.read_text())
    conf["repositories"] = {"region-b": {"url": f"s3://{bucket_b}/prod-copy", "s3": {
        "endpoint_url": regions.b.endpoint_url, "force_path_style": True,
        "object_lock": "governance", "object_lock_retention": "1h"}}}
    a.conf.write_text(yaml.safe_dump(conf))
    a.cluster.psql("CREATE TABLE ticks (i int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 1000)")
    a.switch_and_wait()
    a.basebackup()
    first = _sync(a).json()["runs"][0]
    assert first["backups_copied"] == 1 and first["wal_copied"] >= 2, first
    again = _sync(a).json()["runs"][0]
    assert (again["wal_copied"], again["backups_copied"], again["bytes_copied"]) == (0, 0, 0), again

    client = regions.b.client()
    versions: dict[str, int] = {}
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket_b, Prefix="prod-copy/"):
        for v in page.get("Versions", []):
            versions[v["Key"]] = versions.get(v["Key"], 0) + 1
    copied = [k for k in versions if "/locks/" not in k]
    assert any("/base/" in k for k in copied) and any("/wal/" in k for k in copied) and any("/sync/" in k for k in copied)
    assert {k: n for k, n in versions.items() if k in copied and n != 1} == {}  # written once, never rewritten
    for key in copied:
        head = client.head_object(Bucket=bucket_b, Key=key)
        assert head.get("ObjectLockMode") == "GOVERNANCE", (key, head.get("ObjectLockMode"))
    assert _objects(regions.a, bucket_a, "prod/") == _objects(regions.b, bucket_b, "prod-copy/")


def test_a_target_beyond_what_the_copy_holds_is_not_promoted_as_success(archiving, regions: Regions) -> None:  # type: ignore[no-untyped-def]
    """Outside test: the copy lags (WAL archived to A after the last sync); a point-in-time restore
    from B to a moment only A's WAL reaches must fail, not promote early at B's end claiming success."""
    a, _, _ = _two_region_cluster(archiving, regions)
    pg = a.cluster
    pg.psql("CREATE TABLE ticks (i int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 1000)")
    a.switch_and_wait()
    a.basebackup()
    pg.psql("INSERT INTO ticks SELECT generate_series(1001, 1200)")
    a.switch_and_wait()
    assert _sync(a).json()["runs"][0]["backups_copied"] == 1
    # After the last sync: more rows, the target, more rows -- archived to A only.
    pg.psql("INSERT INTO ticks SELECT generate_series(1201, 1500)")
    time.sleep(1.1)
    target = pg.psql("SELECT now()")
    time.sleep(1.1)
    pg.psql("INSERT INTO ticks SELECT generate_series(1501, 1800)")
    a.switch_and_wait()
    res, restored = a.restore("--repository", "region-b", "--target-time", target, "--target-action", "promote",
                              check=False)
    assert res.returncode == 5 and "no base backup can reach" in res.stderr, res  # refused before anything runs
    assert not (restored.data_dir / "postmaster.pid").exists(), "a server is left running"
    # From A, the same target gives exactly the rows before it.
    res, restored = a.restore("--target-time", target, "--target-action", "promote")
    restored.wait_primary()
    assert restored.query("SELECT count(*), max(i) FROM ticks") == "1500|1500"
