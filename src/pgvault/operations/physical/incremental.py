"""Incremental and differential base backups: choosing the reference, the checks that force a full
backup instead, and the file list every base backup stores (docs/design.md, "Physical backups at
production scale").

The rule that makes a page skipped by an incremental safe holds only if nothing rewrote the cluster
behind the WAL's back since the reference started; each check below names a way that can happen.
When one fails the backup is taken full, and the reason is logged and recorded in its manifest.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from pgvault import log
from pgvault.errors import PgvaultError
from pgvault.operations.context import Context
from pgvault.operations.physical.reading import Delta
from pgvault.pg import wal
from pgvault.pipeline import open_reader, open_writer
from pgvault.policy.chain import choose_reference
from pgvault.repository import catalog, file_list, layout
from pgvault.repository.archive_scan import load_archive_index, wait_until_archived
from pgvault.repository.file_list import FILE_LIST_NAME, FILES_SPEC, FileEntry
from pgvault.repository.manifest import StoredObject
from pgvault.repository.physical import PhysicalManifest

# Segments between the reference's start and this backup's start that are not in the repository
# yet are waited for this long (the async pusher may still be uploading the newest); missing
# after that, the WAL has a hole and the backup is taken full.
_RECENT_WAL_WAIT = 60.0


@dataclass(frozen=True)
class DeltaPlan:
    """What kind of backup is taken and why."""

    backup_type: str  # full | incr | diff
    reason: str
    delta: Delta | None = None
    reference: PhysicalManifest | None = None

    def label_lines(self) -> str:
        """The lines PostgreSQL 17 writes into an incremental's backup_label (xlogbackup.c), so the
        server refuses to start an uncombined incremental and pg_combinebackup can chain it."""
        if self.reference is None:
            return ""
        return (f"INCREMENTAL FROM LSN: {self.reference.start_lsn}\n"
                f"INCREMENTAL FROM TLI: {self.reference.timeline}\n")


def database_rows(conn: Any) -> tuple[tuple[int, int], ...]:
    """(oid, xmin) of every pg_database row: a database dropped and created again (or moved with
    ALTER DATABASE SET TABLESPACE, which copies its files with their old page LSNs) gets a new row."""
    rows = conn.execute("SELECT oid::int8, xmin::text::int8 FROM pg_database ORDER BY oid").fetchall()
    return tuple((int(r[0]), int(r[1])) for r in rows)


def plan_delta(ctx: Context, conn: Any, kind: str, *, system_identifier: str, major: int, seg_size: int,
               start: wal.LSN, data_checksums: bool, rows: tuple[tuple[int, int], ...],
               archive_timeout: float) -> DeltaPlan:
    """The plan for a backup of ``kind`` that started at ``start`` (pg_backup_start has run)."""
    if kind == "full":
        return DeltaPlan("full", "a full backup was asked for")
    manifests, damaged = catalog.scan_physical(ctx.storage, ctx.cluster)
    same = [m for m in manifests if m.system_identifier == system_identifier]
    newest_first = sorted(same, key=lambda m: (m.started_at, m.backup_id), reverse=True)
    by_id = {m.backup_id: m for m in manifests}
    choice = choose_reference(kind, newest_first, by_id, {d.backup_id: d.reason for d in damaged})
    if choice.reference is None:
        return _full(choice.reason)
    ref = by_id[choice.reference]

    def full(why: str) -> DeltaPlan:
        return _full(f"an {kind} against {ref.backup_id} is not safe: {why}; a full backup is taken instead")

    if ref.server_version_num // 10000 != major:
        return full(f"it was taken from PostgreSQL {ref.server_version_num // 10000}, the server is {major}")
    if ref.wal_segment_size != seg_size:
        return full("the WAL segment size changed")
    if ref.files is None:
        return full("it has no file list (taken by an older pgvault)")
    if ref.data_checksums is None or ref.data_checksums != data_checksums:
        return full("data checksums were turned on or off since (the pages it holds carry the other state)")
    row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
    timeline = int(row[0]) if row else 0
    if timeline != ref.timeline:
        return full(f"the server is on timeline {timeline}, the reference on {ref.timeline} (a server restored to an "
                    "earlier point may hold pages older than the reference's start that differ from it)")
    ref_start = wal.LSN.parse(ref.start_lsn)
    if ref_start.value > start.value:
        return full(f"it started at {ref_start}, after this backup's start {start}")
    hole = _wal_hole(ctx, ref.timeline, ref_start, start, seg_size, archive_timeout)
    if hole:
        return full(f"WAL segment {hole} between its start and this backup's is not in the repository (archiving "
                    "stopped: wal_level minimal or pg_resetwal may have rewritten pages behind the WAL's back)")
    try:
        files = read_file_list(ctx, ref)
    except PgvaultError as e:
        return full(f"its file list cannot be read ({e.message})")
    whole = frozenset(oid for oid, xmin in rows if (oid, xmin) not in set(ref.database_rows))
    delta = Delta(ref.backup_id, ref_start.value, files, whole)
    return DeltaPlan(kind, choice.reason, delta, ref)


def _full(reason: str) -> DeltaPlan:
    log.get().warning("%s", reason)
    return DeltaPlan("full", reason)


def _wal_hole(ctx: Context, tli: int, ref_start: wal.LSN, start: wal.LSN, seg_size: int, archive_timeout: float) -> str:
    """The first segment from the reference's start up to (not including) this backup's start
    segment that the repository does not hold, after waiting briefly for recent ones; "" if none."""
    first = wal.segment_of(ref_start, seg_size)
    last = wal.segment_of(start, seg_size)
    index = load_archive_index(ctx.storage, ctx.cluster, seg_size)
    missing = [wal.segment_name(tli, s, seg_size) for s in range(first, last) if not index.has(tli, s)]
    if not missing:
        return ""
    try:
        wait_until_archived(ctx.storage, ctx.cluster, missing, min(_RECENT_WAL_WAIT, archive_timeout),
                            what="the incremental's reference")
    except PgvaultError:
        index = load_archive_index(ctx.storage, ctx.cluster, seg_size)
        still = [n for n in missing if not index.has(*wal.parse_segment_name(n, seg_size))]
        return still[0] if still else ""
    return ""


def read_file_list(ctx: Context, backup: PhysicalManifest) -> dict[str, FileEntry]:
    """The file list of ``backup`` (needs no age identity: it is not encrypted)."""
    if backup.files is None:
        raise PgvaultError(f"base backup {backup.backup_id} has no file list")
    key = layout.base_prefix(backup.cluster, backup.backup_id) + backup.files.key
    with ctx.storage.open_read(key) as src, open_reader(src, FILES_SPEC, expected=backup.files.result) as stream:
        data = stream.read()
        while stream.read(1 << 16):
            pass
    return file_list.loads(data, where=key)


def write_file_list(ctx: Context, prefix: str, entries: list[FileEntry]) -> StoredObject:
    """Store the file list beside the manifest (before it: the manifest is written last)."""
    with ctx.storage.open_write(prefix + FILE_LIST_NAME) as w, open_writer(w, FILES_SPEC) as out:
        src = io.BytesIO(file_list.dumps(entries))
        while chunk := src.read(1 << 20):
            out.write(chunk)
    return StoredObject(name="file list", key=FILE_LIST_NAME, result=out.result)
