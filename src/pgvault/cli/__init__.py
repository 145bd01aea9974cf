"""The ``pgvault`` command: parse, call one operation, render.

This module is the only place that turns a :class:`~pgvault.errors.PgvaultError` into an exit
status (see the README's table of exit codes).  Subcommand modules register themselves through
``register(subparsers, common)`` and set ``func(args) -> int`` on their parser.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pgvault
from pgvault import log
from pgvault.cli import interrupts
from pgvault.config import SCHEDULED_JOBS as SCHEDULED_JOBS  # re-exported: see below _MODULES
from pgvault.config import Settings, load_settings
from pgvault.errors import INTERNAL_ERROR_EXIT, DatabaseError, InterruptedError_, PgvaultError, Report, UsageError

if TYPE_CHECKING:
    from pgvault.operations.context import Context


_COMMON_DEFAULTS: dict[str, Any] = {
    "config": None, "cluster": None, "repository": None, "dsn": None, "json": False, "log_level": "info",
    "metrics_textfile": None,
}
# Common options that take a value (to find the subcommand name in argv without parsing it).
_VALUE_OPTIONS = {"--config", "-c", "--cluster", "--repository", "-r", "--dsn", "--log-level", "--metrics-textfile"}


def common_options(*, top_level: bool = True) -> argparse.ArgumentParser:
    """Options every command accepts, before or after the subcommand name.

    The subcommands' copy has no defaults (SUPPRESS): argparse applies a subparser's defaults
    over what the main parser already parsed, which would silently drop ``pgvault --cluster x
    status``'s ``--cluster``."""
    p = argparse.ArgumentParser(add_help=False)
    p.set_defaults(**(_COMMON_DEFAULTS if top_level else {}))
    none: dict[str, Any] = {} if top_level else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("common options")
    g.add_argument("--config", "-c", help="YAML config file (default: $PGVAULT_CONFIG)", **none)
    g.add_argument("--cluster", help="cluster name in the repository (default: main)", **none)
    g.add_argument("--repository", "-r", help="repository: the name of a configured one (primary, or one under "
                   "repositories.<name>), or a path, file:///path or s3://bucket/prefix", **none)
    g.add_argument("--dsn", help="libpq connection string (a password here is never passed to child programs' argv)",
                   **none)
    g.add_argument("--json", action="store_true", help="machine-readable output ({\"format\": 1, ...})", **none)
    g.add_argument("--log-level", choices=["debug", "info", "warning", "error"], **none)
    g.add_argument("--metrics-textfile", metavar="PATH",
                   help="scheduled jobs also write their outcome into this node_exporter textfile ($PGVAULT_METRICS_TEXTFILE)",
                   **none)
    return p


def _command_name(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv``: the first word that is neither an option nor an option's value."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in _VALUE_OPTIONS:
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def settings_from(args: argparse.Namespace, *, check_local_files: bool = True, **extra: Any) -> Settings:
    """Settings from the config file, the environment, and this command line (``extra``: more
    overrides by setting name; ``check_local_files``: see :func:`~pgvault.config.load_settings`)."""
    repository = getattr(args, "repository", None)
    overrides = {
        "cluster": getattr(args, "cluster", None),
        "repository.url": repository,
        "postgres.dsn": getattr(args, "dsn", None),
        **extra,
    }
    if repository and "/" not in repository and ":" not in repository:
        # A configured repository's name (a second region's copy) selects it; a name nothing
        # configures stays what it always was, a relative path.
        s = load_settings(getattr(args, "config", None), overrides={**overrides, "repository.url": None},
                          check_local_files=check_local_files)
        if any(r.name == repository for r in s.all_repositories()):
            return s.with_repository(repository)
    return load_settings(getattr(args, "config", None), overrides=overrides, check_local_files=check_local_files)


def context_from(args: argparse.Namespace, **extra: Any) -> Context:
    """Settings plus the opened repository."""
    from pgvault.operations.context import build_context

    return build_context(settings_from(args, **extra))


def parse_now(text: str) -> dt.datetime:
    """``--now`` (expire, drill): an ISO 8601 timestamp; without a zone it is UTC."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace(" UTC", "+00:00"))
    except ValueError:
        raise UsageError(f"--now: {text!r} is not an ISO 8601 timestamp like 2026-11-25T02:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def emit(args: argparse.Namespace, kind: str, payload: dict[str, Any], human: Callable[[], str]) -> None:
    """Print JSON with --json, else the human rendering."""
    from pgvault.output import to_json

    print(to_json(kind, payload) if args.json else human())


# Command -> the module that registers it.  main() imports only the module a command needs:
# ``wal push`` runs once per WAL segment, and every import is start-up time PostgreSQL waits for.
_MODULES = {
    "backup": "backup", "basebackup": "basebackup", "list": "catalog", "status": "catalog", "show": "catalog",
    "restore": "restore", "restore-cluster": "restore_cluster", "restore-point": "restore_cluster", "wal": "wal",
    "config": "config_cmd", "drill": "drill", "expire": "expire", "verify": "verify", "metrics": "metrics",
    "notify": "notify",
    "runbook": "runbook", "repo": "repo",
    "recover-table": "recover_table",
}
# SCHEDULED_JOBS (imported from config, where notify.jobs names them): commands whose outcome is
# recorded for `status` and the metrics and may be notified (cli/metrics.py record_job); other
# commands import nothing more.


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    import importlib

    names = [_MODULES[command]] if command in _MODULES else sorted(set(_MODULES.values()))
    modules = [importlib.import_module(f"pgvault.cli.{n}") for n in names]
    parser = argparse.ArgumentParser(
        prog="pgvault",
        description="PostgreSQL backup, restore and disaster recovery.",
        parents=[common_options()],
    )
    common = common_options(top_level=False)
    parser.add_argument("--version", action="version", version=f"pgvault {pgvault.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in modules:
        module.register(sub, common)
    return parser


def _report(err: PgvaultError, as_json: bool, report: Report | None = None) -> None:
    """The error on stderr; on stdout the command's report if it failed with one (``report``, or the
    one ``err`` carries), else with ``--json`` the error document."""
    report = report or err.report
    if report is not None:
        from pgvault.output import to_json

        print(to_json(report.kind, report.payload) if as_json else report.human())
    elif as_json:
        doc = {"format": 1, "kind": "error", "error": err.kind, "exit_code": err.exit_code, "message": log.redact(err.message)}
        if err.hint:
            doc["hint"] = err.hint
        problems = getattr(err, "problems", None)
        if problems:
            doc["problems"] = [log.redact(p) for p in problems]
        print(json.dumps(doc, indent=2))
    print(f"pgvault: error: {log.redact(err.message)}", file=sys.stderr)
    problems = getattr(err, "problems", None)
    if problems and len(problems) > 1:
        for p in problems:
            print(f"  - {log.redact(p)}", file=sys.stderr)
    if err.hint:
        print(f"pgvault: hint: {err.hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_name(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    log.setup(args.log_level)
    # Some commands have exit-status contracts of their own (restore_command): they remap.
    remap: Callable[[BaseException], int] | None = getattr(args, "remap_exit", None)
    started = time.time()
    error: BaseException | None = None
    with interrupts.handling():
        try:
            code = int(args.func(args))
            interrupts.finished()  # a late signal must not change the outcome or cut the job record short
        except BaseException as e:  # noqa: BLE001 - the one place that turns failures into exit statuses
            interrupts.finished()
            code, error = _outcome(e, args.json, remap)
        signum = interrupts.received()
        if signum is not None and error is None and code != 0:
            # The command turned the interruption into a status of its own (a report's exit 6):
            # it still was an interruption, and says so with 128 + signal.
            error = interrupts.error_for(signum)
            _report(error, args.json)
            code = error.exit_code
        if job_command(args) in SCHEDULED_JOBS:  # best effort, never changes the exit status
            from pgvault.cli.metrics import record_job

            record_job(args, started=started, exit_code=code, error=error)
    return code


def job_command(args: argparse.Namespace) -> str:
    """The name a run of ``args`` is scheduled and recorded under: the command, or "repo-sync" for
    ``repo sync`` (a command whose verbs are different jobs)."""
    command = str(getattr(args, "command", "") or "")
    if command == "repo" and getattr(args, "what", None):
        return f"repo-{args.what}"
    return command


def _outcome(e: BaseException, as_json: bool, remap: Callable[[BaseException], int] | None) -> tuple[int, BaseException]:
    """Report ``e`` and choose the exit status."""
    signum = interrupts.received()
    if signum is not None and isinstance(e, Exception | KeyboardInterrupt):
        # Whatever the unwinding raised on its way out (pg_dump killed by the same signal is a
        # ToolError, a cleanup may fail), the cause was the signal: 130 / 143, never remapped,
        # so restore_command can never mistake it for "no such file" (1).
        err: PgvaultError = interrupts.error_for(signum)
        _report(err, as_json, getattr(e, "report", None))  # a drill's report says where it was stopped
        return err.exit_code, err
    if isinstance(e, Exception) and type(e).__module__.split(".")[0] == "psycopg":
        # A query that failed where no operation expected it (the server restarted, a statement
        # timeout, a cancelled query): the database's error with its exit code (3), not "internal".
        e = DatabaseError(f"PostgreSQL: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    if isinstance(e, PgvaultError):
        _report(e, as_json)
        return (remap(e) if remap else e.exit_code), e
    if isinstance(e, KeyboardInterrupt):  # raised without our handler (not the main thread)
        err = InterruptedError_("interrupted; nothing was published")
        _report(err, as_json)
        return err.exit_code, err
    if isinstance(e, Exception):
        log.get().debug("internal error", exc_info=True)
        print(f"pgvault: internal error: {type(e).__name__}: {log.redact(str(e))}", file=sys.stderr)
        return (remap(e) if remap else INTERNAL_ERROR_EXIT), e
    raise e  # SystemExit, GeneratorExit: not ours to judge
