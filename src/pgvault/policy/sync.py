"""What ``repo sync`` copies from one repository to another, and how far behind a copy is: pure.

The copy keeps the invariants every reader of a repository relies on:

* A WAL file is complete when its checksum record *and* its object are stored; the record is
  written first (``wal push`` does the same), so a target never shows an object without the record
  that lets ``wal fetch`` verify it.  A record without object on the source is a push under way or
  a hole: not copied (the next run takes it once it is complete).
* A backup exists when its manifest exists: its objects are copied first, the manifest last, and
  only backups whose manifest is on the source are copied at all.
* WAL is planned (and copied) before backups, from a listing taken *after* the backups' listing:
  a base backup's manifest is written after its WAL is archived, so every backup listed has its
  WAL in the WAL listing, and a backup on the target never lacks the WAL that makes it consistent.
* Nothing on the target is ever overwritten: an object already there is verified against the
  source's checksums (same bytes: done; different: an integrity error for people to look at).

The I/O (listings, reading records and manifests, streaming, hashing) is in
:mod:`pgvault.operations.maintenance.repo_sync`; this module only decides.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pgvault.pg import wal


@dataclass(frozen=True)
class WalFiles:
    """What one repository stores for one archived WAL file name."""

    record: bool = False  # the checksum record <name>.json
    objects: frozenset[str] = frozenset()  # keys of objects storing the file (one, normally)

    @property
    def complete(self) -> bool:
        return self.record and bool(self.objects)


@dataclass(frozen=True)
class WalCopy:
    """One WAL file to bring to the target: its record (unless there) then its object."""

    name: str
    copy_record: bool  # False: the target has a record already; it must agree with the source's
    target_objects: frozenset[str]  # objects already on the target under the name: verified, not copied


@dataclass(frozen=True)
class WalPlan:
    copies: tuple[WalCopy, ...]
    done: int  # complete on both
    unfinished_on_source: tuple[str, ...]  # record without object (or object without record): skipped


def plan_wal(source: Mapping[str, WalFiles], target: Mapping[str, WalFiles]) -> WalPlan:
    """Every WAL file complete on the source and not on the target, in name order (timeline
    history files sort after segments of their timeline; order does not matter for correctness:
    readers only use complete files)."""
    copies: list[WalCopy] = []
    done = 0
    unfinished: list[str] = []
    for name in sorted(source):
        src = source[name]
        if not src.complete:
            unfinished.append(name)
            continue
        have = target.get(name, WalFiles())
        if have.complete:
            done += 1
            continue
        copies.append(WalCopy(name, copy_record=not have.record, target_objects=have.objects))
    return WalPlan(tuple(copies), done, tuple(unfinished))


@dataclass(frozen=True)
class BackupPlan:
    """Backups (by their key prefix) to copy, and how many are on both already."""

    copies: tuple[str, ...]
    done: int


def plan_backups(source_finished: Iterable[str], target_finished: Iterable[str]) -> BackupPlan:
    """Backup prefixes with a manifest on the source and none on the target, oldest first (ids
    sort by time).  A prefix on the target without manifest is an earlier copy cut short: it is
    copied again (its objects already there are verified, not rewritten)."""
    there = set(target_finished)
    todo = sorted(p for p in set(source_finished) if p not in there)
    return BackupPlan(tuple(todo), len(set(source_finished) & there))


@dataclass(frozen=True)
class ObjectState:
    """What the target holds under a key the copy wants to create."""

    size: int | None  # None: absent


def object_action(expected_size: int, target: ObjectState) -> str:
    """``copy`` (absent), ``verify`` (present with the expected size: hash it to be sure it is the
    same object) or ``conflict`` (present with another size: never overwritten)."""
    if target.size is None:
        return "copy"
    return "verify" if target.size == expected_size else "conflict"


# --- how far behind ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepositoryPosition:
    """The newest things one repository holds for a cluster (None: nothing of that kind)."""

    name: str
    url: str
    newest_wal: str | None = None  # newest complete WAL segment name
    newest_wal_archived_at: dt.datetime | None = None
    newest_logical: str | None = None  # backup ids
    newest_physical: str | None = None
    segments: int = 0
    error: str | None = None  # the repository could not be read (then the rest is unknown)
    last_sync: dict[str, Any] | None = field(default=None, compare=False)  # newest sync record into it, as JSON

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "reachable": self.error is None, "error": self.error,
                "newest_wal": self.newest_wal,
                "newest_wal_archived_at": self.newest_wal_archived_at.isoformat() if self.newest_wal_archived_at else None,
                "newest_logical": self.newest_logical, "newest_physical": self.newest_physical,
                "segments": self.segments, "last_sync": self.last_sync}


@dataclass(frozen=True)
class Lag:
    """How far ``position`` is behind the first (primary) repository."""

    wal_segments: int | None  # segments of the primary's newest timeline the copy lacks at its end
    wal_seconds: float | None  # primary's newest archived_at minus the copy's newest (>= 0)
    logical_behind: bool  # the primary's newest logical backup is not in the copy
    physical_behind: bool

    def to_json(self) -> dict[str, Any]:
        return {"wal_segments": self.wal_segments, "wal_seconds": self.wal_seconds,
                "logical_behind": self.logical_behind, "physical_behind": self.physical_behind}

    @property
    def in_step(self) -> bool:
        return not (self.wal_segments or self.logical_behind or self.physical_behind)


def lag_behind(first: RepositoryPosition, other: RepositoryPosition, seg_size: int | None) -> Lag | None:
    """The lag of ``other`` behind ``first``; None when either could not be read (unknown, not 0)."""
    if first.error is not None or other.error is not None:
        return None
    segments: int | None = None
    if first.newest_wal is None:
        segments = 0
    elif seg_size and wal.classify_or_none(first.newest_wal) is wal.WalFileKind.SEGMENT:
        tli, head = wal.parse_segment_name(first.newest_wal, seg_size)
        if other.newest_wal is None:
            segments = head + 1
        else:
            otli, ohead = wal.parse_segment_name(other.newest_wal, seg_size)
            # Another timeline on the copy: count from the start of the primary's (conservative).
            segments = max(0, head - ohead) if otli == tli else head + 1
    seconds: float | None = None  # unknown: the copy holds no WAL to compare times with
    if segments == 0:
        seconds = 0.0
    elif first.newest_wal_archived_at is not None and other.newest_wal_archived_at is not None:
        seconds = max(0.0, (first.newest_wal_archived_at - other.newest_wal_archived_at).total_seconds())
    return Lag(
        wal_segments=segments, wal_seconds=seconds,
        logical_behind=first.newest_logical is not None and (other.newest_logical or "") < first.newest_logical,
        physical_behind=first.newest_physical is not None and (other.newest_physical or "") < first.newest_physical,
    )
