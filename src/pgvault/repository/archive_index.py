"""What the WAL archive of one cluster holds: file names, timeline histories, restore points.

Built from one listing of ``<cluster>/wal/`` plus the history files and the restore point
records, which are small.  A segment counts as archived when ``wal fetch`` can serve it: its
checksum sidecar *and* its object are stored.  A sidecar without its object (``unfinished``) is
either a push still uploading (the sidecar is written first) or damage; either way recovery cannot
read that segment, so it is a hole for planning, ``status`` and ``verify`` alike.  Everything that reasons about it (:mod:`pgvault.operations.pitr`)
is pure and works on this snapshot.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgvault.errors import IntegrityError
from pgvault.pg import wal
from pgvault.pipeline import PipelineSpec, StreamResult, all_suffixes, read_stream
from pgvault.repository import layout
from pgvault.repository.wal_record import archived_at
from pgvault.storage import ObjectNotFound, Storage

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


def load_archive_index(
    storage: Storage, cluster: str, seg_size: int, identities: Callable[[], list[str]] | None = None
) -> ArchiveIndex:
    """List the archive once and read its history files and restore points.

    History files are tiny and not secret, so ``wal push`` keeps a copy in their checksum record
    (readable without the private key); ``identities`` is only needed for records without one."""
    segments: dict[int, set[int]] = {}
    history_names: list[str] = []
    partials: set[str] = set()
    records: dict[str, dt.datetime] = {}
    objects: set[str] = set()
    for info in storage.list(layout.wal_root(cluster)):
        base = info.key.rsplit("/", 1)[-1]
        if not base.endswith(".json"):
            stem = stored_name(base)
            if stem:
                objects.add(stem)
            continue
        name = base[: -len(".json")]
        kind = wal.classify_or_none(name)
        if kind is wal.WalFileKind.SEGMENT:
            records[name] = info.modified
        elif kind is wal.WalFileKind.HISTORY:
            history_names.append(name)
        elif kind is wal.WalFileKind.PARTIAL:
            partials.add(name)
    unfinished: dict[str, dt.datetime] = {}
    for name, written in records.items():
        if name not in objects:
            # The record's own time, by the same clock as wal fetch (the rare records without
            # object only: its age decides between an upload under way and a hole).
            unfinished[name] = archived_at(storage, cluster, name) or written
            continue
        tli, segno = wal.parse_segment_name(name, seg_size)
        segments.setdefault(tli, set()).add(segno)
    histories = {int(n[:8], 16): _read_history(storage, cluster, n, identities) for n in history_names}
    return ArchiveIndex(
        seg_size=seg_size,
        segments={t: frozenset(s) for t, s in segments.items()},
        histories=histories,
        restore_points=load_restore_points(storage, cluster),
        partials=frozenset(partials),
        unfinished=unfinished,
    )


_SUFFIXES = sorted(all_suffixes(), key=len, reverse=True)


def stored_name(base: str) -> str | None:
    """The WAL file name an archived object's base name stores (``X.zst.age`` -> ``X``), or None."""
    for suffix in _SUFFIXES:
        if suffix and base.endswith(suffix):
            return base[: -len(suffix)]
    return base if "." not in base else None


def _read_history(
    storage: Storage, cluster: str, name: str, identities: Callable[[], list[str]] | None
) -> list[wal.HistoryEntry]:
    try:
        meta = json.loads(storage.read_bytes(layout.wal_meta(cluster, name)))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        if "history" in meta:
            return wal.parse_history(str(meta["history"]))
        spec = PipelineSpec.from_json(meta["pipeline"])
        if spec.encryption != "none" and identities is None:
            raise IntegrityError(f"{name} is encrypted and its checksum record carries no copy of the history")
        out = io.BytesIO()
        with storage.open_read(str(meta["key"])) as src:
            read_stream(src, out, spec, identities=identities() if spec.encryption != "none" and identities else [],
                        expected=StreamResult.from_json(meta))
        return wal.parse_history(out.getvalue().decode())
    except ObjectNotFound:
        raise IntegrityError(f"archived timeline history {name} lost its object") from None
    except (wal.WalError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"archived timeline history {name} is unreadable: {type(e).__name__}: {e}",
                             hint="run 'pgvault verify --all' for a full report") from None


def restore_point_key(cluster: str, name: str) -> str:
    return f"{cluster}/restore-points/{layout.encode_name(name)}.json"


def load_restore_points(storage: Storage, cluster: str) -> dict[str, RestorePoint]:
    points: dict[str, RestorePoint] = {}
    for info in storage.list(f"{cluster}/restore-points/"):
        try:
            p = RestorePoint.from_json(json.loads(storage.read_bytes(info.key)))
        except ObjectNotFound:
            continue
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"restore point record {info.key} is unreadable") from None
        points[p.name] = p
    return points
