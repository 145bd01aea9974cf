"""Gathering what ``status`` and ``metrics`` report: one :class:`~pgvault.policy.verdict.StatusSnapshot`.

:func:`gather_status` reads the repository (backups, WAL archive and recoverable window, drill
reports, job records, sizes) and, when it can, the server (``pg_stat_archiver``, the ``.ready``
backlog of a local data directory: :mod:`pgvault.operations.server_probe`) into a
:class:`~pgvault.policy.verdict.StatusSnapshot`.  Connecting is optional: a server that cannot be
reached is noted and the rest is still reported, because the repository is what must be judged
when the database host is the thing that burned down.

The snapshot's model and its judgement (:func:`~pgvault.policy.verdict.evaluate`, OK / WARNING /
CRITICAL) are pure and live in :mod:`pgvault.policy.verdict`.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from pgvault import log
from pgvault.errors import PgvaultError, StorageError
from pgvault.operations.context import Context
from pgvault.operations.maintenance.unfinished import scan
from pgvault.operations.server_probe import probe_archiving
from pgvault.policy.pitr import archive_gaps, recoverable_windows
from pgvault.policy.verdict import ArchiveSummary, BackupFacts, Policy, RepositorySize, StatusSnapshot
from pgvault.repository.archive_scan import load_archive_index
from pgvault.repository.catalog import DamagedManifest, scan_logical, scan_physical
from pgvault.repository.cluster import read_cluster_info
from pgvault.repository.drills import DrillReport, list_drills
from pgvault.repository.jobs import JobRecord, list_jobs
from pgvault.repository.manifest import LogicalManifest
from pgvault.repository.physical import PhysicalManifest
from pgvault.repository.wal_record import archived_at_iso
from pgvault.storage.base import VersionedStorage

# --- the WAL archive and recoverable window (also used by `list`) ----------------------------------


def archive_summary(ctx: Context, backups: list[PhysicalManifest]) -> ArchiveSummary | None:
    """None when the cluster has never archived WAL."""
    info = read_cluster_info(ctx.storage, ctx.cluster)
    if not info or not info.wal_segment_size:
        return None
    stored = load_archive_index(ctx.storage, ctx.cluster, info.wal_segment_size)
    # A record whose object is missing is a hole (wal fetch cannot serve it), unless it is young
    # enough to be an upload under way: the parallel pusher finishes segments out of order.
    now = dt.datetime.now(dt.UTC)
    in_flight = sorted(stored.in_flight(now))
    index = stored.counting_in_flight(now)
    names = index.names()
    newest = names[-1] if names else None
    windows = recoverable_windows(backups, index)
    to_time = archived_at_iso(ctx.storage, ctx.cluster, windows[-1].to_wal) if windows else None
    return ArchiveSummary(
        segments=len(names),
        newest_wal=newest,
        newest_wal_archived_at=archived_at_iso(ctx.storage, ctx.cluster, newest) if newest else None,
        timelines=index.timelines(),
        gaps=archive_gaps(index) if names else [],
        windows=windows,
        restore_points=[p.to_json() for p in sorted(index.restore_points.values(), key=lambda p: p.lsn)],
        to_time=to_time,
        in_flight=in_flight,
        unfinished=sorted(index.unfinished),
    )


# --- gathering ------------------------------------------------------------------------------------


class ManifestCache:
    """Manifests by backup id: a backup's manifest never changes once written, so a long-running
    ``metrics --serve`` reads each one once instead of on every scrape."""

    def __init__(self) -> None:
        self._logical: dict[str, LogicalManifest] = {}
        self._physical: dict[str, PhysicalManifest] = {}
        # Unreadable manifests of the last read (never cached): judged, not fatal.
        self.damaged: list[DamagedManifest] = []

    def logical(self, ctx: Context) -> list[LogicalManifest]:
        good, damaged = scan_logical(ctx.storage, ctx.cluster, cache=self._logical)
        self.damaged = [d for d in self.damaged if d.kind != "logical"] + damaged
        return good

    def physical(self, ctx: Context) -> list[PhysicalManifest]:
        good, damaged = scan_physical(ctx.storage, ctx.cluster, cache=self._physical)
        self.damaged = [d for d in self.damaged if d.kind != "physical"] + damaged
        return good


def gather_status(
    ctx: Context, *, now: dt.datetime | None = None, pgdata: str | None = None, connect: bool = True,
    cache: ManifestCache | None = None, repository_timeout: float | None = None,
) -> StatusSnapshot:
    """Read the repository (and the server, when ``connect``) into a snapshot.

    The repository is read within ``repository_timeout`` seconds (None: no limit).  When it cannot
    be read in that time, or not at all (a stalled or dead object store, wrong credentials), the
    snapshot holds only what the server says (archiver failures, the ``.ready`` backlog) plus
    ``repository_error``: the on-call needs an answer in seconds exactly when the repository is
    the thing that broke.  Configuration errors still propagate; an unreadable drill report or
    job record, or a server that cannot be reached, is recorded in the snapshot."""
    now = now or dt.datetime.now(dt.UTC)
    cache = cache or ManifestCache()
    outcome: dict[str, Any] = {}

    if repository_timeout is None:  # metrics: a scrape fails rather than exporting an empty repository
        return _read_repository(ctx, cache, now=now, pgdata=pgdata, connect=connect)

    def read() -> None:
        try:
            outcome["snapshot"] = _read_repository(ctx, cache, now=now, pgdata=pgdata, connect=connect)
        except StorageError as e:
            outcome["error"] = e.message
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
            outcome["raise"] = e

    # A daemon thread: a call stuck on a dead store must not keep the process alive (every storage
    # call is bounded by the S3 timeouts; this bounds the sum of them).
    reader = threading.Thread(target=read, name="status-repository", daemon=True)
    reader.start()
    reader.join(repository_timeout)
    if reader.is_alive():
        outcome["error"] = f"the repository {ctx.storage.url} did not answer within {repository_timeout:g}s"
    if "raise" in outcome:
        raise outcome["raise"]
    if "snapshot" in outcome:
        snapshot: StatusSnapshot = outcome["snapshot"]
        return snapshot
    s = ctx.settings
    return StatusSnapshot(
        cluster=ctx.cluster, repository=ctx.storage.url, taken_at=now,
        policy=Policy(backup_max_age=s.backup_max_age, drill_max_age=s.drill_max_age, pitr_window=s.pitr_window),
        archiving=probe_archiving(ctx.conn, pgdata=pgdata, connect=connect, now=now, system_identifier=None),
        repository_error=log.redact(str(outcome["error"])),
    )


def _read_repository(ctx: Context, cache: ManifestCache, *, now: dt.datetime, pgdata: str | None,
                     connect: bool) -> StatusSnapshot:
    logical = cache.logical(ctx)
    physical = cache.physical(ctx)
    archive = archive_summary(ctx, physical)
    drills: tuple[DrillReport, ...] = ()
    drill_error = None
    try:
        drills = tuple(list_drills(ctx.storage, ctx.cluster))
    except PgvaultError as e:
        drill_error = e.message
    jobs: dict[str, JobRecord] = {}
    jobs_error = None
    try:
        jobs = list_jobs(ctx.storage, ctx.cluster)
    except PgvaultError as e:
        jobs_error = e.message
    info = read_cluster_info(ctx.storage, ctx.cluster)
    s = ctx.settings
    return StatusSnapshot(
        cluster=ctx.cluster, repository=ctx.storage.url, taken_at=now,
        policy=Policy(backup_max_age=s.backup_max_age, drill_max_age=s.drill_max_age, pitr_window=s.pitr_window),
        logical=tuple(BackupFacts.of_logical(m) for m in logical),
        physical=tuple(BackupFacts.of_physical(m) for m in physical),
        archive=archive,
        archiving=probe_archiving(ctx.conn, pgdata=pgdata, connect=connect, now=now,
                                  system_identifier=info.system_identifier if info else None),
        drills=drills, drill_error=drill_error, jobs=jobs, jobs_error=jobs_error, damaged=tuple(cache.damaged),
        size=repository_size(ctx, ctx.cluster), unfinished=scan(ctx.storage, ctx.cluster, now, s.debris_grace),
        object_lock=object_lock_facts(ctx),
    )


def object_lock_facts(ctx: Context) -> dict[str, Any] | None:
    """What pgvault applies (``repository.s3.object_lock``) and what the bucket enforces
    (GetObjectLockConfiguration, GetBucketVersioning); None for a repository that is no bucket."""
    if not isinstance(ctx.storage, VersionedStorage):
        return None
    rule = ctx.settings.object_lock_rule()
    facts: dict[str, Any] = {"configured": rule.mode.lower() if rule else "off",
                             "retention": rule.source if rule else None,
                             "retention_seconds": rule.seconds if rule else None,
                             "bucket": None, "versioning": None, "error": None}
    try:
        facts["bucket"] = ctx.storage.lock_configuration()
        facts["versioning"] = ctx.storage.versioning() or "off"
    except StorageError as e:
        facts["error"] = e.message
    return facts


def repository_size(ctx: Context, cluster: str) -> RepositorySize:
    """Bytes and objects under ``<cluster>/``, by area (the key component after the cluster)."""
    total = objects = 0
    by_area: dict[str, int] = {}
    for info in ctx.storage.list(f"{cluster}/"):
        total += info.size
        objects += 1
        rest = info.key[len(cluster) + 1:]
        area = rest.split("/", 1)[0] if "/" in rest else "meta"  # cluster.json
        by_area[area] = by_area.get(area, 0) + info.size
    return RepositorySize(total, objects, by_area)
