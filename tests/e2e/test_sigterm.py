"""SIGTERM (Kubernetes, systemd, ``timeout``) stops a run as cleanly as Ctrl-C: exit 143, the
lock released, nothing half-written left (no ``.tmp-*`` file, no S3 multipart upload, no child
pg_dump), no manifest, and the job record says the run failed so ``status`` shows it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from support.cli import clean_env, pgvault, start
from support.pgcluster import PgCluster

from .conftest import AgeKey


def _wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s")


def _children(parent: int, comm: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == parent and (d / "comm").read_text().strip() == comm:
                    pids.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _terminate(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, float]:
    """SIGTERM ``proc``; its exit status, stderr and how long it took to exit."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err, time.monotonic() - t0


def _assert_failed_job(env: dict[str, str], job: str, job_file: Path) -> None:
    record = json.loads(job_file.read_text())
    assert record["last_status"] == "failed" and record["last_exit_code"] == 143, record
    assert record["last_error_kind"] == "terminated" and "SIGTERM" in record["last_error"], record
    status = pgvault(["status", "--json", "--no-connect"], env, check=False)
    assert status.returncode in (0, 1, 2), status
    shown = status.json()["jobs"][job]
    assert shown["last_status"] == "failed" and shown["last_exit_code"] == 143


@pytest.fixture
def blocked_db(pg_latest: PgCluster) -> Iterator[str]:
    """A database whose only table is locked ACCESS EXCLUSIVE by another session, so that a
    pg_dump of it waits: a backup reliably in the middle of its run."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(name)
    pg_latest.psql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)", dbname=name)
    app = f"blocker-{name}"
    blocker = subprocess.Popen(
        [str(pg_latest.bindir.program("psql")), "-X", "-d", name],
        env={**pg_latest.client_env(), "PGAPPNAME": app}, stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )
    assert blocker.stdin is not None
    blocker.stdin.write("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);\n")
    blocker.stdin.flush()
    _wait_for(lambda: pg_latest.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' "
                                     "AND wait_event = 'PgSleep'") == "1", what="the blocker's lock")
    try:
        yield name
    finally:
        pg_latest.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}'")
        blocker.kill()
        blocker.wait()
        pg_latest.drop_database(name)


def test_sigterm_during_backup_all_cleans_up_and_records_the_failure(pg_latest: PgCluster, blocked_db: str,
                                                                       tmp_path: Path, age_key: AgeKey) -> None:
    repo = tmp_path / "repo"
    cluster = f"term{uuid.uuid4().hex[:6]}"
    env = clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(repo), PGVAULT_CLUSTER=cluster,
                    PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
                    PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file))
    proc = start(["backup", "--all"], env)
    try:
        # pg_dump of the blocked database waits for its lock; earlier databases are already stored.
        def waiting() -> bool:
            assert proc.poll() is None, proc.communicate()
            return pg_latest.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{blocked_db}' "
                                  "AND query LIKE 'LOCK TABLE%' AND wait_event_type = 'Lock'") == "1"

        _wait_for(waiting, what="pg_dump waiting for the lock")
        dumps = _children(proc.pid, "pg_dump")
        assert dumps and list(repo.rglob(".tmp-*")), "a dump is being written"
        assert (repo / cluster / "locks" / "logical-backup.lock").exists()
        code, err, took = _terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 143, err
    assert "SIGTERM" in err and "Traceback" not in err, err
    print(f"SIGTERM to exit: {took:.2f}s")
    assert not [p for p in dumps if _alive(p)], "pg_dump outlived the backup"
    assert not (repo / cluster / "locks" / "logical-backup.lock").exists()
    assert not list(repo.rglob(".tmp-*"))
    assert not list(repo.rglob("manifest.json"))
    assert pgvault(["list", "--json"], env).json()["backups"] == []
    _assert_failed_job(env, "backup", repo / cluster / "jobs" / "backup.json")
    # The next run starts at once: no "locked", no stale lock to take over.
    again = pgvault(["backup", "-d", "postgres"], env, timeout=120)
    assert "lock" not in again.stderr, again.stderr


def _s3_client(s3_env: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=s3_env["PGVAULT_S3_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def big_db(pg_latest: PgCluster) -> Iterator[str]:
    """About 60 MB of table data: a dump long enough to be many S3 parts."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(name)
    pg_latest.psql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((-g)::text) AS t "
                   "FROM generate_series(1, 600000) g", dbname=name)
    try:
        yield name
    finally:
        pg_latest.drop_database(name)


def test_sigterm_during_an_s3_upload_aborts_the_multipart_upload(pg_latest: PgCluster, big_db: str,
                                                                 s3_env: dict[str, str], s3_bucket: str) -> None:
    env = clean_env(**pg_latest.env(), **{k: v for k, v in s3_env.items() if k.startswith("AWS_")},
                    PGVAULT_REPOSITORY_URL=f"s3://{s3_bucket}/r", PGVAULT_CLUSTER="s3term",
                    PGVAULT_REPOSITORY_S3_ENDPOINT_URL=s3_env["PGVAULT_S3_ENDPOINT_URL"],
                    PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE="true", PGVAULT_REPOSITORY_S3_PART_SIZE_MB="5",
                    PGVAULT_COMPRESSION_ALGORITHM="none")
    client = _s3_client(s3_env)

    def uploads() -> list[Any]:
        return list(client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []))

    proc = start(["backup", "-d", big_db, "--no-globals"], env)
    try:
        _wait_for(uploads, what="a multipart upload")
        # Freeze pg_dump: the backup now sits mid-object, parts uploaded, the rest not yet written.
        for pid in _children(proc.pid, "pg_dump"):
            os.kill(pid, signal.SIGSTOP)
        code, err, _took = _terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 143, err
    assert uploads() == [], "the multipart upload was left behind"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not [k for k in keys if k.endswith("manifest.json") or "/locks/" in k], keys
    record = json.loads(client.get_object(Bucket=s3_bucket, Key="r/s3term/jobs/backup.json")["Body"].read())
    assert record["last_status"] == "failed" and record["last_exit_code"] == 143


def test_sigterm_during_basebackup_stops_every_part(archiving: Any) -> None:
    a = archiving(None, cluster_name="bbterm")
    # ~200 MB of heap, spread over two parts (backup.parallel = 2): both are mid-write when the signal comes.
    a.cluster.psql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((-g)::text) AS t FROM generate_series(1, 1500000) g")
    repo = Path(a.repo_url)
    env = a.env()
    proc = start(["basebackup", "--archive-timeout", "120"], env)
    try:
        _wait_for(lambda: len([p for p in (repo / "bbterm" / "base").rglob(".tmp-*")]) >= 2
                  if (repo / "bbterm" / "base").exists() else False, what="both parts being written")
        code, err, took = _terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 143, err
    assert "Traceback" not in err, err
    print(f"SIGTERM to exit: {took:.2f}s")
    # (wal/ may hold the archiver's own uploads in flight.)
    assert not list((repo / "bbterm" / "base").rglob(".tmp-*")), "a part kept writing (or was cut off) after the signal"
    assert not list((repo / "bbterm" / "base").rglob("manifest.json"))
    assert not (repo / "bbterm" / "locks" / "base-backup.lock").exists()
    _assert_failed_job(env, "basebackup", repo / "bbterm" / "jobs" / "basebackup.json")
    # The server is out of backup mode and the next base backup starts at once.
    again = pgvault(["basebackup", "--archive-timeout", "120", "--json"], env, timeout=300)
    assert "lock" not in again.stderr, again.stderr


def test_sigterm_of_restore_command_is_143_never_1(tmp_path: Path) -> None:
    """PostgreSQL reads restore_command's 1 as "no such file" (recovery may end there) and exit
    128 + SIGTERM as "stopped by a shutdown": a signal must give 143, whatever it interrupted."""
    import socket

    pgdata = tmp_path / "data"
    (pgdata / "pg_wal").mkdir(parents=True)
    argv = ["wal", "fetch", "000000010000000000000003", "pg_wal/RECOVERYXLOG"]
    with socket.socket() as hole:  # an S3 endpoint that accepts and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        env = clean_env(PGVAULT_REPOSITORY_URL="s3://bucket/r", PGVAULT_CLUSTER="hole",
                        PGVAULT_REPOSITORY_S3_ENDPOINT_URL=f"http://127.0.0.1:{hole.getsockname()[1]}",
                        PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE="true", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
        proc = start([*argv, "--pgdata", str(pgdata)], env)
        try:
            hole.settimeout(60)
            conn, _ = hole.accept()  # the command is now waiting for the repository
            code, err, _took = _terminate(proc)
            conn.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 143, err
    assert "SIGTERM" in err
