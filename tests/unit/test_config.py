"""Settings: YAML file, then PGVAULT_* environment, then overrides; every problem reported at once.

Every test passes ``environ`` explicitly, so the developer's own environment never leaks in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyrage
import pytest

from pgvault.config import SETTINGS, S3Options, Settings, describe, environment_value, load_settings
from pgvault.errors import ConfigError
from pgvault.pipeline import PipelineSpec

_IDENTITY = pyrage.x25519.Identity.generate()
SECRET = str(_IDENTITY)  # AGE-SECRET-KEY-1...
RECIPIENT = str(_IDENTITY.to_public())  # age1...
RECIPIENT2 = str(pyrage.x25519.Identity.generate().to_public())
HOOK = "https://hooks.example.com/pgvault/4f1c0ffee"  # webhook URLs are credentials: environment only
SLACK_HOOK = "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"
SECRET_PATHS = {"encryption.age_identity", "notify.webhook_url", "notify.slack_webhook_url"}


def write_yaml(tmp_path: Path, text: str, name: str = "pgvault.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return exc.value.problems


# --- sources and precedence ------------------------------------------------------------------


def test_no_file_and_empty_environment_gives_the_defaults() -> None:
    assert load_settings(environ={}) == Settings()


def test_yaml_file_sets_every_section(tmp_path: Path) -> None:
    idfile = tmp_path / "key.txt"
    idfile.write_text(SECRET + "\n")
    path = write_yaml(
        tmp_path,
        f"""
        cluster: prod
        repository:
          url: s3://bucket/pg
          s3:
            endpoint_url: http://127.0.0.1:8333
            region: eu-west-1
            force_path_style: true
            profile: backup
            part_size_mb: 64
            max_concurrency: 8
        postgres:
          dsn: host=db.internal port=5433
          bin_dirs: [/opt/pg18/bin, /usr/lib/postgresql/15/bin]
        compression:
          algorithm: gzip
          level: 9
          threads: 0
        encryption:
          age_recipients: [{RECIPIENT}]
          age_identity_file: {idfile}
        backup:
          exact_row_counts: false
        """,
    )
    s = load_settings(path, environ={})
    assert s == Settings(
        cluster="prod",
        repository_url="s3://bucket/pg",
        s3=S3Options(
            endpoint_url="http://127.0.0.1:8333",
            region="eu-west-1",
            force_path_style=True,
            profile="backup",
            part_size_mb=64,
            max_concurrency=8,
        ),
        dsn="host=db.internal port=5433",
        pg_bin_dirs=("/opt/pg18/bin", "/usr/lib/postgresql/15/bin"),
        compression="gzip",
        compression_level=9,
        compression_threads=0,
        age_recipients=(RECIPIENT,),
        age_identity_file=str(idfile),
        exact_row_counts=False,
        source=path,
    )


def test_environment_beats_file_and_overrides_beat_both(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        cluster: from-file
        repository: {url: /srv/file-repo}
        compression: {algorithm: gzip, level: 4}
        """,
    )
    env = {"PGVAULT_CLUSTER": "from-env", "PGVAULT_COMPRESSION_LEVEL": "7"}
    s = load_settings(path, environ=env, overrides={"cluster": "from-cli", "repository.url": None})
    assert s.cluster == "from-cli"  # override > env > file
    assert s.compression_level == 7  # env > file
    assert s.repository_url == "/srv/file-repo"  # an override of None means "not given"
    assert s.compression == "gzip"  # only the file says anything
    assert s.source == path


def test_config_path_defaults_to_pgvault_config_variable(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "cluster: via-env-var\n")
    s = load_settings(environ={"PGVAULT_CONFIG": path})
    assert (s.cluster, s.source) == ("via-env-var", path)


def test_explicit_config_path_beats_pgvault_config(tmp_path: Path) -> None:
    a = write_yaml(tmp_path, "cluster: a\n", "a.yaml")
    b = write_yaml(tmp_path, "cluster: b\n", "b.yaml")
    assert load_settings(a, environ={"PGVAULT_CONFIG": b}).cluster == "a"


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "# nothing configured yet\n")
    assert dataclasses.replace(load_settings(path, environ={}), source="defaults") == Settings()


def test_unrelated_pgvault_variables_are_ignored() -> None:
    s = load_settings(environ={"PGVAULT_NOT_A_SETTING": "1", "PGVAULT_TESTDATA": "/x", "PGHOST": "db"})
    assert s == Settings()


# --- deprecated environment names ---------------------------------------------------------------

def test_pg_bindirs_is_a_deprecated_alias_of_postgres_bin_dirs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        s = load_settings(environ={"PGVAULT_PG_BINDIRS": "/opt/pg18/bin:/opt/pg15/bin"})
    assert s.pg_bin_dirs == ("/opt/pg18/bin", "/opt/pg15/bin")  # the old name was colon-separated, like PATH
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["PGVAULT_PG_BINDIRS is deprecated: set PGVAULT_POSTGRES_BIN_DIRS instead"]


def test_the_new_name_wins_over_its_alias_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        s = load_settings(environ={"PGVAULT_PG_BINDIRS": "/old", "PGVAULT_POSTGRES_BIN_DIRS": "/new:/newer"})
    assert s.pg_bin_dirs == ("/new", "/newer")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_alias_overrides_the_config_file_as_its_new_name_does(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "postgres:\n  bin_dirs: [/from/yaml]\n")
    assert load_settings(path, environ={"PGVAULT_PG_BINDIRS": "/env"}).pg_bin_dirs == ("/env",)
    assert load_settings(path, environ={}).pg_bin_dirs == ("/from/yaml",)


def test_metrics_pushgateway_must_be_an_http_url() -> None:
    assert load_settings(environ={"PGVAULT_METRICS_PUSHGATEWAY": "https://pgw:9091"}).metrics_pushgateway == "https://pgw:9091"
    with pytest.raises(ConfigError, match="metrics.pushgateway: 'pgw:9091' is not a URL like http://pushgateway:9091"):
        load_settings(environ={"PGVAULT_METRICS_PUSHGATEWAY": "pgw:9091"})


def test_drill_os_user_and_metrics_textfile_are_settings() -> None:
    s = load_settings(environ={"PGVAULT_DRILL_OS_USER": "pgdrill", "PGVAULT_METRICS_TEXTFILE": "/var/lib/ne/pgvault.prom"})
    assert (s.drill_os_user, s.metrics_textfile) == ("pgdrill", "/var/lib/ne/pgvault.prom")
    assert (Settings().drill_os_user, Settings().metrics_textfile) == ("postgres", None)


def test_environment_value_reads_one_setting_through_the_table(caplog: pytest.LogCaptureFixture) -> None:
    assert environment_value("metrics.textfile", {}) is None
    assert environment_value("cluster", {}) == "main"
    assert environment_value("cluster", {"PGVAULT_CLUSTER": "c9"}) == "c9"
    with caplog.at_level(logging.WARNING):
        assert environment_value("postgres.bin_dirs", {"PGVAULT_PG_BINDIRS": "/a:/b"}) == ("/a", "/b")
    assert "set PGVAULT_POSTGRES_BIN_DIRS instead" in caplog.text
    assert environment_value("postgres.bin_dirs", {"PGVAULT_POSTGRES_BIN_DIRS": "/a,/b"}) == ("/a", "/b")


def test_each_default_is_the_tables() -> None:
    # The dataclasses take their defaults from the table: there is no second copy to drift.
    defaults = {s.path: s.default for s in SETTINGS}
    assert Settings().cluster == defaults["cluster"] and Settings().compression == defaults["compression.algorithm"]
    assert S3Options().read_timeout == defaults["repository.s3.read_timeout"]
    assert Settings().debris_grace == defaults["retention.debris_grace"] == 24 * 3600.0
    assert load_settings(environ={"PGVAULT_RETENTION_DEBRIS_GRACE": ""}).debris_grace == 24 * 3600.0


def test_config_keys_lists_the_new_names_and_the_alias(capsys: pytest.CaptureFixture[str]) -> None:
    from pgvault.cli import main

    assert main(["config", "keys", "--json"]) == 0
    rows = {r["setting"]: r for r in json.loads(capsys.readouterr().out)["settings"]}
    assert rows["postgres.bin_dirs"]["env"] == "PGVAULT_POSTGRES_BIN_DIRS"
    assert "deprecated alias: PGVAULT_PG_BINDIRS" in rows["postgres.bin_dirs"]["doc"]
    assert rows["drill.os_user"]["env"] == "PGVAULT_DRILL_OS_USER"
    assert rows["metrics.textfile"]["env"] == "PGVAULT_METRICS_TEXTFILE"


# --- one environment variable per setting -------------------------------------------------------

# setting path -> (environment value, what it becomes)
ENV_SAMPLES: dict[str, tuple[str, Callable[[Settings], Any], Any]] = {
    "cluster": ("c1", lambda s: s.cluster, "c1"),
    "repository.url": ("s3://b/p", lambda s: s.repository_url, "s3://b/p"),
    "repository.s3.endpoint_url": ("http://s3:9000", lambda s: s.s3.endpoint_url, "http://s3:9000"),
    "repository.s3.region": ("us-east-2", lambda s: s.s3.region, "us-east-2"),
    "repository.s3.force_path_style": ("yes", lambda s: s.s3.force_path_style, True),
    "repository.s3.profile": ("ops", lambda s: s.s3.profile, "ops"),
    "repository.s3.part_size_mb": ("32", lambda s: s.s3.part_size_mb, 32),
    "repository.s3.max_concurrency": ("9", lambda s: s.s3.max_concurrency, 9),
    "repository.s3.read_concurrency": ("8", lambda s: s.s3.read_concurrency, 8),
    "repository.s3.connect_timeout": ("2s", lambda s: s.s3.connect_timeout, 2.0),
    "repository.s3.read_timeout": ("1m", lambda s: s.s3.read_timeout, 60.0),
    "repository.s3.retries": ("0", lambda s: s.s3.retries, 0),
    # Alone, only "off" is valid (a lock needs an s3:// URL and a retention): see test_object_lock_*.
    "repository.s3.object_lock": ("Off", lambda s: s.s3.object_lock, "off"),
    "repository.s3.object_lock_retention": ("30d", lambda s: s.s3.object_lock_retention, 30 * 86400.0),
    "postgres.dsn": ("host=h dbname=d", lambda s: s.dsn, "host=h dbname=d"),
    "postgres.bin_dirs": ("/a, /b\n/c:/d", lambda s: s.pg_bin_dirs, ("/a", "/b", "/c", "/d")),
    "compression.algorithm": ("none", lambda s: s.compression, "none"),
    "compression.level": ("12", lambda s: s.compression_level, 12),
    "compression.threads": ("6", lambda s: s.compression_threads, 6),
    "encryption.age_recipients": (f"{RECIPIENT},{RECIPIENT2}", lambda s: s.age_recipients, (RECIPIENT, RECIPIENT2)),
    # The recipients file is read at load time; its effect is tested below with a real file.
    "encryption.age_recipients_file": ("", lambda s: s.age_recipients, ()),
    "encryption.age_identity_file": ("", lambda s: s.age_identity_file, None),
    "encryption.age_identity": (SECRET, lambda s: s.age_identity, SECRET),
    "backup.exact_row_counts": ("off", lambda s: s.exact_row_counts, False),
    "backup.jobs": ("4", lambda s: s.backup_jobs, 4),
    "backup.row_counts_from": ("snapshot", lambda s: s.row_counts_from, "snapshot"),
    "backup.parallel": ("3", lambda s: s.backup_parallel, 3),
    "backup.page_checksums": ("warn", lambda s: s.page_checksums, "warn"),
    "archive.async": ("false", lambda s: s.archive_async, False),
    "archive.parallel": ("8", lambda s: s.archive_parallel, 8),
    "archive.spool_dir": ("/var/spool/pgvault", lambda s: s.spool_dir, "/var/spool/pgvault"),
    "archive.wait_timeout": ("12.5", lambda s: s.archive_wait_timeout, 12.5),
    "restore.prefetch": ("0", lambda s: s.restore_prefetch, 0),
    "retention.logical.keep_last": ("7", lambda s: s.keep_last_logical, 7),
    "retention.logical.keep_within": ("14d", lambda s: s.keep_within_logical, 14 * 86400.0),
    "retention.logical.daily": ("7", lambda s: s.keep_daily, 7),
    "retention.logical.weekly": ("4", lambda s: s.keep_weekly, 4),
    "retention.logical.monthly": ("36", lambda s: s.keep_monthly, 36),
    "retention.logical.yearly": ("2", lambda s: s.keep_yearly, 2),
    "retention.logical.min_keep": ("3", lambda s: s.min_keep_logical, 3),
    "retention.physical.keep_last": ("2", lambda s: s.keep_last_physical, 2),
    "retention.physical.keep_within": ("1d12h", lambda s: s.keep_within_physical, 36 * 3600.0),
    "retention.physical.min_keep": ("2", lambda s: s.min_keep_physical, 2),
    "retention.pitr_window": ("7d", lambda s: s.pitr_window, 7 * 86400.0),
    "retention.debris_grace": ("6h", lambda s: s.debris_grace, 6 * 3600.0),
    "drill.smoke_queries": ('[{"sql": "SELECT count(*) FROM orgs", "min": 1}]',
                            lambda s: [(q.sql, q.min, q.expect) for q in s.smoke_queries],
                            [("SELECT count(*) FROM orgs", 1.0, None)]),
    "drill.rto": ("30m", lambda s: s.drill_rto, 1800.0),
    "drill.target_dsn": ("host=drills port=5433", lambda s: s.drill_target_dsn, "host=drills port=5433"),
    "drill.os_user": ("pgdrill", lambda s: s.drill_os_user, "pgdrill"),
    "metrics.textfile": ("/tmp/j.prom", lambda s: s.metrics_textfile, "/tmp/j.prom"),
    "metrics.pushgateway": ("http://pgw:9091", lambda s: s.metrics_pushgateway, "http://pgw:9091"),
    "monitoring.backup_max_age": ("36h", lambda s: s.backup_max_age, 36 * 3600.0),
    "monitoring.drill_max_age": ("35d", lambda s: s.drill_max_age, 35 * 86400.0),
    "notify.webhook_url": (HOOK, lambda s: s.notify.webhook_url, HOOK),
    "notify.slack_webhook_url": (SLACK_HOOK, lambda s: s.notify.slack_webhook_url, SLACK_HOOK),
    "notify.events": ("failure, success, recovery", lambda s: s.notify.events, ("failure", "success", "recovery")),
    "notify.jobs": ("backup,verify", lambda s: s.notify.jobs, ("backup", "verify")),
    "notify.timeout": ("2s", lambda s: s.notify.timeout, 2.0),
    "notify.retries": ("0", lambda s: s.notify.retries, 0),
}

EXPECTED_ENV_NAMES = {
    "cluster": "PGVAULT_CLUSTER",
    "repository.url": "PGVAULT_REPOSITORY_URL",
    "repository.s3.endpoint_url": "PGVAULT_REPOSITORY_S3_ENDPOINT_URL",
    "repository.s3.region": "PGVAULT_REPOSITORY_S3_REGION",
    "repository.s3.force_path_style": "PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE",
    "repository.s3.profile": "PGVAULT_REPOSITORY_S3_PROFILE",
    "repository.s3.part_size_mb": "PGVAULT_REPOSITORY_S3_PART_SIZE_MB",
    "repository.s3.max_concurrency": "PGVAULT_REPOSITORY_S3_MAX_CONCURRENCY",
    "repository.s3.read_concurrency": "PGVAULT_REPOSITORY_S3_READ_CONCURRENCY",
    "repository.s3.connect_timeout": "PGVAULT_REPOSITORY_S3_CONNECT_TIMEOUT",
    "repository.s3.read_timeout": "PGVAULT_REPOSITORY_S3_READ_TIMEOUT",
    "repository.s3.retries": "PGVAULT_REPOSITORY_S3_RETRIES",
    "repository.s3.object_lock": "PGVAULT_REPOSITORY_S3_OBJECT_LOCK",
    "repository.s3.object_lock_retention": "PGVAULT_REPOSITORY_S3_OBJECT_LOCK_RETENTION",
    "postgres.dsn": "PGVAULT_POSTGRES_DSN",
    "postgres.bin_dirs": "PGVAULT_POSTGRES_BIN_DIRS",
    "compression.algorithm": "PGVAULT_COMPRESSION_ALGORITHM",
    "compression.level": "PGVAULT_COMPRESSION_LEVEL",
    "compression.threads": "PGVAULT_COMPRESSION_THREADS",
    "encryption.age_recipients": "PGVAULT_ENCRYPTION_AGE_RECIPIENTS",
    "encryption.age_recipients_file": "PGVAULT_ENCRYPTION_AGE_RECIPIENTS_FILE",
    "encryption.age_identity_file": "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE",
    "encryption.age_identity": "PGVAULT_ENCRYPTION_AGE_IDENTITY",
    "backup.exact_row_counts": "PGVAULT_BACKUP_EXACT_ROW_COUNTS",
    "backup.jobs": "PGVAULT_BACKUP_JOBS",
    "backup.row_counts_from": "PGVAULT_BACKUP_ROW_COUNTS_FROM",
    "backup.parallel": "PGVAULT_BACKUP_PARALLEL",
    "backup.page_checksums": "PGVAULT_BACKUP_PAGE_CHECKSUMS",
    "archive.async": "PGVAULT_ARCHIVE_ASYNC",
    "archive.parallel": "PGVAULT_ARCHIVE_PARALLEL",
    "archive.spool_dir": "PGVAULT_ARCHIVE_SPOOL_DIR",
    "archive.wait_timeout": "PGVAULT_ARCHIVE_WAIT_TIMEOUT",
    "restore.prefetch": "PGVAULT_RESTORE_PREFETCH",
    "retention.logical.keep_last": "PGVAULT_RETENTION_LOGICAL_KEEP_LAST",
    "retention.logical.keep_within": "PGVAULT_RETENTION_LOGICAL_KEEP_WITHIN",
    "retention.logical.daily": "PGVAULT_RETENTION_LOGICAL_DAILY",
    "retention.logical.weekly": "PGVAULT_RETENTION_LOGICAL_WEEKLY",
    "retention.logical.monthly": "PGVAULT_RETENTION_LOGICAL_MONTHLY",
    "retention.logical.yearly": "PGVAULT_RETENTION_LOGICAL_YEARLY",
    "retention.logical.min_keep": "PGVAULT_RETENTION_LOGICAL_MIN_KEEP",
    "retention.physical.keep_last": "PGVAULT_RETENTION_PHYSICAL_KEEP_LAST",
    "retention.physical.keep_within": "PGVAULT_RETENTION_PHYSICAL_KEEP_WITHIN",
    "retention.physical.min_keep": "PGVAULT_RETENTION_PHYSICAL_MIN_KEEP",
    "retention.pitr_window": "PGVAULT_RETENTION_PITR_WINDOW",
    "retention.debris_grace": "PGVAULT_RETENTION_DEBRIS_GRACE",
    "drill.smoke_queries": "PGVAULT_DRILL_SMOKE_QUERIES",
    "drill.rto": "PGVAULT_DRILL_RTO",
    "drill.target_dsn": "PGVAULT_DRILL_TARGET_DSN",
    "drill.os_user": "PGVAULT_DRILL_OS_USER",
    "metrics.textfile": "PGVAULT_METRICS_TEXTFILE",
    "metrics.pushgateway": "PGVAULT_METRICS_PUSHGATEWAY",
    "monitoring.backup_max_age": "PGVAULT_MONITORING_BACKUP_MAX_AGE",
    "monitoring.drill_max_age": "PGVAULT_MONITORING_DRILL_MAX_AGE",
    "notify.webhook_url": "PGVAULT_NOTIFY_WEBHOOK_URL",
    "notify.slack_webhook_url": "PGVAULT_NOTIFY_SLACK_WEBHOOK_URL",
    "notify.events": "PGVAULT_NOTIFY_EVENTS",
    "notify.jobs": "PGVAULT_NOTIFY_JOBS",
    "notify.timeout": "PGVAULT_NOTIFY_TIMEOUT",
    "notify.retries": "PGVAULT_NOTIFY_RETRIES",
}


def test_the_tables_here_cover_every_setting() -> None:
    paths = {s.path for s in SETTINGS}
    assert paths == set(ENV_SAMPLES) == set(EXPECTED_ENV_NAMES)


def test_environment_names_derive_from_paths_and_are_unique() -> None:
    assert {s.path: s.env for s in SETTINGS} == EXPECTED_ENV_NAMES
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)
    assert [(p, e) for p, e, _ in describe()] == [(s.path, s.env) for s in SETTINGS]
    assert all(doc for _, _, doc in describe())


@pytest.mark.parametrize("path", sorted(EXPECTED_ENV_NAMES))
def test_each_environment_variable_sets_its_setting(path: str) -> None:
    value, get, expected = ENV_SAMPLES[path]
    s = load_settings(environ={EXPECTED_ENV_NAMES[path]: value})
    assert get(s) == expected


@pytest.mark.parametrize("path", sorted(p for p in EXPECTED_ENV_NAMES if p not in SECRET_PATHS))
def test_each_yaml_path_sets_the_same_setting_as_its_variable(tmp_path: Path, path: str) -> None:
    value, get, expected = ENV_SAMPLES[path]
    # A dotted key at the top level is the same path as the nested form.
    file = write_yaml(tmp_path, f"{path}: {json.dumps(value)}\n" if value else f"{path}:\n")
    assert get(load_settings(file, environ={})) == expected


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "Yes", " on "])
def test_true_spellings(text: str) -> None:
    assert load_settings(environ={"PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE": text}).s3.force_path_style is True


@pytest.mark.parametrize("text", ["0", "false", "No", "OFF"])
def test_false_spellings(text: str) -> None:
    assert load_settings(environ={"PGVAULT_BACKUP_EXACT_ROW_COUNTS": text}).exact_row_counts is False


@pytest.mark.parametrize("text", ["maybe", "", "2", "y"])
def test_bad_boolean_names_setting_variable_and_value(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"PGVAULT_BACKUP_EXACT_ROW_COUNTS": text})
    (problem,) = problems_of(exc)
    assert problem.startswith("backup.exact_row_counts (PGVAULT_BACKUP_EXACT_ROW_COUNTS) = ")
    assert repr(text) in problem and "boolean" in problem
    assert exc.value.exit_code == 2 and exc.value.hint


@pytest.mark.parametrize("text", ["abc", "", "1.5", "8 MiB"])
def test_bad_integer_from_environment(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"PGVAULT_REPOSITORY_S3_PART_SIZE_MB": text})
    (problem,) = problems_of(exc)
    assert problem.startswith(f"repository.s3.part_size_mb (PGVAULT_REPOSITORY_S3_PART_SIZE_MB) = {text!r}: ")


@pytest.mark.parametrize("yaml_value", ["true", "5.5", "[5]", "{a: 1}"])
def test_bad_integer_from_yaml(tmp_path: Path, yaml_value: str) -> None:
    # 5.5 used to be truncated to 5 silently; a boolean is not a number either.
    path = write_yaml(tmp_path, f"repository: {{s3: {{max_concurrency: {yaml_value}}}}}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    (problem,) = problems_of(exc)
    assert problem.startswith("repository.s3.max_concurrency (PGVAULT_REPOSITORY_S3_MAX_CONCURRENCY) = ")


def test_integral_float_and_padded_integer_are_accepted(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "repository: {s3: {part_size_mb: 8.0}}\n")
    assert load_settings(path, environ={"PGVAULT_COMPRESSION_THREADS": " 3 "}).s3.part_size_mb == 8
    assert load_settings(path, environ={"PGVAULT_COMPRESSION_THREADS": " 3 "}).compression_threads == 3


def test_empty_compression_level_means_codec_default() -> None:
    assert load_settings(environ={"PGVAULT_COMPRESSION_LEVEL": ""}).compression_level is None


def test_string_setting_refuses_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "cluster: {name: x}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    assert problems_of(exc) == ["cluster (PGVAULT_CLUSTER) = {'name': 'x'}: expected a string, got dict"]


def test_list_setting_from_yaml_strips_and_drops_blanks(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "postgres: {bin_dirs: [' /a ', '', /b]}\n")
    assert load_settings(path, environ={}).pg_bin_dirs == ("/a", "/b")


def test_list_setting_refuses_a_number(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "postgres: {bin_dirs: 5}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    assert problems_of(exc) == ["postgres.bin_dirs (PGVAULT_POSTGRES_BIN_DIRS) = 5: expected a list, got int"]


def test_a_mistyped_dsn_is_not_echoed(tmp_path: Path) -> None:
    # A conninfo holds passwords; a problem report must not repeat it even when it has the wrong type.
    path = write_yaml(tmp_path, "postgres: {dsn: [host=db, password=hunter2]}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    (problem,) = problems_of(exc)
    assert problem.startswith("postgres.dsn (PGVAULT_POSTGRES_DSN) = <secret>:")
    assert "hunter2" not in str(exc.value)


def test_invalid_dsn_is_reported_without_its_password() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"PGVAULT_POSTGRES_DSN": "host=db password=hunter2 bogus"})
    (problem,) = problems_of(exc)
    assert problem.startswith("postgres.dsn: not a valid libpq connection string")
    assert "hunter2" not in str(exc.value)


# --- the file itself --------------------------------------------------------------------------


def test_unknown_keys_are_each_named(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        clustr: typo
        repository:
          url: /r
          s3: {bucket: b}
        compression: {algorithm: zstd, levle: 3}
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    assert sorted(problems_of(exc)) == sorted(
        [
            f"{path}: unknown setting 'clustr'",
            f"{path}: unknown setting 'repository.s3.bucket'",
            f"{path}: unknown setting 'compression.levle'",
        ]
    )


def test_missing_file_is_one_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_settings(str(missing), environ={})
    (problem,) = problems_of(exc)
    assert problem.startswith(f"cannot read config file {missing}:")


def test_invalid_yaml_is_one_problem(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "cluster: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    (problem,) = problems_of(exc)
    assert problem.startswith(f"config file {path} is not valid YAML")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    assert problems_of(exc) == [f"config file {path} must hold a mapping at the top level"]


# --- the age secret key ----------------------------------------------------------------------


def test_secret_identity_is_refused_in_a_file_without_repeating_it(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"encryption:\n  age_identity: {SECRET}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    assert problems_of(exc) == [
        f"{path}: 'encryption.age_identity' must not be stored in a config file; use PGVAULT_ENCRYPTION_AGE_IDENTITY"
    ]
    assert SECRET not in str(exc.value) and SECRET not in repr(exc.value.problems)


def test_secret_identity_is_refused_in_a_file_even_with_a_dotted_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"encryption.age_identity: {SECRET}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    assert "must not be stored in a config file" in problems_of(exc)[0]
    assert SECRET not in str(exc.value)


def test_secret_identity_from_environment_is_kept_out_of_repr() -> None:
    s = load_settings(environ={"PGVAULT_ENCRYPTION_AGE_IDENTITY": SECRET})
    assert s.age_identity == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert "age_identity=" not in repr(s)
    assert "age_identity_file=None" in repr(s)  # the other fields are still shown


def test_secret_identity_never_appears_in_errors_about_other_settings() -> None:
    env = {
        "PGVAULT_ENCRYPTION_AGE_IDENTITY": SECRET,
        "PGVAULT_COMPRESSION_THREADS": "many",
        "PGVAULT_ENCRYPTION_AGE_RECIPIENTS": SECRET,  # pasted in the wrong variable
    }
    with pytest.raises(ConfigError) as exc:
        load_settings(environ=env)
    assert len(problems_of(exc)) == 2
    assert any("is a secret key, not a public key" in p for p in problems_of(exc))
    text = str(exc.value) + repr(exc.value.problems) + (exc.value.hint or "")
    assert SECRET not in text and SECRET[len("AGE-SECRET-KEY-1") :] not in text


# --- recipients ---------------------------------------------------------------------------------


def test_recipients_file_is_read_skipping_comments_and_blank_lines(tmp_path: Path) -> None:
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# ops team\n\n  {RECIPIENT2}  \n   # indented comment\n", encoding="utf-8")
    s = load_settings(
        environ={"PGVAULT_ENCRYPTION_AGE_RECIPIENTS": RECIPIENT, "PGVAULT_ENCRYPTION_AGE_RECIPIENTS_FILE": str(rfile)}
    )
    assert s.age_recipients == (RECIPIENT, RECIPIENT2)  # inline ones first, then the file's
    assert s.pipeline().encryption == "age"


def test_unreadable_recipients_file_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "absent.txt"
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"PGVAULT_ENCRYPTION_AGE_RECIPIENTS_FILE": str(missing)})
    (problem,) = problems_of(exc)
    assert problem.startswith(f"encryption.age_recipients_file: cannot read {missing}:")


def test_invalid_recipient_is_a_problem() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"PGVAULT_ENCRYPTION_AGE_RECIPIENTS": "age1notakey"})
    (problem,) = problems_of(exc)
    assert problem.startswith("recipient #1") and "not a valid age public key" in problem


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PGVAULT_CLUSTER": "a/b"}, "cluster: 'a/b' is not a valid name"),
        ({"PGVAULT_CLUSTER": ".hidden"}, "cluster: '.hidden' is not a valid name"),
        ({"PGVAULT_CLUSTER": ""}, "cluster: '' is not a valid name"),
        ({"PGVAULT_REPOSITORY_URL": ""}, "repository.url: must be set"),
        ({"PGVAULT_REPOSITORY_URL": "gs://bucket"}, "repository.url: unsupported scheme in 'gs://bucket'"),
        ({"PGVAULT_REPOSITORY_URL": "s3:///prefix"}, "repository.url: s3:// URL needs a bucket name"),
        ({"PGVAULT_REPOSITORY_S3_PART_SIZE_MB": "4"}, "repository.s3.part_size_mb: S3 requires parts of at least 5 MiB"),
        ({"PGVAULT_REPOSITORY_S3_MAX_CONCURRENCY": "0"}, "repository.s3.max_concurrency: must be at least 1"),
        ({"PGVAULT_REPOSITORY_S3_READ_CONCURRENCY": "0"}, "repository.s3.read_concurrency: must be between 1 and 64"),
        ({"PGVAULT_REPOSITORY_S3_READ_TIMEOUT": "0"}, "repository.s3.read_timeout: must be positive"),
        ({"PGVAULT_REPOSITORY_S3_RETRIES": "-1"}, "repository.s3.retries: must be 0 or more"),
        ({"PGVAULT_REPOSITORY_S3_OBJECT_LOCK": "legal-hold"}, "expected off, governance or compliance"),
        ({"PGVAULT_REPOSITORY_URL": "s3://b", "PGVAULT_REPOSITORY_S3_OBJECT_LOCK": "governance"},
         "'retention' needs a time-based retention rule"),
        ({"PGVAULT_REPOSITORY_S3_OBJECT_LOCK": "governance", "PGVAULT_REPOSITORY_S3_OBJECT_LOCK_RETENTION": "7d"},
         "repository.s3.object_lock: needs an s3:// repository"),
        ({"PGVAULT_REPOSITORY_URL": "s3://b", "PGVAULT_REPOSITORY_S3_OBJECT_LOCK": "compliance",
          "PGVAULT_REPOSITORY_S3_OBJECT_LOCK_RETENTION": "0.5"}, "object_lock_retention: must be at least 1s"),
        ({"PGVAULT_COMPRESSION_THREADS": "-1"}, "compression.threads: must be 0 or more"),
        ({"PGVAULT_COMPRESSION_ALGORITHM": "lz4"}, "unknown compression 'lz4'"),
        ({"PGVAULT_COMPRESSION_LEVEL": "99"}, "zstd level must be between 1 and 22 (got 99)"),
        ({"PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": "/nonexistent/key.txt"}, "encryption.age_identity_file: /nonexistent/key.txt does not exist"),
    ],
)
def test_validation_problems(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ=env)
    (problem,) = problems_of(exc)
    assert fragment in problem
    assert str(exc.value) == problem  # a single problem is the message itself


@pytest.mark.parametrize("url", ["./repo", "/abs/repo", "file:///srv/repo", "s3://bucket", "s3://bucket/a/b", "memory://t"])
def test_supported_repository_urls(url: str) -> None:
    assert load_settings(environ={"PGVAULT_REPOSITORY_URL": url}).repository_url == url


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        f"""
        cluster: bad/name
        unknown_key: 1
        encryption:
          age_identity: {SECRET}
        repository:
          s3: {{part_size_mb: lots}}
        """,
    )
    env = {"PGVAULT_BACKUP_EXACT_ROW_COUNTS": "perhaps"}
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ=env, overrides={"compression.algorithm": "gzip"})
    problems = problems_of(exc)
    assert len(problems) == 5, problems
    for fragment in (
        "unknown setting 'unknown_key'",
        "'encryption.age_identity' must not be stored in a config file",
        "repository.s3.part_size_mb (PGVAULT_REPOSITORY_S3_PART_SIZE_MB) = 'lots'",
        "backup.exact_row_counts (PGVAULT_BACKUP_EXACT_ROW_COUNTS) = 'perhaps'",
        "cluster: 'bad/name' is not a valid name",
    ):
        assert sum(fragment in p for p in problems) == 1, fragment


def test_every_problem_is_listed_in_the_message(tmp_path: Path) -> None:
    env = {
        "PGVAULT_CLUSTER": "a/b",
        "PGVAULT_REPOSITORY_URL": "ftp://x",
        "PGVAULT_REPOSITORY_S3_PART_SIZE_MB": "1",
        "PGVAULT_REPOSITORY_S3_MAX_CONCURRENCY": "zero",
        "PGVAULT_COMPRESSION_THREADS": "-3",
    }
    with pytest.raises(ConfigError) as exc:
        load_settings(environ=env)
    problems = problems_of(exc)
    assert len(problems) == 5
    assert str(exc.value).startswith("5 configuration problems: ")
    assert all(p in str(exc.value) for p in problems)
    assert exc.value.hint == "run 'pgvault config check' to see every problem"


# --- the pipeline the settings describe -----------------------------------------------------------


def test_pipeline_without_recipients_is_unencrypted() -> None:
    s = load_settings(environ={"PGVAULT_COMPRESSION_ALGORITHM": "gzip", "PGVAULT_COMPRESSION_LEVEL": "5"})
    assert s.pipeline() == PipelineSpec(compression="gzip", level=5, encryption="none", recipients=())
    assert s.pipeline().validate() == []


def test_pipeline_with_recipients_is_age() -> None:
    s = load_settings(environ={"PGVAULT_ENCRYPTION_AGE_RECIPIENTS": f"{RECIPIENT}\n{RECIPIENT2}"})
    spec = s.pipeline()
    assert spec == PipelineSpec(compression="zstd", level=None, encryption="age", recipients=(RECIPIENT, RECIPIENT2))
    assert spec.suffix() == ".zst.age"
    assert spec.validate() == []


def test_default_pipeline() -> None:
    assert Settings().pipeline() == PipelineSpec()
    assert Settings().pipeline().suffix() == ".zst"


def test_durations_and_smoke_queries() -> None:
    from pgvault.config import parse_duration

    assert parse_duration("90") == 90 and parse_duration("15m") == 900 and parse_duration("1d12h") == 129600
    assert parse_duration(3.5) == 3.5 and parse_duration("2w") == 14 * 86400
    for bad in ("", "12x", "h", -1, True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    s = load_settings(environ={"PGVAULT_DRILL_SMOKE_QUERIES": '[{"name": "orgs", "sql": "SELECT 1", "expect": 1}]'})
    assert s.smoke_queries[0].name == "orgs" and s.smoke_queries[0].expect == "1"
    for bad in ('[{"sql": "SELECT 1"}]', '[{"sql": "SELECT 1", "expect": 1, "min": 1}]', '[{"expect": 1}]',
                '[{"sql": "x", "min": 1, "color": 2}]', "not json"):
        with pytest.raises(ConfigError, match="drill.smoke_queries"):
            load_settings(environ={"PGVAULT_DRILL_SMOKE_QUERIES": bad})


# --- issue 8: values that used to pass `config check` ----------------------------------------------


def _check_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               env: dict[str, str], yaml_text: str = "") -> tuple[int, list[str], str]:
    """``pgvault config check --json`` in-process: exit status, the listed problems, all output."""
    from pgvault.cli import main

    for name in [k for k in __import__("os").environ if k.startswith(("PGVAULT_", "PG", "AWS_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["config", "check", "--json"]
    if yaml_text:
        argv += ["--config", write_yaml(tmp_path, yaml_text)]
    code = main(argv)
    out = capsys.readouterr()
    doc = json.loads(out.out) if out.out.strip() else {}
    return code, list(doc.get("problems") or ([doc["message"]] if "message" in doc else [])), out.out + out.err


def test_an_s3_endpoint_without_a_scheme_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, problems, _ = _check_cli(tmp_path, monkeypatch, capsys, {}, "repository:\n  url: s3://b/p\n"
                                   "  s3:\n    endpoint_url: 127.0.0.1:8333\n")
    assert code == 2, problems
    (problem,) = problems
    assert problem.startswith("repository.s3.endpoint_url (PGVAULT_REPOSITORY_S3_ENDPOINT_URL) = '127.0.0.1:8333'")
    assert "no scheme" in problem and "'http://127.0.0.1:8333'" in problem
    for bad in ("localhost:9000", "ftp://s3.example.com", "http://s3:port"):
        with pytest.raises(ConfigError, match=r"repository\.s3\.endpoint_url .*(scheme|http://)"):
            load_settings(environ={"PGVAULT_REPOSITORY_S3_ENDPOINT_URL": bad})
    for good in ("http://127.0.0.1:8333", "https://s3.eu-west-1.amazonaws.com", "http://[::1]:9000/"):
        assert load_settings(environ={"PGVAULT_REPOSITORY_S3_ENDPOINT_URL": good}).s3.endpoint_url == good


@pytest.mark.parametrize("bad", ["1w2", "1d12", "2h30", "1..5h", "1.2.3"])
def test_a_duration_with_a_unitless_tail_is_a_problem(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, problems, _ = _check_cli(tmp_path, monkeypatch, capsys, {"PGVAULT_RETENTION_LOGICAL_KEEP_WITHIN": bad})
    assert code == 2, problems
    (problem,) = problems
    assert problem.startswith(f"retention.logical.keep_within (PGVAULT_RETENTION_LOGICAL_KEEP_WITHIN) = {bad!r}: ")
    assert "expected a duration like" in problem and "36h" in problem and "1d12h" in problem


def test_durations_that_stay_valid() -> None:
    from pgvault.config import parse_duration

    assert parse_duration("1w2d") == 9 * 86400 and parse_duration("1.5h") == 5400 and parse_duration(".5m") == 30
    assert parse_duration("45") == 45 and parse_duration("1h 30m") == 5400


@pytest.mark.parametrize("content", [
    "hello world\n",  # no key line at all
    "# created: 2026-12-01\n# public key: age1xyz\n",  # comments only: the key line was lost
    "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\n",  # pyrage cannot parse it
    RECIPIENT + "\n",  # the public key pasted instead
])
def test_a_garbage_identity_file_is_a_problem(content: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(content)
    code, problems, output = _check_cli(tmp_path, monkeypatch, capsys,
                                        {"PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(keyfile)})
    assert code == 2, problems
    (problem,) = problems
    assert problem.startswith(f"encryption.age_identity_file: {keyfile}: ")
    assert "AGE-SECRET-KEY-1..." in problem and "age-keygen" in problem
    assert content.strip() not in output or content.startswith("#")


def test_a_garbage_identity_in_the_environment_is_a_problem_never_printed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    damaged = SECRET[:-6] + ("QQQQQQ" if not SECRET.endswith("QQQQQQ") else "PPPPPP")
    for bad in (damaged, "not-a-key", RECIPIENT):
        code, problems, output = _check_cli(tmp_path, monkeypatch, capsys, {"PGVAULT_ENCRYPTION_AGE_IDENTITY": bad})
        assert code == 2, (bad == damaged, problems)
        (problem,) = problems
        assert problem.startswith("encryption.age_identity (PGVAULT_ENCRYPTION_AGE_IDENTITY) = <secret>: ")
        assert "AGE-SECRET-KEY-1..." in problem
        assert bad not in output and (len(bad) < 40 or bad[16:40] not in output)


def test_a_good_identity_passes_and_every_problem_is_listed_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(f"# created by age-keygen\n# public key: {RECIPIENT}\n{SECRET}\n")
    code, _problems, output = _check_cli(tmp_path, monkeypatch, capsys, {
        "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(keyfile), "PGVAULT_ENCRYPTION_AGE_RECIPIENTS": RECIPIENT})
    assert code == 0, output
    keyfile.write_text("garbage\n")
    code, problems, output = _check_cli(tmp_path, monkeypatch, capsys, {
        "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(keyfile), "PGVAULT_REPOSITORY_S3_ENDPOINT_URL": "minio:9000",
        "PGVAULT_MONITORING_BACKUP_MAX_AGE": "1w2"})
    assert code == 2
    assert [p.split(" ", 1)[0].rstrip(":") for p in problems] == [
        "repository.s3.endpoint_url", "monitoring.backup_max_age", "encryption.age_identity_file"]
    # Other commands do not read the key file (wal push runs once per segment; a backup-only host
    # may be unable to read it); the commands that decrypt say the same as `config check`.
    s = load_settings(environ={"PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(keyfile)})
    from pgvault.operations.context import Context
    from pgvault.pg.conn import ConnInfo
    from pgvault.storage import open_storage

    ctx = Context(settings=s, storage=open_storage("memory://t"), conn=ConnInfo({}))
    with pytest.raises(ConfigError, match=r"encryption\.age_identity_file: .*key\.txt: line 1 of the identity file"):
        ctx.identities()


# --- notifications -------------------------------------------------------------------------------


def test_notifications_are_off_by_default_and_default_to_failure_and_recovery() -> None:
    n = load_settings(environ={}).notify
    assert not n.enabled and n.webhook_url is None and n.slack_webhook_url is None
    assert (n.events, n.jobs, n.timeout, n.retries) == (("failure", "recovery"), (), 5.0, 2)


@pytest.mark.parametrize(("key", "env", "url"), [("webhook_url", "PGVAULT_NOTIFY_WEBHOOK_URL", HOOK),
                                                 ("slack_webhook_url", "PGVAULT_NOTIFY_SLACK_WEBHOOK_URL", SLACK_HOOK)])
def test_a_webhook_url_in_the_config_file_is_refused_without_repeating_it(tmp_path: Path, key: str, env: str,
                                                                          url: str) -> None:
    path = write_yaml(tmp_path, f"notify:\n  {key}: {url}\n  events: [failure]\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    assert problems_of(exc) == [f"{path}: 'notify.{key}' must not be stored in a config file; use {env}"]
    assert url not in str(exc.value) and "XXXXXXXX" not in str(exc.value) and "4f1c0ffee" not in str(exc.value)


def test_webhook_urls_from_the_environment_stay_out_of_repr() -> None:
    s = load_settings(environ={"PGVAULT_NOTIFY_WEBHOOK_URL": HOOK, "PGVAULT_NOTIFY_SLACK_WEBHOOK_URL": SLACK_HOOK})
    assert s.notify.enabled and s.notify.webhook_url == HOOK and s.notify.slack_webhook_url == SLACK_HOOK
    for text in (repr(s), str(s), repr(s.notify)):
        assert "4f1c0ffee" not in text and "XXXXXXXX" not in text and "hooks." not in text


@pytest.mark.parametrize("bad", ["hooks.slack.com/services/T/B/secrettoken", "ftp://example.com/secrettoken",
                                 "https:///secrettoken", "https://example.com:port/secrettoken"])
def test_a_bad_webhook_url_is_a_problem_that_never_quotes_it(bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"PGVAULT_NOTIFY_WEBHOOK_URL": bad})
    [problem] = problems_of(exc)
    assert problem.startswith("notify.webhook_url (PGVAULT_NOTIFY_WEBHOOK_URL) = <secret>: ")
    assert "secrettoken" not in str(exc.value)


@pytest.mark.parametrize(("env", "fragment"), [
    ({"PGVAULT_NOTIFY_EVENTS": "failure,sucess"}, "unknown event(s) sucess"),
    ({"PGVAULT_NOTIFY_JOBS": "backup,backups"}, "notify.jobs: backups is not a scheduled job"),
    ({"PGVAULT_NOTIFY_TIMEOUT": "0"}, "notify.timeout: must be positive"),
    ({"PGVAULT_NOTIFY_RETRIES": "11"}, "notify.retries: must be between 0 and 10"),
    ({"PGVAULT_NOTIFY_RETRIES": "-1"}, "notify.retries: must be between 0 and 10"),
])
def test_notify_validation(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ=env)
    assert any(fragment in p for p in problems_of(exc)), problems_of(exc)


def test_notify_settings_from_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, """\
        notify:
          events: [failure, success, failure]
          jobs: [backup, restore-point]
          timeout: 1.5s
          retries: 1
        """)
    n = load_settings(path, environ={}).notify
    assert (n.events, n.jobs, n.timeout, n.retries) == (("failure", "success"), ("backup", "restore-point"), 1.5, 1)
    # An empty list turns notifications off, rather than meaning the default.
    assert load_settings(write_yaml(tmp_path, "notify:\n  events: []\n"), environ={}).notify.events == ()


def test_an_unquoted_on_key_is_explained(tmp_path: Path) -> None:
    # YAML 1.1 reads the key "on" as true: the setting is notify.events, and the message says why.
    with pytest.raises(ConfigError) as exc:
        load_settings(write_yaml(tmp_path, "notify:\n  on: [failure]\n"), environ={})
    [problem] = problems_of(exc)
    assert problem.endswith("unknown setting 'notify.True' (YAML reads an unquoted key on, off, yes or no as "
                            "true or false)")


def test_object_lock_settings_resolve_to_the_rule_every_put_carries() -> None:
    s = load_settings(environ={"PGVAULT_REPOSITORY_URL": "s3://b/p", "PGVAULT_REPOSITORY_S3_OBJECT_LOCK": "Compliance",
                               "PGVAULT_REPOSITORY_S3_OBJECT_LOCK_RETENTION": "30d"})
    rule = s.object_lock_rule()
    assert rule is not None and (rule.mode, rule.seconds, rule.source) == ("COMPLIANCE", 30 * 86400.0, "30d")
    # 'retention': the policy's longest time rule (here monthly 3 = 93 days) plus one day.
    s = load_settings(environ={"PGVAULT_REPOSITORY_URL": "s3://b", "PGVAULT_REPOSITORY_S3_OBJECT_LOCK": "governance",
                               "PGVAULT_RETENTION_LOGICAL_MONTHLY": "3", "PGVAULT_RETENTION_PITR_WINDOW": "14d"})
    rule = s.object_lock_rule()
    assert rule is not None and (rule.mode, rule.seconds) == ("GOVERNANCE", 94 * 86400.0)
    assert rule.source == "retention policy: 93d (+1d margin)"
    assert load_settings(environ={}).object_lock_rule() is None


def test_yaml_bare_off_is_object_lock_off(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare `off` as False: it must still mean "off", not a parse error.
    file = write_yaml(tmp_path, "repository:\n  url: s3://b\n  s3:\n    object_lock: off\n")
    assert load_settings(file, environ={}).s3.object_lock == "off"
