"""Retention, purely: which backups, WAL files and debris ``pgvault expire`` keeps or deletes, and why.

No I/O (design rule 5): :mod:`pgvault.operations.maintenance.expire` lists the repository and passes simple
records plus ``now``; :func:`make_plan` returns a plan in which every kept backup names *every*
rule that keeps it and every deleted one says why.  The rules:

* **Logical backups** (each backup is one unit, whatever databases it holds): ``keep_last`` N
  newest; ``keep_within`` everything younger than a duration; calendar tiers ``daily``/``weekly``/
  ``monthly``/``yearly`` N, each keeping the newest backup of each of the last N days / ISO weeks /
  months / years *that have a backup* (restic's ``--keep-daily`` semantics: the tiers count
  independently, in UTC); ``min_keep`` tops up with the newest backups no rule kept.  A backup is
  kept if any rule keeps it.
* **Base backups**: ``keep_last``, ``keep_within`` and ``min_keep`` as above, and ``pitr_window``
  W: the newest backup that ended at or before ``now - W`` (the one a recovery to the oldest point
  of the window starts from) plus every newer one.
* **Incremental chains** (:mod:`pgvault.policy.retention_chain`): after the rules, every backup a
  kept ``incr``/``diff`` is restored from is kept too ("needed by <id> (incr)"), whatever the rules
  and ``min_keep`` said of it.
* **WAL** (:mod:`pgvault.policy.retention_wal`): every segment a kept base backup needs to
  reach every point of its recovery window, i.e. everything from the oldest kept backup's start segment onward, on every timeline.  WAL of a lower
  segment number (any timeline: segments, ``.partial`` files, backup history files) is deleted;
  timeline history files are tiny and all kept.  Without a base backup nothing says which WAL is
  needed, so none is deleted.
* **Debris**: backup folders without a manifest and WAL files missing their object or their
  checksum record, once their newest object is older than the grace period (and, for folders, no
  backup of that kind holds its lock).
* **Unfinished writes** (:meth:`pgvault.storage.Storage.unfinished_writes`: a killed writer's local
  ``.tmp-*`` files, incomplete S3 multipart uploads) once they were last written to longer ago
  than the same grace period, and never under ``logical/`` or ``base/`` while a backup of that kind
  holds its lock (a dump may write nothing for hours while it waits for a table lock).

The newest backup of each kind is always kept (``min_keep`` below 1 counts as 1): no policy can
empty the repository.  With no policy configured for a kind, everything of that kind is kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgvault.pg import wal
from pgvault.policy.retention_chain import keep_chains
from pgvault.policy.retention_wal import WalFile, WalPlan, plan_wal
from pgvault.repository import layout
from pgvault.storage.base import ObjectInfo, UnfinishedWrite

if TYPE_CHECKING:
    from pgvault.config import Settings

DELETE_REASON = "no rule keeps it"
UTC = dt.UTC


def fmt_duration(seconds: float) -> str:
    """``1209600`` → ``14d``, ``129600`` → ``1d12h``: the units the config accepts."""
    rest = int(round(seconds))
    if rest <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def fmt_time(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _count_and_age(keep_last: int | None, keep_within: float | None) -> list[str]:
    """The rules both kinds share, as a policy description reads them."""
    parts = [] if keep_last is None else [f"last {keep_last}"]
    if keep_within is not None:
        parts.append(f"within {fmt_duration(keep_within)}")
    return parts


# --- policy -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogicalPolicy:
    """Retention of logical backups (see the module docstring)."""

    keep_last: int | None = None
    keep_within: float | None = None  # seconds
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    min_keep: int = 1

    @property
    def configured(self) -> bool:
        return (self.keep_last is not None or self.keep_within is not None
                or any((self.daily, self.weekly, self.monthly, self.yearly)))

    def describe(self) -> str:
        if not self.configured:
            return "none configured"
        parts = _count_and_age(self.keep_last, self.keep_within)
        for name, n in (("daily", self.daily), ("weekly", self.weekly), ("monthly", self.monthly), ("yearly", self.yearly)):
            if n:
                parts.append(f"{name} {n}")
        parts.append(f"min_keep {_floor(self.min_keep)}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"keep_last": self.keep_last, "keep_within_seconds": self.keep_within, "daily": self.daily,
                "weekly": self.weekly, "monthly": self.monthly, "yearly": self.yearly, "min_keep": _floor(self.min_keep),
                "configured": self.configured}


@dataclass(frozen=True)
class PhysicalPolicy:
    """Retention of base backups, and through them of WAL."""

    keep_last: int | None = None
    keep_within: float | None = None
    min_keep: int = 1
    pitr_window: float | None = None

    @property
    def configured(self) -> bool:
        return self.keep_last is not None or self.keep_within is not None or self.pitr_window is not None

    def describe(self) -> str:
        if not self.configured:
            return "none configured"
        parts = _count_and_age(self.keep_last, self.keep_within)
        if self.pitr_window is not None:
            parts.append(f"pitr window {fmt_duration(self.pitr_window)}")
        parts.append(f"min_keep {_floor(self.min_keep)}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"keep_last": self.keep_last, "keep_within_seconds": self.keep_within, "min_keep": _floor(self.min_keep),
                "pitr_window_seconds": self.pitr_window, "configured": self.configured}


@dataclass(frozen=True)
class Policy:
    logical: LogicalPolicy = field(default_factory=LogicalPolicy)
    physical: PhysicalPolicy = field(default_factory=PhysicalPolicy)
    debris_grace: float = 24 * 3600.0

    @property
    def configured(self) -> bool:
        return self.logical.configured or self.physical.configured

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        """The policy the ``retention.*`` settings describe."""
        return cls(
            logical=LogicalPolicy(keep_last=s.keep_last_logical, keep_within=s.keep_within_logical, daily=s.keep_daily,
                                  weekly=s.keep_weekly, monthly=s.keep_monthly, yearly=s.keep_yearly,
                                  min_keep=s.min_keep_logical),
            physical=PhysicalPolicy(keep_last=s.keep_last_physical, keep_within=s.keep_within_physical,
                                    min_keep=s.min_keep_physical, pitr_window=s.pitr_window),
            debris_grace=s.debris_grace,
        )

    def to_json(self) -> dict[str, Any]:
        return {"logical": self.logical.to_json(), "physical": self.physical.to_json(),
                "debris_grace_seconds": self.debris_grace, "configured": self.configured}


def _floor(min_keep: int) -> int:
    # Never delete the last backup: a policy that keeps nothing is a configuration slip.
    return max(1, min_keep)


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    """One complete backup (its manifest exists) as retention sees it."""

    backup_id: str
    taken_at: dt.datetime  # UTC, from the id (when the backup started)
    size: int = 0  # stored bytes under its folder
    ended_at: dt.datetime | None = None  # base backups: server clock at pg_backup_stop
    timeline: int = 1
    start_lsn: wal.LSN | None = None  # base backups: where its WAL starts
    unreadable: str | None = None  # the manifest could not be read: always kept, never counted
    # Incremental chains (policy/retention_chain.py): "full" | "incr" | "diff", the backup it is
    # restored from and that backup's start LSN when it was taken.
    backup_type: str = "full"
    reference: str | None = None
    reference_start_lsn: str = ""

    @classmethod
    def from_id(cls, backup_id: str, **kw: Any) -> Backup:
        return cls(backup_id, layout.parse_backup_id(backup_id), **kw)

    @property
    def order(self) -> tuple[dt.datetime, int, str]:
        # Same-second ids carry "-N": compare N as a number ("-10" is newer than "-2").
        return (self.taken_at, int(self.backup_id.partition("-")[2] or 0), self.backup_id)


@dataclass(frozen=True)
class Decision:
    """Keep or delete one backup, with every reason."""

    backup_id: str
    keep: bool
    reasons: tuple[str, ...]
    taken_at: dt.datetime
    size: int
    detail: str = ""

    @property
    def action(self) -> str:
        return "keep" if self.keep else "delete"

    def to_json(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "action": self.action, "reasons": list(self.reasons),
                "taken_at": self.taken_at.isoformat(), "size": self.size, "detail": self.detail}


# --- backups ------------------------------------------------------------------------------------

_Tier = tuple[str, Callable[[dt.datetime], tuple[int, ...]], Callable[[dt.datetime], str]]
TIERS: tuple[_Tier, ...] = (
    ("daily", lambda t: (t.year, t.month, t.day), lambda t: f"{t:%Y-%m-%d}"),
    ("weekly", lambda t: tuple(t.isocalendar())[:2], lambda t: "{}-W{:02d}".format(*t.isocalendar())),
    ("monthly", lambda t: (t.year, t.month), lambda t: f"{t:%Y-%m}"),
    ("yearly", lambda t: (t.year,), lambda t: f"{t:%Y}"),
)


def _decide(
    backups: Sequence[Backup], rules: Callable[[list[Backup], dict[str, list[str]]], None], min_keep: int,
    detail: Callable[[Backup], str] = lambda _b: "",
) -> list[Decision]:
    """Run ``rules`` over the readable backups (newest first), top up to ``min_keep``, decide."""
    readable = sorted((b for b in backups if b.unreadable is None), key=lambda b: b.order, reverse=True)
    reasons: dict[str, list[str]] = {b.backup_id: [] for b in readable}
    rules(readable, reasons)
    floor = _floor(min_keep)
    kept = sum(1 for b in readable if reasons[b.backup_id])
    for b in readable:
        if kept >= floor:
            break
        if not reasons[b.backup_id]:
            reasons[b.backup_id].append(f"min_keep {floor}")
            kept += 1
    out = [Decision(b.backup_id, bool(reasons[b.backup_id]), tuple(reasons[b.backup_id]) or (DELETE_REASON,),
                    b.taken_at, b.size, detail(b)) for b in readable]
    out += [Decision(b.backup_id, True, (f"manifest unreadable ({b.unreadable}): never deleted by expire",),
                     b.taken_at, b.size, detail(b)) for b in backups if b.unreadable is not None]
    return sorted(out, key=lambda d: Backup(d.backup_id, d.taken_at).order, reverse=True)


def _keep_all(reason: str) -> Callable[[list[Backup], dict[str, list[str]]], None]:
    def rules(ordered: list[Backup], reasons: dict[str, list[str]]) -> None:
        for b in ordered:
            reasons[b.backup_id].append(reason)
    return rules


def _keep_last_within(policy_last: int | None, within: float | None, now: dt.datetime,
                      ordered: list[Backup], reasons: dict[str, list[str]]) -> None:
    if policy_last:
        for b in ordered[:policy_last]:
            reasons[b.backup_id].append(f"last {policy_last}")
    if within is not None:
        for b in ordered:
            if (now - b.taken_at).total_seconds() < within:
                reasons[b.backup_id].append(f"within {fmt_duration(within)}")


def plan_logical(backups: Sequence[Backup], policy: LogicalPolicy, now: dt.datetime) -> list[Decision]:
    """Keep or delete each logical backup; newest first."""
    if not policy.configured:
        return _decide(backups, _keep_all("no logical retention policy configured"), 1)

    def rules(ordered: list[Backup], reasons: dict[str, list[str]]) -> None:
        _keep_last_within(policy.keep_last, policy.keep_within, now, ordered, reasons)
        for name, bucket, label in TIERS:
            count = getattr(policy, name)
            last: tuple[int, ...] | None = None
            used = 0
            for b in ordered:  # newest first: the first backup seen in a bucket is its newest
                t = b.taken_at.astimezone(UTC)
                key = bucket(t)
                if key == last:
                    continue
                last = key
                if used >= count:
                    break
                used += 1
                reasons[b.backup_id].append(f"{name} {label(t)}")

    return _decide(backups, rules, policy.min_keep)


def plan_physical(
    backups: Sequence[Backup], policy: PhysicalPolicy, now: dt.datetime, seg_size: int | None = None,
) -> tuple[list[Decision], list[str]]:
    """Keep or delete each base backup (newest first), plus notes about the PITR window."""
    notes: list[str] = []

    def detail(b: Backup) -> str:
        if b.start_lsn is None:
            return ""
        start = wal.segment_name(b.timeline, wal.segment_of(b.start_lsn, seg_size), seg_size) if seg_size else str(b.start_lsn)
        return f"timeline {b.timeline}, WAL from {start}"

    if not policy.configured:
        return _decide(backups, _keep_all("no physical retention policy configured"), 1, detail), notes

    def rules(ordered: list[Backup], reasons: dict[str, list[str]]) -> None:
        _keep_last_within(policy.keep_last, policy.keep_within, now, ordered, reasons)
        if policy.pitr_window is None or not ordered:
            return
        w = fmt_duration(policy.pitr_window)
        cutoff = now - dt.timedelta(seconds=policy.pitr_window)
        for b in ordered:  # newest first: every backup up to the anchor is kept
            ended = b.ended_at or b.taken_at
            if ended <= cutoff:
                reasons[b.backup_id].append(f"pitr {w}: the base of the window (ended {fmt_time(ended)}, "
                                            f"not after now-{w} = {fmt_time(cutoff)})")
                return
            reasons[b.backup_id].append(f"pitr {w}: inside the window")
        oldest = ordered[-1]
        notes.append(f"the {w} PITR window reaches back to {fmt_time(cutoff)} UTC, but the oldest base backup ended "
                     f"{fmt_time(oldest.ended_at or oldest.taken_at)} UTC: no earlier point can be restored")

    return _decide(backups, rules, policy.min_keep, detail), notes


# --- debris -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Folder:
    """One backup folder (``logical/YYYY/MM/<id>/`` or ``base/<id>/``) and what it holds."""

    kind: str  # "logical" | "base"
    prefix: str
    backup_id: str
    objects: tuple[ObjectInfo, ...]

    @property
    def has_manifest(self) -> bool:
        return any(o.key == self.prefix + layout.MANIFEST_NAME for o in self.objects)

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)


def group_folders(kind: str, objects: Iterable[ObjectInfo], cluster: str) -> tuple[list[Folder], int]:
    """Group a listing of ``<cluster>/logical/`` or ``<cluster>/base/`` into backup folders.  Keys
    outside a folder named by a backup id (at the place the layout puts it) are counted, not grouped."""
    root = layout.logical_root(cluster) if kind == "logical" else layout.base_root(cluster)
    depth = 3 if kind == "logical" else 1  # YYYY/MM/<id> or <id>
    found: dict[str, tuple[str, list[ObjectInfo]]] = {}
    strays = 0
    for info in objects:
        parts = info.key[len(root):].split("/") if info.key.startswith(root) else []
        if len(parts) <= depth or not layout.is_backup_id(parts[depth - 1]):
            strays += 1
            continue
        backup_id = parts[depth - 1]
        prefix = root + "/".join(parts[:depth]) + "/"
        expected = layout.logical_prefix(cluster, backup_id) if kind == "logical" else layout.base_prefix(cluster, backup_id)
        if prefix != expected:
            strays += 1
            continue
        found.setdefault(prefix, (backup_id, []))[1].append(info)
    return [Folder(kind, p, i, tuple(objs)) for p, (i, objs) in sorted(found.items())], strays


@dataclass(frozen=True)
class Debris:
    """Leftovers of an interrupted run: a folder without manifest, or a WAL file missing its object
    or its checksum record."""

    kind: str  # "logical" | "base" | "wal"
    where: str  # folder prefix or WAL file name
    keys: tuple[str, ...]
    size: int
    newest: dt.datetime
    delete: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "action": "delete" if self.delete else "keep",
                "reason": self.reason, "objects": len(self.keys), "bytes": self.size, "newest": self.newest.isoformat()}


def plan_debris(
    folders: Sequence[Folder], wal_files: Sequence[WalFile], now: dt.datetime, grace: float,
    busy: Iterable[str] = (),
) -> list[Debris]:
    """Debris older than ``grace`` is deleted; younger debris may be a run in progress.  ``busy``
    names the kinds ("logical", "base") whose backup lock is held: their folders are left alone
    whatever their age (a long dump may write nothing visible for hours)."""
    g = fmt_duration(grace)
    held = set(busy)

    old = _rounded
    out: list[Debris] = []
    for f in sorted(folders, key=lambda f: f.prefix):
        if f.has_manifest or not f.objects:
            continue
        newest = max(o.modified for o in f.objects)
        age = (now - newest).total_seconds()
        if f.kind in held:
            delete, reason = False, f"no manifest, but a {f.kind} backup is running (its lock is held)"
        elif age > grace:
            delete, reason = True, f"no manifest; newest object {old(age)} old (grace {g})"
        else:
            delete, reason = False, f"no manifest, but younger than the grace {g}: a backup may be running"
        keys = tuple(o.key for o in f.objects)
        out.append(Debris(f.kind, f.prefix, keys, f.size, newest, delete, reason))
    for w in sorted(wal_files, key=lambda w: w.name):
        if w.complete:
            continue
        what = "checksum record without its object" if w.sidecar else "object without its checksum record"
        age = (now - w.newest).total_seconds()
        if age > grace:
            delete, reason = True, f"{what}; {old(age)} old (grace {g})"
        else:
            delete, reason = False, f"{what}, but younger than the grace {g}: a push may be in progress"
        out.append(Debris("wal", w.name, tuple(w.keys()), w.size, w.newest, delete, reason))
    return out


@dataclass(frozen=True)
class Leftover:
    """One unfinished write and what expire does with it."""

    write: UnfinishedWrite
    delete: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"where": self.write.key, "action": "delete" if self.delete else "keep", "reason": self.reason,
                "bytes": self.write.size, "modified": self.write.modified.isoformat()}


def write_area(key: str) -> str:
    """The area of ``<cluster>/<area>/...`` (logical, base, wal, jobs, ...); "" for a key outside one."""
    parts = key.split("/")
    return parts[1] if len(parts) > 2 else ""


def plan_unfinished(writes: Iterable[UnfinishedWrite], now: dt.datetime, grace: float,
                    busy: Iterable[str] = ()) -> list[Leftover]:
    """Unfinished writes (keys under ``<cluster>/``) last written to longer ago than ``grace`` are
    deleted; younger ones may be a writer at work, and those of a kind in ``busy`` belong to the
    backup holding its lock, whatever their age.  In key order."""
    g = fmt_duration(grace)
    held = set(busy)
    out = []
    for w in sorted(writes, key=lambda w: (w.key, w.token)):
        age = (now - w.modified).total_seconds()
        kind = write_area(w.key)
        if kind in held:
            delete, reason = False, f"unfinished write, but a {kind} backup is running (its lock is held)"
        elif age > grace:
            delete, reason = True, f"unfinished write, last written {_rounded(age)} ago (grace {g})"
        else:
            delete, reason = False, f"unfinished write, younger than the grace {g}: a write may be in progress"
        out.append(Leftover(w, delete, reason))
    return out


def _rounded(age: float) -> str:
    return fmt_duration(age - age % 60 if age >= 3600 else age)  # "2d3m", not "2d3m8s"


# --- the whole plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Inventory:
    """What the repository holds, as listed once (see :func:`pgvault.operations.maintenance.expire.collect`)."""

    logical: tuple[Backup, ...] = ()
    physical: tuple[Backup, ...] = ()
    folders: tuple[Folder, ...] = ()  # every backup folder, with or without manifest
    wal: tuple[WalFile, ...] = ()
    seg_size: int | None = None
    busy: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()
    unfinished: tuple[UnfinishedWrite, ...] = ()  # under <cluster>/
    # S3 Object Lock: (kind "logical"|"physical", backup id) → the latest retain-until date of its
    # objects still ahead. Such a backup is kept (and so is the WAL it needs): expire never tries
    # to delete what the store would refuse (operations/maintenance/retained.py).
    retained: Mapping[tuple[str, str], dt.datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class RetentionPlan:
    now: dt.datetime
    policy: Policy
    logical: tuple[Decision, ...]
    physical: tuple[Decision, ...]
    wal: WalPlan
    debris: tuple[Debris, ...]
    notes: tuple[str, ...] = ()
    unfinished: tuple[Leftover, ...] = ()

    def deleted_backups(self, kind: str) -> list[Decision]:
        return [d for d in (self.logical if kind == "logical" else self.physical) if not d.keep]

    def summary(self) -> dict[str, Any]:
        def count(ds: Sequence[Decision]) -> dict[str, int]:
            gone = [d for d in ds if not d.keep]
            return {"keep": len(ds) - len(gone), "delete": len(gone), "delete_bytes": sum(d.size for d in gone)}
        swept = [d for d in self.debris if d.delete]
        return {"logical": count(self.logical), "physical": count(self.physical),
                "wal": {"keep": self.wal.kept_files, "delete": len(self.wal.delete),
                        "delete_bytes": sum(f.size for f in self.wal.delete)},
                "debris": {"keep": len(self.debris) - len(swept), "delete": len(swept),
                           "delete_bytes": sum(d.size for d in swept)},
                "unfinished_writes": {"keep": sum(1 for u in self.unfinished if not u.delete),
                                      "delete": sum(1 for u in self.unfinished if u.delete),
                                      "delete_bytes": sum(u.write.size for u in self.unfinished if u.delete)}}

    def to_json(self) -> dict[str, Any]:
        return {"now": self.now.isoformat(), "policy": self.policy.to_json(),
                "logical": [d.to_json() for d in self.logical], "physical": [d.to_json() for d in self.physical],
                "wal": self.wal.to_json(), "debris": [d.to_json() for d in self.debris],
                "unfinished_writes": [u.to_json() for u in self.unfinished], "notes": list(self.notes),
                "summary": self.summary()}


def _hold(decisions: list[Decision], retained: Mapping[tuple[str, str], dt.datetime], kind: str) -> list[Decision]:
    """Keep a backup the plan would delete while its objects are under Object Lock retention."""
    out = []
    for d in decisions:
        until = retained.get((kind, d.backup_id))
        if not d.keep and until is not None:
            d = dataclasses.replace(d, keep=True, reasons=(f"retained until {fmt_time(until)} UTC (object lock)",))
        out.append(d)
    return out


def make_plan(inv: Inventory, policy: Policy, now: dt.datetime) -> RetentionPlan:
    """The complete retention plan for one cluster."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    notes = list(inv.notes)
    if not policy.configured:
        notes.insert(0, "no retention policy is configured: every backup and all WAL are kept "
                        "(set retention.* in the config; 'pgvault config keys' lists them); only debris is swept")
    logical = _hold(plan_logical(inv.logical, policy.logical, now), inv.retained, "logical")
    physical, pnotes = plan_physical(inv.physical, policy.physical, now, inv.seg_size)
    physical = _hold(physical, inv.retained, "physical")
    # After the rules and the holds: whatever they keep keeps the chain it is restored from.
    physical, cnotes = keep_chains(physical, inv.physical)
    notes += pnotes + cnotes
    # A kept incremental's chain is kept, so WAL is kept from its full's start (conservative: see plan_wal).
    kept_ids = {d.backup_id for d in physical if d.keep}
    kept = [b for b in inv.physical if b.backup_id in kept_ids]
    wal_plan = plan_wal(inv.wal, kept, inv.seg_size, configured=policy.physical.configured)
    debris = plan_debris(inv.folders, inv.wal, now, policy.debris_grace, inv.busy)
    unfinished = plan_unfinished(inv.unfinished, now, policy.debris_grace, inv.busy)
    return RetentionPlan(now, policy, tuple(logical), tuple(physical), wal_plan, tuple(debris), tuple(notes),
                         tuple(unfinished))
