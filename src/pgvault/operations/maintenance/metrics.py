"""Prometheus metrics: the status snapshot as samples, and three ways to expose them.

:data:`METRICS` is the one table of what pgvault exports (name, help, labels); samples are built
only through it, so the alert rules' test can check every name they use against it.  Building the
samples is pure (:func:`snapshot_samples`, :func:`job_samples`); ``prometheus_client`` is used
with a private ``CollectorRegistry`` for exposition only:

* ``--textfile PATH``: node_exporter's textfile collector.  The file is rewritten atomically
  (temp file, fsync, rename) under a lock, *merged* with what it holds: series of other clusters
  stay, and job series keep whichever run is newer, so the same file can also receive the job
  fallback below without either side erasing the other.
* ``--push URL``: a Pushgateway (job ``pgvault``, grouped by cluster), for CronJobs.
* ``--serve ADDR``: an HTTP ``/metrics`` endpoint computing a fresh snapshot on every scrape.

The job fallback (:func:`write_job_textfile`): a scheduled command whose repository is
unreachable cannot record its failure there, which is exactly when the failure matters; with
``--metrics-textfile`` / ``PGVAULT_METRICS_TEXTFILE`` it writes its job series straight into a
local textfile as well.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgvault.fs import flock, write_atomic
from pgvault.policy.sync import Lag, RepositoryPosition
from pgvault.policy.verdict import (
    VERDICT_EXIT,
    Reason,
    StatusSnapshot,
    timestamp,
    verdict,
)
from pgvault.repository.jobs import JobRecord, JobRun, merge_run

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


@dataclass(frozen=True)
class MetricDef:
    name: str
    help: str
    labels: tuple[str, ...]


_BACKUP = ("cluster", "kind", "database")
_C = ("cluster",)
# Not "job" (nor "instance"): Prometheus sets those on every series it scrapes (renaming ours to
# exported_job unless honor_labels), and the Pushgateway overwrites "job" with its group's, so alert
# rules selecting on a "job" label would silently never match.
_JOB = ("cluster", "pgvault_job")
_R = ("cluster", "repository")

# Every metric pgvault exports.  All are gauges; timestamps are seconds since the epoch.  The first
# three keep the names (and labels) of the alerts users already have.
METRICS: dict[str, MetricDef] = {d.name: d for d in (
    MetricDef("postgresql_backup_last_success_timestamp", "When the newest complete backup finished (logical: per "
              "database, its newest dump; physical: database=\"\")", _BACKUP),
    MetricDef("postgresql_backup_duration_seconds", "How long that backup took", _BACKUP),
    MetricDef("postgresql_backup_size_bytes", "Stored (compressed, encrypted) size of that backup "
              "(logical: the database's dump)", _BACKUP),
    MetricDef("pgvault_up", "1 when the repository could be read for this snapshot, 0 when not", _C),
    MetricDef("pgvault_status", "The status verdict: 0 OK, 1 WARNING, 2 CRITICAL", _C),
    MetricDef("pgvault_backups", "Complete backups in the repository", ("cluster", "kind")),
    MetricDef("pgvault_base_backup_bad_pages", "Pages of the cluster whose checksum failed while the newest base "
              "backup read them (only when it checked them)", _C),
    MetricDef("pgvault_wal_archived_segments", "WAL segments in the repository", _C),
    MetricDef("pgvault_wal_archive_gaps", "Holes in the archived WAL (missing segment ranges)", _C),
    MetricDef("pgvault_wal_archive_lag_seconds", "Age of the oldest WAL file waiting to be archived (0: none "
              "waits); only when measurable", _C),
    MetricDef("pgvault_wal_archive_backlog_segments", "WAL files waiting to be archived (.ready files, or estimated "
              "from pg_stat_archiver); only when measurable", _C),
    MetricDef("pgvault_wal_archive_failing", "1 when archive_command failed more recently than it succeeded "
              "(pg_stat_archiver)", _C),
    MetricDef("pgvault_wal_archive_last_success_timestamp", "pg_stat_archiver.last_archived_time", _C),
    MetricDef("pgvault_recoverable_window_start_timestamp", "Earliest point-in-time recovery target: the end of "
              "the oldest restorable base backup", _C),
    MetricDef("pgvault_recoverable_window_end_timestamp", "Latest recovery point: when the last WAL segment "
              "reachable without a hole was archived", _C),
    MetricDef("pgvault_recoverable_window_policy_seconds", "retention.pitr_window: how far back recovery must "
              "reach (only when set)", _C),
    MetricDef("pgvault_drill_last_success_timestamp", "When the newest successful restore drill finished "
              "(0: never)", ("cluster", "kind")),
    MetricDef("pgvault_drill_last_status", "Result of the newest restore drill: 1 passed, 0 failed", ("cluster", "kind")),
    MetricDef("pgvault_drill_restore_duration_seconds", "Measured restore (recovery) time of the newest drill "
              "that got that far", ("cluster", "kind")),
    MetricDef("pgvault_drill_rto_seconds", "drill.rto, the recovery-time objective that same drill was judged "
              "against (only when it had one)", ("cluster", "kind")),
    MetricDef("pgvault_verify_failures", "Failures the last verify found (from its job record)", _C),
    MetricDef("pgvault_repository_size_bytes", "Bytes stored under the cluster's prefix", _C),
    MetricDef("pgvault_repository_objects", "Objects stored under the cluster's prefix", _C),
    MetricDef("pgvault_job_last_success_timestamp", "When the job last succeeded", _JOB),
    MetricDef("pgvault_job_last_failure_timestamp", "When the job last failed", _JOB),
    MetricDef("pgvault_job_last_duration_seconds", "How long the job's last run took", _JOB),
    MetricDef("pgvault_job_last_status", "The job's last run: 1 succeeded, 0 failed", _JOB),
    MetricDef("pgvault_job_last_exit_code", "Exit code of the job's last run", _JOB),
    # Every configured repository (issue 11: a second region), only when more than one is configured.
    # The series above describe the repository the command reads (the primary, or --repository NAME).
    MetricDef("pgvault_repository_reachable", "1 when this configured repository could be read, 0 when not", _R),
    MetricDef("pgvault_repository_wal_lag_segments", "WAL segments the first repository holds at its end that this "
              "one lacks (0 for the first itself)", _R),
    MetricDef("pgvault_repository_wal_lag_seconds", "How much older this repository's newest WAL file is than the "
              "first's (archive time); only when measurable", _R),
    MetricDef("pgvault_repository_newest_backup_missing", "1 when the first repository's newest backup of this kind "
              "is not in this one", ("cluster", "repository", "kind")),
    MetricDef("pgvault_repository_last_sync_timestamp", "When the newest 'repo sync' into this repository finished",
              _R),
    MetricDef("pgvault_repository_last_sync_status", "The newest 'repo sync' into this repository: 1 completed, "
              "0 failed", _R),
)}
JOB_METRICS = tuple(n for n in METRICS if n.startswith("pgvault_job_"))


def exported_metric_names() -> list[str]:
    """Every metric name pgvault can export."""
    return sorted(METRICS)


@dataclass(frozen=True)
class Sample:
    """One series value; ``labels`` in the order of its :class:`MetricDef`."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, name: str) -> str:
        return dict(self.labels).get(name, "")


def sample(name: str, value: float, **labels: str) -> Sample:
    """A sample of a metric from :data:`METRICS`, with exactly its labels."""
    d = METRICS[name]
    if set(labels) != set(d.labels):
        raise ValueError(f"{name} takes labels {d.labels}, got {sorted(labels)}")
    return Sample(name, tuple((k, labels[k]) for k in d.labels), float(value))


# --- building samples (pure) ----------------------------------------------------------------------


def snapshot_samples(s: StatusSnapshot, reasons: Sequence[Reason]) -> list[Sample]:
    """Every metric the snapshot supports (those that are not measurable are left out)."""
    c = s.cluster
    out = [sample("pgvault_up", 1, cluster=c), sample("pgvault_status", VERDICT_EXIT[verdict(list(reasons))], cluster=c)]
    for name, b in s.newest_per_database().items():
        size = dict(b.databases).get(name, 0)
        out += _backup_samples(c, "logical", name, b.finished_at, b.duration_seconds, size)
    p = s.newest("physical")
    if p is not None:
        out += _backup_samples(c, "physical", "", p.finished_at, p.duration_seconds, p.stored_size)
        if p.bad_pages is not None:
            out.append(sample("pgvault_base_backup_bad_pages", p.bad_pages, cluster=c))
    out += [sample("pgvault_backups", len(s.logical), cluster=c, kind="logical"),
            sample("pgvault_backups", len(s.physical), cluster=c, kind="physical")]

    if s.archive is not None:
        out += [sample("pgvault_wal_archived_segments", s.archive.segments, cluster=c),
                sample("pgvault_wal_archive_gaps", len(s.archive.gaps), cluster=c)]
    ar = s.archiving
    if ar.lag_seconds is not None:
        out.append(sample("pgvault_wal_archive_lag_seconds", ar.lag_seconds, cluster=c))
    if ar.backlog_segments is not None:
        out.append(sample("pgvault_wal_archive_backlog_segments", ar.backlog_segments, cluster=c))
    if ar.connection == "ok" and ar.archive_mode != "off":
        out.append(sample("pgvault_wal_archive_failing", 1 if ar.failing else 0, cluster=c))
        last = timestamp(ar.last_archived_time)
        if last is not None:
            out.append(sample("pgvault_wal_archive_last_success_timestamp", last, cluster=c))
    window = s.window()
    if window is not None:
        out += [sample("pgvault_recoverable_window_start_timestamp", window[0].timestamp(), cluster=c),
                sample("pgvault_recoverable_window_end_timestamp", window[1].timestamp(), cluster=c)]
    if s.policy.pitr_window:
        out.append(sample("pgvault_recoverable_window_policy_seconds", s.policy.pitr_window, cluster=c))

    # Drills, per kind the cluster has backups or drills of.  "Never" is 0, so that an alert on
    # the age of the last success fires for a cluster that was never drilled too.
    kinds = {r.backup_kind for r in s.drills} | {k for k in ("logical", "physical") if s.newest(k)}
    for kind in sorted(kinds):
        good, last_drill = s.last_drill(ok=True, kind=kind), s.last_drill(kind=kind)
        out.append(sample("pgvault_drill_last_success_timestamp", (good and timestamp(good.finished_at)) or 0,
                          cluster=c, kind=kind))
        if last_drill is not None:
            out.append(sample("pgvault_drill_last_status", 1 if last_drill.ok else 0, cluster=c, kind=kind))
        timed = next((r for r in sorted(s.drills, key=lambda r: r.finished_at, reverse=True)
                      if r.backup_kind == kind and r.restore_seconds is not None), None)
        if timed is not None and timed.restore_seconds is not None:
            out.append(sample("pgvault_drill_restore_duration_seconds", timed.restore_seconds, cluster=c, kind=kind))
            # The objective of the same drill, not today's setting: the alert compares like with like.
            if timed.rto_seconds is not None:
                out.append(sample("pgvault_drill_rto_seconds", timed.rto_seconds, cluster=c, kind=kind))

    verify = s.jobs.get("verify")
    if verify is not None and _number(verify.details.get("failures")) is not None:
        out.append(sample("pgvault_verify_failures", _number(verify.details.get("failures")) or 0, cluster=c))
    out += [sample("pgvault_repository_size_bytes", s.size.bytes, cluster=c),
            sample("pgvault_repository_objects", s.size.objects, cluster=c)]
    for record in s.jobs.values():
        out += job_samples(c, record)
    return out


def _backup_samples(c: str, kind: str, database: str, finished_at: str, duration: float, size: int) -> list[Sample]:
    out = []
    t = timestamp(finished_at)
    if t is not None:
        out.append(sample("postgresql_backup_last_success_timestamp", t, cluster=c, kind=kind, database=database))
    out += [sample("postgresql_backup_duration_seconds", duration, cluster=c, kind=kind, database=database),
            sample("postgresql_backup_size_bytes", size, cluster=c, kind=kind, database=database)]
    return out


def job_samples(cluster: str, r: JobRecord) -> list[Sample]:
    """The ``pgvault_job_*`` series of one job record."""
    out = []
    for name, when in (("pgvault_job_last_success_timestamp", r.last_success_at),
                       ("pgvault_job_last_failure_timestamp", r.last_failure_at)):
        t = timestamp(when)
        if t is not None:
            out.append(sample(name, t, cluster=cluster, pgvault_job=r.job))
    out += [sample("pgvault_job_last_duration_seconds", r.last_duration_seconds, cluster=cluster, pgvault_job=r.job),
            sample("pgvault_job_last_status", 1 if r.ok else 0, cluster=cluster, pgvault_job=r.job),
            sample("pgvault_job_last_exit_code", r.last_exit_code, cluster=cluster, pgvault_job=r.job)]
    return out


def repository_samples(cluster: str, rows: Sequence[tuple[RepositoryPosition, Lag | None]]) -> list[Sample]:
    """The ``pgvault_repository_*`` series of every configured repository (see
    :func:`pgvault.operations.maintenance.repositories.survey`)."""
    out: list[Sample] = []
    for i, (p, lag) in enumerate(rows):
        r = dict(cluster=cluster, repository=p.name)
        out.append(sample("pgvault_repository_reachable", 0 if p.error else 1, **r))
        if p.error:
            continue
        if i == 0:
            out.append(sample("pgvault_repository_wal_lag_segments", 0, **r))
        elif lag is not None:
            if lag.wal_segments is not None:
                out.append(sample("pgvault_repository_wal_lag_segments", lag.wal_segments, **r))
            if lag.wal_seconds is not None:
                out.append(sample("pgvault_repository_wal_lag_seconds", lag.wal_seconds, **r))
            out += [sample("pgvault_repository_newest_backup_missing", int(lag.logical_behind), **r, kind="logical"),
                    sample("pgvault_repository_newest_backup_missing", int(lag.physical_behind), **r, kind="physical")]
        sync = p.last_sync or {}
        finished = timestamp(sync.get("finished_at"))
        if finished is not None:
            out += [sample("pgvault_repository_last_sync_timestamp", finished, **r),
                    sample("pgvault_repository_last_sync_status", 1 if sync.get("ok") else 0, **r)]
    return out


def down_samples(cluster: str) -> list[Sample]:
    """What is exported when the repository cannot be read."""
    return [sample("pgvault_up", 0, cluster=cluster)]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


# --- merging a textfile (pure) --------------------------------------------------------------------


def _job_runs(samples: Iterable[Sample], cluster: str) -> dict[str, float]:
    """Per job of ``cluster``: the time of its newest run (last success or failure)."""
    out: dict[str, float] = {}
    for s in samples:
        if s.name in ("pgvault_job_last_success_timestamp", "pgvault_job_last_failure_timestamp") \
                and s.label("cluster") == cluster:
            out[s.label("pgvault_job")] = max(out.get(s.label("pgvault_job"), 0.0), s.value)
    return out


def merge_samples(existing: Sequence[Sample], new: Sequence[Sample], cluster: str, *, whole_cluster: bool) -> list[Sample]:
    """``new`` replaces series of ``cluster`` in ``existing``: all of them (``whole_cluster``, a full
    snapshot) or only those of the jobs it carries (a job fallback).  For a job present on both
    sides the side with the newer run wins, so an old repository record never hides a failure the
    fallback recorded while the repository was unreachable, nor the other way round."""
    old_runs, new_runs = _job_runs(existing, cluster), _job_runs(new, cluster)
    new_jobs = {s.label("pgvault_job") for s in new if s.name in JOB_METRICS and s.label("cluster") == cluster}
    keep_old_jobs = {j for j in old_runs if j not in new_jobs or old_runs[j] > new_runs.get(j, 0.0)}
    out = []
    for s in existing:
        if s.name not in METRICS or s.label("cluster") != cluster:
            out.append(s)
        elif s.name in JOB_METRICS:
            job = s.label("pgvault_job")
            if job in keep_old_jobs or job not in new_jobs and job not in old_runs:
                out.append(s)
        elif not whole_cluster:
            out.append(s)
    out += [s for s in new if not (s.name in JOB_METRICS and s.label("cluster") == cluster
                                   and s.label("pgvault_job") in keep_old_jobs)]
    return out


def previous_job(samples: Iterable[Sample], cluster: str, job: str) -> JobRecord | None:
    """What a textfile remembers of ``job``: enough of a record for :func:`merge_run`."""
    values = {s.name: s.value for s in samples if s.name in JOB_METRICS
              and s.label("cluster") == cluster and s.label("pgvault_job") == job}
    if not values:
        return None

    def iso(name: str) -> str | None:
        v = values.get(name)
        return dt.datetime.fromtimestamp(v, dt.UTC).isoformat() if v else None

    ok = values.get("pgvault_job_last_status") == 1
    return JobRecord(cluster=cluster, job=job, last_status="ok" if ok else "failed", last_started_at="",
                     last_finished_at="", last_duration_seconds=values.get("pgvault_job_last_duration_seconds", 0.0),
                     last_exit_code=int(values.get("pgvault_job_last_exit_code", 0)),
                     last_success_at=iso("pgvault_job_last_success_timestamp"),
                     last_success_duration_seconds=values.get("pgvault_job_last_duration_seconds") if ok else None,
                     last_failure_at=iso("pgvault_job_last_failure_timestamp"))


# --- exposition (prometheus_client) ---------------------------------------------------------------


def to_families(samples: Iterable[Sample]) -> list[Metric]:
    """Gauge families in :data:`METRICS` order."""
    from prometheus_client.core import GaugeMetricFamily

    families: dict[str, GaugeMetricFamily] = {}
    for s in samples:
        d = METRICS[s.name]
        fam = families.get(s.name)
        if fam is None:
            fam = families[s.name] = GaugeMetricFamily(d.name, d.help, labels=list(d.labels))
        fam.add_metric([v for _, v in s.labels], s.value)
    return [families[n] for n in METRICS if n in families]


class SamplesCollector:
    """A ``prometheus_client`` collector calling ``take`` on every collection (every scrape)."""

    def __init__(self, take: Callable[[], list[Sample]]) -> None:
        self._take = take

    def collect(self) -> Iterator[Metric]:
        yield from to_families(self._take())

    def describe(self) -> list[Metric]:
        return []  # registering must not take a snapshot


def registry_for(take: Callable[[], list[Sample]]) -> Any:
    """A private registry (none of prometheus_client's default process/platform collectors)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SamplesCollector(take))
    return registry


def render(samples: Sequence[Sample]) -> bytes:
    """The Prometheus text exposition of ``samples``."""
    from prometheus_client import generate_latest

    data: bytes = generate_latest(registry_for(lambda: list(samples)))
    return data


def parse(text: str) -> list[Sample]:
    """Samples of pgvault's metrics in an exposition text (anything else is dropped)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            d = METRICS.get(s.name)
            # Other label names: a series written by an older pgvault (its job series were labelled
            # "job", now "pgvault_job").  Kept, it would read as pgvault_job="" and never be replaced.
            if d is None or set(s.labels) != set(d.labels):
                continue
            out.append(Sample(s.name, tuple((k, str(s.labels.get(k, ""))) for k in d.labels), float(s.value)))
    return out


def write_textfile(path: str | os.PathLike[str], samples: Sequence[Sample], cluster: str, *, whole_cluster: bool = True,
                   update: Callable[[list[Sample]], list[Sample]] | None = None) -> None:
    """Merge ``samples`` into the textfile at ``path`` (see :func:`merge_samples`) and replace it
    atomically.  ``update`` may compute the samples from what the file holds (under the lock)."""
    target = Path(path)
    directory = target.parent
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # One writer at a time per directory: jobs finishing together must not lose each other's series.
        flock(dfd)
        try:
            existing = parse(target.read_text(encoding="utf-8"))
        except FileNotFoundError:
            existing = []
        except ValueError:  # not an exposition file (any more): start afresh
            existing = []
        new = update(existing) if update else list(samples)
        data = render(merge_samples(existing, new, cluster, whole_cluster=whole_cluster))
        write_atomic(target, data, mode=0o644)  # 0644: node_exporter runs as another user
    finally:
        os.close(dfd)


def write_job_textfile(path: str | os.PathLike[str], cluster: str, run: JobRun,
                       record: JobRecord | None) -> JobRecord | None:
    """The job fallback: this run's ``pgvault_job_*`` series into ``path``.  ``record`` is the
    repository's merged record when it could be written; otherwise the last success / failure
    come from what the file already holds.  Returns what the file knew of the job before
    (:func:`previous_job`; notifications use it when the repository missed a failure)."""
    known: list[JobRecord | None] = [None]

    def update(existing: list[Sample]) -> list[Sample]:
        previous = known[0] = previous_job(existing, cluster, run.job)
        merged = record if record is not None else merge_run(cluster, previous, run)
        if previous is not None:  # the file may know of runs the repository missed (it was down)
            merged = replace(merged, last_success_at=_later(merged.last_success_at, previous.last_success_at),
                             last_failure_at=_later(merged.last_failure_at, previous.last_failure_at))
        return job_samples(cluster, merged)

    write_textfile(path, [], cluster, whole_cluster=False, update=update)
    return known[0]


def _later(a: str | None, b: str | None) -> str | None:
    if not a or not b:
        return a or b
    return a if (timestamp(a) or 0.0) >= (timestamp(b) or 0.0) else b


def push(url: str, samples: Sequence[Sample], cluster: str, *, timeout: float = 30.0) -> None:
    """PUT the samples to a Pushgateway, one group per job: the ``pgvault_job_*`` series of job J
    (label ``pgvault_job="J"``) into the group ``{job="J", cluster}``, everything else into
    ``{job="pgvault", cluster}``.

    Why not one group: each group is replaced as a whole, and a push after a job whose repository
    could not be read carries only ``pgvault_up 0`` and that job's series; in one group it would
    wipe the other jobs' last status (a failed verify would look resolved).  The series' own label
    is ``pgvault_job``, since the Pushgateway overwrites ``job`` with the group's; the group keeps
    ``job=J`` so that it replaces, in place, the group an older pgvault pushed for that job."""
    from prometheus_client import push_to_gateway

    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.label("pgvault_job") or "pgvault", []).append(s)
    for job, members in groups.items():
        push_to_gateway(url, job=job, registry=registry_for(members.copy),
                        grouping_key={"cluster": cluster}, timeout=timeout)


def serve(host: str, port: int, take: Callable[[], list[Sample]]) -> tuple[Any, Any]:
    """Start the HTTP endpoint in a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=registry_for(take))
