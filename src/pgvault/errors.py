"""The one error hierarchy of pgvault.

Every failure a user can cause or meet is a :class:`PgvaultError` subclass with a stable
``exit_code`` (documented in the README: cron, Kubernetes and PostgreSQL read them) and an
optional ``hint`` that says what to do next.  Only ``pgvault.cli`` turns them into an exit status;
library code raises and never calls ``sys.exit``.

Messages must never contain secrets (passwords, secret keys, age identities): they are logged,
printed and may be copied into tickets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self


@dataclass(frozen=True)
class Report:
    """A command's full answer, printed before it fails: ``verify`` that found problems, a restore
    whose row counts differ, a drill that failed.  The one exit point (``cli.main``) prints it on
    stdout instead of the bare error document (so ``--json`` still gives exactly one document),
    then the error on stderr, and exits with the error's code."""

    kind: str  # the JSON document's "kind"
    payload: dict[str, Any]
    human: Callable[[], str]


class PgvaultError(Exception):
    """Root of all expected pgvault failures."""

    exit_code: int = 1
    kind: str = "error"
    report: Report | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def with_report(self, kind: str, payload: dict[str, Any], human: Callable[[], str]) -> Self:
        """This error, carrying the report the command prints before failing (see :class:`Report`)."""
        self.report = Report(kind, payload, human)
        return self

    def __str__(self) -> str:
        return self.message


class UsageError(PgvaultError):
    """Bad command-line arguments or an impossible combination of options."""

    exit_code = 2
    kind = "usage"


class ConfigError(PgvaultError):
    """The configuration is invalid; ``problems`` lists every problem found, not just the first."""

    exit_code = 2
    kind = "config"

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        text = problems[0] if len(problems) == 1 else f"{len(problems)} configuration problems: " + "; ".join(problems)
        super().__init__(text, hint=hint)


class DatabaseError(PgvaultError):
    """PostgreSQL could not be reached, refused the login, or a query failed."""

    exit_code = 3
    kind = "database"


class StorageError(PgvaultError):
    """The repository could not be read or written (permissions, missing bucket, credentials, network)."""

    exit_code = 4
    kind = "storage"


class NotFoundError(PgvaultError):
    """A backup, object or database the user named does not exist."""

    exit_code = 5
    kind = "not_found"


class IntegrityError(PgvaultError):
    """Stored bytes are corrupt, truncated, fail their checksum, or do not decrypt."""

    exit_code = 6
    kind = "integrity"


class LockedError(PgvaultError):
    """Another pgvault process holds the lock for this cluster and operation."""

    exit_code = 7
    kind = "locked"


class TargetBusyError(PgvaultError):
    """A restore target has connected sessions and ``--force`` was not given."""

    exit_code = 8
    kind = "target_busy"


class VerificationError(PgvaultError):
    """A restore completed but does not match the manifest (row counts)."""

    exit_code = 9
    kind = "verification"
    details: object = None  # the operation's result, for rendering the full comparison


class ToolError(PgvaultError):
    """A PostgreSQL client program (pg_dump, pg_restore, ...) failed; its stderr is in the message."""

    exit_code = 10
    kind = "tool"


class TargetExistsError(PgvaultError):
    """A restore would overwrite an existing database and ``--clean`` was not given."""

    exit_code = 11
    kind = "target_exists"


class RecoveryError(PgvaultError):
    """A restored server failed to recover (WAL missing or corrupt, target not reached, start-up failed)."""

    exit_code = 12
    kind = "recovery"


class InterruptedError_(PgvaultError):
    """The operation was interrupted by SIGINT (Ctrl-C); nothing was published."""

    exit_code = 130  # 128 + SIGINT, the shell's convention
    kind = "interrupted"


class TerminatedError(InterruptedError_):
    """The operation was stopped by SIGTERM (Kubernetes, systemd, ``timeout``); nothing was published."""

    exit_code = 143  # 128 + SIGTERM: PostgreSQL reads it from restore_command as "stopped by a shutdown"
    kind = "terminated"


INTERNAL_ERROR_EXIT = 70


def error_of_kind(kind: str, message: str, *, hint: str | None = None) -> PgvaultError:
    """Rebuild an error reported by another pgvault process (by its ``kind``), keeping its exit code."""
    for cls in (UsageError, DatabaseError, StorageError, NotFoundError, IntegrityError, LockedError,
                TargetBusyError, VerificationError, ToolError, TargetExistsError, RecoveryError):
        if cls.kind == kind:
            return cls(message, hint=hint)
    if kind == ConfigError.kind:  # e.g. the pusher refusing another cluster's WAL: 2, as in the foreground
        return ConfigError([message], hint=hint)
    return PgvaultError(message, hint=hint)
