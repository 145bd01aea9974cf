"""A hole in the WAL archive must never look like its end (issue 8, item 1).

PostgreSQL takes restore_command's "not found" as the end of the archive and promotes, so:
``wal fetch`` says "not found" only when nothing after the file is stored on its timeline; a
checksum record whose object is missing is a hole for the index (planning, ``status``) unless it
is young enough to be an upload under way; a restore to the end of the archive with stored WAL
beyond a hole is refused up front.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from pgvault.config import Settings
from pgvault.errors import IntegrityError, NotFoundError
from pgvault.operations.archive.push_fetch import fetch
from pgvault.operations.context import Context
from pgvault.pg import wal
from pgvault.pg.conn import ConnInfo
from pgvault.pipeline import PipelineSpec, write_stream
from pgvault.policy.pitr import RecoveryTarget, plan_recovery, recoverable_windows
from pgvault.repository import layout
from pgvault.repository.archive_index import IN_FLIGHT_GRACE
from pgvault.repository.archive_scan import load_archive_index
from pgvault.repository.cluster import ensure_cluster
from pgvault.storage import ObjectNotFound
from pgvault.storage.memory import MemoryStorage

from .test_pitr_plan import SEG, backup

C = "main"
SYSID = "7300000000000000042"
SPEC = PipelineSpec(compression="zstd", encryption="none")


def name(segno: int, tli: int = 1) -> str:
    return wal.segment_name(tli, segno, SEG)


def push(storage: MemoryStorage, file_name: str, *, archived_at: dt.datetime | None = None, obj: bool = True) -> None:
    """What ``wal push`` stores: the record, then (``obj``) the object."""
    key = layout.wal_object(C, file_name, SPEC.suffix())
    out = io.BytesIO()
    result = write_stream(io.BytesIO(file_name.encode() * 10), out, SPEC)
    when = archived_at or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    doc = {"format": 1, "name": file_name, "kind": "segment", "key": key, "system_identifier": SYSID,
           "pipeline": SPEC.to_json(), "archived_at": when.isoformat(), **result.to_json()}
    storage.put_if_absent(layout.wal_meta(C, file_name), json.dumps(doc).encode())
    if obj:
        storage.put_if_absent(key, out.getvalue())


@pytest.fixture
def repo() -> MemoryStorage:
    s = MemoryStorage("holes")
    ensure_cluster(s, C, system_identifier=SYSID, server_major=15, wal_segment_size=SEG)
    return s


def ctx(storage: MemoryStorage) -> Context:
    return Context(settings=Settings(cluster=C, repository_url="memory://holes"), storage=storage,
                   conn=ConnInfo.from_dsn("", {}))


def get(storage: MemoryStorage, file_name: str, tmp_path: Path) -> None:
    fetch(ctx(storage), file_name, str(tmp_path / "RECOVERYXLOG"), pgdata=str(tmp_path))


# --- the index ------------------------------------------------------------------------------------


def test_a_record_without_its_object_is_not_archived(repo: MemoryStorage) -> None:
    for s in range(2, 6):
        push(repo, name(s), obj=s != 4)
    idx = load_archive_index(repo, C, SEG)
    assert idx.segments == {1: frozenset({2, 3, 5})}
    assert set(idx.unfinished) == {name(4)}
    assert idx.in_flight(dt.datetime.now(dt.UTC)) == set()  # an hour old: a hole, not an upload


def test_a_young_record_is_an_upload_under_way(repo: MemoryStorage) -> None:
    push(repo, name(2))
    push(repo, name(3), archived_at=dt.datetime.now(dt.UTC), obj=False)
    push(repo, name(4))  # the parallel pusher finished the next one first
    idx = load_archive_index(repo, C, SEG)
    now = dt.datetime.now(dt.UTC)
    assert idx.in_flight(now) == {name(3)}
    assert idx.counting_in_flight(now).segments == {1: frozenset({2, 3, 4})}
    assert idx.counting_in_flight(now + IN_FLIGHT_GRACE).segments == {1: frozenset({2, 4})}


# --- planning -------------------------------------------------------------------------------------


def test_the_end_of_the_archive_behind_a_hole_is_refused_but_the_window_stops_at_it(repo: MemoryStorage) -> None:
    for s in (2, 3, 4, 6, 7):
        push(repo, name(s))
    idx = load_archive_index(repo, C, SEG)
    b = backup("20261125T100000Z", 2, 3)
    with pytest.raises(NotFoundError) as e:
        plan_recovery([b], idx, RecoveryTarget())
    assert f"hole at {name(5)}" in e.value.message and f"from {name(6)}" in e.value.message
    [w] = recoverable_windows([b], idx)
    assert w.to_wal == name(4)
    # A target before the hole is still planned.
    assert plan_recovery([b], idx, RecoveryTarget.parse(lsn=str(wal.segment_start_lsn(4, SEG)))).backup == b


def test_a_deleted_object_in_the_middle_is_a_hole(repo: MemoryStorage) -> None:
    for s in range(2, 8):
        push(repo, name(s), obj=s != 5)
    idx = load_archive_index(repo, C, SEG)
    with pytest.raises(NotFoundError) as e:
        plan_recovery([backup("20261125T100000Z", 2, 3)], idx, RecoveryTarget())
    assert "checksum record without object" in e.value.message


def test_a_record_without_object_at_the_end_ends_the_archive_with_a_warning(repo: MemoryStorage) -> None:
    for s in range(2, 6):
        push(repo, name(s), obj=s != 5)
    plan = plan_recovery([backup("20261125T100000Z", 2, 3)], load_archive_index(repo, C, SEG), RecoveryTarget())
    assert plan.last_reachable_wal == name(4)
    assert any(name(5) in w and "no object" in w for w in plan.warnings)


# --- wal fetch (restore_command) ------------------------------------------------------------------


def test_fetch_not_found_only_at_the_end(repo: MemoryStorage, tmp_path: Path) -> None:
    for s in (2, 3, 5):
        push(repo, name(s))
    get(repo, name(2), tmp_path)
    with pytest.raises(IntegrityError) as e:  # 4 is missing but 5 is stored: a hole, exit 126
        get(repo, name(4), tmp_path)
    assert "hole" in e.value.message and name(5) in e.value.message
    with pytest.raises(ObjectNotFound):  # after the newest: the end of the archive, exit 1
        get(repo, name(6), tmp_path)
    with pytest.raises(ObjectNotFound):  # another timeline's segments say nothing about timeline 2
        get(repo, name(4, tli=2), tmp_path)


def test_fetch_sees_later_wal_in_the_next_log_folder(repo: MemoryStorage, tmp_path: Path) -> None:
    per_log = 0x100000000 // SEG
    push(repo, name(per_log - 2))
    push(repo, name(per_log + 1))  # the next log id: another folder
    with pytest.raises(IntegrityError):
        get(repo, name(per_log - 1), tmp_path)


def test_fetch_of_a_record_without_its_object(repo: MemoryStorage, tmp_path: Path) -> None:
    push(repo, name(2))
    push(repo, name(3), obj=False)
    push(repo, name(4))
    with pytest.raises(IntegrityError) as e:  # stored WAL after it: a hole
        get(repo, name(3), tmp_path)
    assert "checksum record but its object" in e.value.message
    # At the end (a push that died with its primary): the archive ends before it.
    push(repo, name(5), obj=False)
    with pytest.raises(ObjectNotFound):
        get(repo, name(5), tmp_path)


def test_fetch_waits_for_an_upload_under_way(repo: MemoryStorage, tmp_path: Path) -> None:
    import threading

    push(repo, name(2))
    push(repo, name(3), archived_at=dt.datetime.now(dt.UTC), obj=False)
    out = io.BytesIO()
    write_stream(io.BytesIO(name(3).encode() * 10), out, SPEC)
    timer = threading.Timer(1.5, lambda: repo.put_if_absent(layout.wal_object(C, name(3), SPEC.suffix()), out.getvalue()))
    timer.start()
    get(repo, name(3), tmp_path)  # served once the upload lands, not "not found"
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == name(3).encode() * 10


def test_the_prefetcher_never_waits_or_looks_ahead(repo: MemoryStorage, tmp_path: Path) -> None:
    push(repo, name(3))
    with pytest.raises(ObjectNotFound):  # its "not found" only means "not yet"; the foreground decides
        fetch(ctx(repo), name(2), str(tmp_path / "x"), pgdata=str(tmp_path), foreground=False)
    push(repo, name(4), archived_at=dt.datetime.now(dt.UTC), obj=False)
    with pytest.raises(IntegrityError):
        fetch(ctx(repo), name(4), str(tmp_path / "x"), pgdata=str(tmp_path), foreground=False)


def test_history_files_are_unaffected(repo: MemoryStorage, tmp_path: Path) -> None:
    push(repo, name(7, tli=2))
    with pytest.raises(ObjectNotFound):
        get(repo, "00000003.history", tmp_path)
    assert dataclasses.is_dataclass(load_archive_index(repo, C, SEG))


def test_errors_from_another_process_keep_their_exit_code() -> None:
    """The pusher reports errors by kind; the foreground rebuilds them.  A refusal of another
    cluster's WAL is a configuration error (2) there too, not a generic 1."""
    from pgvault.errors import ConfigError, IntegrityError, error_of_kind

    assert isinstance(error_of_kind("config", "refusing to archive X"), ConfigError)
    assert error_of_kind("config", "x").exit_code == 2
    assert error_of_kind("integrity", "x").exit_code == IntegrityError.exit_code
