"""Choosing the base backup and WAL for a recovery target: pure, on synthetic archives."""

from __future__ import annotations

import pytest

from pgvault.errors import NotFoundError, UsageError
from pgvault.pg import wal
from pgvault.pipeline import PipelineSpec, StreamResult
from pgvault.policy.pitr import RecoveryTarget, archive_gaps, full_xid, plan_recovery, recoverable_windows
from pgvault.repository.archive_index import ArchiveIndex, RestorePoint
from pgvault.repository.manifest import StoredObject
from pgvault.repository.physical import PhysicalManifest

SEG = 16 << 20
SHA = "0" * 64


def seg_lsn(segno: int, offset: int = 0x100) -> str:
    return str(wal.segment_start_lsn(segno, SEG) + offset)


def backup(backup_id: str, start_seg: int, stop_seg: int, *, tli: int = 1, stopped_at: str = "", next_xid: int | None = None) -> PhysicalManifest:
    obj = StoredObject("base", "base.tar", StreamResult(1, SHA, 1, SHA))
    return PhysicalManifest(
        backup_id=backup_id, cluster="c", system_identifier="1", server_version="15.0", server_version_num=150000,
        wal_segment_size=SEG, timeline=tli, start_lsn=seg_lsn(start_seg, 0x28), stop_lsn=seg_lsn(stop_seg),
        first_wal=wal.segment_name(tli, start_seg, SEG), last_wal=wal.segment_name(tli, stop_seg, SEG),
        started_at=stopped_at or "2026-11-25T10:00:00+00:00", finished_at=stopped_at or "2026-11-25T10:00:00+00:00",
        duration_seconds=1.0, backup_label="", tablespace_map="", pipeline=PipelineSpec(), base=obj, base_files=1,
        tablespaces=(), host="h", pgvault_version="0", stopped_at=stopped_at, next_xid=next_xid,
    )


def index(segments: dict[int, range | list[int]], histories: dict[int, str] | None = None,
          points: dict[str, RestorePoint] | None = None) -> ArchiveIndex:
    return ArchiveIndex(
        seg_size=SEG,
        segments={t: frozenset(s) for t, s in segments.items()},
        histories={t: wal.parse_history(text) for t, text in (histories or {}).items()},
        restore_points=points or {},
    )


B1 = backup("20261125T100000Z", 2, 3, stopped_at="2026-11-25T10:00:00+00:00", next_xid=1000)
B2 = backup("20261125T120000Z", 10, 11, stopped_at="2026-11-25T12:00:00+00:00", next_xid=5000)


def test_end_of_archive_takes_the_newest_backup() -> None:
    plan = plan_recovery([B1, B2], index({1: range(2, 20)}), RecoveryTarget())
    assert plan.backup is B2 and plan.timeline == 1
    assert plan.first_wal == wal.segment_name(1, 10, SEG) and plan.last_reachable_wal == wal.segment_name(1, 19, SEG)


def test_time_target_takes_the_newest_backup_that_ended_before_it_and_says_why_others_were_passed_over() -> None:
    arch = {wal.segment_name(1, 19, SEG): "2026-11-25T13:00:00+00:00"}
    plan = plan_recovery([B1, B2], index({1: range(2, 20)}), RecoveryTarget.parse(time="2026-11-25 11:00:00+00"),
                         archived_at=arch.get)
    assert plan.backup is B1
    assert plan.passed_over == ((B2.backup_id, "it ended at 2026-11-25T12:00:00+00:00, after the target time"),)


def test_time_target_after_the_end_of_the_archive_is_refused() -> None:
    arch = {wal.segment_name(1, 19, SEG): "2026-11-25T13:00:00+00:00"}
    with pytest.raises(NotFoundError, match="newest archived WAL"):
        plan_recovery([B1, B2], index({1: range(2, 20)}), RecoveryTarget.parse(time="2026-11-25 14:00:00+00"),
                      archived_at=arch.get)


def test_lsn_target_across_a_gap_names_the_missing_segment() -> None:
    idx = index({1: [2, 3, 4, 5, 7, 8, 10, 11, 12]})
    target = RecoveryTarget.parse(lsn=seg_lsn(8))
    with pytest.raises(NotFoundError) as e:
        plan_recovery([B1], idx, target)
    assert wal.segment_name(1, 6, SEG) in e.value.message
    # After the newer backup the archive is continuous: it serves a later target.
    plan = plan_recovery([B1, B2], idx, RecoveryTarget.parse(lsn=seg_lsn(12)))
    assert plan.backup is B2 and plan.needed_until == wal.segment_name(1, 12, SEG)


def test_target_before_every_backup_explains_each() -> None:
    with pytest.raises(NotFoundError) as e:
        plan_recovery([B1, B2], index({1: range(2, 20)}), RecoveryTarget.parse(lsn=seg_lsn(1)))
    assert B1.backup_id in e.value.message and B2.backup_id in e.value.message and "after the target" in e.value.message


def test_backup_whose_wal_is_incomplete_is_not_restorable() -> None:
    with pytest.raises(NotFoundError, match="needed to make the backup consistent"):
        plan_recovery([B2], index({1: [10]}), RecoveryTarget())


def test_latest_timeline_follows_history_and_skips_backups_past_the_branch_point() -> None:
    # Timeline 2 branched off timeline 1 in segment 8: B2 (ends in 11 on timeline 1) is not on its path.
    history2 = f"1\t{seg_lsn(8, 0x500)}\tbefore 2026-11-25 11:30:00+00\n"
    idx = index({1: range(2, 12), 2: range(8, 15)}, {2: history2})
    plan = plan_recovery([B1, B2], idx, RecoveryTarget())
    assert plan.timeline == 2 and plan.backup is B1
    assert plan.last_reachable_wal == wal.segment_name(2, 14, SEG)
    assert "branched off" in plan.passed_over[0][1]
    # Timeline 1 explicitly: B2 again.
    assert plan_recovery([B1, B2], idx, RecoveryTarget.parse(timeline="1")).backup is B2
    windows = recoverable_windows([B1, B2], idx)  # B2 along its own timeline (see the test below)
    assert [(w.backup_id, w.timeline, w.to_wal) for w in windows] == [
        (B1.backup_id, 2, wal.segment_name(2, 14, SEG)), (B2.backup_id, 1, wal.segment_name(1, 11, SEG))]


def test_parent_missing_before_the_switch_is_a_gap() -> None:
    history2 = f"1\t{seg_lsn(8, 0x500)}\treason\n"
    idx = index({1: [2, 3, 4, 5, 7], 2: range(8, 12)}, {2: history2})
    assert archive_gaps(idx) == [(wal.segment_name(1, 6, SEG), wal.segment_name(1, 6, SEG))]
    with pytest.raises(NotFoundError):
        plan_recovery([B1], idx, RecoveryTarget.parse(lsn=seg_lsn(9)))


def test_named_target_uses_the_recorded_position_or_warns() -> None:
    point = RestorePoint("before-delete", wal.LSN.parse(seg_lsn(6)), "2026-11-25T11:00:00+00:00", 1)
    idx = index({1: range(2, 20)}, points={"before-delete": point})
    plan = plan_recovery([B1, B2], idx, RecoveryTarget.parse(name="before-delete"))
    assert plan.backup is B1 and plan.needed_until == wal.segment_name(1, 6, SEG) and not plan.warnings
    unknown = plan_recovery([B1, B2], idx, RecoveryTarget.parse(name="made-by-hand"))
    assert unknown.backup is B2 and "position is unknown" in unknown.warnings[0]


def test_xid_target_skips_backups_that_may_contain_the_transaction() -> None:
    plan = plan_recovery([B1, B2], index({1: range(2, 20)}), RecoveryTarget.parse(xid="3000"))
    assert plan.backup is B1 and "began before this backup ended" in plan.passed_over[0][1]
    assert plan_recovery([B1, B2], index({1: range(2, 20)}), RecoveryTarget.parse(xid="6000")).backup is B2


def test_full_xid_picks_the_nearest_epoch() -> None:
    assert full_xid(100, (3 << 32) + 50) == (3 << 32) + 100
    assert full_xid(0xFFFFFFF0, (3 << 32) + 5) == (2 << 32) + 0xFFFFFFF0
    assert full_xid(5, (2 << 32) + 0xFFFFFFF0) == (3 << 32) + 5


def test_target_parsing_and_settings() -> None:
    t = RecoveryTarget.parse(time="2026-11-25 14:03:00.25+01", exclusive=True, action="promote")
    assert t.settings() == {"recovery_target_time": "2026-11-25T14:03:00.250000+01:00", "recovery_target_inclusive": "off",
                            "recovery_target_timeline": "latest", "recovery_target_action": "promote"}
    assert RecoveryTarget.parse().settings() == {"recovery_target_timeline": "latest"}
    assert RecoveryTarget.parse(immediate=True).settings()["recovery_target"] == "immediate"
    assert RecoveryTarget.parse(name="x").settings()["recovery_target_action"] == "pause"
    for bad in (dict(time="2026-11-25 14:00", lsn="0/1"), dict(time="2026-11-25 14:00"), dict(lsn="nope"),
                dict(xid="abc"), dict(name="x", exclusive=True), dict(action="promote"), dict(timeline="sideways")):
        with pytest.raises(UsageError):
            RecoveryTarget.parse(**bad)  # type: ignore[arg-type]


def test_a_backup_past_the_branch_point_keeps_a_window_on_its_own_timeline() -> None:
    # Both timelines in one repository: B2 ended on timeline 1 after timeline 2 branched off.
    # Its window runs along timeline 1 instead of vanishing ("nothing recoverable").
    history2 = f"1\t{seg_lsn(8, 0x500)}\tbefore 2026-11-25 11:30:00+00\n"
    idx = index({1: range(2, 12), 2: range(8, 15)}, {2: history2})
    windows = {w.backup_id: w for w in recoverable_windows([B1, B2], idx)}
    assert windows[B1.backup_id].timeline == 2 and windows[B1.backup_id].to_wal == wal.segment_name(2, 14, SEG)
    assert windows[B2.backup_id].timeline == 1 and windows[B2.backup_id].to_wal == wal.segment_name(1, 11, SEG)
