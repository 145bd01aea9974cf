"""SIGTERM and kill -9 of ``drill`` and ``expire --apply``.

SIGTERM (Kubernetes, systemd, ``timeout``) must end them like any failure: exit 143, the drill's
scratch server stopped and its directory removed, the drill report saying it was interrupted, the
expire lock released.  kill -9 runs no cleanup at all: the next run must still work, and the next
drill finds the killed drill's scratch server (still running) and stops and removes it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import clean_env, pgvault, start
from support.pgcluster import PgCluster, postgres_tmpdir

from .test_sigterm import _alive, _assert_failed_job, _children, _terminate, _wait_for


@pytest.fixture
def drill_db(pg_latest: PgCluster) -> Iterator[str]:
    """About 15 MB of rows: pg_restore of it runs long enough to be caught in the act."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(name)
    pg_latest.psql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((-g)::text) AS t FROM generate_series(1, 200000) g;"
                   " ALTER TABLE big ADD PRIMARY KEY (g)", dbname=name)
    try:
        yield name
    finally:
        pg_latest.drop_database(name)


@pytest.fixture
def drill_env(pg_latest: PgCluster, drill_db: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A backup of ``drill_db`` and the environment to drill it, with a private TMPDIR (where
    scratch servers live), so that only this test's drills are looked at."""
    scratch = postgres_tmpdir("pgvault-sig-")
    env = clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"),
                    PGVAULT_CLUSTER=f"dsig{uuid.uuid4().hex[:6]}", TMPDIR=str(scratch), PGVAULT_COMPRESSION_ALGORITHM="none")
    pgvault(["backup", "-d", drill_db, "--no-globals"], env)
    try:
        yield env
    finally:
        for pidfile in scratch.glob("*/data/postmaster.pid"):  # a failed test must not leave a server
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGQUIT)
            except (OSError, ValueError):
                pass
        shutil.rmtree(scratch, ignore_errors=True)


def _drill_mid_restore(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[int], Path, int]:
    """Start a logical drill and freeze it in the middle of its restore into the scratch server:
    (the drill, its stopped pg_restore processes, the scratch directory, the scratch postmaster)."""
    proc = start(["drill", "latest"], env)

    def restoring() -> list[int]:
        assert proc.poll() is None, proc.communicate()
        return _children(proc.pid, "pg_restore")

    restores = _wait_for(restoring, what="the drill's pg_restore")
    for pid in restores:
        os.kill(pid, signal.SIGSTOP)
    (base,) = Path(env["TMPDIR"]).glob("pgvault-drill*")
    postmaster = int((base / "data" / "postmaster.pid").read_text().split()[0])
    assert _alive(postmaster)
    return proc, restores, base, postmaster


def test_sigterm_of_a_logical_drill_removes_its_scratch_server_and_records_the_failure(drill_env: dict[str, str]) -> None:
    proc, restores, base, postmaster = _drill_mid_restore(drill_env)
    try:
        code, err, took = _terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 143, err
    assert "SIGTERM" in err and "Traceback" not in err, err
    print(f"SIGTERM to exit: {took:.2f}s")
    assert not [p for p in restores if _alive(p)], "pg_restore outlived the drill"
    assert not _alive(postmaster), "the scratch server was left running"
    assert not base.exists(), "the scratch directory was left behind"
    # The report says what happened (before: no report at all, only the job record).
    (report,) = pgvault(["drill", "list", "--json"], drill_env).json()["drills"]
    assert report["ok"] is False and "interrupted by SIGTERM" in report["error"], report
    repo = Path(drill_env["PGVAULT_REPOSITORY_URL"]) / drill_env["PGVAULT_CLUSTER"]
    _assert_failed_job(drill_env, "drill", repo / "jobs" / "drill.json")
    again = pgvault(["drill", "latest", "--json"], drill_env)
    assert again.json()["drill"]["ok"] is True


def test_the_drill_after_a_kill_9_stops_and_removes_the_killed_drills_scratch_server(drill_env: dict[str, str]) -> None:
    proc, restores, base, postmaster = _drill_mid_restore(drill_env)
    proc.kill()
    proc.wait()
    for pid in restores:  # (a real pg_restore would end at EOF on its stdin)
        os.kill(pid, signal.SIGKILL)
    assert _alive(postmaster) and base.exists()  # kill -9 runs no cleanup
    again = pgvault(["drill", "latest", "--json"], drill_env)
    assert again.json()["drill"]["ok"] is True
    assert f"swept scratch directory {base} of drill pid {proc.pid} (its server, pid {postmaster}, stopped)" in again.stderr
    assert not _alive(postmaster) and not base.exists()
    assert not list(Path(drill_env["TMPDIR"]).iterdir())


# --- expire --apply --------------------------------------------------------------------------------


def _many_backups(repo: Path, cluster: str, count: int, objects: int) -> None:
    """``count`` logical backups (manifest plus ``objects`` dumps each), a second apart, a month
    ago: expire lists them from their keys and deletes all but the newest (keep_last 1)."""
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    for i in range(count):
        t = t0 + dt.timedelta(seconds=i)
        folder = repo / cluster / "logical" / f"{t:%Y}" / f"{t:%m}" / f"{t:%Y%m%dT%H%M%SZ}"
        folder.mkdir(parents=True)
        for j in range(objects):
            (folder / f"db{j}.dump.zst").write_bytes(b"x")
        (folder / "manifest.json").write_text("{}")


def _manifests(repo: Path) -> int:
    return len(list(repo.rglob("manifest.json")))


@pytest.fixture
def expire_env(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    repo = tmp_path / "repo"
    cluster = "expsig"
    _many_backups(repo, cluster, 1500, 6)
    env = clean_env(PGVAULT_REPOSITORY_URL=str(repo), PGVAULT_CLUSTER=cluster, PGVAULT_RETENTION_LOGICAL_KEEP_LAST="1")
    return env, repo, repo / cluster / "locks" / "expire.lock"


def _expire_holding_its_lock(env: dict[str, str], lock: Path) -> subprocess.Popen[str]:
    """Start ``expire --apply`` and stop it (SIGSTOP) once it holds its lock and has deleted some."""
    repo = Path(env["PGVAULT_REPOSITORY_URL"])
    before = _manifests(repo)
    proc = start(["expire", "--apply"], env)

    def deleting() -> bool:
        assert proc.poll() is None, proc.communicate()
        return lock.exists() and _manifests(repo) < before

    _wait_for(deleting, what="expire deleting under its lock")
    os.kill(proc.pid, signal.SIGSTOP)
    return proc


def test_sigterm_of_expire_apply_releases_its_lock_and_the_next_run_finishes(
        expire_env: tuple[dict[str, str], Path, Path]) -> None:
    env, repo, lock = expire_env
    proc = _expire_holding_its_lock(env, lock)
    try:
        proc.send_signal(signal.SIGTERM)  # delivered on SIGCONT: wherever the run stood
        os.kill(proc.pid, signal.SIGCONT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "Traceback" not in err, err
    assert not lock.exists(), "the expire lock was left behind"
    assert _manifests(repo) > 1, "the run was not interrupted"
    _assert_failed_job(env, "expire", repo / env["PGVAULT_CLUSTER"] / "jobs" / "expire.json")
    again = pgvault(["expire", "--apply", "--json"], env)
    assert "lock" not in again.stderr, again.stderr
    assert _manifests(repo) == 1 and not lock.exists()


def test_kill_9_of_expire_apply_leaves_a_lock_the_next_run_takes_over(
        expire_env: tuple[dict[str, str], Path, Path]) -> None:
    env, repo, lock = expire_env
    proc = _expire_holding_its_lock(env, lock)
    proc.kill()
    proc.wait()
    assert lock.exists() and _manifests(repo) > 1
    again = pgvault(["expire", "--apply", "--json"], env)
    assert _manifests(repo) == 1 and not lock.exists(), again.stderr
