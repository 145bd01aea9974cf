"""``pgvault verify`` on memory storage: object checks, WAL continuity and timeline histories.

The pure parts (continuity, history consistency) run on synthetic archive indexes; the rest on a
repository built in memory through the real pipeline (zstd + age), as backups and ``wal push``
write it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json

import pyrage
import pytest

from pgvault.config import Settings
from pgvault.errors import NotFoundError
from pgvault.operations.context import Context
from pgvault.operations.maintenance.verify import NO_IDENTITY, PUSH_GRACE, VerifyReport, verify
from pgvault.pg import wal
from pgvault.pg.conn import ConnInfo
from pgvault.pipeline import PipelineSpec, StreamResult, write_stream
from pgvault.policy.wal_check import FAILED, OK, PARTIAL, WARNING, collapse, timeline_problems, wal_continuity
from pgvault.repository import catalog, file_list, layout
from pgvault.repository.archive_index import ArchiveIndex
from pgvault.repository.cluster import ensure_cluster
from pgvault.repository.manifest import DatabaseEntry, LogicalManifest, StoredObject
from pgvault.repository.physical import PhysicalManifest
from pgvault.storage.memory import MemoryStorage

SEG = 16 << 20
SHA = "0" * 64
C = "main"
SYSID = "7300000000000000042"
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
IDENTITY = pyrage.x25519.Identity.generate()
RECIPIENT = str(IDENTITY.to_public())
OTHER_IDENTITY = str(pyrage.x25519.Identity.generate())


def seg_lsn(segno: int, offset: int = 0x100) -> str:
    return str(wal.segment_start_lsn(segno, SEG) + offset)


def name(tli: int, segno: int) -> str:
    return wal.segment_name(tli, segno, SEG)


def manifest(backup_id: str, start_seg: int, stop_seg: int, *, tli: int = 1,
             base: StoredObject | None = None) -> PhysicalManifest:
    return PhysicalManifest(
        backup_id=backup_id, cluster=C, system_identifier=SYSID, server_version="15.0", server_version_num=150000,
        wal_segment_size=SEG, timeline=tli, start_lsn=seg_lsn(start_seg, 0x28), stop_lsn=seg_lsn(stop_seg),
        first_wal=name(tli, start_seg), last_wal=name(tli, stop_seg), started_at="2026-11-25T10:00:00+00:00",
        finished_at="2026-11-25T10:00:00+00:00", duration_seconds=1.0, backup_label="", tablespace_map="",
        pipeline=PipelineSpec(), base=base or StoredObject("base", "base.tar", StreamResult(1, SHA, 1, SHA)),
        base_files=1, tablespaces=(), host="h", pgvault_version="0", stopped_at="2026-11-25T10:00:00+00:00",
    )


def index(segments: dict[int, range | list[int]], histories: dict[int, str] | None = None) -> ArchiveIndex:
    return ArchiveIndex(
        seg_size=SEG,
        segments={t: frozenset(s) for t, s in segments.items()},
        histories={t: wal.parse_history(text) for t, text in (histories or {}).items()},
    )


# --- WAL continuity (pure) --------------------------------------------------------------------------


def test_continuous_wal_from_the_backup_to_the_newest_segment() -> None:
    c = wal_continuity(manifest("20261125T100000Z", 2, 3), index({1: range(1, 9)}))
    assert c.ok and c.gaps == () and c.timeline == 1
    assert c.first_wal == name(1, 2) and c.newest_wal == name(1, 8) and c.reachable_wal == name(1, 8)
    assert c.segments == tuple(name(1, s) for s in range(2, 9))  # nothing before the backup's start
    assert "7 segments, no gap" in c.describe()


def test_holes_after_the_backup_are_ranges_of_missing_names() -> None:
    c = wal_continuity(manifest("20261125T100000Z", 2, 3), index({1: [2, 3, 4, 7, 8, 10]}))
    assert c.gaps == ((name(1, 5), name(1, 6)), (name(1, 9), name(1, 9)))
    assert c.reachable_wal == name(1, 4) and c.newest_wal == name(1, 10) and not c.ok
    assert c.describe().startswith(f"missing {name(1, 5)}..{name(1, 6)}, {name(1, 9)}; recovery stops after {name(1, 4)}")


def test_a_hole_before_the_backup_does_not_matter() -> None:
    assert wal_continuity(manifest("20261125T100000Z", 5, 6), index({1: [1, 2, 5, 6, 7]})).ok


def test_missing_start_and_missing_end_of_the_backup() -> None:
    c = wal_continuity(manifest("20261125T100000Z", 2, 5), index({1: [4, 5, 6]}))
    assert c.gaps == ((name(1, 2), name(1, 3)),) and c.reachable_wal is None
    assert "cannot be made consistent" in c.describe()
    c = wal_continuity(manifest("20261125T100000Z", 2, 5), index({1: [2, 3]}))
    assert c.gaps == ((name(1, 4), name(1, 5)),)
    assert f"cannot be made consistent (it needs WAL up to {name(1, 5)})" in c.describe()
    c = wal_continuity(manifest("20261125T100000Z", 2, 3), index({}))
    assert c.gaps == ((name(1, 2), name(1, 3)),) and c.newest_wal is None


HISTORY_2 = f"1\t{seg_lsn(6, 0x5000)}\tno recovery target specified\n"


def test_recovery_follows_the_newest_timeline_and_reads_the_switch_segment_from_the_child() -> None:
    idx = index({1: range(2, 10), 2: range(6, 9)}, {2: HISTORY_2})
    c = wal_continuity(manifest("20261125T100000Z", 2, 3), idx)
    assert c.ok and c.timeline == 2 and c.newest_wal == name(2, 8)
    assert c.segments == (*(name(1, s) for s in range(2, 6)), *(name(2, s) for s in range(6, 9)))


def test_a_parent_short_of_the_switch_is_a_gap_on_the_parent() -> None:
    idx = index({1: [2, 3], 2: range(6, 9)}, {2: HISTORY_2})
    c = wal_continuity(manifest("20261125T100000Z", 2, 3), idx)
    assert c.gaps == ((name(1, 4), name(1, 5)),)
    # Missing across the switch: one run per timeline.
    idx = index({1: [2, 3], 2: [8]}, {2: HISTORY_2})
    assert wal_continuity(manifest("20261125T100000Z", 2, 3), idx).gaps == (
        (name(1, 4), name(1, 5)), (name(2, 6), name(2, 7)))


def test_a_backup_that_ended_after_the_branch_is_checked_along_its_own_timeline() -> None:
    idx = index({1: range(2, 12), 2: range(6, 9)}, {2: HISTORY_2})
    c = wal_continuity(manifest("20261125T110000Z", 7, 8), idx)
    assert c.ok and c.timeline == 1 and c.newest_wal == name(1, 11)
    assert c.note and "--target-timeline 1" in c.note


def test_a_timeline_without_its_history_file_is_a_problem() -> None:
    c = wal_continuity(manifest("20261125T100000Z", 6, 7, tli=2), index({2: range(6, 9)}))
    assert not c.ok and c.problem and "00000002.history" in c.problem


def test_a_segment_size_mismatch_is_a_problem() -> None:
    b = dataclasses.replace(manifest("20261125T100000Z", 2, 3), wal_segment_size=1 << 20)
    c = wal_continuity(b, index({1: range(2, 5)}))
    assert not c.ok and c.problem and "segment size" in c.problem


# --- timeline histories (pure) ----------------------------------------------------------------------


HISTORY_3 = HISTORY_2 + f"2\t{seg_lsn(9, 0x10)}\tno recovery target specified\n"


def test_consistent_histories() -> None:
    idx = index({1: range(2, 10), 2: range(6, 12), 3: range(9, 11)}, {2: HISTORY_2, 3: HISTORY_3})
    assert timeline_problems(idx, 2) == ([], [])
    assert timeline_problems(idx, 3) == ([], [])
    assert timeline_problems(idx, 1) == ([], [])


def test_a_missing_ancestor_history_and_a_disagreeing_one() -> None:
    idx = index({3: range(9, 11)}, {3: HISTORY_3})
    problems, _ = timeline_problems(idx, 3)
    assert problems == ["its ancestor timeline 2 has no history file 00000002.history"]
    other = f"1\t{seg_lsn(5)}\tsomething else\n"
    problems, _ = timeline_problems(index({3: range(9, 11)}, {2: other, 3: HISTORY_3}), 3)
    assert problems == ["its ancestry up to timeline 2 differs from 00000002.history"]


def test_segments_without_a_history_file() -> None:
    problems, _ = timeline_problems(index({1: [1], 2: [6]}), 2)
    assert problems == ["timeline 2 has no history file 00000002.history; recovery cannot follow it"]


def test_switch_points_going_backwards_and_parents_not_older() -> None:
    bad = ArchiveIndex(SEG, {}, {3: [wal.HistoryEntry(1, wal.LSN.parse(seg_lsn(9))),
                                     wal.HistoryEntry(2, wal.LSN.parse(seg_lsn(6)))]})
    problems, _ = timeline_problems(bad, 3)
    assert any("goes backwards" in p for p in problems)
    bad = ArchiveIndex(SEG, {}, {2: [wal.HistoryEntry(4, wal.LSN.parse(seg_lsn(9)))]})
    assert any("not older" in p for p in timeline_problems(bad, 2)[0])


def test_the_parent_must_reach_the_switch_segment_and_the_child_must_hold_it() -> None:
    problems, _ = timeline_problems(index({1: [2, 3], 2: range(6, 9)}, {2: HISTORY_2}), 2)
    assert problems == [f"timeline 1's archived WAL stops at {name(1, 3)}, short of the switch to timeline 2 at "
                        f"{seg_lsn(6, 0x5000)}: {name(1, 4)}..{name(1, 5)} missing"]
    problems, _ = timeline_problems(index({1: range(2, 6), 2: [8]}, {2: HISTORY_2}), 2)
    assert problems == [f"timeline 2's archived WAL starts at {name(2, 8)}, but recovery reads the switch segment "
                        f"{name(2, 6)} from it"]
    # No parent WAL at all before the switch (expired by retention): a note, not a failure.
    problems, notes = timeline_problems(index({2: range(6, 9)}, {2: HISTORY_2}), 2)
    assert problems == [] and notes and "no archived WAL before the switch" in notes[0]


# --- grouping ---------------------------------------------------------------------------------------


def test_collapse_groups_good_runs_and_keeps_problems_apart() -> None:
    results = [(name(1, s), OK, "", f"k{s}") for s in range(1, 4)]
    results += [(name(1, 4), FAILED, "checksum mismatch", "k4"), (name(1, 5), OK, "", "k5"),
                (name(1, 6), PARTIAL, NO_IDENTITY, "k6"), (name(1, 7), PARTIAL, NO_IDENTITY, "k7")]
    out = collapse(results, "B")
    assert [(f.subject, f.status) for f in out] == [
        (f"{name(1, 1)}..{name(1, 3)} (3 files)", OK), (name(1, 4), FAILED), (name(1, 5), OK),
        (f"{name(1, 6)}..{name(1, 7)} (2 files)", PARTIAL)]
    assert out[1].key == "k4" and out[1].detail == "checksum mismatch" and all(f.backup_id == "B" for f in out)
    # With the segment size a range also ends at a hole; other files join the range they sort into.
    lines = [(n, OK, "", None) for n in (name(1, 1), name(1, 2), name(1, 2) + ".00000028.backup", name(1, 3), name(1, 5))]
    assert [f.subject for f in collapse(lines, seg_size=SEG)] == [f"{name(1, 1)}..{name(1, 3)} (4 files)", name(1, 5)]
    assert len(collapse(lines)) == 1


# --- a repository in memory -------------------------------------------------------------------------


def make_ctx(storage: MemoryStorage, *, identity: str | None = str(IDENTITY)) -> Context:
    settings = Settings(cluster=C, repository_url="memory://verify", age_recipients=(RECIPIENT,), age_identity=identity)
    return Context(settings=settings, storage=storage, conn=ConnInfo.from_dsn("", {}))


SPEC = PipelineSpec(compression="zstd", encryption="age", recipients=(RECIPIENT,))


def store(storage: MemoryStorage, key: str, data: bytes, spec: PipelineSpec = SPEC) -> StreamResult:
    with storage.open_write(key) as w:
        return write_stream(io.BytesIO(data), w, spec)


def push_wal(storage: MemoryStorage, file_name: str, data: bytes | None = None, *,
             archived_at: dt.datetime = NOW - dt.timedelta(hours=1)) -> str:
    """What ``wal push`` stores: the object plus its checksum record."""
    data = data if data is not None else file_name.encode() * 100
    key = layout.wal_object(C, file_name, SPEC.suffix())
    result = store(storage, key, data)
    doc = {"format": 1, "name": file_name, "kind": wal.classify(file_name).name.lower(), "key": key,
           "system_identifier": SYSID, "pipeline": SPEC.to_json(), "archived_at": archived_at.isoformat(),
           **result.to_json()}
    if file_name.endswith(".history"):
        doc["history"] = data.decode()
    with storage.open_write(layout.wal_meta(C, file_name)) as w:
        w.write(json.dumps(doc).encode())
    return key


def put_logical(storage: MemoryStorage, backup_id: str) -> LogicalManifest:
    prefix = layout.logical_prefix(C, backup_id)
    objects = []
    for db in ("app", "crm"):
        key = layout.database_object(db, SPEC.suffix())
        objects.append(StoredObject(db, key, store(storage, prefix + key, f"PGDMP {db} ".encode() * 5000)))
    m = LogicalManifest(
        backup_id=backup_id, cluster=C, system_identifier=SYSID, server_version="15.0", server_version_num=150000,
        pg_dump_version="15.0", client_bindir="", started_at="s", finished_at="f", duration_seconds=1.0, pipeline=SPEC,
        host="h", pgvault_version="0",
        databases=tuple(DatabaseEntry(o.name, o, "UTF8", "C", "C", 1, True) for o in objects),
    )
    storage.put_if_absent(prefix + layout.MANIFEST_NAME, m.dumps())
    return m


def put_physical(storage: MemoryStorage, backup_id: str, start: int, stop: int, *, tli: int = 1) -> PhysicalManifest:
    prefix = layout.base_prefix(C, backup_id)
    key = "base.tar" + SPEC.suffix()
    base = StoredObject("base", key, store(storage, prefix + key, b"tar" * 20000))
    m = dataclasses.replace(manifest(backup_id, start, stop, tli=tli, base=base), pipeline=SPEC)
    storage.put_if_absent(prefix + layout.MANIFEST_NAME, m.dumps())
    return m


B1, B2, L1 = "20261125T100000Z", "20261125T110000Z", "20261125T103000Z"


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> MemoryStorage:
    """Two base backups, a logical backup in between, and continuous WAL 2..9 on timeline 1."""
    storage = MemoryStorage(request.node.name)
    ensure_cluster(storage, C, system_identifier=SYSID, server_major=15, wal_segment_size=SEG)
    put_physical(storage, B1, 2, 3)
    put_logical(storage, L1)
    put_physical(storage, B2, 6, 7)
    for s in range(2, 10):
        push_wal(storage, name(1, s))
    return storage


def statuses(report: VerifyReport) -> list[tuple[str, str, str]]:
    return [(f.kind, f.subject, f.status) for f in report.findings]


def failed(report: VerifyReport) -> list[tuple[str, str, str]]:
    return [(f.kind, f.subject, f.detail) for f in report.findings if f.status == FAILED]


def flip(storage: MemoryStorage, key: str) -> None:
    data = bytearray(storage.read_bytes(key))
    data[len(data) // 2] ^= 0x01
    with storage.open_write(key) as w:
        w.write(bytes(data))


def test_a_good_repository_verifies_clean(repo: MemoryStorage) -> None:
    report = verify(make_ctx(repo), None, now=NOW)
    assert failed(report) == [] and report.warnings == 0 and report.ok
    assert report.objects == 2 + 2 + 8  # two tars, two dumps, eight segments
    assert report.bytes_read == sum(i.size for i in repo.list(C + "/") if not i.key.endswith(".json"))
    assert report.job_details() == {"checked": 12, "failures": 0, "bytes": report.bytes_read}
    assert report.decryption_checked
    kinds = statuses(report)
    assert ("logical", "app.dump.zst.age", OK) in kinds and ("physical", "base.tar.zst.age", OK) in kinds
    assert ("wal", f"{name(1, 2)}..{name(1, 9)} (8 files)", OK) in kinds
    cont = [f for f in report.findings if f.kind == "wal_continuity"]
    assert [(f.backup_id, f.subject, f.status) for f in cont] == [
        (B1, f"WAL {name(1, 2)}..{name(1, 9)} (timeline 1)", OK), (B2, f"WAL {name(1, 6)}..{name(1, 9)} (timeline 1)", OK)]
    doc = report.to_json()
    assert doc["ok"] is True and doc["summary"]["failures"] == 0 and doc["summary"]["decryption_checked"] is True


def test_a_flipped_byte_in_a_backup_object_is_named(repo: MemoryStorage) -> None:
    key = layout.logical_prefix(C, L1) + "crm.dump.zst.age"
    flip(repo, key)
    report = verify(make_ctx(repo), None, now=NOW)
    [(kind, subject, detail)] = failed(report)
    assert (kind, subject) == ("logical", "crm.dump.zst.age") and detail.startswith("checksum mismatch of stored bytes")
    assert [f.key for f in report.findings if f.status == FAILED] == [key]
    assert report.job_details()["failures"] == 1


def test_a_truncated_and_a_missing_object(repo: MemoryStorage) -> None:
    base = layout.base_prefix(C, B1) + "base.tar.zst.age"
    data = repo.read_bytes(base)
    with repo.open_write(base) as w:
        w.write(data[:-10])
    repo.delete(layout.logical_prefix(C, L1) + "app.dump.zst.age")
    found = {(k, s): d for k, s, d in failed(verify(make_ctx(repo), None, now=NOW))}
    assert "stored size is" in found[("physical", "base.tar.zst.age")]
    assert found[("logical", "app.dump.zst.age")].startswith("missing")


def test_a_deleted_segment_is_a_gap_for_the_backups_before_it(repo: MemoryStorage) -> None:
    for k in (layout.wal_object(C, name(1, 5), SPEC.suffix()), layout.wal_meta(C, name(1, 5))):
        repo.delete(k)
    report = verify(make_ctx(repo), None, now=NOW)
    assert failed(report) == [("wal_continuity", f"WAL {name(1, 2)}..{name(1, 9)} (timeline 1)",
                               f"missing {name(1, 5)}; recovery stops after {name(1, 4)}")]
    assert [f.backup_id for f in report.findings if f.status == FAILED] == [B1]  # B2 starts after the hole


def test_a_record_without_its_object_is_missing_and_counts_as_a_gap(repo: MemoryStorage) -> None:
    repo.delete(layout.wal_object(C, name(1, 8), SPEC.suffix()))
    found = failed(verify(make_ctx(repo), None, now=NOW))
    assert ("wal", name(1, 8), f"checksum record without its object {layout.wal_object(C, name(1, 8), SPEC.suffix())}: "
            f"wal fetch treats {name(1, 8)} as not archived") in found
    assert sum(1 for k, _s, d in found if k == "wal_continuity" and f"missing {name(1, 8)}" in d) == 2


def test_a_record_written_moments_ago_is_a_push_in_progress(repo: MemoryStorage) -> None:
    uploading = name(1, 10)
    push_wal(repo, uploading, archived_at=NOW - PUSH_GRACE / 2)
    repo.delete(layout.wal_object(C, uploading, SPEC.suffix()))
    push_wal(repo, name(1, 11))  # parallel pushes: the next one finished first
    for ref in (None, B2):
        report = verify(make_ctx(repo), ref, now=NOW)
        assert report.ok and ("wal", uploading, WARNING) in statuses(report), failed(report)
        assert ("wal_continuity", f"WAL {name(1, 6)}..{name(1, 11)} (timeline 1)", OK) in statuses(report)
    # Long after, it is a hole.
    report = verify(make_ctx(repo), B2, now=NOW + PUSH_GRACE)
    assert [(k, s) for k, s, _d in failed(report)] == [
        ("wal", uploading), ("wal_continuity", f"WAL {name(1, 6)}..{name(1, 11)} (timeline 1)")]


def test_an_object_without_its_record(repo: MemoryStorage) -> None:
    repo.delete(layout.wal_meta(C, name(1, 9)))
    found = failed(verify(make_ctx(repo), None, now=NOW))
    key = layout.wal_object(C, name(1, 9), SPEC.suffix())
    assert ("wal", name(1, 9), f"object {key} has no checksum record: wal fetch refuses it (exit 126), so recovery "
            "stops here") in found


def test_unfetchable_files_no_backup_meets_are_warnings(repo: MemoryStorage) -> None:
    # Debris before the oldest backup's start: an object whose record is gone, a record whose
    # object is gone (an interrupted expire deletes the object first).
    for s in (0, 1):
        push_wal(repo, name(1, s))
    repo.delete(layout.wal_meta(C, name(1, 0)))
    repo.delete(layout.wal_object(C, name(1, 1), SPEC.suffix()))
    # After the end of the archive a record without its object only ends the archive earlier.
    push_wal(repo, name(1, 11))
    repo.delete(layout.wal_object(C, name(1, 11), SPEC.suffix()))
    report = verify(make_ctx(repo), None, now=NOW)
    assert report.ok, failed(report)
    warned = [(f.subject, f.detail) for f in report.findings if f.status == WARNING and f.kind == "wal"]
    assert [s for s, _d in warned] == [name(1, 0), name(1, 1), name(1, 11)]
    assert all(d.endswith("(no base backup needs it)") for _s, d in warned)


def test_a_flipped_byte_in_a_wal_object(repo: MemoryStorage) -> None:
    flip(repo, layout.wal_object(C, name(1, 4), SPEC.suffix()))
    found = failed(verify(make_ctx(repo), None, now=NOW))
    assert [(k, s) for k, s, _d in found] == [("wal", name(1, 4)), ("wal_continuity", f"WAL {name(1, 2)}..{name(1, 9)} (timeline 1)")]
    assert "checksum mismatch" in found[0][2] and f"failed verification: recovery stops at {name(1, 4)}" in found[1][2]


def test_another_systems_wal_is_refused(repo: MemoryStorage) -> None:
    meta_key = layout.wal_meta(C, name(1, 3))
    doc = json.loads(repo.read_bytes(meta_key))
    doc["system_identifier"] = "1"
    with repo.open_write(meta_key) as w:
        w.write(json.dumps(doc).encode())
    assert any("archived from system 1" in d for _k, _s, d in failed(verify(make_ctx(repo), None, now=NOW)))


def test_without_an_identity_only_stored_bytes_are_checked_and_the_report_says_so(repo: MemoryStorage) -> None:
    report = verify(make_ctx(repo, identity=None), None, now=NOW)
    assert report.ok and not report.decryption_checked and report.undecrypted == 12
    assert {f.status for f in report.findings if f.kind in ("logical", "physical", "wal")} == {PARTIAL}
    assert report.to_json()["summary"]["decryption_checked"] is False
    # Bit rot in the stored bytes is still found.
    flip(repo, layout.base_prefix(C, B2) + "base.tar.zst.age")
    assert [s for _k, s, _d in failed(verify(make_ctx(repo, identity=None), None, now=NOW))] == ["base.tar.zst.age"]


def test_the_wrong_identity_fails_every_encrypted_object(repo: MemoryStorage) -> None:
    report = verify(make_ctx(repo, identity=OTHER_IDENTITY), B2, now=NOW)
    assert not report.ok and {f.kind for f in report.findings if f.status == FAILED} >= {"physical", "wal"}
    detail = next(f.detail for f in report.findings if f.kind == "physical")
    assert detail.startswith("the stored bytes match their record, but: ") and "\n" not in detail


def test_one_base_backup_verifies_its_objects_and_the_wal_it_needs(repo: MemoryStorage) -> None:
    report = verify(make_ctx(repo), B2, now=NOW)
    assert report.ok and report.scope == B2
    assert statuses(report) == [
        ("physical", "base.tar.zst.age", OK),
        ("wal", f"{name(1, 6)}..{name(1, 9)} (4 files)", OK),
        ("wal_continuity", f"WAL {name(1, 6)}..{name(1, 9)} (timeline 1)", OK),
    ]
    assert report.objects == 5


def test_latest_is_the_newest_backup_of_either_kind(repo: MemoryStorage) -> None:
    assert verify(make_ctx(repo), "latest", now=NOW).scope == B2
    put_logical(repo, "20261125T120000Z")
    report = verify(make_ctx(repo), "latest", now=NOW)
    assert report.scope == "20261125T120000Z" and {f.kind for f in report.findings} == {"logical"}


def test_unknown_backups_and_empty_repositories_are_not_found(repo: MemoryStorage) -> None:
    with pytest.raises(NotFoundError, match="no backup 20200101T000000Z"):
        verify(make_ctx(repo), "20200101T000000Z")
    with pytest.raises(NotFoundError, match="not a backup id"):
        verify(make_ctx(repo), "yesterday")
    empty = MemoryStorage("empty")
    with pytest.raises(NotFoundError, match="nothing to verify"):
        verify(make_ctx(empty), None)
    with pytest.raises(NotFoundError, match="no backups"):
        verify(make_ctx(empty), "latest")


def test_an_unreadable_manifest_is_a_failure_not_a_crash(repo: MemoryStorage) -> None:
    with repo.open_write(layout.logical_prefix(C, L1) + layout.MANIFEST_NAME) as w:
        w.write(b"{not json")
    found = failed(verify(make_ctx(repo), None, now=NOW))
    assert [(k, s) for k, s, _d in found] == [("logical", "manifest.json")] and "unreadable" in found[0][2]


def test_timelines_histories_are_verified_with_the_archive(repo: MemoryStorage) -> None:
    history = f"1\t{seg_lsn(8, 0x5000)}\tno recovery target specified\n"
    push_wal(repo, "00000002.history", history.encode())
    for s in (8, 9, 10):
        push_wal(repo, name(2, s))
    report = verify(make_ctx(repo), None, now=NOW)
    assert failed(report) == []
    assert ("timeline", "00000002.history", OK) in statuses(report)
    assert ("wal_continuity", f"WAL {name(1, 2)}..{name(2, 10)} (timeline 2)", OK) in statuses(report)
    # The copy in the checksum record must be the archived file.
    meta_key = layout.wal_meta(C, "00000002.history")
    doc = json.loads(repo.read_bytes(meta_key))
    doc["history"] = history.replace("no recovery", "NO recovery")
    with repo.open_write(meta_key) as w:
        w.write(json.dumps(doc).encode())
    found = failed(verify(make_ctx(repo), None, now=NOW))
    assert ("wal", "00000002.history", "the copy of the history in its checksum record differs from the archived file") in found


def test_a_gap_no_backup_needs_is_a_warning(repo: MemoryStorage) -> None:
    # Old WAL before the oldest backup, with a hole in it (retention would normally delete it).
    push_wal(repo, name(1, 0))
    report = verify(make_ctx(repo), None, now=NOW)
    assert report.ok and ("archive", name(1, 1), WARNING) in statuses(report)


# --- incremental chains ---------------------------------------------------------------------------

I1, I2 = "20261125T113000Z", "20261125T114000Z"


def put_incr(storage: MemoryStorage, backup_id: str, start: int, stop: int, kind: str, ref: PhysicalManifest,
             *, listing: bytes | None = None) -> PhysicalManifest:
    """An ``incr``/``diff`` of ``ref``, with a file list (``listing``: its bytes before zstd)."""
    prefix = layout.base_prefix(C, backup_id)
    key = "base.tar" + SPEC.suffix()
    base = StoredObject("base", key, store(storage, prefix + key, backup_id.encode() * 2000))
    rows = [file_list.FileEntry("base/5/16384", 8192, SHA, 1, "base.tar.zst.age"),
            file_list.FileEntry("PG_VERSION", 3, None, None, "base.tar.zst.age")]
    data = listing if listing is not None else file_list.dumps(rows)
    files = StoredObject("files", file_list.FILE_LIST_NAME,
                         store(storage, prefix + file_list.FILE_LIST_NAME, data, file_list.FILES_SPEC))
    m = dataclasses.replace(manifest(backup_id, start, stop, base=base), pipeline=SPEC, backup_type=kind,
                            reference=ref.backup_id, reference_start_lsn=ref.start_lsn, files=files)
    storage.put_if_absent(prefix + layout.MANIFEST_NAME, m.dumps())
    return m


@pytest.fixture
def chain(repo: MemoryStorage) -> MemoryStorage:
    """The repository of ``repo`` with I1, an incr of B2 (WAL 8), and I2, an incr of I1 (WAL 9)."""
    b2 = catalog.load_physical(repo, C, B2)
    i1 = put_incr(repo, I1, 8, 8, "incr", b2)
    put_incr(repo, I2, 9, 9, "incr", i1)
    return repo


def test_an_incr_is_verified_with_every_backup_it_is_restored_from(chain: MemoryStorage) -> None:
    report = verify(make_ctx(chain), I2, now=NOW)
    assert report.ok and report.scope == I2
    assert [(f.backup_id, f.kind, f.subject, f.status) for f in report.findings] == [
        (B2, "physical", "base.tar.zst.age", OK),
        (I1, "physical", "base.tar.zst.age", OK),
        (I1, "physical", "files.json.zst", OK),
        (I2, "physical", "base.tar.zst.age", OK),
        (I2, "physical", "files.json.zst", OK),
        (I2, "chain", f"incr of {I1}", OK),
        (I2, "wal", name(1, 9), OK),  # its own WAL only, as for any base backup
        (I2, "wal_continuity", f"WAL {name(1, 9)}..{name(1, 9)} (timeline 1)", OK),
    ]
    by = {(f.backup_id, f.subject): f.detail for f in report.findings}
    assert by[(I2, f"incr of {I1}")] == f"3 backups, each verified: {B2} (full), {I1} (incr), {I2} (incr)"
    assert by[(I1, "files.json.zst")] == "2 files listed"
    assert report.objects == 3 + 2 + 1


def test_all_verifies_each_object_once_and_every_chain(chain: MemoryStorage) -> None:
    report = verify(make_ctx(chain), None, now=NOW)
    assert failed(report) == [] and report.ok
    assert report.objects == 4 + 2 + 2 + 8  # four tars, two file lists, two dumps, eight segments
    keys = [f.key for f in report.findings if f.key and f.kind == "physical"]
    assert len(keys) == len(set(keys)) == 6
    assert [(f.backup_id, f.status) for f in report.findings if f.kind == "chain"] == [(I1, OK), (I2, OK)]


def test_a_deleted_object_of_the_middle_backup_fails_the_incr_above_it(chain: MemoryStorage) -> None:
    chain.delete(layout.base_prefix(C, I1) + "base.tar.zst.age")
    for ref in (I2, None):
        report = verify(make_ctx(chain), ref, now=NOW)
        got = [(f.backup_id, f.kind, f.detail.split(";")[0]) for f in report.findings if f.status == FAILED]
        assert got == [(I1, "physical", "missing: the object is not in the repository"),
                       (I2, "chain", f"base backup {I1}, which it is restored from, failed verification (see its items)")]


def test_a_missing_middle_backup_is_a_broken_chain_restore_refuses(chain: MemoryStorage) -> None:
    for o in list(chain.list(layout.base_prefix(C, I1))):
        chain.delete(o.key)
    report = verify(make_ctx(chain), I2, now=NOW)
    assert failed(report) == [("chain", f"incr of {I1}",
                               f"broken: it needs base backup {I1}, and it is not in the repository; restore refuses it")]
    # the links that are there are still verified
    assert [f.backup_id for f in report.findings if f.kind == "physical"] == [I2, I2]
    assert not verify(make_ctx(chain), None, now=NOW).ok


def test_a_damaged_middle_manifest_is_reported_once_and_breaks_the_chain(chain: MemoryStorage) -> None:
    with chain.open_write(layout.base_prefix(C, I1) + layout.MANIFEST_NAME) as w:
        w.write(b"{not json")
    report = verify(make_ctx(chain), None, now=NOW)
    bad = [(f.backup_id, f.kind, f.subject) for f in report.findings if f.status == FAILED]
    assert bad == [(I1, "physical", "manifest.json"), (I2, "chain", f"incr of {I1}")]
    assert "its manifest is damaged" in failed(report)[1][2]


def test_a_reference_replaced_since_the_incr_was_taken_breaks_the_chain(repo: MemoryStorage) -> None:
    b2 = catalog.load_physical(repo, C, B2)
    put_incr(repo, I1, 8, 8, "diff", dataclasses.replace(b2, start_lsn=seg_lsn(5, 0x28)))
    [(kind, subject, detail)] = failed(verify(make_ctx(repo), I1, now=NOW))
    assert (kind, subject) == ("chain", f"diff of {B2}") and "was taken against a backup" in detail


def test_a_damaged_or_foreign_file_list_is_a_failure(repo: MemoryStorage) -> None:
    b2 = catalog.load_physical(repo, C, B2)
    put_incr(repo, I1, 8, 8, "incr", b2, listing=b'{"format": 9}')
    [(kind, subject, detail)] = failed(verify(make_ctx(repo), I1, now=NOW))
    assert (kind, subject) == ("physical", "files.json.zst") and "is not a format-1 file list" in detail
    flip(repo, layout.base_prefix(C, I1) + file_list.FILE_LIST_NAME)
    [(kind, subject, detail)] = failed(verify(make_ctx(repo), I1, now=NOW))
    assert (kind, subject) == ("physical", "files.json.zst") and detail.startswith("checksum mismatch")
