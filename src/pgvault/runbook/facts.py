"""What the runbook may say about a configuration: the non-secret facts, taken from Settings once.

Every section is written from :class:`Facts`, never from :class:`~pgvault.config.Settings`, so a
secret cannot reach the runbook by accident: the facts hold no password, no age secret key, no
conninfo string (only the host, port, user and database picked out of ``postgres.dsn``), no
``drill.target_dsn`` and no S3 credentials (those are named by their environment variables).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from pgvault.config import Settings
from pgvault.repository import layout


@dataclass(frozen=True)
class Examples:
    """Concrete values the commands use where the on-call must put their own: they must be valid
    values (a test parses every command), and the text around them says "replace"."""

    time: str = "2026-12-04 09:59:00+00"
    backup_id: str = "20261204T020000Z"
    data_dir: str = "/var/lib/postgresql/pgvault-restore"
    port: int = 5433
    primary_conninfo: str = "host=db1.example port=5432 user=replicator"  # a replica's primary (no password)
    # The sample application's tables (README "Sample database"), in foreign-key order: the
    # scenarios are written against them; `DELETE FROM organizations` cascades through all four.
    tables: tuple[str, ...] = ("public.organizations", "public.projects", "public.configs", "public.config_history")


EXAMPLE = Examples()
_DSN_SHOWN = ("host", "hostaddr", "port", "user", "dbname", "sslmode")
_DECOMPRESS = {"zstd": "zstd -d", "gzip": "gzip -d"}


@dataclass(frozen=True)
class Facts:
    cluster: str
    repository: str  # the URL as configured (a relative path is made absolute)
    config_path: str | None  # the file every command reads (PGVAULT_CONFIG), None: environment only
    s3_endpoint: str | None
    s3_region: str | None
    s3_profile: str | None
    s3_path_style: bool
    server: tuple[tuple[str, str], ...]  # non-secret keywords of postgres.dsn
    compression: str
    suffix: str  # object-name suffix of new objects, e.g. ".zst.age"
    recipients: tuple[str, ...]
    identity_file: str | None
    archive_async: bool
    archive_parallel: int
    spool_dir: str | None
    retention: tuple[tuple[str, str], ...]  # (setting, value) of what is set
    pitr_window: float | None
    debris_grace: float
    drill_rto: float | None
    drill_on_named_server: bool
    drill_os_user: str
    smoke: tuple[tuple[str, str, str, str], ...]  # (name, database, sql, expectation)
    backup_max_age: float
    drill_max_age: float
    metrics_textfile: str | None
    copies: tuple[tuple[str, str], ...] = ()  # (name, URL) of the repositories beside the primary
    copies_env: tuple[tuple[str, str], ...] = ()  # their settings as environment variables

    @property
    def s3(self) -> bool:
        return self.repository.startswith("s3://")

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)

    @property
    def database(self) -> str:
        """The example database: the first one the drill's smoke queries name, else the sample's."""
        return next((db for _n, db, _s, _e in self.smoke if db), "app")

    @property
    def local_root(self) -> str:
        return self.repository.removeprefix("file://")

    def key(self, key: str) -> str:
        """Where a repository key is: an s3:// URL or a local path."""
        return f"{(self.repository if self.s3 else self.local_root).rstrip('/')}/{key}"

    def logical_dir(self, backup_id: str = EXAMPLE.backup_id) -> str:
        return self.key(layout.logical_prefix(self.cluster, backup_id))

    def base_dir(self, backup_id: str = EXAMPLE.backup_id) -> str:
        return self.key(layout.base_prefix(self.cluster, backup_id))

    @property
    def identity(self) -> str:
        """The identity file as the break-glass commands name it."""
        return self.identity_file or "age-key.txt"

    @property
    def decompress(self) -> str | None:
        return _DECOMPRESS.get(self.compression)

    def decode(self, source: str) -> str:
        """Shell pipeline turning the stored object ``source`` back into its bytes, on stdout."""
        steps = [f"age -d -i {shlex.quote(self.identity)} {source}"] if self.encrypted else []
        if self.decompress:
            steps.append(f"{self.decompress}{'' if steps else ' -c ' + source}")
        return " | ".join(steps) if steps else f"cat {source}"

    def aws(self) -> str:
        """``aws s3`` with this repository's endpoint, region and profile."""
        opts = [f"--endpoint-url {shlex.quote(self.s3_endpoint)}"] if self.s3_endpoint else []
        opts += [f"--region {shlex.quote(self.s3_region)}"] if self.s3_region else []
        opts += [f"--profile {shlex.quote(self.s3_profile)}"] if self.s3_profile else []
        return " ".join(["aws", *opts, "s3"])

    def environment(self) -> list[tuple[str, str]]:
        """The settings as environment variables, for a host where the config file is lost."""
        env = [("PGVAULT_REPOSITORY_URL", self.repository), ("PGVAULT_CLUSTER", self.cluster)]
        env += [("PGVAULT_REPOSITORY_S3_ENDPOINT_URL", self.s3_endpoint)] if self.s3_endpoint else []
        env += [("PGVAULT_REPOSITORY_S3_REGION", self.s3_region)] if self.s3_region else []
        env += [("PGVAULT_REPOSITORY_S3_PROFILE", self.s3_profile)] if self.s3_profile else []
        env += [("PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE", "true")] if self.s3_path_style else []
        env += [("PGVAULT_ENCRYPTION_AGE_RECIPIENTS", ",".join(self.recipients))] if self.recipients else []
        env += [("PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE", self.identity_file)] if self.identity_file else []
        env += [("PGVAULT_COMPRESSION_ALGORITHM", self.compression)] if self.compression != "zstd" else []
        return env


def duration(seconds: float | None) -> str:
    """A duration as the config writes it: 48h, 35d, 30m, 1d12h (hours up to 3 days, as alerts say)."""
    if seconds is None:
        return "not set"
    left, parts = int(round(seconds)), []
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)) if left >= 3 * 86400 else (("h", 3600), ("m", 60), ("s", 1))
    for unit, size in units:
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts) or "0s"


def _server(dsn: str) -> tuple[tuple[str, str], ...]:
    if not dsn:
        return ()
    from psycopg.conninfo import conninfo_to_dict  # pure parsing; validated when the settings loaded

    params = conninfo_to_dict(dsn)
    return tuple((k, str(params[k])) for k in _DSN_SHOWN if params.get(k) is not None)


def _retention(s: Settings) -> tuple[tuple[str, str], ...]:
    rows = [("retention.logical.keep_last", s.keep_last_logical), ("retention.logical.keep_within", s.keep_within_logical),
            ("retention.logical.daily", s.keep_daily), ("retention.logical.weekly", s.keep_weekly),
            ("retention.logical.monthly", s.keep_monthly), ("retention.logical.yearly", s.keep_yearly),
            ("retention.logical.min_keep", s.min_keep_logical),
            ("retention.physical.keep_last", s.keep_last_physical),
            ("retention.physical.keep_within", s.keep_within_physical),
            ("retention.physical.min_keep", s.min_keep_physical)]
    shown = []
    for name, value in rows:
        if value is None or (value == 0 and name.split(".")[-1] in ("daily", "weekly", "monthly", "yearly")):
            continue
        shown.append((name, duration(value) if name.endswith("keep_within") else str(value)))
    return tuple(shown)


def facts_from(s: Settings, config_path: str | None) -> Facts:
    url = s.repository_url
    if "://" not in url:
        url = str(Path(url).absolute())
    return Facts(
        cluster=s.cluster,
        repository=url,
        config_path=config_path,
        s3_endpoint=s.s3.endpoint_url,
        s3_region=s.s3.region,
        s3_profile=s.s3.profile,
        s3_path_style=s.s3.force_path_style,
        server=_server(s.dsn),
        compression=s.compression,
        suffix=s.pipeline().suffix(),
        recipients=s.age_recipients,
        identity_file=s.age_identity_file,
        archive_async=s.archive_async,
        archive_parallel=s.archive_parallel,
        spool_dir=s.spool_dir,
        retention=_retention(s),
        pitr_window=s.pitr_window,
        debris_grace=s.debris_grace,
        drill_rto=s.drill_rto,
        drill_on_named_server=bool(s.drill_target_dsn),
        drill_os_user=s.drill_os_user,
        smoke=tuple((q.name, q.database or "", q.sql, f"= {q.expect}" if q.expect is not None else f">= {q.min:g}")
                    for q in s.smoke_queries),
        backup_max_age=s.backup_max_age,
        drill_max_age=s.drill_max_age,
        metrics_textfile=s.metrics_textfile,
        copies=tuple((r.name, r.url) for r in s.all_repositories()[1:]),
        copies_env=tuple(_copy_env(s)),
    )


def _copy_env(s: Settings) -> list[tuple[str, str]]:
    out = []
    for r in s.all_repositories()[1:]:
        stem = "PGVAULT_REPOSITORIES_" + r.name.upper().replace("-", "_")
        out.append((f"{stem}_URL", r.url))
        for name, value in (("ENDPOINT_URL", r.s3.endpoint_url), ("REGION", r.s3.region), ("PROFILE", r.s3.profile),
                            ("FORCE_PATH_STYLE", "true" if r.s3.force_path_style else None)):
            if value:
                out.append((f"{stem}_S3_{name}", value))
    return out


def pgvault(*args: str | int, comment: str = "", width: int = 0) -> str:
    """One ``pgvault`` command line, each argument shell-quoted, with an optional ``# comment``
    starting at column ``width``."""
    line = " ".join(["pgvault", *(shlex.quote(str(a)) for a in args)])
    return f"{line.ljust(width)}  # {comment}" if comment else line
