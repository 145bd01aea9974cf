"""The environment a restored server's ``restore_command`` runs pgvault with (:func:`fetch_environment`)."""

from __future__ import annotations

from pathlib import Path

from pgvault.config import _DEFAULTS, PRIMARY_REPOSITORY, S3Options, Settings


def fetch_environment(s: Settings) -> dict[str, str]:
    """The non-secret settings a restored server's ``restore_command`` needs, as environment
    variables.  Secrets (the age key itself, S3 credentials) are never included: the server inherits
    them from its own environment.  A relative repository path is made absolute, because PostgreSQL
    runs restore_command in the data directory."""
    url = s.repository_url
    if "://" not in url:
        url = str(Path(url).resolve())
    env = {"PGVAULT_CLUSTER": s.cluster, "PGVAULT_REPOSITORY_URL": url}
    if s.s3.endpoint_url:
        env["PGVAULT_REPOSITORY_S3_ENDPOINT_URL"] = s.s3.endpoint_url
    if s.s3.region:
        env["PGVAULT_REPOSITORY_S3_REGION"] = s.s3.region
    if s.s3.force_path_style:
        env["PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE"] = "true"
    if s.s3.profile:
        env["PGVAULT_REPOSITORY_S3_PROFILE"] = s.s3.profile
    for name in ("connect_timeout", "read_timeout", "retries", "read_concurrency"):
        if getattr(s.s3, name) != getattr(S3Options, name):
            env[f"PGVAULT_REPOSITORY_S3_{name.upper()}"] = str(getattr(s.s3, name))
    if s.repository_name != PRIMARY_REPOSITORY:
        # A named repository (--repository NAME) stands in for repository.*: every S3 setting is
        # spelled out, empty for "unset", so that none of the primary's leaks in from a config file
        # the restored server may still read (PGVAULT_CONFIG in its environment).
        for name in ("endpoint_url", "region", "profile"):
            env[f"PGVAULT_REPOSITORY_S3_{name.upper()}"] = getattr(s.s3, name) or ""
        env["PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE"] = "true" if s.s3.force_path_style else "false"
        for name in ("connect_timeout", "read_timeout", "retries", "read_concurrency"):
            env[f"PGVAULT_REPOSITORY_S3_{name.upper()}"] = str(getattr(s.s3, name))
    if s.age_identity_file:
        env["PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE"] = str(Path(s.age_identity_file).resolve())
    if s.restore_prefetch != _DEFAULTS["restore.prefetch"]:
        env["PGVAULT_RESTORE_PREFETCH"] = str(s.restore_prefetch)
    if s.spool_dir:
        env["PGVAULT_ARCHIVE_SPOOL_DIR"] = s.spool_dir
    if s.pg_bin_dirs:
        env["PGVAULT_POSTGRES_BIN_DIRS"] = ",".join(s.pg_bin_dirs)
    return env
