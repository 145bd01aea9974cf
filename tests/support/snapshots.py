"""Synthetic status snapshots for the verdict and metrics unit tests: no servers, no repository.

:func:`healthy` is a cluster in good shape at :data:`NOW`; a test changes one fact (``healthy(
drills=())``) and looks at what the verdict or the samples make of it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from pgvault.operations.server_probe import ArchivingFacts
from pgvault.policy.pitr import Window
from pgvault.policy.verdict import ArchiveSummary, BackupFacts, Policy, RepositorySize, StatusSnapshot
from pgvault.repository.drills import Check, DrillReport
from pgvault.repository.jobs import JobRecord, JobRun, merge_run

NOW = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)
HOUR = 3600.0
DAY = 86400.0


def ago(seconds: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds)).isoformat()


def logical(backup_id: str, age: float, *dbs: str) -> BackupFacts:
    return BackupFacts("logical", backup_id, ago(age), 120.0, 1000 * len(dbs), tuple((d, 1000) for d in dbs))


def physical(backup_id: str, age: float, bad_pages: int | None = 0, first_bad_page: str = "") -> BackupFacts:
    return BackupFacts("physical", backup_id, ago(age), 600.0, 50_000, stop_lsn="0/5000100", bad_pages=bad_pages,
                       first_bad_page=first_bad_page)


def drill(drill_id: str, age: float, ok: bool = True, kind: str = "logical", rto: float | None = 1800.0) -> DrillReport:
    return DrillReport(drill_id=drill_id, cluster="c", backup_kind=kind, backup_id="20261124T020000Z",
                       started_at=ago(age + 60), finished_at=ago(age), ok=ok, restore_seconds=42.0, total_seconds=60.0,
                       rto_seconds=rto, checks=(Check("row counts", ok, 1.0, "" if ok else "public.t: 3 != 4"),))


def job(name: str, ok: bool, age: float = HOUR, details: dict[str, object] | None = None, kind: str = "database") -> JobRecord:
    run = JobRun(job=name, started_at=NOW - dt.timedelta(seconds=age + 10), finished_at=NOW - dt.timedelta(seconds=age),
                 exit_code=0 if ok else 3, error_kind=None if ok else kind, error=None if ok else "boom",
                 details=dict(details or {}))
    return merge_run("c", None, run)


def archive(*, gaps: list[tuple[str, str]] | None = None, window_from: float = 3 * DAY, window_to: float = 60.0) -> ArchiveSummary:
    w = Window("20261122T120000Z", 1, "0/3000028", ago(window_from), "000000010000000000000009")
    return ArchiveSummary(segments=9, newest_wal="000000010000000000000009", newest_wal_archived_at=ago(window_to),
                          timelines=[1], gaps=gaps or [], windows=[w], restore_points=[], to_time=ago(window_to))


def healthy(**changes: object) -> StatusSnapshot:
    """A cluster in good shape: fresh backups of both kinds, a complete archive, a recent drill."""
    s = StatusSnapshot(
        cluster="c", repository="memory://", taken_at=NOW, policy=Policy(pitr_window=2 * DAY),
        logical=(logical("20261123T020000Z", 2 * DAY, "app", "old"), logical("20261125T020000Z", 10 * HOUR, "app")),
        physical=(physical("20261122T120000Z", 3 * DAY), physical("20261125T000000Z", 12 * HOUR)),
        archive=archive(),
        archiving=ArchivingFacts(connection="ok", server="db:5432/postgres", archive_mode="on", in_recovery=False,
                                 archived_count=10, last_archived_wal="000000010000000000000009",
                                 last_archived_time=ago(60), failed_count=0, current_wal="00000001000000000000000A",
                                 backlog_segments=0, backlog_source="pg_stat_archiver", lag_seconds=0.0),
        drills=(drill("20261110T000000Z", 15 * DAY),),
        jobs={"backup": job("backup", True), "verify": job("verify", True, details={"checked": 9, "failures": 0})},
        size=RepositorySize(123456, 40, {"logical": 2000, "base": 100000, "wal": 21456}),
    )
    return replace(s, **changes)  # type: ignore[arg-type]
