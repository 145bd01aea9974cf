"""``pgvault verify`` through the CLI on real repositories: base backups, WAL archived by a real
server, logical backups; locally and on S3 (SeaweedFS).  verify itself never connects to PostgreSQL
(the tests pass no working connection settings to it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support.archiving import ArchivingCluster
from support.cli import Result, pgvault
from support.pg_fixtures import pg_majors


def _no_postgres(a: ArchivingCluster, **extra: str) -> dict[str, str]:
    """The repository settings only: a port nothing listens on, so any connection attempt would fail."""
    return {**a.env(), "PGHOST": "127.0.0.1", "PGPORT": "1", "PGPASSWORD": "", **extra}


def _verify(a: ArchivingCluster, *args: str, **extra: str) -> tuple[Result, dict[str, Any]]:
    r = pgvault(["verify", *args, "--json"], _no_postgres(a, **extra), check=False)
    assert r.returncode in (0, 6), r
    return r, json.loads(r.stdout)


def _items(doc: dict[str, Any], status: str | None = None) -> list[dict[str, Any]]:
    return [i for i in doc["items"] if status is None or i["status"] == status]


def _populate(a: ArchivingCluster) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A base backup, WAL after it, and a logical backup of the same cluster in the same repository."""
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 5000)")
    base = a.basebackup()
    names = [a.switch_and_wait() for _ in range(3)]
    # As an operator would: the config's repository, the server from the environment.
    logical = pgvault(["backup", "-d", "postgres", "--json"], a.env()).json()["backup"]
    return base, logical, names


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_verify_finds_a_deleted_segment_and_flipped_bytes(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    base, logical, names = _populate(a)
    repo = Path(a.repo_url) / "pitr"

    # A good repository verifies clean, without PostgreSQL.
    r, doc = _verify(a, "--all")
    assert r.returncode == 0 and doc["ok"] is True, r
    assert doc["summary"]["failures"] == 0 and doc["summary"]["decryption_checked"] is True
    kinds = {(i["kind"], i["status"]) for i in doc["items"]}
    assert {("logical", "ok"), ("physical", "ok"), ("wal", "ok"), ("wal_continuity", "ok")} <= kinds
    assert all(i["status"] == "ok" for i in doc["items"]), _items(doc)
    [cont] = [i for i in doc["items"] if i["kind"] == "wal_continuity"]
    assert cont["backup_id"] == base["backup_id"] and names[-1] in cont["subject"]
    assert doc["summary"]["objects"] >= 3 + len(names) and doc["summary"]["bytes_read"] > 0

    r, doc = _verify(a, "latest")  # the logical backup was taken last
    assert r.returncode == 0 and doc["scope"] == logical["backup_id"], r
    assert {i["kind"] for i in doc["items"]} == {"logical"}
    r, doc = _verify(a, base["backup_id"])
    assert r.returncode == 0 and {i["kind"] for i in doc["items"]} == {"physical", "wal", "wal_continuity"}, r

    # Without the private key: stored bytes only, and the report says so (not a silent pass).
    r = pgvault(["verify", "--all"], _no_postgres(a, PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=""), check=False)
    assert r.returncode == 0, r
    assert "PARTIAL" in r.stdout and "NOT CHECKED" in r.stdout and "decryption and decompression were not tested" in r.stdout

    # A deleted segment is a gap, reported as a range, for the backup whose WAL runs through it.
    for f in repo.glob(f"wal/*/{names[1]}.*"):
        f.unlink()
    r, doc = _verify(a, "--all")
    assert r.returncode == 6 and doc["ok"] is False, r
    [gap] = _items(doc, "failed")
    assert gap["kind"] == "wal_continuity" and gap["backup_id"] == base["backup_id"]
    assert gap["detail"].startswith(f"missing {names[1]};"), gap
    assert "verify found 1 problem" in r.stderr
    human = pgvault(["verify", "--all"], _no_postgres(a), check=False)
    assert human.returncode == 6 and f"missing {names[1]}" in human.stdout

    # A flipped byte in a base backup object is found and named.
    tar = repo / "base" / base["backup_id"] / "base.tar.zst.age"
    _flip(tar)
    r, doc = _verify(a, base["backup_id"])
    assert r.returncode == 6, r
    bad = {(i["kind"], i["subject"]) for i in _items(doc, "failed")}
    assert ("physical", "base.tar.zst.age") in bad, doc
    assert next(i for i in _items(doc, "failed") if i["kind"] == "physical")["key"].endswith("base.tar.zst.age")

    # And one in an archived WAL object.
    [segment] = repo.glob(f"wal/*/{names[2]}.zst.age")
    _flip(segment)
    r, doc = _verify(a, "--all")
    assert r.returncode == 6, r
    wal_bad = [i for i in _items(doc, "failed") if i["kind"] == "wal"]
    assert [i["subject"] for i in wal_bad] == [names[2]] and wal_bad[0]["detail"], doc
    # The logical backup is untouched.
    assert all(i["status"] == "ok" for i in doc["items"] if i["kind"] == "logical")


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_verify_on_s3(major, archiving, s3_bucket, seaweed) -> None:  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    s3 = {"url": f"s3://{s3_bucket}/prod", "endpoint": seaweed.endpoint_url, "AWS_ACCESS_KEY_ID": seaweed.access_key,
          "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": seaweed.region}
    a = archiving(major, s3=s3)
    base, logical, names = _populate(a)
    r, doc = _verify(a, "--all")
    assert r.returncode == 0 and all(i["status"] == "ok" for i in doc["items"]), r

    client = boto3.client("s3", endpoint_url=seaweed.endpoint_url, region_name=seaweed.region,
                          aws_access_key_id=seaweed.access_key, aws_secret_access_key=seaweed.secret_key,
                          config=Config(s3={"addressing_style": "path"}))
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for o in page.get("Contents", [])]
    for key in keys:
        if key.rsplit("/", 1)[-1].startswith(names[0] + "."):
            client.delete_object(Bucket=s3_bucket, Key=key)
    [dump] = [k for k in keys if k.startswith("prod/pitr/logical/") and k.endswith("/postgres.dump.zst.age")]
    body = bytearray(client.get_object(Bucket=s3_bucket, Key=dump)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=s3_bucket, Key=dump, Body=bytes(body))

    r, doc = _verify(a, "--all")
    assert r.returncode == 6, r
    failed = {(i["kind"], i["subject"]): i for i in _items(doc, "failed")}
    # Keys are named relative to the repository (s3://bucket/prod).
    assert failed[("logical", "postgres.dump.zst.age")]["key"] == dump.removeprefix("prod/")
    [gap] = [i for i in failed.values() if i["kind"] == "wal_continuity"]
    assert gap["detail"].startswith(f"missing {names[0]};") and gap["backup_id"] == base["backup_id"]
