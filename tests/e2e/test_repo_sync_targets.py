"""``repo sync`` into a target that is not there, not ours or not answering (issue 11 part 3, tried
from the outside): a clear error and exit code, within the configured timeouts, and nothing
recorded as a successful copy; the next run, once the target is well, completes the copy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.cli import clean_env, pgvault
from support.faultproxy import FaultProxy
from support.seaweed import SeaweedServer

pytestmark = pytest.mark.s3


@pytest.fixture
def source(pg_latest, tmp_path: Path) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """A local primary repository holding one logical backup."""
    db = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(db)
    pg_latest.psql("CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 5000)", dbname=db)
    (tmp_path / "a").mkdir()
    env = clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(tmp_path / "a"), PGVAULT_CLUSTER="outside",
                    PGVAULT_ENCRYPTION_AGE_RECIPIENTS="")
    pgvault(["backup", "-d", db, "--no-globals"], env)
    try:
        yield {"env": env, "db": db, "dir": tmp_path}
    finally:
        pg_latest.drop_database(db)


def _with_target(src: dict[str, Any], seaweed: SeaweedServer, url: str, endpoint: str, **env: str) -> dict[str, str]:
    conf = src["dir"] / "c.yaml"
    conf.write_text(yaml.safe_dump({"repositories": {"dr": {"url": url, "s3": {
        "endpoint_url": endpoint, "force_path_style": True, "retries": 1, "connect_timeout": "2s",
        "read_timeout": "3s"}}}}))
    return {**src["env"], "PGVAULT_CONFIG": str(conf), "AWS_ACCESS_KEY_ID": seaweed.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": seaweed.region, **env}


def test_wrong_credentials_fail_clearly_and_record_no_success(
        source: dict[str, Any], seaweed: SeaweedServer, s3_bucket: str) -> None:
    # (A missing bucket cannot be tried here: SeaweedFS creates a bucket on the first PUT.)
    wrong = _with_target(source, seaweed, f"s3://{s3_bucket}/copy", seaweed.endpoint_url,
                         AWS_SECRET_ACCESS_KEY="not-the-secret-0123456789")
    r = pgvault(["--json", "repo", "sync"], wrong, check=False)
    assert r.returncode == 4, r
    assert "not-the-secret" not in r.stdout + r.stderr
    assert not seaweed.client().list_objects_v2(Bucket=s3_bucket, Prefix="copy/").get("Contents")
    good = _with_target(source, seaweed, f"s3://{s3_bucket}/copy", seaweed.endpoint_url)
    run = pgvault(["--json", "repo", "sync"], good).json()["runs"][0]
    assert run["backups_copied"] == 1
    assert pgvault(["--json", "--repository", "dr", "list"], good).json()


def test_a_stalled_target_fails_within_its_timeouts_and_the_next_run_completes(
        source: dict[str, Any], seaweed: SeaweedServer, s3_bucket: str) -> None:
    with FaultProxy("127.0.0.1", seaweed.s3_port) as proxy:
        env = _with_target(source, seaweed, f"s3://{s3_bucket}/stalled", proxy.endpoint_url)
        proxy.stall()
        t0 = time.monotonic()
        r = pgvault(["--json", "repo", "sync"], env, check=False, timeout=300)
        took = time.monotonic() - t0
        assert r.returncode == 4, r
        assert took < 60, took  # (retries + 1) x (connect + read timeouts) and a little, not forever
        proxy.passthrough()
        run = pgvault(["--json", "repo", "sync"], env).json()["runs"][0]
        assert run["backups_copied"] == 1
        st = pgvault(["--json", "status", "--no-connect"], env, check=False).json()
        dr = [x for x in st["repositories"] if x["name"] == "dr"][0]
        assert dr["last_sync"]["ok"] is True and dr["lag"]["logical_behind"] is False
