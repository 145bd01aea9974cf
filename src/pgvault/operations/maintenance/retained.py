"""``expire`` on a versioned bucket (every S3 Object Lock bucket is one): what may go, and the sweep.

* Never try to delete before the retain-until date: the store would answer a bare 403 (the same
  answer as a missing permission) or, worse, a DeleteObject without VersionId would "succeed" by
  writing a delete marker that hides the backup while every byte stays. So before deleting, the
  retain-until date of every version concerned is asked (HEAD, cached per version), and what is
  still retained is *kept and reported* ("retained until X"), never treated as an error.
* A backup the policy would delete but whose objects are retained stays a kept backup in the plan
  (``Inventory.retained``), so the WAL it needs is kept too and ``verify`` keeps passing.
* After the plan is applied, :func:`sweep` removes what earlier deletes or rewrites left behind
  under the cluster: noncurrent versions (a lock's heartbeats, a WAL record taken over after a
  crashed push), versions hidden behind delete markers (deleted while still retained), superseded
  per-run job records, and delete markers with nothing left under them — each once its date allows.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from pgvault import log
from pgvault.policy.retention import Inventory, Policy, RetentionPlan, make_plan
from pgvault.repository import layout
from pgvault.repository.jobs import superseded_runs
from pgvault.storage import Storage
from pgvault.storage.base import ObjectVersion, VersionedStorage

_MAX_ROUNDS = 8  # holding a backup can only keep more WAL, never release a backup: converges fast


def versioned(storage: Storage) -> VersionedStorage | None:
    """The storage as a :class:`VersionedStorage` when its bucket keeps versions, else None."""
    if isinstance(storage, VersionedStorage) and storage.versioning():
        return storage
    return None


@dataclass
class Guard:
    """Retain-until dates of the versions under one cluster, listed once and asked lazily."""

    vs: VersionedStorage
    cluster: str
    now: dt.datetime
    held: list[dict[str, Any]] = field(default_factory=list)  # what stays, for the report
    _versions: dict[str, list[ObjectVersion]] | None = None
    _dates: dict[tuple[str, str], dt.datetime | None] = field(default_factory=dict)

    def relist(self) -> None:
        """Forget the listing (after deletes); the dates asked in this run are kept."""
        self._versions = None

    def versions(self) -> dict[str, list[ObjectVersion]]:
        if self._versions is None:
            listed = self.vs.versions(f"{self.cluster}/")
            self._versions = {k: list(g) for k, g in itertools.groupby(listed, key=lambda v: v.key)}
        return self._versions

    def date(self, v: ObjectVersion) -> dt.datetime | None:
        if v.delete_marker:
            return None
        if (v.key, v.version_id) not in self._dates:
            self._dates[(v.key, v.version_id)] = self.vs.retain_until(v.key, v.version_id)
        return self._dates[(v.key, v.version_id)]

    def until(self, keys: list[str] | None = None, prefix: str | None = None) -> dt.datetime | None:
        """The latest retain-until date still ahead among the versions of ``keys`` / under ``prefix``."""
        vmap = self.versions()
        chosen = [k for k in vmap if k.startswith(prefix)] if prefix is not None else list(keys or [])
        dates = [d for k in chosen for v in vmap.get(k, []) if (d := self.date(v)) is not None and d > self.now]
        return max(dates, default=None)

    def hold(self, what: str, until: dt.datetime) -> None:
        self.held.append({"what": what, "retained_until": until.isoformat()})


def plan_with_retention(guard: Guard, inv: Inventory, policy: Policy, at: dt.datetime) -> RetentionPlan:
    """The retention plan in which every backup whose objects are still retained is kept."""
    retained: dict[tuple[str, str], dt.datetime] = dict(inv.retained)
    plan = make_plan(inv, policy, at)
    for _ in range(_MAX_ROUNDS):
        new = {}
        for kind, prefix_of in (("logical", layout.logical_prefix), ("physical", layout.base_prefix)):
            for d in plan.deleted_backups(kind):
                until = guard.until(prefix=prefix_of(guard.cluster, d.backup_id))
                if until is not None:
                    new[(kind, d.backup_id)] = until
        if not new:
            break
        retained.update(new)
        plan = make_plan(replace(inv, retained=retained), policy, at)
    for (kind, backup_id), until in sorted(retained.items()):
        guard.hold(f"{kind} backup {backup_id}", until)
    return plan


@dataclass
class Swept:
    versions: int = 0
    bytes: int = 0
    job_records: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"versions": self.versions, "bytes": self.bytes, "job_records": self.job_records}


def sweep(guard: Guard, storage: Storage) -> Swept:
    """Remove leftovers of deletes and rewrites under the cluster whose dates have passed (see the
    module docstring); what is still retained is reported through ``guard.held``."""
    logger = log.get()
    done = Swept()
    for key in superseded_runs(storage, guard.cluster):
        until = guard.until([key])
        if until is None:
            storage.delete(key)
            done.job_records += 1
    guard.relist()  # the plan's deletes and the ones above changed what is there
    waiting: dict[str, dt.datetime] = {}
    for key, vs in guard.versions().items():
        latest = vs[0] if vs and vs[0].latest else None
        left = 0
        for v in sorted(vs, key=lambda v: v.modified):
            if v is latest and not v.delete_marker:
                continue  # the live object
            if v.delete_marker:
                continue  # markers after the versions they hide
            until = guard.date(v)
            if until is not None and until > guard.now:
                left += 1
                waiting[key] = max(waiting.get(key, until), until)
                continue
            logger.info("removing version %s of %s (noncurrent or deleted)", v.version_id, key)
            guard.vs.delete_version(key, v.version_id)
            done.versions += 1
            done.bytes += v.size
        for v in vs:
            # A marker over retained versions keeps them hidden; any other marker hides nothing.
            if v.delete_marker and not (v is latest and left):
                guard.vs.delete_version(key, v.version_id)
                done.versions += 1
    for key, until in sorted(waiting.items()):
        guard.hold(key, until)
    return done


__all__ = ["Guard", "Swept", "plan_with_retention", "sweep", "versioned"]
