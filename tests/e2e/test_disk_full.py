"""Disk full in the local repository and in the WAL spool (small tmpfs mounts; needs root).

A full disk must be a clear error (exit 4, "no space left", the path), never a half-published
backup or a confirmed WAL segment, and the next run must work once there is room."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import clean_env, pgvault
from support.pgcluster import PgCluster


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``, always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill ``directory``'s file system until at most ``leave`` bytes are free; returns the filler."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\xa5" * 65536
        while True:
            st = os.statvfs(directory)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                f.write(chunk[: max(4096, min(len(chunk), free - leave))])
            except OSError:
                break
    return filler


def _debris(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-") or p.name == "manifest.json"]


@pytest.fixture
def dump_db(pg_latest: PgCluster) -> Iterator[str]:
    """About 8 MB of table data (stored uncompressed: more than the 4 MB repository holds)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(name)
    pg_latest.psql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((-g)::text) AS t FROM generate_series(1, 110000) g",
                   dbname=name)
    try:
        yield name
    finally:
        pg_latest.drop_database(name)


def test_backup_into_a_full_local_repository_exits_4_and_leaves_nothing(pg_latest: PgCluster, dump_db: str,
                                                                        tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "4m") as mnt:
        repo = mnt / "repo"
        env = clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(repo), PGVAULT_CLUSTER="full",
                        PGVAULT_COMPRESSION_ALGORITHM="none")
        res = pgvault(["backup", "-d", dump_db], env, check=False)
        assert res.returncode == 4, res
        first = next(ln for ln in res.stderr.splitlines() if ln.startswith("pgvault: error:"))
        assert "no space left" in first.lower() or "disk full" in first.lower(), res.stderr
        assert str(repo) in first, first
        print(first)
        assert "Traceback" not in res.stderr
        assert _debris(mnt) == [], "a manifest or a temporary file was left in the full repository"
        assert not (repo / "full" / "locks" / "logical-backup.lock").exists()
        assert pgvault(["list", "--json"], env).json()["backups"] == []
        # Room again (the same repository, grown): the next backup works, nothing in its way.
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        again = pgvault(["backup", "-d", dump_db, "--json"], env)
        assert "lock" not in again.stderr
        assert len(pgvault(["list", "--json"], env).json()["backups"]) == 1


def _segments(pg: PgCluster, count: int) -> list[str]:
    names = []
    for _ in range(count):
        pg.psql("CREATE TABLE IF NOT EXISTS walgen(i int); INSERT INTO walgen SELECT generate_series(1, 1000)")
        names.append(pg.psql("SELECT pg_walfile_name(pg_switch_wal())"))
    return names


def _pgdata_with(pg: PgCluster, where: Path, segments: list[str]) -> Path:
    """A data directory holding copies of ``segments``, each marked .ready as PostgreSQL would
    (the async pusher takes what is .ready; no postmaster: it pushes once and exits)."""
    (where / "pg_wal" / "archive_status").mkdir(parents=True)
    shutil.copy(pg.datadir / "PG_VERSION", where / "PG_VERSION")
    for seg in segments:
        shutil.copy(pg.datadir / "pg_wal" / seg, where / "pg_wal" / seg)
        (where / "pg_wal" / "archive_status" / f"{seg}.ready").touch()
    return where


def _wal_objects(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.rglob("*") if p.is_file() and "/wal/" in str(p))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_wal_push_into_a_full_repository_fails_and_confirms_nothing(pg_latest: PgCluster, tmp_path: Path,
                                                                    mode: str) -> None:
    (seg,) = _segments(pg_latest, 1)
    pgdata = _pgdata_with(pg_latest, tmp_path / "pgdata", [seg])
    with tmpfs(tmp_path / "small", "24m") as mnt:
        repo = mnt / "repo"
        env = clean_env(PGVAULT_REPOSITORY_URL=str(repo), PGVAULT_CLUSTER="walfull", PGVAULT_COMPRESSION_ALGORITHM="none",
                        PGVAULT_ARCHIVE_ASYNC="true" if mode == "async" else "false",
                        PGVAULT_ARCHIVE_SPOOL_DIR=str(tmp_path / "spool"), PGVAULT_ARCHIVE_WAIT_TIMEOUT="60")
        # Room for the small files (cluster descriptor, checksum record), not for a 16 MB segment.
        repo.mkdir()
        filler = fill(mnt, leave=256 * 1024)
        push = ["wal", "push", f"pg_wal/{seg}", "--pgdata", str(pgdata)]
        res = pgvault(push, env, check=False, timeout=120)
        assert res.returncode == 4, res  # never 0
        assert "no space left" in res.stderr.lower() or "disk full" in res.stderr.lower(), res.stderr
        assert "Traceback" not in res.stderr
        assert _wal_objects(repo) == [], "a record or object of an unconfirmed push was left"
        assert not [p for p in mnt.rglob(".tmp-*")]
        out = tmp_path / "RECOVERYXLOG"
        assert pgvault(["wal", "fetch", seg, str(out), "--pgdata", str(pgdata)], env, check=False).returncode == 1
        # Room again: the retry PostgreSQL makes succeeds and stores the same bytes.
        filler.unlink()
        pgvault(push, env, timeout=120)
        pgvault(["wal", "fetch", seg, str(out), "--pgdata", str(pgdata)], env)
        assert out.read_bytes() == (pgdata / "pg_wal" / seg).read_bytes()


def test_a_full_spool_makes_async_wal_push_fail_not_confirm(pg_latest: PgCluster, tmp_path: Path) -> None:
    first, second = _segments(pg_latest, 2)
    pgdata = _pgdata_with(pg_latest, tmp_path / "pgdata", [first])
    with tmpfs(tmp_path / "spool", "256k") as spool:
        env = clean_env(PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"), PGVAULT_CLUSTER="spoolfull",
                        PGVAULT_ARCHIVE_SPOOL_DIR=str(spool), PGVAULT_ARCHIVE_WAIT_TIMEOUT="60")
        pgvault(["wal", "push", f"pg_wal/{first}", "--pgdata", str(pgdata)], env, timeout=120)  # the spool works
        filler = fill(spool)
        shutil.copy(pg_latest.datadir / "pg_wal" / second, pgdata / "pg_wal" / second)
        (pgdata / "pg_wal" / "archive_status" / f"{second}.ready").touch()
        res = pgvault(["wal", "push", f"pg_wal/{second}", "--pgdata", str(pgdata)], env, check=False, timeout=120)
        assert res.returncode == 4, res  # before: the pusher died silently and a foreground push returned 0
        assert f"disk full in the WAL spool {spool}" in res.stderr, res.stderr
        print(res.stderr)
        assert not list(spool.rglob(f"{second}.ok"))
        assert not [p for p in spool.rglob("*.tmp")], "half-written records left in the spool"
        filler.unlink()
        pgvault(["wal", "push", f"pg_wal/{second}", "--pgdata", str(pgdata)], env, timeout=120)
