"""Unfinished writes through the CLI (issue 8 item 9): a ``pgvault backup`` killed with SIGKILL
mid-upload leaves its ``.tmp-*`` file in a local repository (no cleanup runs on SIGKILL). ``status``
and ``verify --all`` count it, ``expire`` leaves it alone while it is younger than
``retention.debris_grace`` and sweeps it, with the folder it leaves empty, once the clock is past
the grace; the next backup works."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import clean_env, pgvault, start
from support.pgcluster import PgCluster

from .conftest import AgeKey


@pytest.fixture
def big_db(pg_latest: PgCluster) -> Iterator[str]:
    """A database whose dump takes a few seconds to stream: long enough to be killed mid-upload."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(name)
    pg_latest.psql("CREATE TABLE big(i int, a text, b text); INSERT INTO big SELECT g, md5(g::text), "
                   "md5((g * 7)::text) || md5(random()::text) FROM generate_series(1, 2000000) g", dbname=name)
    yield name
    pg_latest.drop_database(name)


@pytest.fixture
def env(pg_latest: PgCluster, tmp_path: Path, age_key: AgeKey) -> dict[str, str]:
    return clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"), PGVAULT_CLUSTER="uw",
                     PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
                     PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file))


def _temp_files(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob(".tmp-*") if p.is_file())


def _kill_mid_upload(env: dict[str, str], db: str, repo: Path, at_least: int = 512 * 1024) -> None:
    """Start a backup and SIGKILL it once its dump has put ``at_least`` bytes into a temp file."""
    proc = start(["backup", "--database", db, "--no-globals"], env)
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size >= at_least for p in _temp_files(repo) if p.exists()):
            assert proc.poll() is None, f"the backup ended before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "no temp file grew within 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_a_backup_killed_mid_upload_is_counted_by_status_and_verify_and_swept_by_expire(
    env: dict[str, str], big_db: str
) -> None:
    repo = Path(env["PGVAULT_REPOSITORY_URL"])
    first = pgvault(["backup", "--database", big_db, "--no-globals", "--json"], env).json()["backup"]["backup_id"]
    assert _temp_files(repo) == []
    _kill_mid_upload(env, big_db, repo)
    left = _temp_files(repo)
    assert left, "a SIGKILLed writer leaves its temp file"
    count, size = len(left), sum(p.stat().st_size for p in left)
    folder = left[0].parent  # the killed backup's folder: nothing but the temp file in it
    assert [p.name for p in folder.iterdir()] == [left[0].name]
    assert [b["backup_id"] for b in pgvault(["list", "--json"], env).json()["backups"]] == [first]

    # Counted, but younger than the grace (24 h): a backup may still be writing it.
    doc = pgvault(["status", "--json", "--no-connect"], env, check=False).json()
    found = doc["unfinished_writes"]
    assert (found["count"], found["bytes"], found["older_than_grace"]) == (count, size, 0)
    assert 0 <= found["oldest_age_seconds"] < 600 and found["grace_seconds"] == 86400
    assert "unfinished_writes" not in {r["code"] for r in doc["reasons"]}
    report = pgvault(["verify", "--all", "--json"], env).json()
    assert report["summary"]["unfinished_writes"]["count"] == count
    assert report["summary"]["unfinished_writes"]["bytes"] == size
    [item] = [i for i in report["items"] if i["kind"] == "unfinished"]
    assert item["status"] == "ok" and "younger than retention.debris_grace" in item["detail"]

    # Past a (short) grace: a WARNING in status, a warning in verify (still exit 0).
    short = {**env, "PGVAULT_RETENTION_DEBRIS_GRACE": "1s"}
    time.sleep(1.5)
    doc = pgvault(["status", "--json", "--no-connect"], short, check=False).json()
    [reason] = [r for r in doc["reasons"] if r["code"] == "unfinished_writes"]
    assert reason["level"] == "WARNING" and reason["message"].startswith(f"{count} unfinished write(s) older than")
    assert doc["unfinished_writes"]["older_than_grace"] == count
    report = pgvault(["verify", "--all", "--json"], short).json()
    [item] = [i for i in report["items"] if i["kind"] == "unfinished"]
    assert item["status"] == "warning" and "pgvault expire --apply" in item["detail"]

    # expire never touches a write younger than the grace...
    done = pgvault(["expire", "--apply", "--json"], env).json()
    assert done["deleted"]["unfinished_writes"] == {"count": 0, "bytes": 0}
    assert [u["action"] for u in done["unfinished_writes"]] == ["keep"] * count
    assert _temp_files(repo) == left
    # ...and sweeps it, with the folder it leaves empty, once the clock is past the grace.
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1, hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    plan = pgvault(["expire", "--now", later, "--json"], env).json()
    assert plan["summary"]["unfinished_writes"] == {"keep": 0, "delete": count, "delete_bytes": size}
    assert _temp_files(repo) == left  # the dry run removed nothing
    done = pgvault(["expire", "--apply", "--now", later, "--json"], env).json()
    assert done["deleted"]["unfinished_writes"] == {"count": count, "bytes": size}
    assert _temp_files(repo) == [] and not folder.exists()
    human = pgvault(["expire", "--now", later], env).stdout
    assert "unfinished writes: none" in human
    doc = pgvault(["status", "--json", "--no-connect"], short, check=False).json()
    assert doc["unfinished_writes"]["count"] == 0 and "unfinished_writes" not in {r["code"] for r in doc["reasons"]}

    # The killed backup's lock was stale; the next backup takes it over and works.
    second = pgvault(["backup", "--database", big_db, "--no-globals", "--json"], env).json()["backup"]["backup_id"]
    assert [b["backup_id"] for b in pgvault(["list", "--json"], env).json()["backups"]] == [first, second]
    assert _temp_files(repo) == []
