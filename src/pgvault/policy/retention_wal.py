"""Retention of WAL, purely: the files of the archive and which of them the kept base backups need.

Every segment a kept base backup needs to reach every point of its recovery window is kept, i.e.
everything from the oldest kept backup's start segment onward, on every timeline; WAL of a lower
segment number (segments, ``.partial`` files, backup history files) is deleted; timeline history
files are tiny and all kept.  The backups themselves are planned in
:mod:`pgvault.policy.retention`, which calls :func:`plan_wal` with the ones it keeps.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgvault.pg import wal
from pgvault.repository import layout
from pgvault.storage.base import ObjectInfo

if TYPE_CHECKING:
    from pgvault.policy.retention import Backup


_WAL_NAME = re.compile(r"([0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)(.*)")
SIDECAR = ".json"


@dataclass(frozen=True)
class WalFile:
    """One archived WAL file: its stored object(s) and its checksum record (the sidecar)."""

    name: str
    objects: tuple[ObjectInfo, ...] = ()
    sidecar: ObjectInfo | None = None

    @property
    def complete(self) -> bool:
        return bool(self.objects) and self.sidecar is not None

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects) + (self.sidecar.size if self.sidecar else 0)

    @property
    def newest(self) -> dt.datetime:
        return max(o.modified for o in (*self.objects, *([self.sidecar] if self.sidecar else [])))

    @property
    def timeline(self) -> int:
        return int(self.name[:8], 16)

    def keys(self) -> list[str]:
        """Deletion order: the object(s) first, then the record, so that (as ``wal push`` writes them)
        an object is never visible without its record."""
        return [o.key for o in self.objects] + ([self.sidecar.key] if self.sidecar else [])


def group_wal(objects: Iterable[ObjectInfo], cluster: str, suffixes: Iterable[str]) -> tuple[list[WalFile], int]:
    """Group a listing of ``<cluster>/wal/`` by WAL file name.  Keys that are not where ``wal push``
    puts a WAL file (or its record) are counted and otherwise left alone."""
    known = set(suffixes)
    found: dict[str, tuple[list[ObjectInfo], list[ObjectInfo]]] = {}
    strays = 0
    for info in objects:
        m = _WAL_NAME.fullmatch(info.key.rsplit("/", 1)[-1])
        if m is None:
            strays += 1
            continue
        name, rest = m.groups()
        if rest == SIDECAR and info.key == layout.wal_meta(cluster, name):
            found.setdefault(name, ([], []))[1].append(info)
        elif rest in known and info.key == layout.wal_object(cluster, name, rest):
            found.setdefault(name, ([], []))[0].append(info)
        else:
            strays += 1
    return [WalFile(n, tuple(o), s[0] if s else None) for n, (o, s) in sorted(found.items())], strays


@dataclass(frozen=True)
class WalRange:
    """WAL files deleted on one timeline: first..last name, how many, how many bytes."""

    timeline: int
    first: str
    last: str
    files: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "first": self.first, "last": self.last, "files": self.files, "bytes": self.bytes}


@dataclass(frozen=True)
class WalPlan:
    keep_from: str | None  # first segment kept: the oldest kept base backup's start segment
    keep_from_backup: str | None
    delete: tuple[WalFile, ...]
    kept_files: int
    kept_bytes: int
    note: str

    @property
    def ranges(self) -> list[WalRange]:
        by_tli: dict[int, list[WalFile]] = {}
        for f in self.delete:
            by_tli.setdefault(f.timeline, []).append(f)
        return [WalRange(t, fs[0].name, fs[-1].name, len(fs), sum(f.size for f in fs))
                for t, fs in sorted((t, sorted(fs, key=lambda f: f.name)) for t, fs in by_tli.items())]

    def to_json(self) -> dict[str, Any]:
        return {"keep_from": self.keep_from, "keep_from_backup": self.keep_from_backup, "note": self.note,
                "delete": [r.to_json() for r in self.ranges], "delete_files": len(self.delete),
                "delete_bytes": sum(f.size for f in self.delete), "kept_files": self.kept_files,
                "kept_bytes": self.kept_bytes}


def wal_segno(name: str, seg_size: int) -> int | None:
    """Segment number of a segment, ``.partial`` or backup history file; None for history files."""
    if name.endswith(".history"):
        return None
    return wal.parse_segment_name(name[:24], seg_size)[1]


def plan_wal(files: Sequence[WalFile], kept: Sequence[Backup], seg_size: int | None, *, configured: bool) -> WalPlan:
    """Which complete WAL files to delete, given the base backups that are kept.

    Recovery from a base backup reads WAL from its start (the checkpoint's redo point) onward,
    and to reach every point of its window it needs every later segment, on the timeline it
    follows.  So everything from the oldest kept backup's start segment on is kept, on every
    timeline (a segment number below it is not needed by any kept backup on any timeline: timelines
    only ever branch forward).  History files are kept: they are tiny and recovery probes them.

    ``kept`` includes every backup a kept incremental is restored from (policy/retention_chain.py),
    so WAL is kept from its full backup's start.  That is conservative on purpose: restoring the
    incremental replays only WAL from its own start, but its full is a kept backup too, and every
    kept backup stays restorable to every later point."""
    complete = sorted((f for f in files if f.complete), key=lambda f: f.name)
    total = sum(f.size for f in complete)

    def keep_all(note: str) -> WalPlan:
        return WalPlan(None, None, (), len(complete), total, note)

    if not configured:
        return keep_all("no physical retention policy configured: all WAL is kept")
    if not kept:
        return keep_all("no base backup in the repository: no WAL is deleted (nothing says which WAL is needed)")
    unknown = [b.backup_id for b in kept if b.start_lsn is None]
    if unknown:
        return keep_all(f"base backup {unknown[0]} has an unreadable manifest, so its WAL start is unknown: no WAL is deleted")
    if seg_size is None:
        return keep_all("the WAL segment size is unknown (no cluster.json): no WAL is deleted")
    first = min(kept, key=lambda b: (wal.segment_of(b.start_lsn or wal.LSN(0), seg_size), b.order))
    assert first.start_lsn is not None
    boundary = wal.segment_of(first.start_lsn, seg_size)
    keep_from = wal.segment_name(first.timeline, boundary, seg_size)
    delete: list[WalFile] = []
    for f in complete:
        try:
            segno = wal_segno(f.name, seg_size)
        except wal.WalError:
            continue  # a name from another segment size: not ours to judge
        if segno is not None and segno < boundary:
            delete.append(f)
    gone = sum(f.size for f in delete)
    note = (f"keeping WAL from {keep_from} onward (on every timeline): the start of base backup {first.backup_id}, "
            f"the oldest one kept")
    return WalPlan(keep_from, first.backup_id, tuple(delete), len(complete) - len(delete), total - gone, note)
