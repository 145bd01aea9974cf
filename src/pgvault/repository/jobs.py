"""Job records: ``<cluster>/jobs/<job>.json``, the last outcome of each scheduled command.

Every command that runs as a scheduled job (``backup``, ``basebackup``, ``expire``, ``verify``,
``drill``, ``restore-point``) records when it last succeeded, when it last failed, how long the
last run took, its exit code and error, and a small ``details`` dict the command may fill in
(``verify``: objects checked, failures, bytes).  ``status`` and ``metrics`` read them, so a failed
CronJob is visible without reading its logs.

One small JSON object per job, rewritten after each run (read, merge, write): two hosts running
the same job at the same instant may lose one update, which is acceptable for "the last outcome".
On a write-once (S3 Object Lock) repository nothing is rewritten: each run writes a new record
``<cluster>/jobs/<job>/<finished>-<id>.json`` (merged with the newest, as above) and readers take the
newest of both layouts; ``expire`` removes the superseded ones once their lock allows it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from pgvault.errors import IntegrityError
from pgvault.procs import random_id
from pgvault.storage import ObjectNotFound, Storage
from pgvault.storage.base import is_write_once

RECORD_FORMAT = 1
_ERROR_MAX = 500  # characters of the error message kept in the record


@dataclass(frozen=True)
class JobRun:
    """One finished run of a scheduled command."""

    job: str
    started_at: dt.datetime
    finished_at: dt.datetime
    exit_code: int
    error_kind: str | None = None
    error: str | None = None  # already redacted by the caller
    details: dict[str, Any] = field(default_factory=dict)
    host: str = ""
    pgvault_version: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def duration_seconds(self) -> float:
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


@dataclass(frozen=True)
class JobRecord:
    """What the repository knows about one job: its last run and its last success and failure."""

    cluster: str
    job: str
    last_status: str  # "ok" | "failed"
    last_started_at: str
    last_finished_at: str
    last_duration_seconds: float
    last_exit_code: int
    last_error_kind: str | None = None
    last_error: str | None = None
    last_success_at: str | None = None
    last_success_duration_seconds: float | None = None
    last_failure_at: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    host: str = ""
    pgvault_version: str = ""

    @property
    def ok(self) -> bool:
        return self.last_status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT, "kind": "job", "cluster": self.cluster, "job": self.job,
            "last_status": self.last_status, "last_started_at": self.last_started_at,
            "last_finished_at": self.last_finished_at, "last_duration_seconds": round(self.last_duration_seconds, 3),
            "last_exit_code": self.last_exit_code, "last_error_kind": self.last_error_kind, "last_error": self.last_error,
            "last_success_at": self.last_success_at,
            "last_success_duration_seconds": None if self.last_success_duration_seconds is None
            else round(self.last_success_duration_seconds, 3),
            "last_failure_at": self.last_failure_at, "details": self.details, "host": self.host,
            "pgvault_version": self.pgvault_version,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], *, where: str = "job record") -> JobRecord:
        try:
            if d.get("format") != RECORD_FORMAT or d.get("kind") != "job":
                raise IntegrityError(f"{where} is not a format-{RECORD_FORMAT} job record")
            success_duration = d.get("last_success_duration_seconds")
            return cls(
                cluster=str(d["cluster"]), job=str(d["job"]), last_status=str(d["last_status"]),
                last_started_at=str(d["last_started_at"]), last_finished_at=str(d["last_finished_at"]),
                last_duration_seconds=float(d["last_duration_seconds"]), last_exit_code=int(d["last_exit_code"]),
                last_error_kind=d.get("last_error_kind"), last_error=d.get("last_error"),
                last_success_at=d.get("last_success_at"),
                last_success_duration_seconds=None if success_duration is None else float(success_duration),
                last_failure_at=d.get("last_failure_at"), details=dict(d.get("details") or {}),
                host=str(d.get("host", "")), pgvault_version=str(d.get("pgvault_version", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{where} is unreadable: {type(e).__name__}: {e}") from None


def merge_run(cluster: str, previous: JobRecord | None, run: JobRun) -> JobRecord:
    """The record after ``run``: the last run replaces the "last_*" fields; the last success (or
    failure) of ``previous`` is kept when this run is the other kind.  Pure."""
    finished = run.finished_at.astimezone(dt.UTC).isoformat()
    error = run.error if run.error is None or len(run.error) <= _ERROR_MAX else run.error[: _ERROR_MAX - 3] + "..."
    base = previous if previous is not None and previous.job == run.job else None
    return JobRecord(
        cluster=cluster, job=run.job, last_status="ok" if run.ok else "failed",
        last_started_at=run.started_at.astimezone(dt.UTC).isoformat(), last_finished_at=finished,
        last_duration_seconds=run.duration_seconds, last_exit_code=run.exit_code,
        last_error_kind=None if run.ok else (run.error_kind or "error"), last_error=None if run.ok else error,
        last_success_at=finished if run.ok else (base.last_success_at if base else None),
        last_success_duration_seconds=run.duration_seconds if run.ok else (base.last_success_duration_seconds if base else None),
        last_failure_at=(base.last_failure_at if base else None) if run.ok else finished,
        details=dict(run.details), host=run.host, pgvault_version=run.pgvault_version,
    )


def job_key(cluster: str, job: str) -> str:
    """``<cluster>/jobs/<job>.json``: the record rewritten after every run (repositories that allow it)."""
    if not job or "/" in job or job.startswith("."):
        raise ValueError(f"invalid job name {job!r}")
    return f"{cluster}/jobs/{job}.json"


def run_key(cluster: str, job: str, finished_at: str) -> str:
    """``<cluster>/jobs/<job>/<finished UTC>-<random>.json``: one write-once record per run, on a
    write-once (Object Lock) repository; the name sorts by time, so the newest is the last listed."""
    stamp = dt.datetime.fromisoformat(finished_at).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{job_key(cluster, job)[: -len('.json')]}/{stamp}-{random_id()}.json"


def _load(storage: Storage, key: str) -> JobRecord | None:
    try:
        data = storage.read_bytes(key)
    except ObjectNotFound:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        raise IntegrityError(f"job record {key} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"job record {key} is not a JSON object")
    return JobRecord.from_json(doc, where=key)


def _newest(storage: Storage, keys: list[str]) -> JobRecord | None:
    """The record that finished last among ``keys`` (a legacy record and the newest per-run one:
    a repository may have switched between the two layouts either way)."""
    records = [r for k in keys if (r := _load(storage, k)) is not None]
    return max(records, key=lambda r: r.last_finished_at, default=None)


def _run_keys(storage: Storage, cluster: str) -> dict[str, list[str]]:
    """Per-run record keys by job name, oldest first."""
    out: dict[str, list[str]] = {}
    for info in storage.list(f"{cluster}/jobs/"):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3].endswith(".json") and not parts[3].startswith("."):
            out.setdefault(parts[2], []).append(info.key)
    return out


def load_job(storage: Storage, cluster: str, job: str) -> JobRecord | None:
    """The record of ``job``, or None if it never ran."""
    runs = [i.key for i in storage.list(f"{job_key(cluster, job)[: -len('.json')]}/") if i.key.endswith(".json")]
    return _newest(storage, [job_key(cluster, job)] + runs[-1:])


def list_jobs(storage: Storage, cluster: str) -> dict[str, JobRecord]:
    """Every job record of ``cluster`` by job name (both layouts)."""
    legacy: set[str] = set()
    for info in storage.list(f"{cluster}/jobs/"):
        name = info.key.rsplit("/", 1)[-1]
        if name.endswith(".json") and info.key.count("/") == 2:
            legacy.add(name[: -len(".json")])
    runs = _run_keys(storage, cluster)
    out: dict[str, JobRecord] = {}
    for job in sorted(legacy | set(runs)):
        keys = ([job_key(cluster, job)] if job in legacy else []) + runs.get(job, [])[-1:]
        record = _newest(storage, keys)
        if record is not None:
            out[record.job] = record
    return out


def superseded_runs(storage: Storage, cluster: str) -> list[str]:
    """Per-run records older than their job's newest: what ``expire`` may remove (the newest carries
    everything merged so far: last success, last failure)."""
    return [k for keys in _run_keys(storage, cluster).values() for k in keys[:-1]]


def save_job(storage: Storage, record: JobRecord) -> str:
    """Write ``record``: over the job's one record, or as a new write-once key on a repository
    that locks what it stores (no object is ever rewritten there)."""
    data = (json.dumps(record.to_json(), indent=2) + "\n").encode()
    if is_write_once(storage):
        key = run_key(record.cluster, record.job, record.last_finished_at)
        storage.put_if_absent(key, data)
        return key
    key = job_key(record.cluster, record.job)
    with storage.open_write(key) as w:
        w.write(data)
    return key


def record_run(storage: Storage, cluster: str, run: JobRun) -> JobRecord:
    """Merge ``run`` into the stored record of its job and write it back; returns the new record."""
    return update_job(storage, cluster, run)[1]


def update_job(storage: Storage, cluster: str, run: JobRun) -> tuple[JobRecord | None, JobRecord]:
    """:func:`record_run`, also returning the record as it was before ``run`` (None: the job never
    ran, or its record was unreadable) — notifications tell a recovery from a success by it.

    An unreadable old record is replaced rather than blocking the new outcome."""
    try:
        previous = load_job(storage, cluster, run.job)
    except IntegrityError:
        previous = None
    record = merge_run(cluster, previous, run)
    save_job(storage, record)
    return previous, record

