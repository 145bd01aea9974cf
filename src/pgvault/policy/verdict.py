"""The status verdict (pure): the snapshot of facts ``status`` and ``metrics`` report, and its judgement.

:class:`StatusSnapshot` is everything known about one cluster at one moment: backups, the WAL
archive and recoverable window (:class:`ArchiveSummary`), the server's archiver, drill reports,
job records, sizes.  Reading it is I/O and lives in :mod:`pgvault.operations.maintenance.status`;
everything here only looks at it.  :func:`evaluate` turns a snapshot into OK / WARNING / CRITICAL
with one reason per finding, and :func:`snapshot_json` is the ``status --json`` document.
``status`` prints the snapshot and the reasons; ``metrics`` exports the same snapshot, so the
screen and the alerts never disagree about the facts.

The facts other modules define (drill reports, job records, damaged manifests, unfinished writes,
the server's archiver) are imported for type checking only: their modules also read them from
storage or the server, and this module never builds one, it only reads their attributes.  That is
also why a snapshot has no default for ``archiving``: whoever takes it says what the server said,
even "skipped".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgvault.policy import chain
from pgvault.repository.manifest import LogicalManifest
from pgvault.repository.physical import PhysicalManifest

if TYPE_CHECKING:
    from pgvault.operations.maintenance.unfinished import UnfinishedSummary
    from pgvault.operations.server_probe import ArchivingFacts
    from pgvault.policy.pitr import Window
    from pgvault.repository.catalog import DamagedManifest
    from pgvault.repository.drills import DrillReport
    from pgvault.repository.jobs import JobRecord

OK, WARNING, CRITICAL = "OK", "WARNING", "CRITICAL"
# The Nagios / Icinga plugin convention, so `pgvault status` can be a check command as it is.
VERDICT_EXIT = {OK: 0, WARNING: 1, CRITICAL: 2}
# Archiving lag (age of the oldest WAL file waiting to be archived) that makes status complain.
ARCHIVE_LAG_WARNING = 15 * 60.0
ARCHIVE_LAG_CRITICAL = 60 * 60.0
_LEVELS = {OK: 0, WARNING: 1, CRITICAL: 2}


# --- the WAL archive and recoverable window (also used by `list`) ----------------------------------


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
    in_flight: list[str] = field(default_factory=list)  # records whose object is still uploading
    unfinished: list[str] = field(default_factory=list)  # records without object, too old to be uploads: holes

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
            "in_flight": self.in_flight,
            "records_without_object": self.unfinished,
            "recoverable_from": self.recoverable_from(),
            "recoverable_to": self.recoverable_to(),
            "windows": [w.to_json() for w in self.windows],
            "restore_points": self.restore_points,
        }



# --- the snapshot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupFacts:
    """One complete backup, as much as status and metrics need of its manifest."""

    kind: str  # logical | physical
    backup_id: str
    finished_at: str
    duration_seconds: float
    stored_size: int
    databases: tuple[tuple[str, int], ...] = ()  # logical: (database, stored bytes of its dump and parts)
    stop_lsn: str | None = None  # physical
    bad_pages: int | None = None  # physical: pages that failed their checksum while it read them (None: not checked)
    first_bad_page: str = ""
    # physical: what policy/chain.py follows to tell whether an incremental can be restored
    backup_type: str = "full"
    reference: str | None = None
    reference_start_lsn: str = ""
    start_lsn: str = ""

    @classmethod
    def of_logical(cls, m: LogicalManifest) -> BackupFacts:
        return cls("logical", m.backup_id, m.finished_at, m.duration_seconds, m.stored_size,
                   tuple((d.name, d.stored_size) for d in m.databases))

    @classmethod
    def of_physical(cls, m: PhysicalManifest) -> BackupFacts:
        pc = m.page_checksums
        checked = pc is not None and pc.checked
        return cls("physical", m.backup_id, m.finished_at, m.duration_seconds, m.stored_size, stop_lsn=m.stop_lsn,
                   bad_pages=pc.failed if pc is not None and checked else None,
                   first_bad_page=pc.bad_pages[0].describe() if pc is not None and pc.bad_pages else "",
                   backup_type=m.backup_type, reference=m.reference, reference_start_lsn=m.reference_start_lsn,
                   start_lsn=m.start_lsn)

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "backup_id": self.backup_id, "finished_at": self.finished_at,
            "age_seconds": round(age_seconds(now, self.finished_at) or 0.0, 3),
            "duration_seconds": round(self.duration_seconds, 3), "stored_size": self.stored_size,
        }
        if self.kind == "logical":
            doc["databases"] = [name for name, _ in self.databases]
        else:
            doc["stop_lsn"] = self.stop_lsn
            doc["bad_pages"] = self.bad_pages
            doc["backup_type"] = self.backup_type
            doc["reference"] = self.reference
        return doc


@dataclass(frozen=True)
class RepositorySize:
    bytes: int = 0
    objects: int = 0
    by_area: dict[str, int] = field(default_factory=dict)  # logical, base, wal, drills, ...: bytes

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "objects": self.objects, "by_area": dict(sorted(self.by_area.items()))}


@dataclass(frozen=True)
class Policy:
    """The thresholds status judges by (``monitoring.*``, ``retention.pitr_window``), in seconds."""

    backup_max_age: float = 48 * 3600.0
    drill_max_age: float = 35 * 86400.0
    pitr_window: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"backup_max_age_seconds": self.backup_max_age, "drill_max_age_seconds": self.drill_max_age,
                "pitr_window_seconds": self.pitr_window, "archive_lag_warning_seconds": ARCHIVE_LAG_WARNING,
                "archive_lag_critical_seconds": ARCHIVE_LAG_CRITICAL}


@dataclass(frozen=True)
class StatusSnapshot:
    """Everything status and metrics know about one cluster at ``taken_at``."""

    cluster: str
    repository: str
    taken_at: dt.datetime
    policy: Policy
    logical: tuple[BackupFacts, ...] = ()  # oldest first
    physical: tuple[BackupFacts, ...] = ()
    archive: ArchiveSummary | None = None
    archiving: ArchivingFacts = field(kw_only=True)  # no default: see the module's docstring
    drills: tuple[DrillReport, ...] = ()  # oldest first
    drill_error: str | None = None
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    jobs_error: str | None = None
    size: RepositorySize = field(default_factory=RepositorySize)
    damaged: tuple[DamagedManifest, ...] = ()  # backups whose manifest cannot be read (not in logical/physical)
    repository_error: str | None = None  # the repository could not be read (in time): only the server is judged
    unfinished: UnfinishedSummary | None = None  # unfinished writes under the cluster (None: not read)
    # S3 Object Lock: what pgvault applies and what the bucket enforces (operations/maintenance/status.py
    # object_lock_facts); None when the repository is not an S3 bucket.
    object_lock: dict[str, Any] | None = None

    def newest(self, kind: str) -> BackupFacts | None:
        backups = self.logical if kind == "logical" else self.physical
        return backups[-1] if backups else None

    def newest_per_database(self) -> dict[str, BackupFacts]:
        """Each database's newest logical backup holding it (so a database dumped by its own
        schedule is judged by its own newest dump, and one that stopped being dumped ages)."""
        out: dict[str, BackupFacts] = {}
        for b in reversed(self.logical):
            for name, _size in b.databases:
                out.setdefault(name, b)
        return dict(sorted(out.items()))

    def window(self) -> tuple[dt.datetime, dt.datetime] | None:
        """The recoverable window: from the oldest restorable base backup's end to the time the
        last reachable WAL segment was archived."""
        a = self.archive
        if a is None or not a.windows or not a.to_time or not a.windows[0].from_time:
            return None
        return _parse(a.windows[0].from_time), _parse(a.to_time)

    def last_drill(self, *, ok: bool | None = None, kind: str | None = None) -> DrillReport | None:
        for r in sorted(self.drills, key=lambda r: r.finished_at, reverse=True):
            if (ok is None or r.ok == ok) and (kind is None or r.backup_kind == kind):
                return r
        return None


@dataclass(frozen=True)
class Reason:
    level: str  # WARNING | CRITICAL
    code: str  # stable snake_case identifier
    message: str

    def to_json(self) -> dict[str, str]:
        return {"level": self.level, "code": self.code, "message": self.message}



# --- judging --------------------------------------------------------------------------------------


def evaluate(s: StatusSnapshot) -> list[Reason]:
    """Every finding about ``s``, CRITICAL ones first.  Pure; the rules are listed in the README
    ("status")."""
    reasons: list[Reason] = []
    p = s.policy

    def add(level: str, code: str, message: str) -> None:
        reasons.append(Reason(level, code, message))

    if s.repository_error:
        # Nothing about backups, the archive or drills can be judged; the server's archiver can.
        add(CRITICAL, "repository_unreachable", f"{s.repository_error}: backups, WAL archive and drills cannot be "
                                                "checked; WAL archiving into it is probably failing too")
    # Backups: each kind the cluster uses must have a recent one.
    elif not s.logical and not s.physical:
        add(CRITICAL, "no_backup", f"no backup of cluster {s.cluster!r} in the repository")
    for kind in ("logical", "physical"):
        b = s.newest(kind)
        age = age_seconds(s.taken_at, b.finished_at) if b else None
        if b is not None and age is not None and age > p.backup_max_age:
            add(CRITICAL, "backup_stale", f"the newest {kind} backup {b.backup_id} finished {describe_age(age)} ago "
                                          f"(monitoring.backup_max_age is {describe_age(p.backup_max_age)})")

    newest = s.newest("physical")
    if newest is not None and newest.bad_pages:
        add(CRITICAL, "corrupt_pages", f"the newest base backup {newest.backup_id} read {newest.bad_pages} page(s) of "
                                       f"the cluster that fail their checksum, e.g. {newest.first_bad_page}: the "
                                       "cluster's data is damaged")

    # Every base backup in the repository is kept (expire keeps the chain of what it keeps): an
    # incremental whose chain is broken is a backup that looks restorable and is not.
    broken = chain.broken({b.backup_id: b for b in s.physical},
                          {d.backup_id: d.reason for d in s.damaged if d.kind == "physical"})
    if broken:
        shown = "; ".join(f"{i}: {why}" for i, why in sorted(broken.items())[:3])
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        add(CRITICAL, "chain_broken", f"{len(broken)} incremental base backup(s) cannot be restored, their chain is "
                                      f"broken ({shown}{more}): take a full backup")

    # The WAL archive and the recoverable window.
    a = s.archive
    if a is not None and a.gaps:
        shown = ", ".join(f"{x}..{y}" if x != y else x for x, y in a.gaps[:5])
        more = f" and {len(a.gaps) - 5} more" if len(a.gaps) > 5 else ""
        add(CRITICAL, "archive_gap", f"{len(a.gaps)} gap(s) in the WAL archive: {shown}{more} missing")
    if a is not None and a.unfinished:
        add(CRITICAL, "wal_object_missing",
            f"{len(a.unfinished)} archived WAL file(s) have a checksum record but no object (recovery cannot read "
            f"them): {', '.join(a.unfinished[:5])}{' ...' if len(a.unfinished) > 5 else ''}")
    if s.physical and (a is None or not a.windows):
        add(CRITICAL, "no_recoverable_window", "no base backup can be recovered: the WAL it needs is not all archived")
    window = s.window()
    if p.pitr_window and not s.physical and not s.repository_error:
        add(WARNING, "window_short", f"retention.pitr_window is {describe_age(p.pitr_window)}, but there is no base backup")
    elif p.pitr_window and window is not None and (window[1] - window[0]).total_seconds() < p.pitr_window:
        add(WARNING, "window_short", f"the recoverable window covers {describe_age((window[1] - window[0]).total_seconds())}, "
                                     f"less than retention.pitr_window ({describe_age(p.pitr_window)})")

    # The server's archiver.
    ar = s.archiving
    if ar.connection == "ok":
        if ar.failing:
            add(WARNING, "archiver_failing",
                f"archive_command is failing: last failure for {ar.last_failed_wal} at {_short(ar.last_failed_time)}, "
                f"last success {ar.last_archived_wal or '-'} at {_short(ar.last_archived_time)} "
                f"({ar.failed_count} failures since the statistics reset)")
        if ar.archive_mode == "off" and a is not None:
            add(WARNING, "archive_mode_off", "archive_mode is off on the server, but the repository holds its archived WAL: "
                                             "the recoverable window no longer grows")
    if ar.lag_seconds is not None and ar.lag_seconds >= ARCHIVE_LAG_WARNING:
        level = CRITICAL if ar.lag_seconds >= ARCHIVE_LAG_CRITICAL else WARNING
        add(level, "archive_lag", f"{ar.backlog_segments} WAL file(s) wait to be archived, the oldest for "
                                  f"{describe_age(ar.lag_seconds)}")

    # Drills: evidence that backups restore.
    drill_failed = False
    if s.repository_error:
        pass
    elif s.drill_error:
        add(WARNING, "drills_unreadable", f"drill reports cannot be read: {s.drill_error}")
    else:
        good = s.last_drill(ok=True)
        good_age = age_seconds(s.taken_at, good.finished_at) if good else None
        if good is None:
            add(WARNING, "no_drill", "no successful restore drill yet (pgvault drill)")
        elif good_age is not None and good_age > p.drill_max_age:
            add(WARNING, "drill_stale", f"the last successful drill {good.drill_id} was {describe_age(good_age)} ago "
                                        f"(monitoring.drill_max_age is {describe_age(p.drill_max_age)})")
        last = s.last_drill()
        if last is not None and not last.ok:
            drill_failed = True
            failed = ", ".join(c.name for c in last.checks if not c.ok)
            add(WARNING, "drill_failed", f"the newest drill {last.drill_id} ({last.backup_kind} backup {last.backup_id}) failed: "
                                         f"{last.error or failed or 'see pgvault drill list'}")

    lock = s.object_lock
    if lock and lock.get("configured") != "off" and lock.get("bucket") is not None and not lock["bucket"].get("enabled"):
        add(WARNING, "object_lock_missing", f"repository.s3.object_lock is {lock['configured']}, but the bucket has no "
                                            "Object Lock: backups are not immutable and locked writes will be refused")
    elif lock and lock.get("error") and lock.get("configured") != "off":  # a key without the permission: not judged
        add(WARNING, "object_lock_unknown", f"the bucket's Object Lock configuration cannot be read: {lock['error']}")
    # Scheduled jobs.
    if s.jobs_error:
        add(WARNING, "jobs_unreadable", f"job records cannot be read: {s.jobs_error}")
    # A damaged manifest is judged by what it leaves: the rules above already ignore it (an
    # unusable newest backup makes the next one "newest"); the damage itself needs a person.
    for d in s.damaged:
        add(WARNING, "manifest_damaged", f"{d.kind} backup {d.backup_id} cannot be restored: {d.reason}")
    # Space that no listing shows, left by killed writers; younger ones may be a backup at work.
    if s.unfinished is not None and (leftovers := s.unfinished.warning()):
        add(WARNING, "unfinished_writes", leftovers)
    for name, j in sorted(s.jobs.items()):
        failures = _int(j.details.get("failures")) if name == "verify" else 0
        if name == "verify" and (failures or (not j.ok and j.last_error_kind == "integrity")):
            add(CRITICAL, "verify_failed", f"the last verify ({_short(j.last_finished_at)}) found "
                                           f"{failures or 'integrity'} failure(s): {j.last_error or 'see pgvault verify'}")
        elif not j.ok and not (name == "drill" and drill_failed):
            add(WARNING, "job_failed", f"the last {name} run failed at {_short(j.last_finished_at)} "
                                       f"(exit {j.last_exit_code}, {j.last_error_kind}): {j.last_error or '-'}")
    reasons.sort(key=lambda r: -_LEVELS[r.level])
    return reasons


def verdict(reasons: list[Reason]) -> str:
    """The worst level among ``reasons``; OK when there are none."""
    return max((r.level for r in reasons), key=lambda lv: _LEVELS[lv], default=OK)


def snapshot_json(s: StatusSnapshot, reasons: list[Reason]) -> dict[str, Any]:
    """The ``status --json`` document (without format/kind)."""
    v = verdict(reasons)
    window = s.window()
    last, good = s.last_drill(), s.last_drill(ok=True)
    logical, physical = s.newest("logical"), s.newest("physical")
    return {
        "cluster": s.cluster, "repository": s.repository, "checked_at": s.taken_at.isoformat(),
        "verdict": v, "exit_code": VERDICT_EXIT[v], "reasons": [r.to_json() for r in reasons],
        "repository_error": s.repository_error,
        "last_logical": logical.to_json(s.taken_at) if logical else None,
        "last_physical": physical.to_json(s.taken_at) if physical else None,
        "backups": {"logical": len(s.logical), "physical": len(s.physical)},
        "databases": {name: {"backup_id": b.backup_id, "finished_at": b.finished_at}
                      for name, b in s.newest_per_database().items()},
        "archive": s.archive.to_json() if s.archive else None,
        "recoverable_window": None if window is None else {
            "from": window[0].isoformat(), "to": window[1].isoformat(),
            "seconds": round((window[1] - window[0]).total_seconds(), 3)},
        "archiving": s.archiving.to_json(),
        "last_drill": _drill_json(last, s.taken_at),
        "last_successful_drill": _drill_json(good, s.taken_at),
        "jobs": {name: j.to_json() for name, j in sorted(s.jobs.items())},
        "damaged": [d.to_json() for d in s.damaged],
        "repository_size": s.size.to_json(),
        "unfinished_writes": s.unfinished.to_json() if s.unfinished is not None else None,
        "policy": s.policy.to_json(),
        "object_lock": s.object_lock,
    }


def _drill_json(r: DrillReport | None, now: dt.datetime) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"drill_id": r.drill_id, "backup_kind": r.backup_kind, "backup_id": r.backup_id, "finished_at": r.finished_at,
            "age_seconds": round(age_seconds(now, r.finished_at) or 0.0, 3), "ok": r.ok,
            "restore_seconds": r.restore_seconds, "error": r.error,
            "failed_checks": [c.name for c in r.checks if not c.ok]}


# --- small helpers --------------------------------------------------------------------------------


def _parse(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def timestamp(text: str | None) -> float | None:
    """Seconds since the epoch of an ISO timestamp (None stays None)."""
    if not text:
        return None
    try:
        return _parse(text).timestamp()
    except ValueError:
        return None


def age_seconds(now: dt.datetime, text: str | None) -> float | None:
    """How long before ``now`` the ISO timestamp ``text`` was (never negative)."""
    t = timestamp(text)
    return None if t is None else max(0.0, now.timestamp() - t)


def describe_age(seconds: float) -> str:
    """3h05m, 2d04h, 45s: for people."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _short(text: str | None) -> str:
    return (text or "-")[:19].replace("T", " ")


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
