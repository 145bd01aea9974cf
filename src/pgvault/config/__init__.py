"""Typed, frozen settings: YAML file, then ``PGVAULT_*`` environment, then command-line overrides.

Every setting has one dotted name (``repository.url``) and one environment variable derived from
it (``PGVAULT_REPOSITORY_URL``).  Loading validates everything at once and reports every problem
in one :class:`~pgvault.errors.ConfigError`, so ``pgvault config check`` can list them all.

Connection settings follow libpq: the ``postgres.dsn`` conninfo string is optional and ``PGHOST``,
``PGPORT``, ``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``, ``.pgpass`` and ``sslmode`` work as in psql.
Domain code receives a :class:`Settings` and never reads the environment itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pgvault.config.checks import SCHEDULED_JOBS as SCHEDULED_JOBS  # re-exported
from pgvault.config.checks import object_lock_problems as object_lock_problems  # re-exported
from pgvault.config.checks import validate as validate  # re-exported
from pgvault.config.repositories import PRIMARY_REPOSITORY as PRIMARY_REPOSITORY  # re-exported
from pgvault.config.repositories import named_settings
from pgvault.config.values import (
    SmokeQuery as SmokeQuery,  # re-exported: part of Settings (smoke_queries)
)
from pgvault.config.values import (
    one_of,
    to_bool,
    to_dirs,
    to_endpoint,
    to_float,
    to_int,
    to_list,
    to_lock_mode,
    to_lock_retention,
    to_notify_events,
    to_opt_duration,
    to_opt_int,
    to_opt_str,
    to_smoke,
    to_str,
    to_webhook,
)
from pgvault.config.values import (
    parse_duration as parse_duration,  # re-exported: the duration syntax of every setting
)
from pgvault.errors import ConfigError

if TYPE_CHECKING:
    from pgvault.pipeline import PipelineSpec
    from pgvault.policy.object_lock import LockRule

MiB = 1 << 20
_T = TypeVar("_T")


@dataclass(frozen=True)
class _Setting:
    """One setting: YAML path, parser, meaning, its one default, and deprecated environment names."""

    path: str
    parse: Callable[[Any], Any]
    doc: str
    default: Any = None
    aliases: tuple[str, ...] = ()  # old environment names, still read (with a warning) when ``env`` is unset

    @property
    def env(self) -> str:
        return "PGVAULT_" + self.path.upper().replace(".", "_")


# The one table of settings: YAML path, parser, meaning. Environment names derive from the path.
SETTINGS: tuple[_Setting, ...] = (
    _Setting("cluster", to_str, "cluster name used in repository keys", "main"),
    _Setting("repository.url", to_str, "repository: a path, file:///path or s3://bucket/prefix", "./pgvault-repo"),
    _Setting("repository.s3.endpoint_url", to_endpoint, "S3 endpoint URL (MinIO, SeaweedFS, Ceph)"),
    _Setting("repository.s3.region", to_opt_str, "S3 region"),
    _Setting("repository.s3.force_path_style", to_bool, "use path-style S3 addressing", False),
    _Setting("repository.s3.profile", to_opt_str, "AWS config profile"),
    _Setting("repository.s3.part_size_mb", to_int, "multipart upload part size in MiB", 16),
    _Setting("repository.s3.max_concurrency", to_int, "parts uploaded in parallel", 4),
    _Setting("repository.s3.read_concurrency", to_int,
             "ranged GETs in flight when reading one large object (8 MiB parts; 1: one GET stream)", 4),
    _Setting("repository.s3.connect_timeout", parse_duration, "S3: give up connecting after this long (default 10s)", 10.0),
    _Setting("repository.s3.read_timeout", parse_duration, "S3: give up when no byte arrives for this long (default 60s)", 60.0),
    _Setting("repository.s3.retries", to_int, "S3: retries of a failed or timed-out request (default 3)", 3),
    _Setting("repository.s3.object_lock", to_lock_mode,
             "S3 Object Lock on every object pgvault writes: off, governance or compliance (bucket must have Object Lock)",
             "off"),
    _Setting("repository.s3.object_lock_retention", to_lock_retention,
             "how long each object is locked: a duration (30d) or 'retention' (until the retention policy would expire it)"),
    _Setting("postgres.dsn", to_str, "libpq conninfo; PG* environment variables also apply", ""),
    _Setting("postgres.bin_dirs", to_dirs, "extra PostgreSQL bin directories (comma- or colon-separated)", (),
             aliases=("PGVAULT_PG_BINDIRS",)),
    _Setting("compression.algorithm", to_str, "zstd (default), gzip or none", "zstd"),
    _Setting("compression.level", to_opt_int, "compression level"),
    _Setting("compression.threads", to_int, "zstd worker threads", 2),
    _Setting("encryption.age_recipients", to_list, "age public keys; encryption is on when set", ()),
    _Setting("encryption.age_recipients_file", to_opt_str, "file with age public keys, one a line"),
    _Setting("encryption.age_identity_file", to_opt_str, "age identity file, needed to restore"),
    _Setting("encryption.age_identity", to_opt_str, "age secret key itself (environment only)"),
    _Setting("backup.exact_row_counts", to_bool, "count every table's rows in the dump snapshot", True),
    _Setting("backup.row_counts_from", one_of("dump", "snapshot"), "where exact row counts come from: dump (the archive stream, no server "
             "cost) or snapshot (count(*) beside pg_dump, less client CPU)", "dump"),
    _Setting("backup.jobs", to_int, "logical backup: pg_dump processes per database, sharing one snapshot", 1),
    _Setting("backup.parallel", to_int, "base backup: tar streams written and restored in parallel", 2),
    _Setting("backup.page_checksums", one_of("fail", "warn", "off"), "base backup: check every page's checksum "
             "(clusters with data checksums); a bad page fails the command after the backup is stored (exit 6), "
             "warns, or is not looked for", "fail"),
    _Setting("archive.async", to_bool, "wal push: a background pusher uploads the .ready backlog in parallel", True),
    _Setting("archive.parallel", to_int, "wal push: uploads in flight in the background pusher", 4),
    _Setting("archive.spool_dir", to_opt_str, "local state of async push / prefetching fetch (default PGDATA/pg_wal/pgvault)"),
    _Setting("archive.wait_timeout", to_float, "wal push: seconds to wait for the pusher to confirm a segment", 60.0),
    _Setting("retention.logical.keep_last", to_opt_int, "logical backups: keep the newest N"),
    _Setting("retention.logical.keep_within", to_opt_duration, "logical backups: keep everything younger (e.g. 14d)"),
    _Setting("retention.logical.daily", to_int, "logical backups: keep the newest of each of the last N days", 0),
    _Setting("retention.logical.weekly", to_int, "logical backups: keep the newest of each of the last N ISO weeks", 0),
    _Setting("retention.logical.monthly", to_int, "logical backups: keep the newest of each of the last N months", 0),
    _Setting("retention.logical.yearly", to_int, "logical backups: keep the newest of each of the last N years", 0),
    _Setting("retention.logical.min_keep", to_int, "logical backups: never keep fewer than this", 1),
    _Setting("retention.physical.keep_last", to_opt_int, "base backups: keep the newest N"),
    _Setting("retention.physical.keep_within", to_opt_duration, "base backups: keep everything younger"),
    _Setting("retention.physical.min_keep", to_int, "base backups: never keep fewer than this", 1),
    _Setting("retention.pitr_window", to_opt_duration, "keep base backups + WAL to restore to any point this far back"),
    _Setting("retention.debris_grace", to_opt_duration, "debris and unfinished writes older than this are swept", 24 * 3600.0),
    _Setting("drill.smoke_queries", to_smoke, "drill checks: list of {name, sql, database, expect | min}", ()),
    _Setting("drill.rto", to_opt_duration, "recovery-time objective: a drill whose restore is slower fails"),
    _Setting("drill.os_user", to_str, "as root, drills run their scratch PostgreSQL as this OS user", "postgres"),
    _Setting("drill.target_dsn", to_str, "logical drills restore into this server (default: a throwaway cluster)", ""),
    _Setting("monitoring.backup_max_age", to_opt_duration, "status: newest backup older than this is CRITICAL", 48 * 3600.0),
    _Setting("monitoring.drill_max_age", to_opt_duration, "status: newest successful drill older than this is a WARNING", 35 * 86400.0),
    _Setting("metrics.textfile", to_opt_str, "scheduled jobs also write their outcome into this node_exporter textfile"),
    _Setting("metrics.pushgateway", to_opt_str, "scheduled jobs also push their outcome and the status to this "
             "Pushgateway (http://host:9091)"),
    _Setting("restore.prefetch", to_int, "wal fetch: segments downloaded ahead during recovery (0: off)", 8),
    _Setting("notify.webhook_url", to_webhook, "scheduled jobs POST a JSON notification here (environment only: it may hold a token)"),
    _Setting("notify.slack_webhook_url", to_webhook, "Slack incoming webhook for job notifications (environment only: it holds a token)"),
    _Setting("notify.events", to_notify_events, "notify on these events: failure, success, recovery", ("failure", "recovery")),
    _Setting("notify.jobs", to_list, "notify only for these jobs (default: every scheduled job)", ()),
    _Setting("notify.timeout", parse_duration, "notifications: give up one attempt after this long (default 5s)", 5.0),
    _Setting("notify.retries", to_int, "notifications: retries after a failed attempt (default 2)", 2),
)
_BY_PATH = {s.path: s for s in SETTINGS}
# Environment only: a webhook URL is a credential (Slack's holds the token that lets anyone post).
_SECRET_PATHS = {"encryption.age_identity", "notify.webhook_url", "notify.slack_webhook_url"}
_NOT_ECHOED = _SECRET_PATHS | {"postgres.dsn", "drill.target_dsn"}  # a conninfo may hold a password
# Each default is written once, in the table; the dataclasses below take theirs from here.
_DEFAULTS: dict[str, Any] = {s.path: s.default for s in SETTINGS}


@dataclass(frozen=True)
class S3Options:
    """S3-compatible store settings; credentials come from the usual AWS chain unless set."""

    endpoint_url: str | None = _DEFAULTS["repository.s3.endpoint_url"]
    region: str | None = _DEFAULTS["repository.s3.region"]
    force_path_style: bool = _DEFAULTS["repository.s3.force_path_style"]
    profile: str | None = _DEFAULTS["repository.s3.profile"]
    part_size_mb: int = _DEFAULTS["repository.s3.part_size_mb"]
    max_concurrency: int = _DEFAULTS["repository.s3.max_concurrency"]
    read_concurrency: int = _DEFAULTS["repository.s3.read_concurrency"]
    connect_timeout: float = _DEFAULTS["repository.s3.connect_timeout"]
    read_timeout: float = _DEFAULTS["repository.s3.read_timeout"]
    retries: int = _DEFAULTS["repository.s3.retries"]
    object_lock: str = _DEFAULTS["repository.s3.object_lock"]
    object_lock_retention: float | None = _DEFAULTS["repository.s3.object_lock_retention"]  # None: 'retention'


# A repository is named: the primary one (``repository.*``) is "primary"; more live under
# ``repositories.<name>.url`` and ``repositories.<name>.s3.*`` (the same settings as the primary's,
# environment ``PGVAULT_REPOSITORIES_<NAME>_URL`` ..., "-" in a name is "_" there).  Credentials
# follow the primary's rules: boto3's chain or ``s3.profile``, never the config file or argv.


@dataclass(frozen=True)
class NamedRepository:
    """One configured repository: its name, URL and S3 options."""

    name: str
    url: str
    s3: S3Options = field(default_factory=S3Options)


@dataclass(frozen=True)
class NotifyOptions:
    """Job notifications (cli.notify): where to (URLs from the environment only, kept out of
    repr()), on which events, for which jobs, and how long to try."""

    webhook_url: str | None = field(default=_DEFAULTS["notify.webhook_url"], repr=False)
    slack_webhook_url: str | None = field(default=_DEFAULTS["notify.slack_webhook_url"], repr=False)
    events: tuple[str, ...] = _DEFAULTS["notify.events"]
    jobs: tuple[str, ...] = _DEFAULTS["notify.jobs"]
    timeout: float = _DEFAULTS["notify.timeout"]
    retries: int = _DEFAULTS["notify.retries"]

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url or self.slack_webhook_url)


@dataclass(frozen=True)
class Settings:
    """Everything a pgvault command may need, validated."""

    cluster: str = _DEFAULTS["cluster"]
    repository_url: str = _DEFAULTS["repository.url"]
    s3: S3Options = field(default_factory=S3Options)
    dsn: str = _DEFAULTS["postgres.dsn"]
    pg_bin_dirs: tuple[str, ...] = _DEFAULTS["postgres.bin_dirs"]
    compression: str = _DEFAULTS["compression.algorithm"]
    compression_level: int | None = _DEFAULTS["compression.level"]
    compression_threads: int = _DEFAULTS["compression.threads"]
    age_recipients: tuple[str, ...] = _DEFAULTS["encryption.age_recipients"]
    age_identity_file: str | None = _DEFAULTS["encryption.age_identity_file"]
    # The secret key itself may come from the environment (Kubernetes secrets); it is kept out of
    # repr() so it can never end up in a log line or a traceback.
    age_identity: str | None = field(default=_DEFAULTS["encryption.age_identity"], repr=False)
    exact_row_counts: bool = _DEFAULTS["backup.exact_row_counts"]
    row_counts_from: str = _DEFAULTS["backup.row_counts_from"]
    backup_jobs: int = _DEFAULTS["backup.jobs"]
    backup_parallel: int = _DEFAULTS["backup.parallel"]
    page_checksums: str = _DEFAULTS["backup.page_checksums"]
    archive_async: bool = _DEFAULTS["archive.async"]
    archive_parallel: int = _DEFAULTS["archive.parallel"]
    spool_dir: str | None = _DEFAULTS["archive.spool_dir"]
    archive_wait_timeout: float = _DEFAULTS["archive.wait_timeout"]
    restore_prefetch: int = _DEFAULTS["restore.prefetch"]
    keep_last_logical: int | None = _DEFAULTS["retention.logical.keep_last"]
    keep_within_logical: float | None = _DEFAULTS["retention.logical.keep_within"]
    keep_daily: int = _DEFAULTS["retention.logical.daily"]
    keep_weekly: int = _DEFAULTS["retention.logical.weekly"]
    keep_monthly: int = _DEFAULTS["retention.logical.monthly"]
    keep_yearly: int = _DEFAULTS["retention.logical.yearly"]
    min_keep_logical: int = _DEFAULTS["retention.logical.min_keep"]
    keep_last_physical: int | None = _DEFAULTS["retention.physical.keep_last"]
    keep_within_physical: float | None = _DEFAULTS["retention.physical.keep_within"]
    min_keep_physical: int = _DEFAULTS["retention.physical.min_keep"]
    pitr_window: float | None = _DEFAULTS["retention.pitr_window"]
    debris_grace: float = _DEFAULTS["retention.debris_grace"]
    smoke_queries: tuple[SmokeQuery, ...] = _DEFAULTS["drill.smoke_queries"]
    drill_rto: float | None = _DEFAULTS["drill.rto"]
    drill_target_dsn: str = field(default=_DEFAULTS["drill.target_dsn"], repr=False)
    drill_os_user: str = _DEFAULTS["drill.os_user"]
    metrics_textfile: str | None = _DEFAULTS["metrics.textfile"]
    metrics_pushgateway: str | None = _DEFAULTS["metrics.pushgateway"]
    backup_max_age: float = _DEFAULTS["monitoring.backup_max_age"]
    drill_max_age: float = _DEFAULTS["monitoring.drill_max_age"]
    notify: NotifyOptions = field(default_factory=NotifyOptions)
    source: str = "defaults"
    # Every configured repository, the primary first (empty: only the primary, from the fields
    # above); ``repository_name`` is the one ``repository_url``/``s3`` currently point at.
    repositories: tuple[NamedRepository, ...] = ()
    repository_name: str = PRIMARY_REPOSITORY

    def all_repositories(self) -> tuple[NamedRepository, ...]:
        """The primary repository and every named one, in configuration order."""
        return self.repositories or (NamedRepository(PRIMARY_REPOSITORY, self.repository_url, self.s3),)

    def with_repository(self, name: str) -> Settings:
        """These settings reading and writing the configured repository ``name`` instead."""
        for r in self.all_repositories():
            if r.name == name:
                return replace(self, repository_url=r.url, s3=r.s3, repository_name=r.name)
        known = ", ".join(r.name for r in self.all_repositories())
        raise ConfigError([f"no repository named {name!r} is configured (configured: {known})"],
                          hint="add it under repositories.<name> in the config file")

    def object_lock_rule(self) -> LockRule | None:
        """The S3 Object Lock mode and duration every put carries; None when ``object_lock`` is off
        (validation has already refused settings that resolve to nothing)."""
        from pgvault.policy.object_lock import resolve
        from pgvault.policy.retention import Policy

        return resolve(self.s3.object_lock, self.s3.object_lock_retention, Policy.from_settings(self))[0]

    def pipeline(self) -> PipelineSpec:
        """The write pipeline these settings describe."""
        from pgvault.pipeline import PipelineSpec  # zstandard + pyrage: not for every command's start-up
        from pgvault.pipeline.encryption import scheme_for_recipients

        return PipelineSpec(
            compression=self.compression,
            level=self.compression_level,
            encryption=scheme_for_recipients(self.age_recipients),
            recipients=self.age_recipients,
        )


def _warn_alias(old: str, new: str) -> None:
    from pgvault import log

    log.get().warning("%s is deprecated: set %s instead", old, new)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and path not in _BY_PATH:
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def load_settings(
    config_path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    check_identities: bool = False,
    check_local_files: bool = True,
) -> Settings:
    """Build :class:`Settings` from a YAML file, the environment and explicit overrides.

    ``config_path`` defaults to ``$PGVAULT_CONFIG``; no file at all means defaults + environment.
    ``check_identities`` also parses the age secret key(s) (:func:`identity_problems`).
    ``check_local_files=False`` does not require the age identity file to exist on this host: for
    commands that only describe the configuration (``runbook``), run where the key never is.
    Raises :class:`ConfigError` listing every problem found.
    """
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    raw: dict[str, Any] = {}
    named_doc: Any = {}
    path = config_path or env.get("PGVAULT_CONFIG")
    source = "defaults"
    if path:
        source = path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError([f"cannot read config file {path}: {e.strerror or e}"]) from None
        import yaml  # only with a config file: ``wal fetch`` is often configured by the environment alone

        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError([f"config file {path} is not valid YAML: {e}"]) from None
        if not isinstance(doc, dict):
            raise ConfigError([f"config file {path} must hold a mapping at the top level"])
        named_doc = doc.pop("repositories", None) or {}
        for key, value in _flatten(doc).items():
            if key not in _BY_PATH:
                why = " (YAML reads an unquoted key on, off, yes or no as true or false)" \
                    if key.rsplit(".", 1)[-1] in ("True", "False") else ""
                problems.append(f"{path}: unknown setting '{key}'{why}")
            elif key in _SECRET_PATHS:
                problems.append(f"{path}: '{key}' must not be stored in a config file; use {_BY_PATH[key].env}")
            else:
                raw[key] = value
    for s in SETTINGS:
        if s.env in env:
            raw[s.path] = env[s.env]
            continue
        for alias in s.aliases:
            if alias in env:
                _warn_alias(alias, s.env)
                raw[s.path] = env[alias]
                break
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value

    values: dict[str, Any] = {}
    for key, value in raw.items():
        s = _BY_PATH[key]
        try:
            values[key] = s.parse(value)
        except (TypeError, ValueError) as e:
            shown = "<secret>" if key in _NOT_ECHOED else repr(value)
            problems.append(f"{key} ({s.env}) = {shown}: {e}")

    recipients = tuple(values.get("encryption.age_recipients", ()))
    rfile = values.get("encryption.age_recipients_file")
    if rfile:
        try:
            lines = Path(rfile).read_text(encoding="utf-8").splitlines()
            recipients += tuple(ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))
        except OSError as e:
            problems.append(f"encryption.age_recipients_file: cannot read {rfile}: {e.strerror or e}")

    def get(key: str) -> Any:  # unset, or set empty where the parser allows it (None): the table's default
        value = values.get(key)
        return _DEFAULTS[key] if value is None else value

    s3 = S3Options(
        endpoint_url=get("repository.s3.endpoint_url"),
        region=get("repository.s3.region"),
        force_path_style=get("repository.s3.force_path_style"),
        profile=get("repository.s3.profile"),
        part_size_mb=get("repository.s3.part_size_mb"),
        max_concurrency=get("repository.s3.max_concurrency"),
        read_concurrency=get("repository.s3.read_concurrency"),
        connect_timeout=get("repository.s3.connect_timeout"),
        read_timeout=get("repository.s3.read_timeout"),
        retries=get("repository.s3.retries"),
        object_lock=get("repository.s3.object_lock"),
        object_lock_retention=get("repository.s3.object_lock_retention"),
    )
    notify = _section(NotifyOptions, "notify", get)
    named = _named_repositories(named_doc, env, path or "config", problems)
    settings = Settings(
        cluster=get("cluster"),
        repository_url=get("repository.url"),
        s3=s3,
        dsn=get("postgres.dsn"),
        pg_bin_dirs=get("postgres.bin_dirs"),
        compression=get("compression.algorithm"),
        compression_level=get("compression.level"),
        compression_threads=get("compression.threads"),
        age_recipients=recipients,
        age_identity_file=get("encryption.age_identity_file"),
        age_identity=get("encryption.age_identity"),
        exact_row_counts=get("backup.exact_row_counts"),
        row_counts_from=get("backup.row_counts_from"),
        backup_jobs=get("backup.jobs"),
        backup_parallel=get("backup.parallel"),
        page_checksums=get("backup.page_checksums"),
        archive_async=get("archive.async"),
        archive_parallel=get("archive.parallel"),
        spool_dir=get("archive.spool_dir"),
        archive_wait_timeout=get("archive.wait_timeout"),
        restore_prefetch=get("restore.prefetch"),
        keep_last_logical=get("retention.logical.keep_last"),
        keep_within_logical=get("retention.logical.keep_within"),
        keep_daily=get("retention.logical.daily"),
        keep_weekly=get("retention.logical.weekly"),
        keep_monthly=get("retention.logical.monthly"),
        keep_yearly=get("retention.logical.yearly"),
        min_keep_logical=get("retention.logical.min_keep"),
        keep_last_physical=get("retention.physical.keep_last"),
        keep_within_physical=get("retention.physical.keep_within"),
        min_keep_physical=get("retention.physical.min_keep"),
        pitr_window=get("retention.pitr_window"),
        debris_grace=get("retention.debris_grace"),
        smoke_queries=get("drill.smoke_queries"),
        drill_rto=get("drill.rto"),
        drill_target_dsn=get("drill.target_dsn"),
        drill_os_user=get("drill.os_user"),
        metrics_textfile=get("metrics.textfile"),
        metrics_pushgateway=get("metrics.pushgateway"),
        backup_max_age=get("monitoring.backup_max_age"),
        drill_max_age=get("monitoring.drill_max_age"),
        notify=notify,
        source=source,
    )
    if named:
        settings = replace(settings, repositories=(
            NamedRepository(PRIMARY_REPOSITORY, settings.repository_url, settings.s3), *named))
    problems += validate(settings, check_local_files=check_local_files)
    if check_identities:
        from pgvault.config.identity import identity_problems  # pyrage only when asked

        problems += identity_problems(settings)
    if problems:
        raise ConfigError(problems, hint="run 'pgvault config check' to see every problem")
    return settings


_REPOSITORY_TEMPLATE = {s.path.removeprefix("repository."): s.parse for s in SETTINGS
                        if s.path.startswith("repository.")}  # url and s3.*


def _named_repositories(doc: Any, env: Mapping[str, str], where: str, problems: list[str]) -> list[NamedRepository]:
    """The named repositories of the file's ``repositories`` section and the environment."""
    out = []
    for name, parsed in named_settings(doc, env, where, _REPOSITORY_TEMPLATE, _flatten, problems).items():
        s3 = S3Options(**{f.name: parsed[f"s3.{f.name}"] for f in fields(S3Options)
                          if parsed.get(f"s3.{f.name}") is not None})
        out.append(NamedRepository(name, parsed["url"], s3))
    return out


def _section(cls: Callable[..., _T], prefix: str, get: Callable[[str], Any]) -> _T:
    """A settings section (a dataclass) whose field names are the names of the settings under ``prefix``."""
    return cls(**{f.name: get(f"{prefix}.{f.name}") for f in fields(cast(Any, cls))})


def environment_notify() -> NotifyOptions:
    """The notify.* settings from the environment alone (:func:`environment_value`, unvalidated):
    a job whose configuration did not load still notifies its failure."""
    return _section(NotifyOptions, "notify", environment_value)


def environment_value(path: str, environ: Mapping[str, str] | None = None) -> Any:
    """One setting from the environment alone (its variable, else a deprecated alias, with the
    warning), parsed; the table's default when unset or not parseable.

    For the few places that need a setting when the whole configuration may not load (a failed
    job still writes its textfile) or before there is a command (test and demo harnesses finding
    PostgreSQL bin directories).  Everything else takes :class:`Settings`."""
    s = _BY_PATH[path]
    env = os.environ if environ is None else environ
    raw = env.get(s.env)
    if raw is None:
        alias = next((a for a in s.aliases if a in env), None)
        if alias is not None:
            _warn_alias(alias, s.env)
            raw = env[alias]
    if raw is None:
        return s.default
    try:
        value = s.parse(raw)
    except (TypeError, ValueError):
        return s.default
    return s.default if value is None else value


def describe() -> list[tuple[str, str, str]]:
    """(setting, environment variable, meaning) for every setting, for help and docs; a deprecated
    environment name still read is named in the meaning."""
    return [(s.path, s.env, s.doc + "".join(f" (deprecated alias: {a})" for a in s.aliases)) for s in SETTINGS]
