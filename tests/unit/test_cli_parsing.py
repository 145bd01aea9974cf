"""Common options work before and after the subcommand; the subcommand is found without parsing."""

from __future__ import annotations

import pytest

from pgvault.cli import _command_name, build_parser


@pytest.mark.parametrize("argv", [
    ["--cluster", "foo", "--json", "-r", "/x", "status"],
    ["status", "--cluster", "foo", "--json", "-r", "/x"],
    ["--cluster", "foo", "status", "--json", "--repository", "/x"],
])
def test_common_options_anywhere(argv: list[str]) -> None:
    args = build_parser(_command_name(argv)).parse_args(argv)
    assert (args.cluster, args.json, args.repository, args.log_level) == ("foo", True, "/x", "info")


def test_defaults_and_nested_subcommands() -> None:
    args = build_parser("wal").parse_args(["wal", "push", "pg_wal/x"])
    assert (args.cluster, args.json, args.config, args.log_level) == (None, False, None, "info")
    args = build_parser("wal").parse_args(["--log-level", "debug", "wal", "fetch", "--cluster", "c", "a", "b"])
    assert (args.cluster, args.log_level) == ("c", "debug")


def test_command_name_skips_option_values() -> None:
    assert _command_name(["--cluster", "expire", "verify"]) == "verify"
    assert _command_name(["-c", "/etc/x.yaml", "--json", "drill", "list"]) == "drill"
    assert _command_name(["--json"]) is None


def test_an_unexpected_postgresql_error_is_a_database_error_not_internal(capsys: pytest.CaptureFixture[str]) -> None:
    """A query failing where no operation expected it (server restart, statement timeout) exits 3
    with PostgreSQL's message, never 70 "internal error"."""
    import psycopg

    from pgvault.cli import _outcome

    code, err = _outcome(psycopg.errors.AdminShutdown("terminating connection due to administrator command"), False, None)
    assert code == 3 and err.kind == "database"
    assert "AdminShutdown: terminating connection" in capsys.readouterr().err
    code, _err = _outcome(ValueError("a real bug"), False, None)
    assert code == 70


def test_repo_sync_is_a_scheduled_job_and_other_verbs_name_their_command() -> None:
    from pgvault.cli import SCHEDULED_JOBS, job_command
    from pgvault.cli.metrics import job_name

    sync = build_parser("repo").parse_args(["repo", "sync", "--to", "dr"])
    assert (job_command(sync), job_name(sync)) == ("repo-sync", "repo-sync")
    assert "repo-sync" in SCHEDULED_JOBS
    status = build_parser("status").parse_args(["status"])
    assert (job_command(status), job_name(status)) == ("status", None)
    drills = build_parser("drill").parse_args(["drill", "list"])
    assert job_name(drills) is None  # reading the history is not a drill
