"""Logical backups on an S3-compatible object store (SeaweedFS on 127.0.0.1), through the CLI."""

from __future__ import annotations

import boto3
from botocore.config import Config

from support.cli import clean_env, pgvault

from .conftest import table_counts


def _env(pg_cluster, s3_env, bucket: str, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return clean_env(
        **pg_cluster.env(),
        **{k: v for k, v in s3_env.items() if k.startswith("AWS_")},
        PGVAULT_REPOSITORY_URL=f"s3://{bucket}/backups/prod",
        PGVAULT_REPOSITORY_S3_ENDPOINT_URL=s3_env["PGVAULT_S3_ENDPOINT_URL"],
        PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE="true",
        PGVAULT_REPOSITORY_S3_PART_SIZE_MB="5",
        PGVAULT_CLUSTER=f"pg{pg_cluster.major}",
        **extra,
    )


def test_backup_and_parallel_restore_via_s3(pg_cluster, sample_db, scratch_db, s3_env, s3_bucket) -> None:
    env = _env(pg_cluster, s3_env, s3_bucket, PGVAULT_COMPRESSION_ALGORITHM="gzip")
    manifest = pgvault(["backup", "-d", sample_db, "--json"], env).json()["backup"]
    backup_id = manifest["backup_id"]
    client = boto3.client(
        "s3", endpoint_url=s3_env["PGVAULT_S3_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    prefix = f"backups/prod/pg{pg_cluster.major}/logical/{backup_id[:4]}/{backup_id[4:6]}/{backup_id}/"
    assert f"{prefix}manifest.json" in keys and f"{prefix}{sample_db}.dump.gz" in keys and f"{prefix}globals.sql.gz" in keys
    # The gzip object is a plain gzip stream of a pg_dump custom archive.
    body = client.get_object(Bucket=s3_bucket, Key=f"{prefix}{sample_db}.dump.gz")["Body"].read()
    import gzip

    assert gzip.decompress(body)[:5] == b"PGDMP"
    assert pgvault(["list", "--json"], env).json()["backups"][0]["backup_id"] == backup_id
    res = pgvault(["restore", backup_id, "-d", sample_db, "-t", scratch_db, "-j", "2", "--json"], env).json()["restore"]
    assert res["verified"] is True
    assert table_counts(pg_cluster, scratch_db) == table_counts(pg_cluster, sample_db)


def test_missing_bucket_is_a_clear_storage_error(pg_cluster, s3_env) -> None:
    env = _env(pg_cluster, s3_env, "pgvault-no-such-bucket")
    res = pgvault(["backup", "-d", "postgres"], env, check=False)
    assert res.returncode == 4, res
    assert "pgvault-no-such-bucket" in res.stderr and "does not exist" in res.stderr


def test_wrong_s3_credentials_never_echo_the_secret(pg_cluster, s3_env, s3_bucket) -> None:
    env = _env(pg_cluster, s3_env, s3_bucket)
    env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-99881"
    res = pgvault(["backup", "-d", "postgres"], env, check=False)
    assert res.returncode == 4, res
    assert "access denied" in res.stderr.lower() or "credentials" in res.stderr.lower()
    assert "wrong-secret-99881" not in res.stderr + res.stdout
