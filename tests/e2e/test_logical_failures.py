"""Bad input gets a clear one-line error, a documented exit code, and loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pgvault.sample import Sample
from support.cli import clean_env, pgvault, start

from .conftest import make_age_key


def _object(env: dict[str, str], name: str) -> Path:
    repo = Path(env["PGVAULT_REPOSITORY_URL"])
    [path] = list(repo.glob(f"*/logical/*/*/*/{name}"))
    return path


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("pgvault: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_wrong_password_is_a_connection_error_without_the_password(pg_cluster, local_env) -> None:
    env = {**local_env, "PGPASSWORD": "not-the-password-7731"}
    res = pgvault(["backup", "-d", "postgres"], env, check=False)
    assert res.returncode == 3
    assert "password authentication failed" in _one_error_line(res.stderr)
    assert "not-the-password-7731" not in res.stderr + res.stdout


def test_unreachable_server(local_env) -> None:
    env = {**local_env, "PGHOST": "127.0.0.1", "PGPORT": "1"}
    res = pgvault(["backup", "-d", "postgres"], env, check=False)
    assert res.returncode == 3
    assert "cannot connect to PostgreSQL at 127.0.0.1:1" in _one_error_line(res.stderr)


def test_missing_database(local_env) -> None:
    res = pgvault(["backup", "-d", "no_such_db"], local_env, check=False)
    assert res.returncode == 5
    assert "'no_such_db' does not exist" in _one_error_line(res.stderr)


def test_repository_not_writable(local_env, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**local_env, "PGVAULT_REPOSITORY_URL": str(blocker / "repo")}
    res = pgvault(["backup", "-d", "postgres"], env, check=False)
    assert res.returncode == 4, res
    _one_error_line(res.stderr)


def test_config_check_lists_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "pgvault.yaml"
    cfg.write_text(
        "cluster: a/b\nrepository:\n  url: ftp://x\ncompression:\n  algorithm: lzma\n  threads: many\nbogus: 1\n"
        "encryption:\n  age_recipients: [not-a-key]\n"
    )
    res = pgvault(["config", "check", "--config", str(cfg)], clean_env(), check=False)
    assert res.returncode == 2
    for needle in ("cluster", "ftp://x", "lzma", "threads", "bogus", "recipient #1"):
        assert needle in res.stderr, needle
    good = tmp_path / "good.yaml"
    good.write_text(f"cluster: prod\nrepository:\n  url: {tmp_path}/repo\n")
    ok = pgvault(["config", "check", "--config", str(good), "--json"], clean_env()).json()
    assert ok["valid"] is True and ok["cluster"] == "prod"


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_object_fails_restore_and_creates_nothing(pg_cluster, sample_db, scratch_db, local_env, damage: str,
                                                          jobs: str) -> None:
    pgvault(["backup", "-d", sample_db, "--no-globals"], local_env)
    obj = _object(local_env, f"{sample_db}.dump.zst.age")
    data = bytearray(obj.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) - 70000:]
    obj.write_bytes(bytes(data))
    res = pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db, "--jobs", jobs], local_env, check=False)
    assert res.returncode == 6, res
    assert any(w in _one_error_line(res.stderr) for w in ("corrupt", "truncated", "checksum", "decrypt"))
    assert not pg_cluster.database_exists(scratch_db)
    # nor a scratch copy (data loads while the stream is verified: the copy is dropped)
    assert pg_cluster.psql(f"SELECT count(*) FROM pg_database WHERE datname LIKE '{scratch_db}%'") == "0"


def test_corrupt_object_never_damages_existing_tables(pg_cluster, sample_db, scratch_db, local_env) -> None:
    pgvault(["backup", "-d", sample_db, "--no-globals"], local_env)
    pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db], local_env)
    obj = _object(local_env, f"{sample_db}.dump.zst.age")
    data = bytearray(obj.read_bytes())
    data[-100] ^= 0x40  # the last chunk: pg_restore has already received most of the stream
    obj.write_bytes(bytes(data))
    before = pg_cluster.psql("SELECT count(*) FROM configs", dbname=scratch_db)
    res = pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db, "--table", "public.configs", "--clean"], local_env, check=False)
    assert res.returncode == 6, res
    assert pg_cluster.psql("SELECT count(*) FROM configs", dbname=scratch_db) == before == str(Sample().counts()["configs"])


def test_wrong_age_identity(pg_cluster, sample_db, scratch_db, local_env, tmp_path: Path) -> None:
    pgvault(["backup", "-d", sample_db, "--no-globals"], local_env)
    other = make_age_key(tmp_path)
    env = {**local_env, "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(other.identity_file)}
    res = pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db], env, check=False)
    assert res.returncode == 6
    assert "decrypt" in _one_error_line(res.stderr)
    assert other.secret not in res.stderr + res.stdout
    assert not pg_cluster.database_exists(scratch_db)
    # The secret key may also come from the environment (a Kubernetes secret), never from argv.
    env = {**local_env, "PGVAULT_ENCRYPTION_AGE_IDENTITY": other.secret}
    del env["PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE"]
    res = pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db], env, check=False)
    assert res.returncode == 6 and other.secret not in res.stderr + res.stdout


def _wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def _pg_dump_pids(parent: int) -> list[int]:
    """pg_dump processes started by ``parent`` (other tests or benchmarks may run their own)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if (d / "comm").read_text().strip() == "pg_dump" and ppid == parent:
                    pids.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def test_one_backup_per_cluster_and_killed_backup_leaves_no_trace(pg_cluster, scratch_db, local_env) -> None:
    pg_cluster.create_database(scratch_db)
    pg_cluster.psql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)", dbname=scratch_db)
    # A session holding an exclusive lock makes pg_dump wait: a backup that is reliably "running".
    blocker = subprocess.Popen(
        [str(pg_cluster.bindir.program("psql")), "-X", "-d", scratch_db],
        env={**pg_cluster.client_env(), "PGAPPNAME": "test-blocker"}, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )
    assert blocker.stdin is not None
    blocker.stdin.write("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);\n")
    blocker.stdin.flush()
    first = None
    try:
        _wait_for(lambda: pg_cluster.psql(f"SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.datname = '{scratch_db}'"
                                           " WHERE l.mode = 'AccessExclusiveLock' AND l.relation IS NOT NULL") != "0")
        first = start(["backup", "-d", scratch_db], local_env)
        _wait_for(lambda: bool(_pg_dump_pids(first.pid)))
        # Secrets never reach a child's argv.
        for pid in _pg_dump_pids(first.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            except FileNotFoundError:  # that pg_dump (a parallel worker's) ended meanwhile
                continue
            assert pg_cluster.password not in argv
        second = pgvault(["backup", "-d", scratch_db], local_env, check=False, timeout=60)
        assert second.returncode == 7, second
        assert "another pgvault logical-backup" in _one_error_line(second.stderr)
        # Kill the running backup the hard way: no manifest, and the next run is unaffected.
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        # A backend asleep in pg_sleep does not notice its client going away: end it explicitly.
        pg_cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-blocker'")
        blocker.kill()
        blocker.wait()
        if first and first.poll() is None:
            first.kill()
    assert pgvault(["list", "--json"], local_env).json()["backups"] == []
    pgvault(["backup", "-d", scratch_db], local_env)
    assert len(pgvault(["list", "--json"], local_env).json()["backups"]) == 1


@pytest.mark.parametrize("jobs", ["1", "2"])  # the parallel path is verified the same way
def test_row_count_mismatch_exits_9_with_one_json_document(pg_cluster, sample_db, scratch_db, local_env, jobs) -> None:  # type: ignore[no-untyped-def]
    import json
    from pathlib import Path

    backup = pgvault(["backup", "-d", sample_db, "--json"], local_env).json()["backup"]
    [manifest] = Path(local_env["PGVAULT_REPOSITORY_URL"]).glob(f"*/logical/*/*/{backup['backup_id']}/manifest.json")
    doc = json.loads(manifest.read_text())
    next(t for t in doc["databases"][0]["tables"] if t["name"] == "configs")["rows"] += 5
    manifest.write_text(json.dumps(doc))
    res = pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db, "--json", "--jobs", jobs], local_env, check=False)
    assert res.returncode == 9 and "does not match the manifest" in res.stderr
    out = json.loads(res.stdout)  # exactly one document: the comparison
    assert out["kind"] == "restore" and out["restore"]["verified"] is False
    [bad] = [c for c in out["restore"]["checks"] if not c["ok"]]
    assert bad["table"] == "public.configs" and bad["expected"] == bad["actual"] + 5
