"""Pure WAL checks for ``verify``: continuity per base backup, timeline histories, report lines.

:func:`wal_continuity` checks the WAL archive the way recovery reads it
(:mod:`pgvault.policy.pitr`): for one base backup, every segment from its start to the newest
archived segment along the timeline recovery follows must be present; holes are reported as
ranges of names.  :func:`timeline_problems` checks that a timeline history file agrees with its
ancestors and with the archived segments around its switch point.  The rest turns per-file
results into report lines (:func:`collapse`) and decides which problems matter for recovery.

Everything here takes an :class:`~pgvault.repository.archive_index.ArchiveIndex` (or manifests,
names and results) and returns values: no storage, no I/O.  :mod:`pgvault.operations.maintenance.verify`
reads the repository and calls these.  The report's vocabulary (:class:`Finding` and the status
names) lives here so that both modules share it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pgvault.errors import IntegrityError, NotFoundError
from pgvault.pg import wal
from pgvault.policy.pitr import RecoveryTarget, archive_gaps, plan_recovery, reachable_end
from pgvault.repository.archive_index import ArchiveIndex
from pgvault.repository.physical import PhysicalManifest

OK = "ok"
PARTIAL = "partial"  # stored bytes verified, but not decrypted (no age identity)
WARNING = "warning"
FAILED = "failed"


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked and what was found."""

    kind: str  # logical | physical | wal | wal_continuity | timeline | archive
    subject: str  # object name, WAL file or range, history file
    status: str  # ok | partial | warning | failed
    detail: str = ""
    backup_id: str | None = None
    key: str | None = None  # the repository key, for single objects

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "backup_id": self.backup_id, "subject": self.subject, "key": self.key,
                "status": self.status, "detail": self.detail}


# --- WAL continuity -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Continuity:
    """The WAL a base backup's recovery reads, from its start segment to the newest archived one."""

    backup_id: str
    timeline: int  # the timeline recovery follows ('latest', or the backup's own when it branched off)
    first_wal: str
    newest_wal: str | None = None  # newest archived segment on that path
    reachable_wal: str | None = None  # last segment recovery reaches without a hole
    consistent_wal: str | None = None  # the backup's last segment: needed to make it consistent
    segments: tuple[str, ...] = ()  # archived segments on the path, from the start on
    gaps: tuple[tuple[str, str], ...] = ()  # (first missing, last missing)
    problem: str | None = None  # why it cannot be restored, when that is not (only) a gap
    note: str | None = None

    @property
    def ok(self) -> bool:
        return not self.gaps and self.problem is None

    def subject(self) -> str:
        return f"WAL {self.first_wal}..{self.newest_wal or '-'} (timeline {self.timeline})"

    def describe(self) -> str:
        parts = []
        if self.gaps:
            parts.append("missing " + ", ".join(a if a == b else f"{a}..{b}" for a, b in self.gaps))
        if self.problem:
            parts.append(self.problem)
        if self.ok:
            parts.append(f"{len(self.segments)} segments, no gap; restorable to the end of {self.reachable_wal}")
        elif not self.problem:
            # Names along one recovery path sort in path order (timeline ids grow with the position).
            if self.reachable_wal is None or (self.consistent_wal and self.reachable_wal < self.consistent_wal):
                parts.append(f"the backup cannot be made consistent (it needs WAL up to {self.consistent_wal})")
            else:
                parts.append(f"recovery stops after {self.reachable_wal}")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


def wal_continuity(b: PhysicalManifest, index: ArchiveIndex) -> Continuity:
    """Check that the archive holds every segment recovery from ``b`` reads, up to the newest one.

    Recovery follows the newest timeline descending from the backup's (``latest``, PostgreSQL's
    default); a backup that ended after that timeline branched off is checked along its own
    timeline instead, with a note (it restores only with ``--target-timeline``)."""
    seg = index.seg_size
    first = b.first_wal
    if b.wal_segment_size != seg:
        return Continuity(b.backup_id, b.timeline, first,
                          problem=f"its WAL segment size {b.wal_segment_size} differs from the archive's {seg}")
    start, stop = wal.LSN.parse(b.start_lsn), wal.LSN.parse(b.stop_lsn)
    start_segno = wal.segment_of(start, seg)
    stop_segno = wal.segment_of(stop - 1, seg) if stop > start else start_segno
    note = None
    try:
        tli = index.newest_timeline(b.timeline)
        history = index.history(tli)
        span = next((s for s in wal.timeline_spans(history, tli) if s.tli == b.timeline), None)
        if span is None or (span.end is not None and stop > span.end):
            why = (f"timeline {tli} does not descend from timeline {b.timeline}" if span is None else
                   f"timeline {tli} branched off at {span.end}, before this backup ended")
            note = (f"{why}, so the backup was checked along its own timeline {b.timeline} (restore it with "
                    f"--target-timeline {b.timeline})")
            tli = b.timeline
            history = index.history(tli)
        spans = wal.timeline_spans(history, tli)
    except IntegrityError as e:
        return Continuity(b.backup_id, b.timeline, first, problem=e.message)
    except wal.WalError as e:
        return Continuity(b.backup_id, b.timeline, first, problem=str(e))

    owner = wal.segment_owner(history, tli, seg)
    cuts = sorted({wal.segment_of(s.begin, seg) for s in spans})

    def name(segno: int) -> str:
        return wal.segment_name(owner(segno), segno, seg)

    def runs(lo: int, hi: int) -> list[tuple[str, str]]:
        # A run of missing segments never spans two timelines (as in wal.find_gaps).
        out = []
        while lo <= hi:
            nxt = min([c for c in cuts if lo < c <= hi] + [hi + 1])
            out.append((name(lo), name(nxt - 1)))
            lo = nxt
        return out

    chain = {s.tli for s in spans}
    present = sorted(s for t in chain for s in index.segments.get(t, ()) if s >= start_segno and owner(s) == t)
    names = [name(s) for s in present]
    gaps = runs(start_segno, present[0] - 1 if present else stop_segno)
    gaps += wal.find_gaps(names, seg, timeline=tli, history=history)
    if present and present[-1] < stop_segno:
        gaps += runs(present[-1] + 1, stop_segno)
    end = reachable_end(index, tli, history, start_segno)
    problem = None
    try:
        plan_recovery([b], index, RecoveryTarget(timeline=str(tli)), backup_id=b.backup_id)
    except NotFoundError as e:
        if not gaps:  # a gap is the planner's reason too, and is reported as a range
            problem = e.message.split(f"{b.backup_id}: ", 1)[-1]
    return Continuity(
        backup_id=b.backup_id, timeline=tli, first_wal=name(start_segno), newest_wal=names[-1] if names else None,
        reachable_wal=name(end) if end is not None else None, consistent_wal=name(stop_segno), segments=tuple(names),
        gaps=tuple(gaps),
        problem=problem, note=note,
    )


def timeline_problems(index: ArchiveIndex, tli: int) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` about timeline ``tli``'s history file and its switch point.

    The history must exist (timelines above 1), name only older timelines with switch points that
    never go backwards, repeat each ancestor's own history exactly (PostgreSQL copies the parent's
    file and appends one line), and the ancestors' history files must be archived.  Around the
    switch the parent's archived WAL must reach the segment before the switch segment and the child
    must hold the switch segment (recovery reads it from the child); a parent with no archived WAL
    before the switch at all is only a note (expired by retention, or never archived)."""
    problems: list[str] = []
    notes: list[str] = []
    if tli == 1:
        return problems, notes
    own_name = wal.history_file_name(tli)
    h = index.histories.get(tli)
    if h is None:
        problems.append(f"timeline {tli} has no history file {own_name}; recovery cannot follow it")
        return problems, notes
    if not h:
        problems.append(f"{own_name} lists no parent timeline")
        return problems, notes
    for i, e in enumerate(h):
        if e.parent_tli >= tli:
            problems.append(f"{own_name} names timeline {e.parent_tli} as an ancestor, which is not older")
        if i and e.parent_tli <= h[i - 1].parent_tli:
            problems.append(f"{own_name}: timelines do not increase at line {i + 1}")
        if i and e.switch_lsn < h[i - 1].switch_lsn:
            problems.append(f"{own_name}: switch point {e.switch_lsn} of timeline {e.parent_tli} goes backwards "
                            f"(before {h[i - 1].switch_lsn})")
    if problems:
        return problems, notes
    for i, e in enumerate(h):
        if e.parent_tli == 1:
            continue
        parent = index.histories.get(e.parent_tli)
        if parent is None:
            problems.append(f"its ancestor timeline {e.parent_tli} has no history file "
                            f"{wal.history_file_name(e.parent_tli)}")
        elif [(x.parent_tli, x.switch_lsn) for x in parent] != [(x.parent_tli, x.switch_lsn) for x in h[:i]]:
            problems.append(f"its ancestry up to timeline {e.parent_tli} differs from "
                            f"{wal.history_file_name(e.parent_tli)}")

    seg = index.seg_size
    switch = h[-1]
    parent_tli, switch_segno = switch.parent_tli, wal.segment_of(switch.switch_lsn, seg)
    parent_begin = wal.segment_of(wal.timeline_spans(h, tli)[-2].begin, seg)
    before = [s for s in index.segments.get(parent_tli, ()) if s < switch_segno]
    if switch_segno - 1 < parent_begin:
        pass  # the parent ended in the segment it began in: recovery reads none of its files
    elif not before:
        notes.append(f"timeline {parent_tli} has no archived WAL before the switch to timeline {tli} at "
                     f"{switch.switch_lsn} (expired, or never archived)")
    else:
        if not index.has(parent_tli, switch_segno - 1):
            last = max(before)
            problems.append(
                f"timeline {parent_tli}'s archived WAL stops at {wal.segment_name(parent_tli, last, seg)}, short of the "
                f"switch to timeline {tli} at {switch.switch_lsn}: "
                f"{wal.segment_name(parent_tli, last + 1, seg)}..{wal.segment_name(parent_tli, switch_segno - 1, seg)} missing")
        own = index.segments.get(tli, frozenset())
        if own and not index.has(tli, switch_segno) and min(own) > switch_segno:
            problems.append(f"timeline {tli}'s archived WAL starts at {wal.segment_name(tli, min(own), seg)}, but recovery "
                            f"reads the switch segment {wal.segment_name(tli, switch_segno, seg)} from it")
    return problems, notes


def timeline_chain(index: ArchiveIndex, tli: int) -> list[int]:
    """Timelines recovery along ``tli`` passes through (just ``tli`` if its history is unreadable)."""
    try:
        return [s.tli for s in wal.timeline_spans(index.history(tli), tli)]
    except (IntegrityError, wal.WalError):
        return [tli]


def without(index: ArchiveIndex, names: set[str]) -> ArchiveIndex:
    """``index`` minus the segments in ``names`` (records whose object is missing: not archived)."""
    drop: dict[int, set[int]] = {}
    for n in names:
        if wal.classify_or_none(n) is wal.WalFileKind.SEGMENT:
            t, s = wal.parse_segment_name(n, index.seg_size)
            drop.setdefault(t, set()).add(s)
    if not drop:
        return index
    return dataclasses.replace(index, segments={t: frozenset(s - drop.get(t, set())) for t, s in index.segments.items()})


# --- report lines ---------------------------------------------------------------------------------


WalLine = tuple[str, str, str, str | None]  # (archived file name, status, problem, key)


def _segno(name: str, seg_size: int | None) -> tuple[int, int] | None:
    if seg_size is None or wal.classify_or_none(name) is not wal.WalFileKind.SEGMENT:
        return None
    try:
        return wal.parse_segment_name(name, seg_size)
    except wal.WalError:
        return None


def _segnos(a: str, b: str, seg: int) -> tuple[int, int, int]:
    tli, lo = wal.parse_segment_name(a, seg)
    return tli, lo, wal.parse_segment_name(b, seg)[1]


def collapse(lines: Sequence[WalLine], backup_id: str | None = None, seg_size: int | None = None) -> list[Finding]:
    """WAL file results in name order, as findings: consecutive files with the same good outcome
    become one range, every problem stays a line of its own.  With ``seg_size`` a range also ends
    where a segment is not the successor of the one before (a hole shows in the list too)."""
    out: list[Finding] = []
    run: list[WalLine] = []
    last: tuple[int, int] | None = None  # the run's last segment

    def flush() -> None:
        if len(run) == 1:
            out.append(Finding("wal", run[0][0], run[0][1], run[0][2], backup_id, run[0][3]))
        elif run:
            out.append(Finding("wal", f"{run[0][0]}..{run[-1][0]} ({len(run)} files)", run[0][1], run[0][2], backup_id))
        run.clear()

    for line in lines:
        good = line[1] in (OK, PARTIAL)
        here = _segno(line[0], seg_size)
        follows = here is None or last is None or (here[0] == last[0] and here[1] == last[1] + 1)
        if not (good and run and (run[-1][1], run[-1][2]) == (line[1], line[2]) and follows):
            flush()
            last = None
        if good:
            run.append(line)
            last = here or last
        else:
            out.append(Finding("wal", line[0], line[1], line[2], backup_id, line[3]))
    flush()
    return out


def continuity_finding(c: Continuity, damaged: list[str]) -> Finding:
    """The report line for one backup's continuity; ``damaged``: its path's segments that failed."""
    if damaged:
        # Recovery fetches a damaged file, wal fetch exits 126, and recovery stops there.
        bad = f"{len(damaged)} archived segment(s) on the way failed verification"
        detail = f"{c.describe()}; also {bad} (first {damaged[0]})" if not c.ok else f"{bad}: recovery stops at {damaged[0]}"
        return Finding("wal_continuity", c.subject(), FAILED, detail, c.backup_id)
    status = FAILED if not c.ok else WARNING if c.note else OK
    return Finding("wal_continuity", c.subject(), status, c.describe(), c.backup_id)


def timeline_findings(index: ArchiveIndex, timelines: Sequence[int]) -> list[Finding]:
    """One report line per timeline above 1: its :func:`timeline_problems` (or notes)."""
    out = []
    for tli in timelines:
        if tli == 1:
            continue
        problems, notes = timeline_problems(index, tli)
        status = FAILED if problems else WARNING if notes else OK
        out.append(Finding("timeline", wal.history_file_name(tli), status, "; ".join(problems or notes)))
    return out


def uncovered_gaps(index: ArchiveIndex, reported: list[tuple[str, str]]) -> list[Finding]:
    """Archive gaps no base backup's continuity already reported: not needed by any backup."""
    seg = index.seg_size
    known = [_segnos(a, b, seg) for a, b in reported]
    out: list[Finding] = []
    try:
        gaps = archive_gaps(index)
    except wal.WalError:  # an inconsistent history: reported with the timelines
        return out
    for a, b in gaps:
        t, lo, hi = _segnos(a, b, seg)
        if any(t == kt and lo <= khi and klo <= hi for kt, klo, khi in known):
            continue
        out.append(Finding("archive", a if a == b else f"{a}..{b}", WARNING,
                           "missing from the archive; no base backup needs it"))
    return out


def unneeded_as_warnings(lines: list[WalLine], gone: set[str], orphans: set[str], gaps: Sequence[tuple[str, str]],
                          first_needed: int | None, seg_size: int) -> list[WalLine]:
    """Files that cannot be fetched fail verification only where a base backup's recovery meets them.

    A record without its object (``gone``) reads as "not archived": it matters inside a backup's
    gap.  An object without its record makes ``wal fetch`` exit 126, which stops recovery, so it
    matters anywhere recovery from a backup may ask for it: from the oldest backup's start on.
    Elsewhere both are debris of an interrupted push or expire (which sweeps them): a warning.
    Timeline history files are always needed."""
    holes = [_segnos(a, b, seg_size) for a, b in gaps]
    out = []
    for line in lines:
        name = line[0]
        absent = name in gone or name in orphans
        if line[1] == FAILED and absent and wal.classify_or_none(name) is not wal.WalFileKind.HISTORY:
            here = _segno(name[:24], seg_size)
            if name in gone:
                needed = here is not None and wal.classify_or_none(name) is wal.WalFileKind.SEGMENT and any(
                    t == here[0] and lo <= here[1] <= hi for t, lo, hi in holes)
            else:
                needed = here is not None and first_needed is not None and here[1] >= first_needed
            if not needed:
                line = (name, WARNING, line[2] + " (no base backup needs it)", line[3])
        out.append(line)
    return out
