"""What the WAL archive of one cluster holds: file names, timeline histories, restore points.

Built from one listing of ``<cluster>/wal/`` (the checksum sidecars: a file counts as archived
once its sidecar exists, which ``wal fetch`` also requires) plus the history files and the restore
point records, which are small.  Everything that reasons about it (:mod:`pgvault.operations.pitr`)
is pure and works on this snapshot.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from pgvault.errors import IntegrityError
from pgvault.pg import wal
from pgvault.pipeline import PipelineSpec, StreamResult, read_stream
from pgvault.repository import layout
from pgvault.storage import ObjectNotFound, Storage


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
    def from_json(cls, d: dict[str, Any]) -> "RestorePoint":
        return cls(str(d["name"]), wal.LSN.parse(str(d["lsn"])), str(d["time"]), int(d["timeline"]))


@dataclass(frozen=True)
class ArchiveIndex:
    """A snapshot of the archive: ``segments`` maps timeline → archived full segment numbers."""

    seg_size: int
    segments: dict[int, frozenset[int]]
    histories: dict[int, list[wal.HistoryEntry]]
    restore_points: dict[str, RestorePoint] = field(default_factory=dict)
    partials: frozenset[str] = frozenset()

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


def load_archive_index(
    storage: Storage, cluster: str, seg_size: int, identities: Callable[[], list[str]] | None = None
) -> ArchiveIndex:
    """List the archive once and read its history files and restore points.

    History files are tiny and not secret, so ``wal push`` keeps a copy in their checksum record
    (readable without the private key); ``identities`` is only needed for records without one."""
    segments: dict[int, set[int]] = {}
    history_names: list[str] = []
    partials: set[str] = set()
    for info in storage.list(layout.wal_root(cluster)):
        base = info.key.rsplit("/", 1)[-1]
        if not base.endswith(".json"):
            continue
        name = base[: -len(".json")]
        kind = wal.classify_or_none(name)
        if kind is wal.WalFileKind.SEGMENT:
            tli, segno = wal.parse_segment_name(name, seg_size)
            segments.setdefault(tli, set()).add(segno)
        elif kind is wal.WalFileKind.HISTORY:
            history_names.append(name)
        elif kind is wal.WalFileKind.PARTIAL:
            partials.add(name)
    histories = {int(n[:8], 16): _read_history(storage, cluster, n, identities) for n in history_names}
    return ArchiveIndex(
        seg_size=seg_size,
        segments={t: frozenset(s) for t, s in segments.items()},
        histories=histories,
        restore_points=load_restore_points(storage, cluster),
        partials=frozenset(partials),
    )


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
