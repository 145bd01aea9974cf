"""The CLI against an object store that stalls or throttles (SeaweedFS behind a fault proxy).

Issue 8: with the S3 server stopped, a backup waited 700 s with an idle-in-transaction session
on the production database and ``status`` took 361 s. Every storage call is now bounded by
``repository.s3.connect_timeout``/``read_timeout``/``retries``; these tests lower them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.cli import clean_env, pgvault, start
from support.faultproxy import FaultProxy

pytestmark = pytest.mark.s3

MiB = 1 << 20


@pytest.fixture
def proxy(seaweed: Any) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", seaweed.s3_port) as p:
        yield p


def _env(pg_cluster, s3_env, bucket: str, proxy: FaultProxy, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    settings = {
        "PGVAULT_REPOSITORY_URL": f"s3://{bucket}/faults",
        "PGVAULT_REPOSITORY_S3_ENDPOINT_URL": proxy.endpoint_url,
        "PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE": "true",
        "PGVAULT_REPOSITORY_S3_PART_SIZE_MB": "5",
        "PGVAULT_REPOSITORY_S3_CONNECT_TIMEOUT": "1",
        "PGVAULT_REPOSITORY_S3_READ_TIMEOUT": "2",
        "PGVAULT_REPOSITORY_S3_RETRIES": "1",
        "PGVAULT_CLUSTER": f"pg{pg_cluster.major}",
        "PGVAULT_COMPRESSION_ALGORITHM": "none",  # the dump's bytes reach the store as they are
    }
    return clean_env(
        **pg_cluster.env(),
        **{k: v for k, v in s3_env.items() if k.startswith("AWS_")},
        **{**settings, **extra},
    )


@pytest.fixture
def bulky_db(pg_cluster, scratch_db: str) -> str:  # type: ignore[no-untyped-def]
    """A database whose dump (~40 MB) takes several multipart parts to upload."""
    pg_cluster.create_database(scratch_db)
    pg_cluster.psql("CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 8) AS v FROM generate_series(1, 150000) g",
                    dbname=scratch_db)
    return scratch_db


def _sessions(pg_cluster, dbname: str) -> list[str]:  # type: ignore[no-untyped-def]
    out = pg_cluster.psql(f"SELECT coalesce(state, '') || ':' || application_name FROM pg_stat_activity "
                          f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid()")
    return [line for line in out.splitlines() if line]


def test_backup_against_a_stalling_store_fails_in_bounded_time(pg_cluster, s3_env, s3_bucket, proxy, bulky_db) -> None:  # type: ignore[no-untyped-def]
    env = _env(pg_cluster, s3_env, s3_bucket, proxy)
    proc = start(["backup", "-d", bulky_db], env)
    deadline = time.monotonic() + 120
    while proxy.bytes_up < 6 * MiB:  # the dump is streaming: the first part is on its way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the backup never started uploading"
        time.sleep(0.02)
    assert any(s.startswith("idle in transaction") for s in _sessions(pg_cluster, bulky_db))  # the snapshot
    proxy.stall()  # like SIGSTOP on the server: connections accepted, nothing answered
    stalled_at = time.monotonic()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - stalled_at
    assert proc.returncode == 4, err
    assert f"S3 endpoint {proxy.endpoint_url} did not answer within 2s (2 attempts)" in err, err
    # Two attempts of 2 s for the part in flight, everything after it fails at once.
    assert took < 20, took
    print(f"backup failed {took:.1f}s after the store stalled")
    # Nothing of the backup is left on the database: no snapshot transaction, no pg_dump.
    deadline = time.monotonic() + 10
    while (left := _sessions(pg_cluster, bulky_db)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], left


def test_list_against_a_stalled_store_fails_within_the_timeout(pg_cluster, s3_env, s3_bucket, proxy) -> None:  # type: ignore[no-untyped-def]
    env = _env(pg_cluster, s3_env, s3_bucket, proxy)
    proxy.stall()
    started = time.monotonic()
    res = pgvault(["list"], env, check=False, timeout=120)
    took = time.monotonic() - started
    assert res.returncode == 4, res
    assert f"S3 endpoint {proxy.endpoint_url} did not answer within 2s" in res.stderr, res
    assert "read_timeout" in res.stderr  # the hint names the settings
    assert took < 15, took
    print(f"list failed after {took:.1f}s")


def test_throttled_store_is_retried_and_the_backup_succeeds(pg_cluster, s3_env, s3_bucket, proxy, sample_db) -> None:  # type: ignore[no-untyped-def]
    env = _env(pg_cluster, s3_env, s3_bucket, proxy, PGVAULT_REPOSITORY_S3_RETRIES="3")
    proxy.http_errors(3)  # 503 Slow Down for the next three requests, whichever they are
    backup_id = pgvault(["backup", "-d", sample_db, "--json"], env).json()["backup"]["backup_id"]
    assert proxy.errors_sent == 3
    proxy.http_errors(3)
    assert pgvault(["list", "--json"], env).json()["backups"][0]["backup_id"] == backup_id
    assert proxy.errors_sent == 6


def test_status_answers_within_seconds_when_the_store_stalls(pg_cluster, s3_env, s3_bucket, proxy, sample_db) -> None:  # type: ignore[no-untyped-def]
    """The default S3 timeouts allow minutes per call; status must still answer the on-call in
    seconds, CRITICAL, with what the server says about archiving."""
    env = _env(pg_cluster, s3_env, s3_bucket, proxy, PGVAULT_REPOSITORY_S3_CONNECT_TIMEOUT="10",
               PGVAULT_REPOSITORY_S3_READ_TIMEOUT="60", PGVAULT_REPOSITORY_S3_RETRIES="3")
    pgvault(["backup", "-d", sample_db], env)
    assert pgvault(["status", "--timeout", "5"], env, check=False).returncode in (0, 1, 2)  # readable: judged as usual
    proxy.stall()
    started = time.monotonic()
    res = pgvault(["status", "--json", "--timeout", "5", "--pgdata", str(pg_cluster.datadir)], env, check=False,
                  timeout=120)
    took = time.monotonic() - started
    assert res.returncode == 2, res
    doc = res.json()
    assert doc["verdict"] == "CRITICAL" and doc["repository_error"].endswith("did not answer within 5s"), doc
    assert [r["code"] for r in doc["reasons"]][0] == "repository_unreachable"
    # The server's side is still reported (this test server does not archive: archive_mode is off).
    assert doc["archiving"]["connection"] == "ok" and doc["archiving"]["archive_mode"] == "off", doc["archiving"]
    assert took < 20, took
    print(f"status answered {took:.1f}s after the store stalled")
    human = pgvault(["status", "--timeout", "3"], env, check=False, timeout=120)
    assert human.returncode == 2 and "repository: NOT READ" in human.stdout, human
