"""What ``status`` and ``metrics`` report about a cluster: one snapshot of facts, then a verdict.

:func:`gather_status` reads the repository (backups, WAL archive and recoverable window, drill
reports, job records, sizes) and, when it can, the server (``pg_stat_archiver``, the ``.ready``
backlog of a local data directory: :mod:`pgvault.operations.server_probe`) into a
:class:`StatusSnapshot`.  Connecting is optional: a server that cannot be reached is noted and the
rest is still reported, because the repository is what must be judged when the database host is
the thing that burned down.

:func:`evaluate` is pure: it turns a snapshot into OK / WARNING / CRITICAL with one reason per
finding.  ``status`` prints the snapshot and the reasons; ``metrics`` exports the same snapshot,
so the screen and the alerts never disagree about the facts.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Any

from pgvault import log
from pgvault.errors import PgvaultError, StorageError
from pgvault.operations.context import Context
from pgvault.operations.maintenance.unfinished import UnfinishedSummary, scan
from pgvault.operations.server_probe import ArchivingFacts, probe_archiving
from pgvault.policy.pitr import Window, archive_gaps, recoverable_windows
from pgvault.repository.archive_scan import load_archive_index
from pgvault.repository.catalog import DamagedManifest, read_cluster_info, scan_logical, scan_physical
from pgvault.repository.drills import DrillReport, list_drills
from pgvault.repository.jobs import JobRecord, list_jobs
from pgvault.repository.manifest import LogicalManifest
from pgvault.repository.physical import PhysicalManifest
from pgvault.repository.wal_record import archived_at_iso

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


def archive_summary(ctx: Context, backups: list[PhysicalManifest]) -> ArchiveSummary | None:
    """None when the cluster has never archived WAL."""
    info = read_cluster_info(ctx.storage, ctx.cluster)
    if not info or not info.get("wal_segment_size"):
        return None
    stored = load_archive_index(ctx.storage, ctx.cluster, int(info["wal_segment_size"]))
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


# --- the snapshot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupFacts:
    """One complete backup, as much as status and metrics need of its manifest."""

    kind: str  # logical | physical
    backup_id: str
    finished_at: str
    duration_seconds: float
    stored_size: int
    databases: tuple[tuple[str, int], ...] = ()  # logical: (database, stored bytes of its dump)
    stop_lsn: str | None = None  # physical

    @classmethod
    def of_logical(cls, m: LogicalManifest) -> BackupFacts:
        return cls("logical", m.backup_id, m.finished_at, m.duration_seconds, m.stored_size,
                   tuple((d.name, d.object.result.stored_size) for d in m.databases))

    @classmethod
    def of_physical(cls, m: PhysicalManifest) -> BackupFacts:
        return cls("physical", m.backup_id, m.finished_at, m.duration_seconds, m.stored_size, stop_lsn=m.stop_lsn)

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
    archiving: ArchivingFacts = field(default_factory=ArchivingFacts)
    drills: tuple[DrillReport, ...] = ()  # oldest first
    drill_error: str | None = None
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    jobs_error: str | None = None
    size: RepositorySize = field(default_factory=RepositorySize)
    damaged: tuple[DamagedManifest, ...] = ()  # backups whose manifest cannot be read (not in logical/physical)
    repository_error: str | None = None  # the repository could not be read (in time): only the server is judged
    unfinished: UnfinishedSummary | None = None  # unfinished writes under the cluster (None: not read)

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
    info = read_cluster_info(ctx.storage, ctx.cluster) or {}
    s = ctx.settings
    return StatusSnapshot(
        cluster=ctx.cluster, repository=ctx.storage.url, taken_at=now,
        policy=Policy(backup_max_age=s.backup_max_age, drill_max_age=s.drill_max_age, pitr_window=s.pitr_window),
        logical=tuple(BackupFacts.of_logical(m) for m in logical),
        physical=tuple(BackupFacts.of_physical(m) for m in physical),
        archive=archive,
        archiving=probe_archiving(ctx.conn, pgdata=pgdata, connect=connect, now=now,
                                  system_identifier=str(info["system_identifier"]) if info.get("system_identifier") else None),
        drills=drills, drill_error=drill_error, jobs=jobs, jobs_error=jobs_error, damaged=tuple(cache.damaged),
        size=repository_size(ctx, ctx.cluster), unfinished=scan(ctx.storage, ctx.cluster, now, s.debris_grace),
    )


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
