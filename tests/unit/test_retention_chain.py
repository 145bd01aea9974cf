"""Retention of incremental chains (policy/retention_chain.py): a kept incr/diff keeps every backup
it is restored from, whatever the rules say of them; broken chains are planned by the rules and
noted.  Made-up chains, exhaustive cases and invariants as properties."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault.pg import wal
from pgvault.policy.retention import (
    DELETE_REASON,
    Backup,
    Decision,
    Inventory,
    PhysicalPolicy,
    Policy,
    make_plan,
    plan_physical,
)
from pgvault.policy.retention_chain import broken_chains, keep_chains, needed_by
from pgvault.policy.retention_wal import WalFile
from pgvault.repository import layout
from pgvault.storage import ObjectInfo

UTC = dt.UTC
NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SEG = 16 << 20
DAY = 86400.0
HOUR = 3600.0


def b(day: int, hour: int = 1, *, kind: str = "full", ref: Backup | None = None, seg: int | None = None) -> Backup:
    """A base backup taken on December ``day`` at ``hour``:00 UTC, starting in segment ``seg``
    (default: a distinct one per time), an ``incr``/``diff`` of ``ref``."""
    t = dt.datetime(2026, 12, day, hour, tzinfo=UTC)
    start = wal.segment_start_lsn(seg if seg is not None else day * 24 + hour, SEG) + 0x28
    return Backup.from_id(layout.new_backup_id(t), ended_at=t + dt.timedelta(minutes=5), start_lsn=start,
                          backup_type=kind, reference=ref.backup_id if ref else None,
                          reference_start_lsn=str(ref.start_lsn) if ref else "")


def plan(bs: Iterable[Backup], **policy: float | int | None) -> tuple[list[Decision], list[str]]:
    p = make_plan(Inventory(physical=tuple(bs), seg_size=SEG), Policy(physical=PhysicalPolicy(**policy)), NOW)  # type: ignore[arg-type]
    return list(p.physical), list(p.notes)


def kept(ds: Iterable[Decision]) -> set[str]:
    return {d.backup_id for d in ds if d.keep}


def reasons(ds: Iterable[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.backup_id: d.reasons for d in ds}


# --- kept chains -------------------------------------------------------------------------------


def test_keep_last_1_with_an_incr_on_top_of_a_full_keeps_the_full() -> None:
    f = b(1)
    i = b(2, kind="incr", ref=f)
    ds, notes = plan([f, i], keep_last=1)
    assert kept(ds) == {f.backup_id, i.backup_id} and notes == []
    assert reasons(ds)[i.backup_id] == ("last 1",)
    assert reasons(ds)[f.backup_id] == (f"needed by {i.backup_id} (incr)",)


def test_a_chain_of_incrs_is_kept_down_to_its_full_each_link_naming_the_one_above() -> None:
    f = b(1)
    i1 = b(2, kind="incr", ref=f)
    i2 = b(3, kind="incr", ref=i1)
    i3 = b(4, kind="incr", ref=i2)
    ds, _ = plan([f, i1, i2, i3], keep_last=1)
    r = reasons(ds)
    assert kept(ds) == {f.backup_id, i1.backup_id, i2.backup_id, i3.backup_id}
    assert r[i2.backup_id] == (needed_by(i3.backup_id, "incr"),)
    assert r[i1.backup_id] == (needed_by(i2.backup_id, "incr"),)
    assert r[f.backup_id] == (needed_by(i1.backup_id, "incr"),)


def test_a_diff_keeps_only_its_full_not_the_incrs_between() -> None:
    f = b(1)
    i1 = b(2, kind="incr", ref=f)
    i2 = b(3, kind="incr", ref=i1)
    d = b(4, kind="diff", ref=f)
    ds, _ = plan([f, i1, i2, d], keep_last=1)
    assert kept(ds) == {d.backup_id, f.backup_id}
    assert reasons(ds)[f.backup_id] == (f"needed by {d.backup_id} (diff)",)
    assert reasons(ds)[i1.backup_id] == reasons(ds)[i2.backup_id] == (DELETE_REASON,)


def test_an_incr_on_a_diff_keeps_the_diff_and_the_full_but_not_the_older_incrs() -> None:
    f = b(1)
    i1 = b(2, kind="incr", ref=f)
    d = b(3, kind="diff", ref=f)
    i2 = b(4, kind="incr", ref=d)
    ds, _ = plan([f, i1, d, i2], keep_last=1)
    assert kept(ds) == {i2.backup_id, d.backup_id, f.backup_id}
    assert reasons(ds)[d.backup_id] == (needed_by(i2.backup_id, "incr"),)
    assert reasons(ds)[f.backup_id] == (needed_by(d.backup_id, "diff"),)


def test_a_link_the_rules_keep_lists_every_rule_and_every_dependent() -> None:
    f = b(1)
    d1 = b(2, kind="diff", ref=f)
    d2 = b(3, kind="diff", ref=f)
    ds, _ = plan([f, d1, d2], keep_last=3)
    assert reasons(ds)[f.backup_id] == ("last 3", needed_by(d2.backup_id, "diff"), needed_by(d1.backup_id, "diff"))
    assert reasons(ds)[d1.backup_id] == ("last 3",)  # nothing depends on a diff here


def test_min_keep_keeps_the_chain_of_what_it_keeps() -> None:
    f = b(1)
    i = b(2, kind="incr", ref=f)
    ds, _ = plan([f, i], keep_within=HOUR, min_keep=1)  # nothing is within the hour: min_keep keeps the newest
    assert reasons(ds)[i.backup_id] == ("min_keep 1",)
    assert reasons(ds)[f.backup_id] == (needed_by(i.backup_id, "incr"),)


def test_an_older_chain_no_kept_backup_needs_goes_whole() -> None:
    f1 = b(1)
    i1 = b(2, kind="incr", ref=f1)
    f2 = b(3)
    i2 = b(4, kind="incr", ref=f2)
    ds, notes = plan([f1, i1, f2, i2], keep_last=2)
    assert kept(ds) == {f2.backup_id, i2.backup_id} and notes == []
    assert reasons(ds)[f2.backup_id] == ("last 2", needed_by(i2.backup_id, "incr"))
    assert reasons(ds)[f1.backup_id] == reasons(ds)[i1.backup_id] == (DELETE_REASON,)


def test_keep_within_keeps_the_fulls_of_the_incrs_inside_it() -> None:
    f = b(1)  # four days old
    i1 = b(4, kind="incr", ref=f)
    i2 = b(5, kind="incr", ref=i1)  # 11 hours old
    ds, _ = plan([f, i1, i2], keep_within=DAY)
    assert kept(ds) == {f.backup_id, i1.backup_id, i2.backup_id}
    assert reasons(ds)[i2.backup_id] == ("within 1d",)
    assert reasons(ds)[i1.backup_id] == (needed_by(i2.backup_id, "incr"),)


def test_the_pitr_windows_base_being_an_incr_keeps_its_chain_and_nothing_older() -> None:
    old = b(1)
    f = b(2)
    i1 = b(3, kind="incr", ref=f)  # ended 2026-12-03 01:05: the window's base (now-2d = 12-03 12:00)
    i2 = b(4, kind="incr", ref=i1)
    ds, notes = plan([old, f, i1, i2], pitr_window=2 * DAY)
    r = reasons(ds)
    assert kept(ds) == {f.backup_id, i1.backup_id, i2.backup_id} and notes == []
    assert r[i1.backup_id][0].startswith("pitr 2d: the base of the window")
    assert r[i1.backup_id][1:] == (needed_by(i2.backup_id, "incr"),)
    assert r[f.backup_id] == (needed_by(i1.backup_id, "incr"),)
    assert r[old.backup_id] == (DELETE_REASON,)


def test_an_object_lock_hold_keeps_the_chain_of_the_held_backup() -> None:
    f = b(1)
    i = b(2, kind="incr", ref=f)
    f2 = b(3)
    until = NOW + dt.timedelta(days=3)
    p = make_plan(Inventory(physical=(f, i, f2), seg_size=SEG, retained={("physical", i.backup_id): until}),
                  Policy(physical=PhysicalPolicy(keep_last=1)), NOW)
    assert kept(p.physical) == {f2.backup_id, i.backup_id, f.backup_id}
    assert reasons(p.physical)[i.backup_id][0].startswith("retained until")
    assert reasons(p.physical)[f.backup_id] == (needed_by(i.backup_id, "incr"),)


def test_without_a_policy_everything_is_kept_and_the_chain_reasons_are_added() -> None:
    f = b(1)
    i = b(2, kind="incr", ref=f)
    ds, _ = plan([f, i])
    assert kept(ds) == {f.backup_id, i.backup_id}
    assert reasons(ds)[f.backup_id] == ("no physical retention policy configured", needed_by(i.backup_id, "incr"))


# --- WAL ---------------------------------------------------------------------------------------


def _seg(segno: int) -> WalFile:
    name = wal.segment_name(1, segno, SEG)
    t = dt.datetime(2026, 12, 1, tzinfo=UTC)
    return WalFile(name, (ObjectInfo(layout.wal_object("c", name, ".zst"), 10, t),), ObjectInfo(layout.wal_meta("c", name), 1, t))


def test_wal_is_kept_from_the_start_of_the_full_a_kept_incr_needs() -> None:
    f = b(1, seg=10)
    i = b(2, kind="incr", ref=f, seg=20)
    p = make_plan(Inventory(physical=(f, i), wal=tuple(_seg(s) for s in range(5, 25)), seg_size=SEG),
                  Policy(physical=PhysicalPolicy(keep_last=1)), NOW)
    assert p.wal.keep_from == wal.segment_name(1, 10, SEG) and p.wal.keep_from_backup == f.backup_id
    assert [w.name for w in p.wal.delete] == [wal.segment_name(1, s, SEG) for s in range(5, 10)]


# --- broken chains -----------------------------------------------------------------------------


def test_an_incr_whose_reference_is_gone_is_planned_by_the_rules_and_noted() -> None:
    f = b(1)
    i = b(2, kind="incr", ref=f)
    f2 = b(3)
    for policy, action in (({"keep_last": 2}, "kept"), ({"keep_last": 1}, "deleted")):
        ds, notes = plan([i, f2], **policy)
        d = {d.backup_id: d for d in ds}[i.backup_id]
        assert d.keep is (action == "kept")
        assert d.reasons == (("last 2",) if action == "kept" else (DELETE_REASON,))
        why = f"it needs base backup {f.backup_id}, and it is not in the repository"
        assert d.detail.endswith(f"; chain broken: {why}") and d.detail.startswith("timeline 1, WAL from ")
        assert notes == [f"base backup {i.backup_id} (incr) cannot be restored: {why}; it is {action} as the rules say "
                         "('pgvault verify' fails it)"]


def test_a_broken_link_in_the_middle_breaks_every_backup_above_it_and_the_full_is_still_kept() -> None:
    f = b(1)
    i1 = b(2, kind="incr", ref=f)
    i2 = b(3, kind="incr", ref=i1)
    i3 = b(4, kind="incr", ref=i2)
    ds, notes = plan([f, i2, i3], keep_last=1)  # i1 was deleted by hand
    assert kept(ds) == {i3.backup_id, i2.backup_id}
    assert reasons(ds)[f.backup_id] == (DELETE_REASON,)  # nothing kept reaches it any more
    assert [n.split(" cannot")[0] for n in notes] == [f"base backup {i3.backup_id} (incr)", f"base backup {i2.backup_id} (incr)"]
    assert all(f"needs base backup {i1.backup_id}" in n for n in notes)


def test_an_unreadable_reference_is_kept_as_ever_names_its_dependent_and_breaks_the_chain() -> None:
    f = b(1)
    bad = Backup.from_id(f.backup_id, unreadable="not JSON")
    i = b(2, kind="incr", ref=f)
    ds, notes = plan([bad, i], keep_last=1)
    assert kept(ds) == {f.backup_id, i.backup_id}
    assert reasons(ds)[f.backup_id] == ("manifest unreadable (not JSON): never deleted by expire", needed_by(i.backup_id, "incr"))
    assert len(notes) == 1 and "its manifest is damaged (not JSON)" in notes[0]


def test_a_reference_that_is_not_the_backup_taken_against_breaks_the_chain() -> None:
    f = b(1)
    i = dataclasses.replace(b(2, kind="incr", ref=f), reference_start_lsn="0/28")
    assert broken_chains([f, i]) == {i.backup_id: f"{i.backup_id} was taken against a backup {f.backup_id} that started at "
                                                  f"0/28, but {f.backup_id} in the repository started at {f.start_lsn}"}
    ds, notes = plan([f, i], keep_last=1)
    assert kept(ds) == {f.backup_id, i.backup_id} and len(notes) == 1  # the existing link is still kept


def test_keep_chains_leaves_decisions_without_chains_untouched() -> None:
    bs = [b(1), b(2), b(3)]
    ds, _ = plan_physical(bs, PhysicalPolicy(keep_last=1), NOW, SEG)
    assert keep_chains(ds, bs) == (ds, [])


# --- invariants --------------------------------------------------------------------------------

# A history: per backup (hours after the first, kind, index of the reference among the earlier
# ones counted back from the newest), some of which are then lost.
_histories = st.lists(st.tuples(st.integers(1, 6), st.sampled_from(["full", "incr", "diff"]), st.integers(0, 5)),
                      min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(_histories, st.sets(st.integers(0, 11), max_size=3), st.one_of(st.none(), st.integers(0, 4)),
       st.one_of(st.none(), st.floats(0, 3 * DAY)), st.one_of(st.none(), st.floats(0, 3 * DAY)), st.integers(0, 3))
def test_chain_invariants(history: list[tuple[int, str, int]], lost: set[int], keep_last: int | None,
                          within: float | None, window: float | None, min_keep: int) -> None:
    t = NOW - dt.timedelta(days=4)
    bs: list[Backup] = []
    for gap, kind, back in history:
        t += dt.timedelta(hours=gap)
        candidates = bs if kind == "incr" else [x for x in bs if x.backup_type == "full"]
        if kind == "full" or not candidates:
            kind, ref = "full", None
        else:
            ref = candidates[-1 - back % len(candidates)]
        start = wal.segment_start_lsn(len(bs) + 1, SEG) + 0x28
        bs.append(Backup.from_id(layout.new_backup_id(t), ended_at=t + dt.timedelta(minutes=5), start_lsn=start,
                                 backup_type=kind, reference=ref.backup_id if ref else None,
                                 reference_start_lsn=str(ref.start_lsn) if ref else ""))
    present = [x for n, x in enumerate(bs) if n not in lost]
    if not present:
        return
    policy = PhysicalPolicy(keep_last=keep_last, keep_within=within, pitr_window=window, min_keep=min_keep)
    ds, notes = plan(present, **dataclasses.asdict(policy))
    by_id = {x.backup_id: x for x in present}
    keep = kept(ds)
    rules_only, _ = plan_physical(present, policy, NOW, SEG)
    # the rules' decisions stand; the chains only add
    assert kept(rules_only) <= keep
    # every kept backup's existing reference is kept, and says for whom
    for d in ds:
        x = by_id[d.backup_id]
        if d.keep and x.reference and x.reference in by_id:
            assert x.reference in keep
            assert needed_by(x.backup_id, x.backup_type) in reasons(ds)[x.reference]
    # what the chains added is exactly what a kept backup needs
    for d in ds:
        if d.keep and d.backup_id not in kept(rules_only):
            assert any(by_id[k].reference == d.backup_id for k in keep)
        assert (DELETE_REASON in d.reasons) is (not d.keep)
    # a broken chain is noted once, whatever is done with it
    broken = broken_chains(present)
    notes = [n for n in notes if "cannot be restored" in n]
    assert len(notes) == len(broken) and all(any(i in n for n in notes) for i in broken)
    assert {x.backup_id for x in present if x.reference and x.reference not in by_id} <= set(broken)

