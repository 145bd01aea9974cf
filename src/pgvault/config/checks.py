"""Checking loaded settings: every problem as a sentence, so ``pgvault config check`` lists them all."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgvault.config import Settings

# The commands that run as scheduled jobs: their outcome is recorded (cli.metrics.record_job) and
# may be notified.  Here, not in the CLI, because settings name them (notify.jobs).
SCHEDULED_JOBS = frozenset({"backup", "basebackup", "expire", "verify", "drill", "restore-point", "repo-sync"})


def _named_problems(s: Settings, *, check_local_files: bool) -> list[str]:
    """The repository problems of every named repository, judged by the primary's rules."""
    problems: list[str] = []
    for r in s.all_repositories()[1:]:
        as_primary = validate(replace(s, repository_url=r.url, s3=r.s3, repositories=()),
                              check_local_files=check_local_files)
        problems += [f"repositories.{r.name}." + p.removeprefix("repository.") for p in as_primary
                     if p.startswith("repository.")]
    return problems


def validate(s: Settings, *, check_local_files: bool = True) -> list[str]:
    """Every problem with ``s``, as sentences (empty when valid); ``check_local_files=False`` skips
    the existence of the age identity file (it lives on restore hosts only)."""
    problems: list[str] = []
    if not s.cluster or "/" in s.cluster or s.cluster.startswith("."):
        problems.append(f"cluster: {s.cluster!r} is not a valid name (no '/', not starting with '.')")
    if not s.repository_url:
        problems.append("repository.url: must be set")
    elif "://" in s.repository_url and not s.repository_url.startswith(("file://", "s3://", "memory://")):
        problems.append(f"repository.url: unsupported scheme in {s.repository_url!r} (use a path, file://, s3://)")
    elif s.repository_url.startswith("s3://") and not s.repository_url[5:].split("/")[0]:
        problems.append("repository.url: s3:// URL needs a bucket name")
    if s.s3.part_size_mb < 5:
        problems.append("repository.s3.part_size_mb: S3 requires parts of at least 5 MiB")
    if s.s3.max_concurrency < 1:
        problems.append("repository.s3.max_concurrency: must be at least 1")
    if not 1 <= s.s3.read_concurrency <= 64:
        problems.append("repository.s3.read_concurrency: must be between 1 and 64")
    for name, value in (("connect_timeout", s.s3.connect_timeout), ("read_timeout", s.s3.read_timeout)):
        if not value > 0:
            problems.append(f"repository.s3.{name}: must be positive")
    if s.s3.retries < 0:
        problems.append("repository.s3.retries: must be 0 or more")
    problems += object_lock_problems(s)
    if not 1 <= s.backup_parallel <= 32:
        problems.append("backup.parallel: must be between 1 and 32")
    for name, value in (("retention.logical.daily", s.keep_daily), ("retention.logical.weekly", s.keep_weekly),
                        ("retention.logical.monthly", s.keep_monthly), ("retention.logical.yearly", s.keep_yearly),
                        ("retention.logical.min_keep", s.min_keep_logical),
                        ("retention.physical.min_keep", s.min_keep_physical),
                        ("retention.logical.keep_last", s.keep_last_logical or 0),
                        ("retention.physical.keep_last", s.keep_last_physical or 0)):
        if value < 0:
            problems.append(f"{name}: must be 0 or more")
    if s.archive_parallel < 1:
        problems.append("archive.parallel: must be at least 1")
    if s.restore_prefetch < 0:
        problems.append("restore.prefetch: must be 0 or more")
    if s.archive_wait_timeout <= 0:
        problems.append("archive.wait_timeout: must be positive")
    if s.backup_jobs < 1:
        problems.append("backup.jobs: must be at least 1")
    if s.compression_threads < 0:
        problems.append("compression.threads: must be 0 or more")
    if s.metrics_pushgateway and not s.metrics_pushgateway.startswith(("http://", "https://")):
        problems.append(f"metrics.pushgateway: {s.metrics_pushgateway!r} is not a URL like http://pushgateway:9091")
    if not s.notify.timeout > 0:
        problems.append("notify.timeout: must be positive")
    if not 0 <= s.notify.retries <= 10:
        problems.append("notify.retries: must be between 0 and 10 (a notification must not hold up the job)")
    unknown_jobs = sorted(set(s.notify.jobs) - SCHEDULED_JOBS)
    if unknown_jobs:
        problems.append(f"notify.jobs: {', '.join(unknown_jobs)} is not a scheduled job "
                        f"(one of {', '.join(sorted(SCHEDULED_JOBS))})")
    problems += s.pipeline().validate()
    if s.dsn:
        try:
            from psycopg.conninfo import conninfo_to_dict

            conninfo_to_dict(s.dsn)
        except Exception as e:  # noqa: BLE001 - psycopg raises ProgrammingError; message has no password
            problems.append(f"postgres.dsn: not a valid libpq connection string ({type(e).__name__})")
    if check_local_files and s.age_identity_file and not Path(s.age_identity_file).is_file():
        problems.append(f"encryption.age_identity_file: {s.age_identity_file} does not exist")
    return problems + _named_problems(s, check_local_files=check_local_files)


def object_lock_problems(s: Settings) -> list[str]:
    """Problems with ``repository.s3.object_lock*`` (the retention it resolves to needs the policy)."""
    if s.s3.object_lock == "off":
        return []  # before the imports: the policy modules cost every command's start-up ~10 ms
    from pgvault.policy.object_lock import resolve
    from pgvault.policy.retention import Policy

    problems = [] if s.repository_url.startswith("s3://") else [
        "repository.s3.object_lock: needs an s3:// repository (Object Lock is an S3 bucket feature)"]
    return problems + resolve(s.s3.object_lock, s.s3.object_lock_retention, Policy.from_settings(s))[1]
