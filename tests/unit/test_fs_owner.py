"""What root creates in the WAL spool takes the owner of the directory above (pgvault.fs_owner):
the spool's directories, locks, records, the fast index and prefetched segments (issue 9)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pgvault import fs_owner
from pgvault.fs import atomic_file, try_lock_file, write_atomic
from pgvault.operations.archive import confirm, prefetched

OTHER = (54321, 54322)  # a user and group that are not root's
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create files for another owner")


def _owned(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_uid, st.st_gid


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "pg_wal").mkdir(parents=True)
    os.chown(d, *OTHER)
    os.chown(d / "pg_wal", *OTHER)
    return d


@as_root
def test_directories_root_creates_take_the_nearest_existing_parents_owner(data_dir: Path) -> None:
    spool = data_dir / "pg_wal" / "pgvault" / "abc" / "archive"
    fs_owner.makedirs(spool)
    for d in (spool, spool.parent, spool.parent.parent):
        assert _owned(d) == OTHER
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    fs_owner.makedirs(spool)  # exists: nothing to do


@as_root
def test_files_root_creates_in_the_spool_take_its_owner(data_dir: Path) -> None:
    spool = data_dir / "pg_wal" / "pgvault" / "abc"
    with try_lock_file(spool / "pusher.lock") as mine:
        assert mine
    fs_owner.makedirs(spool / "archive")
    write_atomic(spool / "archive" / "x.ok", b"record", durable=False, adopt=True)
    with atomic_file(spool / "seg", adopt=True) as f:
        f.write(b"wal")
    confirm.remember(str(data_dir), "f" * 32, str(spool), 60.0)
    prefetched.want(str(spool), "000000010000000000000001")
    made = [spool, spool / "pusher.lock", spool / "archive" / "x.ok", spool / "seg", spool / ".want",
            data_dir / "pg_wal" / "pgvault" / "fast" / ("f" * 32)]
    assert {p.relative_to(data_dir).as_posix(): _owned(p) for p in made} == {p.relative_to(data_dir).as_posix(): OTHER for p in made}
    assert stat.S_IMODE((spool / "pusher.lock").stat().st_mode) == 0o600


@as_root
def test_a_prefetched_segment_is_recorded_after_its_chown_and_still_served(data_dir: Path, tmp_path: Path) -> None:
    spool = data_dir / "pg_wal" / "pgvault" / "abc" / "fetch"
    fs_owner.makedirs(spool)
    name = "000000010000000000000002"
    with atomic_file(spool / name, adopt=True) as f:
        f.write(b"w" * 100)
    prefetched.write_record(str(spool), name, raw_sha256="0" * 64, raw_size=100)
    assert _owned(spool / name) == OTHER and _owned(spool / f"{name}.ok") == OTHER
    assert prefetched.take(str(spool), name, str(tmp_path / name))  # the identity still matches


@as_root
def test_what_root_creates_below_a_root_owned_directory_stays_roots(tmp_path: Path) -> None:
    os.chown(tmp_path, 0, 0)
    spool = tmp_path / "spool" / "abc"
    with try_lock_file(spool / "pusher.lock") as mine:
        assert mine
    assert _owned(spool) == (0, 0) and _owned(spool / "pusher.lock") == (0, 0)


def test_nothing_changes_hands_when_not_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert fs_owner.owner_for_new(tmp_path / "x") is None
    calls: list[object] = []
    monkeypatch.setattr(os, "chown", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(os, "fchown", lambda *a, **k: calls.append(a))
    fs_owner.makedirs(tmp_path / "a" / "b")
    fs_owner.adopt(tmp_path / "a" / "b")
    assert calls == [] and (tmp_path / "a" / "b").is_dir()


def test_a_spool_lock_the_archiver_cannot_open_is_a_clear_storage_error(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    """What an older pgvault left as root: exit 4 with the way out, not an internal error (exit 70)."""
    from contextlib import contextmanager

    from pgvault.config import Settings
    from pgvault.errors import StorageError
    from pgvault.operations.archive import background

    @contextmanager
    def denied(path: Path, mode: int = 0o600):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied", str(path))
        yield False

    monkeypatch.setattr(background, "try_lock_file", denied)
    (tmp_path / "pg_wal" / "archive_status").mkdir(parents=True)
    (tmp_path / "pg_wal" / "000000010000000000000001").write_bytes(b"w")
    settings = Settings(repository_url="/x", cluster="c")
    with pytest.raises(StorageError) as e:
        background.push_async(settings, "pg_wal/000000010000000000000001", pgdata=str(tmp_path), passthrough=[],
                              make_context=lambda: None)  # type: ignore[arg-type, return-value]
    assert "belongs to another user" in (e.value.hint or "") and "Permission denied" in e.value.message
