"""Retention (``pgvault expire``): the pure policy on synthetic histories, its invariants as
properties, and the operation (listing, safe deletion order, lock) on local and memory storage."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault.config import load_settings
from pgvault.errors import LockedError
from pgvault.operations.context import Context, build_context
from pgvault.operations.maintenance import expire as expire_op
from pgvault.pg import wal
from pgvault.pg.conn import ConnInfo
from pgvault.pipeline import PipelineSpec, StreamResult, all_suffixes
from pgvault.policy.retention import (
    DELETE_REASON,
    Backup,
    Decision,
    Folder,
    Inventory,
    LogicalPolicy,
    PhysicalPolicy,
    Policy,
    fmt_duration,
    group_folders,
    make_plan,
    plan_debris,
    plan_logical,
    plan_physical,
)
from pgvault.policy.retention_wal import WalFile, group_wal, plan_wal
from pgvault.repository import layout
from pgvault.repository.manifest import StoredObject
from pgvault.repository.physical import PhysicalManifest
from pgvault.storage import ObjectInfo
from pgvault.storage.memory import MemoryStorage

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SEG = 16 << 20
DAY = 86400.0


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def lb(when: dt.datetime | str, size: int = 1) -> Backup:
    t = at(when) if isinstance(when, str) else when
    return Backup.from_id(layout.new_backup_id(t), size=size)


def pb(when: str, start_seg: int, *, ended: str | None = None, tli: int = 1, seg: int = SEG) -> Backup:
    t = at(when)
    return Backup.from_id(layout.new_backup_id(t), ended_at=at(ended) if ended else t + dt.timedelta(minutes=5),
                          timeline=tli, start_lsn=wal.segment_start_lsn(start_seg, seg) + 0x28)


def kept(ds: Iterable[Decision]) -> list[str]:
    return [d.backup_id for d in ds if d.keep]


def reasons(ds: Iterable[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.backup_id: d.reasons for d in ds}


def idof(text: str) -> str:
    return layout.new_backup_id(at(text))


# --- logical backups ----------------------------------------------------------------------------


def test_without_any_policy_everything_is_kept_and_the_plan_says_so() -> None:
    inv = Inventory(logical=(lb("2020-01-01T00:00:00"), lb("2026-11-25T02:00:00")),
                    physical=(pb("2026-11-01T00:00:00", 3),), seg_size=SEG,
                    wal=tuple(WalFile(wal.segment_name(1, s, SEG), (obj(f"w{s}"),), obj(f"w{s}.json")) for s in range(1, 5)))
    plan = make_plan(inv, Policy(), NOW)
    assert all(d.keep for d in plan.logical + plan.physical)
    assert {d.reasons for d in plan.logical} == {("no logical retention policy configured",)}
    assert {d.reasons for d in plan.physical} == {("no physical retention policy configured",)}
    assert plan.wal.delete == () and plan.wal.kept_files == 4 and "no physical retention policy" in plan.wal.note
    assert plan.notes[0].startswith("no retention policy is configured")
    assert plan.to_json()["summary"]["logical"] == {"keep": 2, "delete": 0, "delete_bytes": 0}


def test_keep_last_keeps_the_newest_n() -> None:
    bs = [lb(f"2026-11-{d:02d}T02:00:00") for d in range(1, 6)]
    ds = plan_logical(bs, LogicalPolicy(keep_last=3), NOW)
    assert [d.backup_id for d in ds] == [b.backup_id for b in reversed(bs)]  # newest first
    assert kept(ds) == [b.backup_id for b in reversed(bs[2:])]
    assert reasons(ds)[bs[4].backup_id] == ("last 3",)
    assert reasons(ds)[bs[0].backup_id] == (DELETE_REASON,)


def test_keep_within_keeps_what_is_younger_than_the_duration() -> None:
    exactly = lb(NOW - dt.timedelta(days=2))
    younger = lb(NOW - dt.timedelta(days=2) + dt.timedelta(seconds=1))
    older = lb(NOW - dt.timedelta(days=3))
    ds = plan_logical([exactly, younger, older], LogicalPolicy(keep_within=2 * DAY), NOW)
    assert kept(ds) == [younger.backup_id]
    assert reasons(ds)[younger.backup_id] == ("within 2d",)


def test_daily_keeps_the_newest_of_each_of_the_last_days_that_have_a_backup() -> None:
    bs = [lb(t) for t in ("2026-11-25T10:00:00", "2026-11-25T02:00:00", "2026-11-24T02:00:00",
                          "2026-11-22T23:59:59", "2026-11-22T01:00:00", "2026-11-21T02:00:00")]
    ds = plan_logical(bs, LogicalPolicy(daily=3), NOW)
    # 23 November has no backup: it does not use up one of the three days (restic's semantics).
    assert reasons(ds) == {
        idof("2026-11-25T10:00:00"): ("daily 2026-11-25",),
        idof("2026-11-25T02:00:00"): (DELETE_REASON,),
        idof("2026-11-24T02:00:00"): ("daily 2026-11-24",),
        idof("2026-11-22T23:59:59"): ("daily 2026-11-22",),
        idof("2026-11-22T01:00:00"): (DELETE_REASON,),
        idof("2026-11-21T02:00:00"): (DELETE_REASON,),
    }


def test_weekly_uses_iso_weeks_across_the_new_year() -> None:
    # 2026-12-28 (Mon) .. 2027-01-03 (Sun) are all ISO week 2026-W53; 2027-01-04 begins 2027-W01.
    bs = [lb(t) for t in ("2027-01-04T02:00:00", "2027-01-03T02:00:00", "2026-12-28T02:00:00", "2026-12-27T02:00:00")]
    ds = plan_logical(bs, LogicalPolicy(weekly=3), at("2027-01-05T00:00:00"))
    assert reasons(ds) == {
        idof("2027-01-04T02:00:00"): ("weekly 2027-W01",),
        idof("2027-01-03T02:00:00"): ("weekly 2026-W53",),
        idof("2026-12-28T02:00:00"): (DELETE_REASON,),
        idof("2026-12-27T02:00:00"): ("weekly 2026-W52",),
    }


def test_calendar_tiers_are_utc() -> None:
    # 01:30 on 1 December in Berlin is still November in UTC.
    berlin = dt.timezone(dt.timedelta(hours=1))
    b = Backup("20261130T233000Z", dt.datetime(2026, 12, 1, 0, 30, tzinfo=berlin))
    assert reasons(plan_logical([b], LogicalPolicy(monthly=1), NOW))[b.backup_id] == ("monthly 2026-11",)


def test_nightly_for_36_months() -> None:
    """The runbook's policy: a week of nightlies, four weeklies, and a nightly per month for 36 months."""
    start = at("2022-11-01T02:00:00")
    bs = [lb(start + dt.timedelta(days=n)) for n in range((at("2026-11-25T02:00:00") - start).days + 1)]
    ds = plan_logical(bs, LogicalPolicy(daily=7, weekly=4, monthly=36), NOW)
    keep = sorted(kept(ds))
    daily = [idof(f"2026-11-{d}T02:00:00") for d in range(19, 26)]
    weekly = [idof("2026-11-08T02:00:00"), idof("2026-11-15T02:00:00")]  # Sundays of W45, W46 (W47, W48 are daily)
    month_ends = [idof(f"{y}-{m:02d}-{(dt.date(y + m // 12, m % 12 + 1, 1) - dt.timedelta(days=1)).day}T02:00:00")
                  for y, m in [(2023, 12)] + [(y, m) for y in (2024, 2025) for m in range(1, 13)]
                  + [(2026, m) for m in range(1, 11)]]
    assert len(month_ends) == 35  # plus November 2026, whose newest backup is today's (a daily one)
    assert keep == sorted(daily + weekly + month_ends)
    assert len(keep) == 44
    newest = reasons(ds)[idof("2026-11-25T02:00:00")]
    assert newest == ("daily 2026-11-25", "weekly 2026-W48", "monthly 2026-11")
    assert reasons(ds)[idof("2023-11-30T02:00:00")] == (DELETE_REASON,)


def test_yearly() -> None:
    bs = [lb(t) for t in ("2026-03-01T00:00:00", "2025-12-31T00:00:00", "2025-06-01T00:00:00", "2024-12-31T00:00:00")]
    ds = plan_logical(bs, LogicalPolicy(yearly=2), NOW)
    assert kept(ds) == [idof("2026-03-01T00:00:00"), idof("2025-12-31T00:00:00")]


def test_every_rule_that_keeps_a_backup_is_listed() -> None:
    b = lb("2026-11-25T02:00:00")
    ds = plan_logical([b], LogicalPolicy(keep_last=2, keep_within=7 * DAY, daily=1, weekly=1, monthly=1, yearly=1, min_keep=3), NOW)
    assert reasons(ds)[b.backup_id] == ("last 2", "within 7d", "daily 2026-11-25", "weekly 2026-W48", "monthly 2026-11",
                                        "yearly 2026")


def test_min_keep_tops_up_with_the_newest_backups_no_rule_kept() -> None:
    bs = [lb(f"2026-10-{d:02d}T02:00:00") for d in range(1, 6)]
    ds = plan_logical(bs, LogicalPolicy(keep_within=DAY, min_keep=3), NOW)
    assert kept(ds) == [b.backup_id for b in reversed(bs[2:])]
    assert {reasons(ds)[b.backup_id] for b in bs[2:]} == {("min_keep 3",)}


def test_the_newest_backup_survives_a_policy_that_keeps_nothing() -> None:
    bs = [lb("2026-10-01T02:00:00"), lb("2026-10-02T02:00:00")]
    ds = plan_logical(bs, LogicalPolicy(keep_last=0, min_keep=0), NOW)
    assert kept(ds) == [bs[1].backup_id] and reasons(ds)[bs[1].backup_id] == ("min_keep 1",)


def test_same_second_ids_order_by_their_number() -> None:
    t = at("2026-11-25T02:00:00")
    bs = [Backup.from_id(layout.new_backup_id(t, n)) for n in (0, 2, 10)]
    assert kept(plan_logical(bs, LogicalPolicy(keep_last=1), NOW)) == ["20261125T020000Z-10"]


def test_empty_history() -> None:
    assert plan_logical([], LogicalPolicy(keep_last=3), NOW) == []
    assert plan_physical([], PhysicalPolicy(pitr_window=DAY), NOW) == ([], [])


# --- base backups -------------------------------------------------------------------------------


def test_base_backups_keep_last() -> None:
    bs = [pb("2026-11-20T00:00:00", 2), pb("2026-11-21T00:00:00", 5), pb("2026-11-22T00:00:00", 9)]
    ds, notes = plan_physical(bs, PhysicalPolicy(keep_last=2), NOW, SEG)
    assert kept(ds) == [bs[2].backup_id, bs[1].backup_id] and notes == []
    assert ds[-1].detail == "timeline 1, WAL from 000000010000000000000002"


def test_pitr_window_keeps_the_newest_backup_that_ended_before_it_and_everything_newer() -> None:
    bs = [pb(f"2026-11-{d:02d}T00:00:00", d, ended=f"2026-11-{d:02d}T01:00:00") for d in (15, 17, 19, 21, 23)]
    # now - 7d = 2026-11-18 12:00: the backup of the 17th ended before it and is the window's base.
    ds, notes = plan_physical(bs, PhysicalPolicy(pitr_window=7 * DAY, min_keep=1), NOW, SEG)
    r = reasons(ds)
    assert kept(ds) == [b.backup_id for b in reversed(bs[1:])]
    assert r[bs[1].backup_id] == ("pitr 7d: the base of the window (ended 2026-11-17 01:00:00, not after now-7d = 2026-11-18 12:00:00)",)
    assert r[bs[4].backup_id] == ("pitr 7d: inside the window",)
    assert r[bs[0].backup_id] == (DELETE_REASON,) and notes == []


def test_pitr_window_base_may_end_exactly_at_the_cutoff() -> None:
    bs = [pb("2026-11-17T00:00:00", 1, ended="2026-11-18T11:00:00"), pb("2026-11-18T00:00:00", 4, ended="2026-11-18T12:00:00")]
    ds, _ = plan_physical(bs, PhysicalPolicy(pitr_window=7 * DAY), NOW, SEG)
    assert kept(ds) == [bs[1].backup_id]


def test_pitr_window_older_than_every_backup_keeps_them_all_and_says_so() -> None:
    bs = [pb("2026-11-20T00:00:00", 2), pb("2026-11-22T00:00:00", 9)]
    ds, notes = plan_physical(bs, PhysicalPolicy(pitr_window=30 * DAY), NOW, SEG)
    assert kept(ds) == [bs[1].backup_id, bs[0].backup_id]
    assert len(notes) == 1 and "no earlier point can be restored" in notes[0]


def test_pitr_window_and_keep_last_both_give_their_reason() -> None:
    bs = [pb("2026-11-10T00:00:00", 2), pb("2026-11-24T00:00:00", 9)]
    ds, _ = plan_physical(bs, PhysicalPolicy(keep_last=1, pitr_window=7 * DAY), NOW, SEG)
    assert reasons(ds)[bs[1].backup_id] == ("last 1", "pitr 7d: inside the window")
    assert reasons(ds)[bs[0].backup_id][0].startswith("pitr 7d: the base of the window")


def test_an_unreadable_manifest_is_kept_uncounted_and_freezes_the_wal() -> None:
    bad = Backup.from_id("20261101T000000Z", unreadable="not JSON")
    good = [pb("2026-11-20T00:00:00", 5), pb("2026-11-22T00:00:00", 9)]
    files = [complete(1, s) for s in range(1, 12)]
    plan = make_plan(Inventory(physical=(bad, *good), wal=tuple(files), seg_size=SEG),
                     Policy(physical=PhysicalPolicy(keep_last=1)), NOW)
    assert kept(plan.physical) == [good[1].backup_id, bad.backup_id]
    assert reasons(plan.physical)[bad.backup_id] == ("manifest unreadable (not JSON): never deleted by expire",)
    assert plan.wal.delete == () and "unreadable manifest" in plan.wal.note


# --- WAL ----------------------------------------------------------------------------------------

T0 = at("2026-11-01T00:00:00")


def obj(key: str, size: int = 10, modified: dt.datetime = T0) -> ObjectInfo:
    return ObjectInfo(key, size, modified)


def complete(tli: int, segno: int, suffix: str = "", seg: int = SEG) -> WalFile:
    name = wal.segment_name(tli, segno, seg) + suffix
    return WalFile(name, (obj(layout.wal_object("c", name, ".zst.age"), 100),), obj(layout.wal_meta("c", name), 1))


def history(tli: int) -> WalFile:
    name = wal.history_file_name(tli)
    return WalFile(name, (obj(layout.wal_object("c", name, ".zst.age")),), obj(layout.wal_meta("c", name)))


def test_wal_before_the_oldest_kept_backup_goes_on_every_timeline_and_history_stays() -> None:
    backup_hist = f"{wal.segment_name(1, 5, SEG)}.00000028.backup"
    kept_hist = f"{wal.segment_name(2, 10, SEG)}.00000028.backup"
    files = ([complete(1, s) for s in range(5, 13)] + [complete(1, 9, ".partial")] + [complete(2, s) for s in range(9, 15)]
             + [history(2), WalFile(backup_hist, (obj("x"),), obj("x.json")), WalFile(kept_hist, (obj("y"),), obj("y.json"))])
    b = pb("2026-11-20T00:00:00", 10, tli=2)
    plan = plan_wal(files, [b], SEG, configured=True)
    gone = sorted(f.name for f in plan.delete)
    assert gone == sorted([wal.segment_name(1, s, SEG) for s in range(5, 10)] + [wal.segment_name(1, 9, SEG) + ".partial",
                                                                                 backup_hist, wal.segment_name(2, 9, SEG)])
    assert plan.keep_from == wal.segment_name(2, 10, SEG) and plan.keep_from_backup == b.backup_id
    assert [(r.timeline, r.first, r.last, r.files) for r in plan.ranges] == [
        (1, "000000010000000000000005", "000000010000000000000009.partial", 7),
        (2, "000000020000000000000009", "000000020000000000000009", 1),
    ]
    assert plan.ranges[1].bytes == 101
    assert plan.kept_files == len(files) - 8
    assert plan.to_json()["delete_files"] == 8


def test_wal_is_kept_from_the_oldest_kept_backup_not_the_newest() -> None:
    files = [complete(1, s) for s in range(1, 30)]
    plan = plan_wal(files, [pb("2026-11-22T00:00:00", 20), pb("2026-11-20T00:00:00", 7)], SEG, configured=True)
    assert sorted(f.name for f in plan.delete) == [wal.segment_name(1, s, SEG) for s in range(1, 7)]


def test_wal_names_roll_over_the_log_id_with_the_clusters_segment_size() -> None:
    seg = 1 << 20  # 4096 segments per log id: ...00000000000FFF is followed by ...0000000100000000
    files = [complete(1, s, seg=seg) for s in range(4094, 4100)]
    plan = plan_wal(files, [pb("2026-11-22T00:00:00", 4097, seg=seg)], seg, configured=True)
    assert [f.name for f in plan.delete] == ["000000010000000000000FFE", "000000010000000000000FFF", "000000010000000100000000"]
    assert plan.keep_from == "000000010000000100000001"


def test_without_a_base_backup_no_wal_is_deleted() -> None:
    plan = make_plan(Inventory(wal=tuple(complete(1, s) for s in range(1, 5)), seg_size=SEG),
                     Policy(physical=PhysicalPolicy(keep_last=1)), NOW)
    assert plan.wal.delete == () and plan.wal.kept_files == 4 and "no base backup" in plan.wal.note


def test_without_a_physical_policy_no_wal_is_deleted() -> None:
    plan = make_plan(Inventory(physical=(pb("2026-11-22T00:00:00", 3),), wal=tuple(complete(1, s) for s in range(1, 5)),
                               seg_size=SEG), Policy(logical=LogicalPolicy(keep_last=1)), NOW)
    assert plan.wal.delete == () and "no physical retention policy" in plan.wal.note


def test_the_plan_keeps_the_wal_of_the_kept_backups_only() -> None:
    bs = (pb("2026-11-20T00:00:00", 2), pb("2026-11-21T00:00:00", 5), pb("2026-11-22T00:00:00", 9))
    plan = make_plan(Inventory(physical=bs, wal=tuple(complete(1, s) for s in range(1, 12)), seg_size=SEG),
                     Policy(physical=PhysicalPolicy(keep_last=2)), NOW)
    assert kept(plan.physical) == [bs[2].backup_id, bs[1].backup_id]
    assert [f.name for f in plan.wal.delete] == [wal.segment_name(1, s, SEG) for s in range(1, 5)]
    s = plan.summary()
    assert s["wal"] == {"keep": 7, "delete": 4, "delete_bytes": 404} and s["physical"]["delete"] == 1


def test_group_wal_pairs_objects_with_their_records_and_leaves_strays_alone() -> None:
    seg = wal.segment_name(1, 3, SEG)
    keys = [layout.wal_object("c", seg, ".zst.age"), layout.wal_meta("c", seg),
            layout.wal_object("c", seg + ".partial", ".zst"), layout.wal_meta("c", "00000002.history"),
            "c/wal/00000002.history.zst.age", "c/wal/README", f"c/wal/0000000100000000/{seg}.exe",
            f"c/wal/0000000200000000/{seg}.json"]  # a record in another timeline's folder: not where push puts it
    files, strays = group_wal([obj(k) for k in keys], "c", all_suffixes())
    assert strays == 3
    by = {f.name: f for f in files}
    assert set(by) == {seg, seg + ".partial", "00000002.history"}
    assert by[seg].complete and by["00000002.history"].complete
    assert not by[seg + ".partial"].complete and by[seg + ".partial"].sidecar is None
    assert by[seg].keys() == [keys[0], keys[1]]  # object first, record last


# --- debris -------------------------------------------------------------------------------------


def test_group_folders_finds_backup_folders_where_the_layout_puts_them() -> None:
    keys = ["c/logical/2026/11/20261125T020000Z/manifest.json", "c/logical/2026/11/20261125T020000Z/app.dump.zst",
            "c/logical/2026/10/20261125T020000Z/app.dump.zst",  # wrong month for its id
            "c/logical/2026/11/notanid/x", "c/logical/stray", "c/logical/2026/11/20261124T020000Z/app.dump.zst"]
    folders, strays = group_folders("logical", [obj(k) for k in keys], "c")
    assert strays == 3
    assert [(f.backup_id, f.has_manifest, len(f.objects)) for f in folders] == [
        ("20261124T020000Z", False, 1), ("20261125T020000Z", True, 2)]
    base, strays = group_folders("base", [obj("c/base/20261125T020000Z/base.tar"), obj("c/base/x/base.tar")], "c")
    assert [f.prefix for f in base] == ["c/base/20261125T020000Z/"] and strays == 1


def folder(kind: str, backup_id: str, modified: dt.datetime, manifest: bool = False) -> Folder:
    prefix = layout.logical_prefix("c", backup_id) if kind == "logical" else layout.base_prefix("c", backup_id)
    objs = [obj(prefix + "base.tar", 5, modified)] + ([obj(prefix + "manifest.json", 1, modified)] if manifest else [])
    return Folder(kind, prefix, backup_id, tuple(objs))


def test_debris_older_than_the_grace_goes_younger_stays() -> None:
    old = folder("logical", "20261120T020000Z", NOW - dt.timedelta(hours=25))
    young = folder("base", "20261125T020000Z", NOW - dt.timedelta(hours=23))
    backup = folder("logical", "20261101T020000Z", NOW - dt.timedelta(days=20), manifest=True)
    lost = WalFile("000000010000000000000003", (obj("o", 7, NOW - dt.timedelta(days=2)),), None)
    pushing = WalFile("000000010000000000000004", (), obj("s", 1, NOW - dt.timedelta(minutes=1)))
    out = {d.where: d for d in plan_debris([old, young, backup], [lost, pushing, complete(1, 5)], NOW, DAY)}
    assert set(out) == {old.prefix, young.prefix, lost.name, pushing.name}
    assert out[old.prefix].delete and out[old.prefix].reason == "no manifest; newest object 1d1h old (grace 1d)"
    assert not out[young.prefix].delete and "a backup may be running" in out[young.prefix].reason
    assert out[lost.name].delete and out[lost.name].reason.startswith("object without its checksum record")
    assert not out[pushing.name].delete and "a push may be in progress" in out[pushing.name].reason


def test_debris_of_a_kind_whose_backup_is_running_is_left_alone_whatever_its_age() -> None:
    old = folder("logical", "20261101T020000Z", NOW - dt.timedelta(days=20))
    other = folder("base", "20261101T020000Z", NOW - dt.timedelta(days=20))
    out = plan_debris([old, other], [], NOW, DAY, busy={"logical"})
    assert [(d.kind, d.delete) for d in out] == [("base", True), ("logical", False)]
    assert "its lock is held" in out[1].reason


def test_fmt_duration() -> None:
    assert [fmt_duration(s) for s in (0, 59, 3600, 129600, 14 * DAY, 90061)] == ["0s", "59s", "1h", "1d12h", "14d", "1d1h1m1s"]


# --- properties ---------------------------------------------------------------------------------

_times = st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2026, 11, 25), timezones=st.just(UTC))
_histories = st.lists(_times, min_size=0, max_size=40, unique_by=lambda t: t.replace(microsecond=0))
_counts = st.one_of(st.none(), st.integers(0, 6))
_logical_policies = st.builds(
    LogicalPolicy, keep_last=_counts, keep_within=st.one_of(st.none(), st.floats(0, 400 * DAY)),
    daily=st.integers(0, 6), weekly=st.integers(0, 5), monthly=st.integers(0, 13), yearly=st.integers(0, 3),
    min_keep=st.integers(0, 5),
)


def _backups(times: Sequence[dt.datetime]) -> list[Backup]:
    return [Backup.from_id(layout.new_backup_id(t)) for t in {t.replace(microsecond=0) for t in times}]


@settings(max_examples=300, deadline=None)
@given(_histories, _logical_policies)
def test_logical_invariants(times: list[dt.datetime], policy: LogicalPolicy) -> None:
    bs = _backups(times)
    ds = plan_logical(bs, policy, NOW)
    assert sorted(d.backup_id for d in ds) == sorted(b.backup_id for b in bs)
    keep = set(kept(ds))
    # never fewer than min_keep (and never none): the newest is always kept
    assert len(keep) >= min(len(bs), max(1, policy.min_keep))
    if bs:
        assert max(bs, key=lambda b: b.order).backup_id in keep
    # every decision has reasons; deletions say that no rule keeps them
    assert all(d.reasons for d in ds)
    assert all(d.reasons == (DELETE_REASON,) for d in ds if not d.keep)
    # deterministic, whatever the input order
    assert plan_logical(list(reversed(bs)), policy, NOW) == ds
    newest_first = sorted(bs, key=lambda b: b.order, reverse=True)
    if policy.keep_last:
        assert {b.backup_id for b in newest_first[:policy.keep_last]} <= keep
    if policy.keep_within is not None:
        assert {b.backup_id for b in bs if (NOW - b.taken_at).total_seconds() < policy.keep_within} <= keep
    # the calendar tiers against a brute-force oracle: newest per bucket, of the newest N buckets
    for name, key in (("daily", lambda t: t.date()), ("weekly", lambda t: t.isocalendar()[:2]),
                      ("monthly", lambda t: (t.year, t.month)), ("yearly", lambda t: t.year)):
        n = getattr(policy, name)
        buckets: dict[object, Backup] = {}
        for b in bs:
            k = key(b.taken_at)
            if k not in buckets or buckets[k].order < b.order:
                buckets[k] = b
        expected = {buckets[k].backup_id for k in sorted(buckets, key=lambda k: buckets[k].order, reverse=True)[:n]}
        by_tier = {d.backup_id for d in ds if any(r.startswith(name + " ") for r in d.reasons)}
        assert by_tier == expected, name


_base_histories = st.lists(st.tuples(st.integers(0, 60 * 24), st.integers(1, 240), st.integers(1, 3)),
                           min_size=0, max_size=12, unique_by=lambda x: x[0])


@settings(max_examples=300, deadline=None)
@given(_base_histories, _counts, st.one_of(st.none(), st.floats(0, 40 * DAY)), st.one_of(st.none(), st.floats(0, 40 * DAY)),
       st.integers(0, 3), st.lists(st.tuples(st.integers(1, 3), st.integers(0, 300)), max_size=60))
def test_physical_and_wal_invariants(
    history: list[tuple[int, int, int]], keep_last: int | None, within: float | None, window: float | None,
    min_keep: int, wal_files: list[tuple[int, int]],
) -> None:
    base = NOW - dt.timedelta(days=60)
    bs = [Backup.from_id(layout.new_backup_id(base + dt.timedelta(hours=h)), ended_at=base + dt.timedelta(hours=h, minutes=30),
                         timeline=tli, start_lsn=wal.segment_start_lsn(seg, SEG) + 0x28) for h, seg, tli in history]
    policy = PhysicalPolicy(keep_last=keep_last, keep_within=within, min_keep=min_keep, pitr_window=window)
    files = [complete(t, s) for t, s in set(wal_files)] + [history_file for history_file in (history_of(2), history_of(3))]
    plan = make_plan(Inventory(physical=tuple(bs), wal=tuple(files), seg_size=SEG), Policy(physical=policy), NOW)
    keep = {d.backup_id for d in plan.physical if d.keep}
    assert len(keep) >= min(len(bs), max(1, min_keep))
    if bs:
        assert max(bs, key=lambda b: b.order).backup_id in keep
    # every point of the PITR window stays restorable: the newest backup that ended at or before
    # the window's start, and every newer one, are kept
    if window is not None and bs:
        cutoff = NOW - dt.timedelta(seconds=window)
        before = [b for b in bs if b.ended_at and b.ended_at <= cutoff]
        if before:
            anchor = max(before, key=lambda b: b.order)
            assert {b.backup_id for b in bs if b.order >= anchor.order} <= keep
        else:
            assert keep == {b.backup_id for b in bs}
    # WAL a kept backup needs (its start segment onward, any timeline) is never deleted; history never
    deleted = {f.name for f in plan.wal.delete}
    for b in bs:
        if b.backup_id in keep:
            assert b.start_lsn is not None
            start = wal.segment_of(b.start_lsn, SEG)
            assert not any(wal.parse_segment_name(n[:24], SEG)[1] >= start for n in deleted if not n.endswith(".history"))
    assert not any(n.endswith(".history") for n in deleted)
    # and what is deleted is exactly what lies before the oldest kept start (nothing without a policy)
    if not policy.configured:
        assert deleted == set()
    if keep and policy.configured:
        boundary = min(wal.segment_of(b.start_lsn, SEG) for b in bs if b.backup_id in keep and b.start_lsn)
        assert deleted == {f.name for f in files if not f.name.endswith(".history")
                           and wal.parse_segment_name(f.name[:24], SEG)[1] < boundary}
    assert make_plan(Inventory(physical=tuple(reversed(bs)), wal=tuple(reversed(files)), seg_size=SEG),
                     Policy(physical=policy), NOW) == plan


def history_of(tli: int) -> WalFile:
    return history(tli)


# --- the operation, on real storage -------------------------------------------------------------


def _physical_manifest(backup_id: str, start_seg: int, stop_seg: int) -> bytes:
    o = StoredObject("base", "base.tar.zst", StreamResult(1, "0" * 64, 1, "0" * 64))
    t = layout.parse_backup_id(backup_id).isoformat()
    return PhysicalManifest(
        backup_id=backup_id, cluster="c", system_identifier="1", server_version="18.1", server_version_num=180001,
        wal_segment_size=SEG, timeline=1, start_lsn=str(wal.segment_start_lsn(start_seg, SEG) + 0x28),
        stop_lsn=str(wal.segment_start_lsn(stop_seg, SEG) + 0x100), first_wal=wal.segment_name(1, start_seg, SEG),
        last_wal=wal.segment_name(1, stop_seg, SEG), started_at=t, finished_at=t, duration_seconds=1.0, backup_label="",
        tablespace_map="", pipeline=PipelineSpec(compression="zstd"), base=o, base_files=1, tablespaces=(), host="h",
        pgvault_version="0", stopped_at=t,
    ).dumps()


def _put(ctx: Context, key: str, data: bytes = b"x", age: dt.timedelta | None = None) -> None:
    with ctx.storage.open_write(key) as w:
        w.write(data)
    if age is not None:  # local storage: the object's mtime is its file's
        path = Path(ctx.settings.repository_url) / key
        t = (dt.datetime.now(UTC) - age).timestamp()
        os.utime(path, (t, t))


def _repository(tmp_path: Path, **env: str) -> Context:
    environ = {"PGVAULT_REPOSITORY_URL": str(tmp_path / "repo"), "PGVAULT_CLUSTER": "c", **env}
    ctx = build_context(load_settings(environ=environ), environ={})
    ctx.storage.check_writable()
    _put(ctx, layout.cluster_key("c"), json.dumps({"cluster": "c", "system_identifier": "1", "wal_segment_size": SEG}).encode())
    old = dt.timedelta(days=3)
    for i, d in enumerate((20, 21, 22, 23)):  # four nightly logical backups
        prefix = layout.logical_prefix("c", f"202611{d}T020000Z")
        _put(ctx, prefix + "app.dump.zst", b"d" * (i + 1), old)
        _put(ctx, prefix + layout.MANIFEST_NAME, b"{}", old)
    for backup_id, start, stop in (("20261120T000000Z", 2, 3), ("20261122T000000Z", 6, 7), ("20261123T000000Z", 9, 9)):
        prefix = layout.base_prefix("c", backup_id)
        _put(ctx, prefix + "base.tar.zst", b"b", old)
        _put(ctx, prefix + layout.MANIFEST_NAME, _physical_manifest(backup_id, start, stop), old)
    for s in range(1, 12):
        name = wal.segment_name(1, s, SEG)
        _put(ctx, layout.wal_object("c", name, ".zst"), b"w", old)
        _put(ctx, layout.wal_meta("c", name), b"{}", old)
    for name in ("00000002.history", f"{wal.segment_name(1, 2, SEG)}.00000028.backup"):
        _put(ctx, layout.wal_object("c", name, ".zst"), b"h", old)
        _put(ctx, layout.wal_meta("c", name), b"{}", old)
    _put(ctx, layout.logical_prefix("c", "20261110T020000Z") + "app.dump.zst", b"old debris", dt.timedelta(days=2))
    _put(ctx, layout.logical_prefix("c", "20261124T020000Z") + "app.dump.zst", b"running?", dt.timedelta(hours=2))
    _put(ctx, layout.wal_object("c", wal.segment_name(1, 20, SEG), ".zst"), b"orphan", dt.timedelta(days=2))
    return ctx


def _keys(ctx: Context, prefix: str) -> list[str]:
    return [o.key for o in ctx.storage.list(prefix)]


def test_expire_plans_then_applies_in_a_real_repository(tmp_path: Path) -> None:
    ctx = _repository(tmp_path, PGVAULT_RETENTION_LOGICAL_KEEP_LAST="2", PGVAULT_RETENTION_PHYSICAL_KEEP_LAST="2")
    before = _keys(ctx, "")
    dry = expire_op.expire(ctx)
    assert dry.applied is None and _keys(ctx, "") == before  # a dry run deletes nothing
    plan = dry.plan
    assert kept(plan.logical) == ["20261123T020000Z", "20261122T020000Z"]
    assert kept(plan.physical) == ["20261123T000000Z", "20261122T000000Z"]
    assert plan.wal.keep_from == wal.segment_name(1, 6, SEG)
    assert [(r.first, r.last, r.files) for r in plan.wal.ranges] == [
        ("000000010000000000000001", "000000010000000000000005", 6)]  # + the first backup's history file
    assert {(d.where, d.delete) for d in plan.debris} == {
        ("c/logical/2026/11/20261110T020000Z/", True), ("c/logical/2026/11/20261124T020000Z/", False),
        (wal.segment_name(1, 20, SEG), True)}

    done = expire_op.expire(ctx, apply=True)
    assert done.applied is not None
    assert done.applied.logical == ["20261120T020000Z", "20261121T020000Z"] and done.applied.physical == ["20261120T000000Z"]
    assert done.applied.wal_files == 6 and len(done.applied.debris) == 2
    left = set(_keys(ctx, ""))
    assert not any("20261120T020000Z" in k or "20261121T020000Z" in k or "20261120T000000Z" in k for k in left)
    assert not any("20261110T020000Z" in k for k in left)
    assert layout.logical_prefix("c", "20261124T020000Z") + "app.dump.zst" in left  # young debris stays
    wal_left = sorted(k.rsplit("/", 1)[-1] for k in _keys(ctx, "c/wal/"))
    assert wal_left == sorted(["00000002.history.zst", "00000002.history.json"]
                              + [wal.segment_name(1, s, SEG) + ext for s in range(6, 12) for ext in (".zst", ".json")])
    assert _keys(ctx, "c/locks/") == []  # the expire lock is released
    # Running it again finds nothing more to do.
    again = expire_op.expire(ctx, apply=True).plan
    assert again.summary()["logical"]["delete"] == again.summary()["physical"]["delete"] == 0
    assert again.wal.delete == () and [d.delete for d in again.debris] == [False]


def test_expire_leaves_debris_of_a_running_backup_alone(tmp_path: Path) -> None:
    ctx = _repository(tmp_path)
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": dt.datetime.now(UTC).isoformat(), "ttl_seconds": 180}
    _put(ctx, layout.lock_key("c", "logical-backup"), json.dumps(lock).encode())
    plan = expire_op.expire(ctx).plan
    logical_debris = [d for d in plan.debris if d.kind == "logical"]
    assert logical_debris and not any(d.delete for d in logical_debris)
    assert any("logical-backup is running" in n for n in plan.notes)


def test_two_expires_exclude_each_other(tmp_path: Path) -> None:
    ctx = _repository(tmp_path)
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": dt.datetime.now(UTC).isoformat(),
            "ttl_seconds": 180, "token": "other"}
    _put(ctx, layout.lock_key("c", expire_op.LOCK_OPERATION), json.dumps(lock).encode())
    with pytest.raises(LockedError):
        expire_op.expire(ctx, apply=True)
    expire_op.expire(ctx)  # planning needs no lock


def test_expire_reads_the_chain_from_the_manifests_and_keeps_the_full(tmp_path: Path) -> None:
    ctx = _repository(tmp_path, PGVAULT_RETENTION_PHYSICAL_KEEP_LAST="1")
    # The repository's newest base backup becomes an incr of the one before it (a diff of the first).
    for backup_id, kind, ref, ref_seg, start, stop in (("20261123T000000Z", "incr", "20261122T000000Z", 6, 9, 9),
                                                         ("20261122T000000Z", "diff", "20261120T000000Z", 2, 6, 7)):
        m = PhysicalManifest.loads(_physical_manifest(backup_id, start, stop), where="test")
        m = dataclasses.replace(m, backup_type=kind, reference=ref,
                                reference_start_lsn=str(wal.segment_start_lsn(ref_seg, SEG) + 0x28))
        _put(ctx, layout.base_prefix("c", backup_id) + layout.MANIFEST_NAME, m.dumps())
    plan = expire_op.expire(ctx).plan
    assert reasons(plan.physical) == {"20261123T000000Z": ("last 1",),
                                      "20261122T000000Z": ("needed by 20261123T000000Z (incr)",),
                                      "20261120T000000Z": ("needed by 20261122T000000Z (diff)",)}
    assert plan.wal.keep_from == wal.segment_name(1, 2, SEG) and plan.notes == ()


def test_backup_lock_names_match_the_backup_operations() -> None:
    from pgvault.operations.logical import backup as logical
    from pgvault.operations.physical import basebackup

    assert expire_op.BACKUP_LOCKS == {"logical": logical.LOCK_OPERATION, "base": basebackup.LOCK_OPERATION}


class RecordingStorage(MemoryStorage):
    """Memory storage that records the order of deletions."""

    def __init__(self) -> None:
        super().__init__("recording")
        self.deleted: list[str] = []

    def delete(self, key: str) -> None:
        self.deleted.append(key)
        super().delete(key)


def test_deletion_order_manifest_first_then_objects_then_wal_object_before_record() -> None:
    storage = RecordingStorage()
    settings_ = load_settings(environ={"PGVAULT_REPOSITORY_URL": "memory://x", "PGVAULT_CLUSTER": "c",
                                       "PGVAULT_RETENTION_PHYSICAL_KEEP_LAST": "1", "PGVAULT_RETENTION_LOGICAL_KEEP_LAST": "1"})
    ctx = Context(settings=settings_, storage=storage, conn=ConnInfo.from_dsn("", {}))
    storage.put_if_absent(layout.cluster_key("c"), json.dumps({"cluster": "c", "system_identifier": "1", "wal_segment_size": SEG}).encode())
    for backup_id, start in (("20261120T000000Z", 2), ("20261122T000000Z", 6)):
        prefix = layout.base_prefix("c", backup_id)
        storage.put_if_absent(prefix + "base.tar.zst", b"b")
        storage.put_if_absent(prefix + "base-1.tar.zst", b"b")
        storage.put_if_absent(prefix + layout.MANIFEST_NAME, _physical_manifest(backup_id, start, start))
    for d in ("20261120T020000Z", "20261122T020000Z"):
        storage.put_if_absent(layout.logical_prefix("c", d) + "app.dump.zst", b"d")
        storage.put_if_absent(layout.logical_prefix("c", d) + layout.MANIFEST_NAME, b"{}")
    name = wal.segment_name(1, 3, SEG)
    storage.put_if_absent(layout.wal_object("c", name, ".zst"), b"w")
    storage.put_if_absent(layout.wal_meta("c", name), b"{}")
    expire_op.expire(ctx, apply=True, now=NOW)
    gone = [k for k in storage.deleted if not k.startswith("c/locks/")]
    old_base, old_logical = layout.base_prefix("c", "20261120T000000Z"), layout.logical_prefix("c", "20261120T020000Z")
    assert gone == [old_logical + "manifest.json", old_logical + "app.dump.zst",
                    old_base + "manifest.json", old_base + "base-1.tar.zst", old_base + "base.tar.zst",
                    layout.wal_object("c", name, ".zst"), layout.wal_meta("c", name)]
