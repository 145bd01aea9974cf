"""``pgvault expire``: list the repository, plan with :mod:`pgvault.policy.retention`, and with
``apply`` delete what the plan says, in an order that is safe at every step.

* A backup's ``manifest.json`` is deleted first: from that moment it is no longer a backup
  (nothing lists, restores or plans from it), and a crash leaves only debris that a later run
  sweeps.  Then its other objects go.
* WAL goes only after the backups are handled, so a base backup is never left without the WAL it
  needs.  Of each WAL file the object goes before its checksum record: ``wal push`` writes them in
  the other order, so an object is never visible without its record.
* The plan that is applied is made from a listing taken *after* the ``expire`` lock was acquired,
  immediately before deleting, so two expires never race and nothing is deleted on the strength
  of a stale listing.  A debris folder is re-checked (still no manifest, nothing new in it) just
  before it is removed, and so is an unfinished write (not written to since the cutoff).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from pgvault import log
from pgvault.errors import IntegrityError, NotFoundError, StorageError
from pgvault.operations.context import Context
from pgvault.operations.maintenance.retained import Guard, Swept, plan_with_retention, sweep, versioned
from pgvault.pg import wal
from pgvault.policy.retention import (
    Backup,
    Debris,
    Folder,
    Inventory,
    Leftover,
    Policy,
    RetentionPlan,
    group_folders,
    make_plan,
)
from pgvault.policy.retention_wal import group_wal
from pgvault.repository import layout
from pgvault.repository.catalog import load_physical
from pgvault.repository.cluster import read_cluster_info
from pgvault.repository.locks import stale_reason
from pgvault.storage import ObjectNotFound, Storage, UnfinishedWrite

LOCK_OPERATION = "expire"
# The lock names the backup operations hold while they write a folder (operations/logical/backup.py and
# operations/physical/basebackup.py; not imported, because they pull in psycopg).  While one is live its
# kind's folders are not swept.
BACKUP_LOCKS = {"logical": "logical-backup", "base": "base-backup"}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def lock_holder(storage: Storage, cluster: str, operation: str, real_now: dt.datetime) -> str | None:
    """Who holds ``operation``'s lock (a description), or None when it is absent or stale
    (the same judgement a backup makes before taking a stale lock over)."""
    try:
        doc = json.loads(storage.read_bytes(layout.lock_key(cluster, operation)))
    except ObjectNotFound:
        return None
    except ValueError:
        return None  # unreadable: the next backup takes it over as stale
    if stale_reason(doc, now=real_now) is not None:
        return None
    return f"host {doc.get('host')}, pid {doc.get('pid')}"


def _physical_record(storage: Storage, cluster: str, folder: Folder) -> Backup | None:
    try:
        m = load_physical(storage, cluster, folder.backup_id)
    except NotFoundError:
        return None  # the manifest went away since the listing (another expire, by hand)
    except IntegrityError as e:
        return Backup.from_id(folder.backup_id, size=folder.size, unreadable=e.message)
    try:
        ended = dt.datetime.fromisoformat(m.stop_time)
        if ended.tzinfo is None:
            ended = ended.replace(tzinfo=dt.UTC)
        start = wal.LSN.parse(m.start_lsn)
    except (ValueError, wal.WalError) as e:
        return Backup.from_id(folder.backup_id, size=folder.size, unreadable=str(e))
    return Backup.from_id(folder.backup_id, size=folder.size, ended_at=ended, timeline=m.timeline, start_lsn=start,
                          backup_type=m.backup_type, reference=m.reference, reference_start_lsn=m.reference_start_lsn)


def collect(ctx: Context, real_now: dt.datetime | None = None) -> Inventory:
    """List the cluster's part of the repository once and read the base backups' manifests."""
    from pgvault.pipeline import all_suffixes  # zstandard + pyrage: only where needed

    storage, cluster = ctx.storage, ctx.cluster
    real_now = real_now or _utcnow()
    notes: list[str] = []
    folders: list[Folder] = []
    for kind, root in (("logical", layout.logical_root(cluster)), ("base", layout.base_root(cluster))):
        found, strays = group_folders(kind, storage.list(root), cluster)
        folders += found
        if strays:
            notes.append(f"{strays} object(s) under {root} are not in a backup folder; left alone")
    logical = tuple(Backup.from_id(f.backup_id, size=f.size) for f in folders if f.kind == "logical" and f.has_manifest)
    physical = tuple(b for f in folders if f.kind == "base" and f.has_manifest
                     if (b := _physical_record(storage, cluster, f)) is not None)
    info = read_cluster_info(storage, cluster)
    seg_size = info.wal_segment_size if info else None
    wal_files, strays = group_wal(storage.list(layout.wal_root(cluster)), cluster, all_suffixes())
    if strays:
        notes.append(f"{strays} object(s) under {layout.wal_root(cluster)} are not archived WAL files; left alone")
    busy = set()
    for kind, operation in BACKUP_LOCKS.items():
        holder = lock_holder(storage, cluster, operation, real_now)
        if holder:
            busy.add(kind)
            notes.append(f"a {operation} is running ({holder}): {kind} folders without a manifest and its unfinished "
                         "writes are left alone")
    # Listed after the locks were read: a backup starting now writes only new (young) temp files.
    unfinished: tuple[UnfinishedWrite, ...] = ()
    try:
        unfinished = tuple(storage.unfinished_writes(f"{cluster}/"))
    except StorageError as e:
        # E.g. a key without s3:ListBucketMultipartUploads: expire still does everything else.
        notes.append(f"unfinished writes could not be listed, none are swept: {e.message}")
    return Inventory(logical=logical, physical=physical, folders=tuple(folders), wal=tuple(wal_files),
                     seg_size=seg_size, busy=frozenset(busy), notes=tuple(notes), unfinished=unfinished)


@dataclass
class Applied:
    """What ``--apply`` deleted."""

    logical: list[str] = field(default_factory=list)
    physical: list[str] = field(default_factory=list)
    wal_files: int = 0
    debris: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    unfinished: int = 0  # unfinished writes removed (not counted in objects and bytes)
    unfinished_bytes: int = 0
    swept: Swept | None = None  # versioned bucket: leftover versions removed (retained.sweep)

    def to_json(self) -> dict[str, Any]:
        return {"logical": self.logical, "physical": self.physical, "wal_files": self.wal_files, "debris": self.debris,
                "unfinished_writes": {"count": self.unfinished, "bytes": self.unfinished_bytes},
                "skipped": self.skipped, "objects": self.objects, "bytes": self.bytes,
                "versions_swept": self.swept.to_json() if self.swept else None}


def _delete_backup(storage: Storage, prefix: str, done: Applied) -> None:
    # The manifest first: from here on this is no backup, only debris, whatever happens next.
    storage.delete(prefix + layout.MANIFEST_NAME)
    done.objects += 1
    for info in list(storage.list(prefix)):
        storage.delete(info.key)
        done.objects += 1
        done.bytes += info.size


def _sweep_folder(storage: Storage, d: Debris, now: dt.datetime, grace: float, done: Applied) -> None:
    current = list(storage.list(d.where))
    if any(o.key == d.where + layout.MANIFEST_NAME for o in current):
        done.skipped.append(f"{d.where}: a manifest appeared since the listing")
        return
    if any((now - o.modified).total_seconds() <= grace for o in current):
        done.skipped.append(f"{d.where}: new objects appeared since the listing")
        return
    for info in current:
        storage.delete(info.key)
        done.objects += 1
        done.bytes += info.size
    done.debris.append(d.where)


def _sweep_unfinished(storage: Storage, u: Leftover, idle_since: dt.datetime, done: Applied) -> None:
    # The storage checks the write's age again: a writer that was only slow and wrote since the
    # listing keeps its file or upload.
    if storage.remove_unfinished(u.write, idle_since=idle_since):
        done.unfinished += 1
        done.unfinished_bytes += u.write.size
    else:
        done.skipped.append(f"{u.write.key}: written to since the listing")


def hold_unapplied(plan: RetentionPlan, guard: Guard) -> None:
    """A dry run's report of what ``--apply`` keeps for its retention date besides backups (the
    plan already holds those): debris and WAL files the plan deletes but the store still locks.
    (Old versions the sweep would wait for are not listed: they are no backup, WAL or debris.)"""
    for debris in plan.debris:
        if debris.delete and (until := guard.until(list(debris.keys))) is not None:
            guard.hold(f"debris {debris.where}", until)
    for f in plan.wal.delete:
        if (until := guard.until(list(f.keys()))) is not None:
            guard.hold(f"WAL {f.name}", until)


def apply_plan(ctx: Context, plan: RetentionPlan, guard: Guard | None = None) -> Applied:
    """Delete what ``plan`` says, backups first (manifest first), then debris, then WAL; with a
    ``guard`` (versioned bucket), nothing still under Object Lock retention, then the leftovers' sweep."""
    logger = log.get()
    storage, cluster = ctx.storage, ctx.cluster
    done = Applied()

    def retained(what: str, keys: list[str]) -> bool:
        until = guard.until(keys) if guard is not None else None
        if guard is None or until is None:
            return False
        logger.info("%s is retained until %s (object lock): not deleted", what, until.isoformat())
        guard.hold(what, until)
        return True

    for d in sorted(plan.deleted_backups("logical"), key=lambda d: d.taken_at):
        logger.info("deleting logical backup %s: %s", d.backup_id, "; ".join(d.reasons))
        _delete_backup(storage, layout.logical_prefix(cluster, d.backup_id), done)
        done.logical.append(d.backup_id)
    for d in sorted(plan.deleted_backups("physical"), key=lambda d: d.taken_at):
        logger.info("deleting base backup %s: %s", d.backup_id, "; ".join(d.reasons))
        _delete_backup(storage, layout.base_prefix(cluster, d.backup_id), done)
        done.physical.append(d.backup_id)
    for debris in plan.debris:
        if not debris.delete or retained(f"debris {debris.where}", list(debris.keys)):
            continue
        if debris.kind == "wal":
            logger.info("deleting WAL debris %s: %s", debris.where, debris.reason)
            for key in debris.keys:
                storage.delete(key)
                done.objects += 1
            done.bytes += debris.size
            done.debris.append(debris.where)
        else:
            logger.info("deleting debris %s: %s", debris.where, debris.reason)
            _sweep_folder(storage, debris, plan.now, plan.policy.debris_grace, done)
    idle_since = plan.now - dt.timedelta(seconds=plan.policy.debris_grace)
    for u in plan.unfinished:
        if u.delete:
            logger.info("removing unfinished write %s: %s", u.write.key, u.reason)
            _sweep_unfinished(storage, u, idle_since, done)
    # WAL last: every backup that still exists is one the plan keeps, and none needs these.
    for r in plan.wal.ranges:
        logger.info("deleting WAL %s..%s (timeline %d): %d files", r.first, r.last, r.timeline, r.files)
    for f in plan.wal.delete:
        if retained(f"WAL {f.name}", list(f.keys())):
            continue
        for key in f.keys():
            storage.delete(key)
            done.objects += 1
        done.bytes += f.size
        done.wal_files += 1
    if guard is not None:
        done.swept = sweep(guard, storage)
    return done


@dataclass(frozen=True)
class ExpireResult:
    plan: RetentionPlan
    applied: Applied | None
    real_now: dt.datetime
    retained: list[dict[str, Any]] | None = None  # versioned bucket: what Object Lock keeps, and until when


def expire(ctx: Context, *, now: dt.datetime | None = None, apply: bool = False) -> ExpireResult:
    """Plan retention for ``ctx``'s cluster as of ``now`` (default: the current time); with
    ``apply``, take the ``expire`` lock, re-list, re-plan and delete."""
    from pgvault.repository.locks import RepositoryLock

    policy = Policy.from_settings(ctx.settings)
    real_now = _utcnow()
    at = now or real_now
    vs = versioned(ctx.storage)

    def planned(now: dt.datetime) -> tuple[RetentionPlan, Guard | None]:
        inv = collect(ctx, now)
        if vs is None:
            return make_plan(inv, policy, at), None
        # The store enforces retain-until dates in real time, whatever --now says.
        guard = Guard(vs, ctx.cluster, now)
        return plan_with_retention(guard, inv, policy, at), guard

    if not apply:
        plan, guard = planned(real_now)
        if guard is not None:
            hold_unapplied(plan, guard)
        return ExpireResult(plan, None, real_now, guard.held if guard else None)
    # No check_writable(): on a local path it would create a missing (mistyped, unmounted) root.
    with RepositoryLock(ctx.storage, ctx.cluster, LOCK_OPERATION):
        plan, guard = planned(_utcnow())
        applied = apply_plan(ctx, plan, guard)
    return ExpireResult(plan, applied, real_now, guard.held if guard else None)
