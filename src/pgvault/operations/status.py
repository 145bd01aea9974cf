"""The recoverable window of a cluster: what ``list`` and ``status`` show about PITR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgvault.operations.context import Context
from pgvault.operations.pitr import Window, archive_gaps, recoverable_windows
from pgvault.operations.restore_cluster import archived_at
from pgvault.repository.archive_index import load_archive_index
from pgvault.repository.catalog import read_cluster_info
from pgvault.repository.physical import PhysicalManifest


@dataclass(frozen=True)
class ArchiveSummary:
    segments: int
    newest_wal: str | None
    newest_wal_archived_at: str | None
    timelines: list[int]
    gaps: list[tuple[str, str]]
    windows: list[Window]
    restore_points: list[dict[str, Any]]
    to_time: str | None = None

    def recoverable_from(self) -> dict[str, str] | None:
        if not self.windows:
            return None
        w = self.windows[0]
        return {"time": w.from_time, "lsn": w.from_lsn, "backup_id": w.backup_id}

    def recoverable_to(self) -> dict[str, str | None] | None:
        """The newest point: the end of the newest window's last segment (archived at)."""
        if not self.windows:
            return None
        return {"wal": self.windows[-1].to_wal, "archived_at": self.to_time}

    def to_json(self) -> dict[str, Any]:
        return {
            "segments": self.segments,
            "newest_wal": self.newest_wal,
            "newest_wal_archived_at": self.newest_wal_archived_at,
            "timelines": self.timelines,
            "gaps": [{"from": a, "to": b} for a, b in self.gaps],
            "recoverable_from": self.recoverable_from(),
            "recoverable_to": self.recoverable_to(),
            "windows": [w.to_json() for w in self.windows],
            "restore_points": self.restore_points,
        }


def archive_summary(ctx: Context, backups: list[PhysicalManifest]) -> ArchiveSummary | None:
    """None when the cluster has never archived WAL."""
    info = read_cluster_info(ctx.storage, ctx.cluster)
    if not info or not info.get("wal_segment_size"):
        return None
    index = load_archive_index(ctx.storage, ctx.cluster, int(info["wal_segment_size"]))
    names = index.names()
    newest = names[-1] if names else None
    windows = recoverable_windows(backups, index)
    to_time = archived_at(ctx, windows[-1].to_wal) if windows else None
    return ArchiveSummary(
        segments=len(names),
        newest_wal=newest,
        newest_wal_archived_at=archived_at(ctx, newest) if newest else None,
        timelines=index.timelines(),
        gaps=archive_gaps(index) if names else [],
        windows=windows,
        restore_points=[p.to_json() for p in sorted(index.restore_points.values(), key=lambda p: p.lsn)],
        to_time=to_time,
    )
