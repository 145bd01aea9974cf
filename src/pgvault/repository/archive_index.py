"""What the WAL archive of one cluster holds: file names, timeline histories, restore points.

Built by :func:`pgvault.repository.archive_scan.load_archive_index` from one listing of
``<cluster>/wal/`` plus the history files and the restore point records, which are small; this
module is only the snapshot (no I/O), so pure planners can import it.  A segment counts as archived when ``wal fetch`` can serve it: its
checksum sidecar *and* its object are stored.  A sidecar without its object (``unfinished``) is
either a push still uploading (the sidecar is written first) or damage; either way recovery cannot
read that segment, so it is a hole for planning, ``status`` and ``verify`` alike.  Everything that reasons about it (:mod:`pgvault.policy.pitr`)
is pure and works on this snapshot.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from pgvault.errors import IntegrityError
from pgvault.pg import wal

# A checksum record without its object younger than this is taken for an upload still under way
# (the record is written first; a 16 MiB segment uploads in well under a minute even on a slow
# link); older, it is a hole: a push that died, or an object deleted from the repository.
IN_FLIGHT_GRACE = dt.timedelta(seconds=120)


@dataclass(frozen=True)
class RestorePoint:
    """A named restore point made by ``pgvault restore-point``."""

    name: str
    lsn: wal.LSN
    time: str
    timeline: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "lsn": str(self.lsn), "time": self.time, "timeline": self.timeline}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RestorePoint:
        return cls(str(d["name"]), wal.LSN.parse(str(d["lsn"])), str(d["time"]), int(d["timeline"]))


@dataclass(frozen=True)
class ArchiveIndex:
    """A snapshot of the archive: ``segments`` maps timeline → archived full segment numbers."""

    seg_size: int
    segments: dict[int, frozenset[int]]
    histories: dict[int, list[wal.HistoryEntry]]
    restore_points: dict[str, RestorePoint] = field(default_factory=dict)
    partials: frozenset[str] = frozenset()
    # Segment name -> when its sidecar was written, for sidecars whose object is not stored.
    unfinished: dict[str, dt.datetime] = field(default_factory=dict)

    def has(self, tli: int, segno: int) -> bool:
        return segno in self.segments.get(tli, frozenset())

    def names(self) -> list[str]:
        """Every archived full segment name, sorted."""
        return sorted(wal.segment_name(t, s, self.seg_size) for t, segs in self.segments.items() for s in segs)

    def history(self, tli: int) -> list[wal.HistoryEntry]:
        """Parsed history of ``tli`` (empty for timeline 1)."""
        if tli == 1:
            return []
        if tli not in self.histories:
            raise IntegrityError(f"timeline {tli} has no history file {wal.history_file_name(tli)} in the archive")
        return self.histories[tli]

    def newest_timeline(self, start: int) -> int:
        """``findNewestTimeLine``: probe history files upward from ``start`` until one is missing."""
        tli = start
        while tli + 1 in self.histories:
            tli += 1
        return tli

    def timelines(self) -> list[int]:
        return sorted(set(self.segments) | set(self.histories) | {1})

    def in_flight(self, now: dt.datetime, grace: dt.timedelta = IN_FLIGHT_GRACE) -> set[str]:
        """Unfinished segments young enough to be uploads still under way (not yet holes)."""
        return {n for n, t in self.unfinished.items() if now - t < grace}

    def counting_in_flight(self, now: dt.datetime, grace: dt.timedelta = IN_FLIGHT_GRACE) -> ArchiveIndex:
        """This index with uploads still under way counted as archived: the parallel pusher finishes
        segments out of order, and ``wal fetch`` waits for such an object instead of failing."""
        return self.including(self.in_flight(now, grace))

    def including(self, flying: set[str]) -> ArchiveIndex:
        """This index with the unfinished segments ``flying`` counted as archived."""
        flying = flying & set(self.unfinished)
        if not flying:
            return self
        segments = {t: set(s) for t, s in self.segments.items()}
        for n in flying:
            t, segno = wal.parse_segment_name(n, self.seg_size)
            segments.setdefault(t, set()).add(segno)
        return dataclasses.replace(self, segments={t: frozenset(s) for t, s in segments.items()},
                                   unfinished={n: w for n, w in self.unfinished.items() if n not in flying})
