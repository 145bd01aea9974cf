"""Planning a point-in-time recovery, purely: which base backup, which timeline, which WAL.

Given the complete base backups, a snapshot of the archive (:class:`ArchiveIndex`) and a target,
:func:`plan_recovery` picks the newest backup that (1) ended before the target, (2) lies on the
path of the timeline recovery will follow, and (3) has every WAL segment from its start up to the
target in the archive.  When none qualifies it raises :class:`NotFoundError` naming, for every
backup, the reason it was passed over.  :func:`recoverable_windows` answers "to which points can
this archive restore?" for ``list`` and ``status``.

The WAL rules mirror PostgreSQL's recovery (see :mod:`pgvault.pg.wal`): recovery reads each
segment from the newest timeline that began in or before it, and ``recovery_target_timeline =
'latest'`` follows history files upward from the backup's timeline until one is missing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgvault.errors import IntegrityError, NotFoundError, UsageError
from pgvault.pg import wal
from pgvault.repository.archive_index import ArchiveIndex
from pgvault.repository.physical import PhysicalManifest

TARGET_KINDS = ("end", "immediate", "time", "lsn", "xid", "name")
ACTIONS = ("pause", "promote", "shutdown")


@dataclass(frozen=True)
class RecoveryTarget:
    """What the operator asked for; validated by :meth:`parse`."""

    kind: str = "end"
    value: str = ""
    timeline: str = "latest"  # 'latest', 'current' or a number
    exclusive: bool = False
    action: str = "pause"

    @classmethod
    def parse(cls, *, time: str | None = None, lsn: str | None = None, xid: str | None = None,
              name: str | None = None, immediate: bool = False, timeline: str | None = None,
              exclusive: bool = False, action: str | None = None) -> RecoveryTarget:
        given = [(k, v) for k, v in (("time", time), ("lsn", lsn), ("xid", xid), ("name", name)) if v is not None]
        if immediate:
            given.append(("immediate", ""))
        if len(given) > 1:
            raise UsageError("give at most one of --target-time, --target-lsn, --target-xid, --target-name, --target-immediate")
        kind, value = given[0] if given else ("end", "")
        if kind == "time":
            value = parse_time(value).isoformat()
        elif kind == "lsn":
            try:
                value = str(wal.LSN.parse(value))
            except wal.WalError as e:
                raise UsageError(f"--target-lsn: {e}") from None
        elif kind == "xid":
            if not value.isdigit() or int(value) < 3:
                raise UsageError(f"--target-xid: {value!r} is not a normal transaction id")
        elif kind == "name" and not value:
            raise UsageError("--target-name must not be empty")
        tl = timeline or "latest"
        if tl not in ("latest", "current") and not (tl.isdigit() and 1 <= int(tl) <= wal.MAX_TIMELINE):
            raise UsageError(f"--target-timeline: {tl!r} is not 'latest', 'current' or a timeline number")
        if exclusive and kind not in ("time", "lsn", "xid"):
            raise UsageError("--target-exclusive applies to --target-time, --target-lsn and --target-xid only")
        act = action or "pause"
        if act not in ACTIONS:
            raise UsageError(f"--target-action must be one of {', '.join(ACTIONS)}")
        if action and kind == "end":
            raise UsageError("--target-action needs a recovery target (recovery to the end of the archive always promotes)")
        return cls(kind, value, tl, exclusive, act)

    def settings(self) -> dict[str, str]:
        """The recovery_target* settings PostgreSQL 12+ reads from postgresql.auto.conf."""
        out: dict[str, str] = {}
        if self.kind == "immediate":
            out["recovery_target"] = "immediate"
        elif self.kind in ("time", "lsn", "xid", "name"):
            out[f"recovery_target_{self.kind}"] = self.value
        if self.kind in ("time", "lsn", "xid"):
            out["recovery_target_inclusive"] = "off" if self.exclusive else "on"
        out["recovery_target_timeline"] = self.timeline
        if self.kind != "end":
            out["recovery_target_action"] = self.action
        return out

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the archive"
        if self.kind == "immediate":
            return "the end of the base backup (consistency)"
        word = "before" if self.exclusive else "up to and including"
        return f"{word} {self.kind} {self.value}" if self.kind != "name" else f"restore point {self.value!r}"


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 / PostgreSQL timestamp with a time zone."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace(" UTC", "+00:00"))
    except ValueError:
        raise UsageError(f"--target-time: {text!r} is not a timestamp like 2026-11-25 14:03:00+00") from None
    if t.tzinfo is None:
        raise UsageError(f"--target-time: {text!r} has no time zone; add one, e.g. +00 or Z")
    return t


def full_xid(xid: int, reference: int) -> int:
    """A 32-bit xid as the 64-bit xid nearest ``reference`` (which carries the epoch)."""
    if xid >= 1 << 32:
        return xid
    epoch = reference >> 32
    candidates = [((epoch + d) << 32) | xid for d in (-1, 0, 1) if epoch + d >= 0]
    return min(candidates, key=lambda c: abs(c - reference))


@dataclass(frozen=True)
class Plan:
    """The chosen backup and what recovery will read."""

    backup: PhysicalManifest
    target: RecoveryTarget
    timeline: int
    first_wal: str
    last_reachable_wal: str
    needed_until: str | None  # the segment holding the target, when the target is a position
    passed_over: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = ()
    # Recovery to the end of the archive must restore at least up to this segment (what is stored
    # now, uploads still under way not counted): stopping earlier means WAL was lost on the way.
    must_reach: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup.backup_id,
            "target": {"kind": self.target.kind, "value": self.target.value, "timeline": self.target.timeline,
                       "exclusive": self.target.exclusive, "action": self.target.action},
            "timeline": self.timeline,
            "first_wal": self.first_wal,
            "last_reachable_wal": self.last_reachable_wal,
            "needed_until": self.needed_until,
            "passed_over": [{"backup_id": b, "reason": r} for b, r in self.passed_over],
            "warnings": list(self.warnings),
            "must_reach": self.must_reach,
        }


def _chain_timeline(backup: PhysicalManifest, index: ArchiveIndex, target: RecoveryTarget) -> int:
    if target.timeline == "current":
        return backup.timeline
    if target.timeline == "latest":
        return index.newest_timeline(backup.timeline)
    return int(target.timeline)


def reachable_end(index: ArchiveIndex, tli: int, history: Sequence[wal.HistoryEntry], first_segno: int) -> int | None:
    """Last segment number recovery along ``tli`` can read without a hole, starting at
    ``first_segno``; None when even the first is missing."""
    owner = wal.segment_owner(history, tli, index.seg_size)
    segno = first_segno
    if not index.has(owner(segno), segno):
        return None
    # Walk only archived numbers (a corrupt name must not make this loop 2**40 times).
    numbers = sorted({s for t in index.segments for s in index.segments[t] if s > segno})
    for nxt in numbers:
        if nxt != segno + 1 or not index.has(owner(nxt), nxt):
            break
        segno = nxt
    return segno


def first_after_hole(index: ArchiveIndex, tli: int, history: Sequence[wal.HistoryEntry], end: int) -> int | None:
    """The first segment number after ``end`` that is stored on the path to ``tli``, when
    ``end + 1`` is not: WAL beyond a hole, which recovery can never reach.  None when the archive
    simply ends at ``end`` (checksum records without objects after it add no WAL: a warning)."""
    owner = wal.segment_owner(history, tli, index.seg_size)
    later = {s for t, segs in index.segments.items() for s in segs if s > end + 1 and owner(s) == t}
    return min(later, default=None)


def _hole_text(index: ArchiveIndex, name: Callable[[int], str], end: int, after: int) -> str:
    first, last = name(end + 1), name(after - 1)
    text = first if first == last else f"{first}..{last}"
    unfinished = [name(s) for s in range(end + 1, after) if name(s) in index.unfinished]
    if unfinished:
        text += f" ({', '.join(unfinished[:3])}{' ...' if len(unfinished) > 3 else ''}: checksum record without object)"
    return text


def _check_backup(
    b: PhysicalManifest, index: ArchiveIndex, target: RecoveryTarget, archived_at: Callable[[str], str | None],
    *, refuse_holes: bool = True,
) -> tuple[str | None, Plan | None]:
    """(reason this backup cannot reach the target, or None and its plan).  ``refuse_holes``: an
    end-of-archive target with WAL beyond a hole is refused (planning a restore), rather than
    reported as recoverable up to the hole (the recoverable window)."""
    seg = index.seg_size
    if b.wal_segment_size != seg:
        return f"its WAL segment size {b.wal_segment_size} differs from the archive's {seg}", None
    try:
        tli = _chain_timeline(b, index, target)
        history = index.history(tli)
        spans = wal.timeline_spans(history, tli)
    except IntegrityError as e:
        return e.message, None
    except wal.WalError as e:
        return str(e), None
    span = next((s for s in spans if s.tli == b.timeline), None)
    stop = wal.LSN.parse(b.stop_lsn)
    if span is None:
        return f"it is on timeline {b.timeline}, which is not an ancestor of timeline {tli}", None
    if span.end is not None and stop > span.end:
        return (f"timeline {tli} branched off timeline {b.timeline} at {span.end}, before this backup ended "
                f"at {stop}"), None
    start_segno = wal.segment_of(wal.LSN.parse(b.start_lsn), seg)
    end = reachable_end(index, tli, history, start_segno)
    stop_segno = wal.segment_of(stop - 1, seg) if stop > wal.LSN.parse(b.start_lsn) else start_segno
    owner = wal.segment_owner(history, tli, seg)

    def name(segno: int) -> str:
        return wal.segment_name(owner(segno), segno, seg)
    if end is None or end < stop_segno:
        missing = start_segno if end is None else end + 1
        return f"WAL {name(missing)}, needed to make the backup consistent, is not in the archive", None

    needed_until: str | None = None
    warnings: list[str] = []
    after = first_after_hole(index, tli, history, end)
    if after is not None and (refuse_holes and target.kind == "end"):
        return (f"the archive has a hole at {_hole_text(index, name, end, after)} and WAL after it (from "
                f"{name(after)}): recovery to the end of the archive would stop at the hole and silently lose what "
                f"follows; repair the archive, or choose a target before {name(end + 1)} (--target-time, --target-lsn)"
                ), None
    if name(end + 1) in index.unfinished:
        warnings.append(f"WAL {name(end + 1)} has a checksum record but no object (a push that did not finish, or a "
                        f"deleted object): recovery ends at {name(end)}")
    if target.kind == "time":
        t = parse_time(target.value)
        stopped = dt.datetime.fromisoformat(b.stop_time)
        if stopped > t:
            return f"it ended at {b.stop_time}, after the target time", None
        last_time = archived_at(name(end))
        if last_time and dt.datetime.fromisoformat(last_time) < t:
            more = _holes_after(index, tli, history, end)
            why = f"the archive has a gap at {more}" if more else "that is the newest archived WAL"
            return (f"its WAL reaches only {name(end)} (archived {last_time}) and {why}; "
                    f"no WAL after the target time can be replayed"), None
    elif target.kind in ("lsn", "name"):
        if target.kind == "name":
            point = index.restore_points.get(target.value)
            if point is None:
                warnings.append(f"restore point {target.value!r} was not made with 'pgvault restore-point', so its "
                                "position is unknown; recovery fails if the WAL does not contain it")
                lsn = None
            else:
                lsn = point.lsn
        else:
            lsn = wal.LSN.parse(target.value)
        if lsn is not None:
            if lsn < stop:
                return f"it ended at {stop}, after the target {lsn}", None
            target_segno = wal.segment_of(lsn, seg)
            needed_until = name(target_segno)
            if target_segno > end:
                return f"WAL {name(end + 1)} before the target {lsn} is not in the archive", None
    elif target.kind == "xid":
        if b.next_xid is None:
            warnings.append(f"backup {b.backup_id} does not record its next xid; it may already contain xid {target.value}")
        elif full_xid(int(target.value), b.next_xid) < b.next_xid:
            return f"transaction {target.value} began before this backup ended (next xid then: {b.next_xid})", None
    return None, Plan(
        backup=b, target=target, timeline=tli, first_wal=name(start_segno), last_reachable_wal=name(end),
        needed_until=needed_until, warnings=tuple(warnings),
    )


def _holes_after(index: ArchiveIndex, tli: int, history: Sequence[wal.HistoryEntry], end: int) -> str:
    gaps = wal.find_gaps(index.names(), index.seg_size, timeline=tli, history=history)
    after = [g for g in gaps if wal.parse_segment_name(g[0], index.seg_size)[1] == end + 1]
    return f"{after[0][0]}..{after[0][1]}" if after else ""


def plan_recovery(
    backups: Sequence[PhysicalManifest], index: ArchiveIndex, target: RecoveryTarget, *,
    backup_id: str | None = None, archived_at: Callable[[str], str | None] = lambda _name: None,
) -> Plan:
    """Choose the backup for ``target`` (newest first); NotFoundError says why none can."""
    candidates = [b for b in backups if backup_id in (None, b.backup_id)]
    if backup_id and not candidates:
        raise NotFoundError(f"no base backup {backup_id}", hint="see 'pgvault list'")
    if not candidates:
        raise NotFoundError("the repository holds no base backup of this cluster", hint="run 'pgvault basebackup'")
    passed: list[tuple[str, str]] = []
    for b in sorted(candidates, key=lambda m: m.backup_id, reverse=True):
        reason, plan = _check_backup(b, index, target, archived_at)
        if plan is not None:
            return Plan(**{**plan.__dict__, "passed_over": tuple(passed)})
        passed.append((b.backup_id, reason or "unknown"))
    lines = "; ".join(f"{i}: {r}" for i, r in passed)
    raise NotFoundError(f"no base backup can reach {target.describe()}: {lines}")


@dataclass(frozen=True)
class Window:
    """From ``backup``'s end to the last segment its WAL reaches without a hole."""

    backup_id: str
    timeline: int
    from_lsn: str
    from_time: str
    to_wal: str

    def to_json(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "timeline": self.timeline, "from_lsn": self.from_lsn,
                "from_time": self.from_time, "to_wal": self.to_wal}


def recoverable_windows(backups: Sequence[PhysicalManifest], index: ArchiveIndex) -> list[Window]:
    """One window per base backup that the archive makes restorable (following 'latest'; a backup
    that ended after the newest timeline branched off is restorable along its own timeline)."""
    out = []
    for b in backups:
        _reason, plan = _check_backup(b, index, RecoveryTarget(), lambda _name: None, refuse_holes=False)
        if plan is None:
            _reason, plan = _check_backup(b, index, RecoveryTarget(timeline="current"), lambda _name: None,
                                          refuse_holes=False)
        if plan is not None:
            out.append(Window(b.backup_id, plan.timeline, b.stop_lsn, b.stop_time, plan.last_reachable_wal))
    return out


def archive_gaps(index: ArchiveIndex) -> list[tuple[str, str]]:
    """Holes in the archive along the newest timeline's chain (other timelines checked on their own)."""
    newest = max(index.timelines())
    try:
        history = index.history(newest)
    except IntegrityError:  # missing history: check each timeline on its own
        return wal.find_gaps(index.names(), index.seg_size)
    return wal.find_gaps(index.names(), index.seg_size, timeline=newest, history=history)
