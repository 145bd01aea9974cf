"""``drill --major N`` (upgrade rehearsal): which server the drill restores into, and how the
entries pg_restore refused are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgvault.errors import ToolError, UsageError
from pgvault.operations.maintenance.drill import choose_server_bindir
from pgvault.pg.bindir import BinDir
from pgvault.policy.toc import IGNORED_ERRORS, restore_errors

PG15 = BinDir(Path("/usr/lib/postgresql/15/bin"), 15, "15.14")
PG18 = BinDir(Path("/opt/pg18/bin"), 18, "18.1")
INSTALLED = [PG18, PG15]


def test_without_major_the_backups_major_or_the_oldest_newer_one() -> None:
    assert choose_server_bindir(INSTALLED, 15) == PG15
    assert choose_server_bindir(INSTALLED, 16) == PG18
    assert choose_server_bindir(INSTALLED, 14) == PG15


def test_major_picks_exactly_that_major() -> None:
    assert choose_server_bindir(INSTALLED, 15, 18) == PG18
    assert choose_server_bindir(INSTALLED, 15, 15) == PG15


def test_major_older_than_the_backup_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"--major 14 is older than the backup's PostgreSQL 15") as e:
        choose_server_bindir(INSTALLED, 15, 14)
    assert e.value.exit_code == 2


def test_major_not_installed_names_what_was_found_and_where_pgvault_looked() -> None:
    with pytest.raises(ToolError) as e:
        choose_server_bindir(INSTALLED, 15, 17, looked=("/opt/pg18/bin", "/usr/lib/postgresql/15/bin"))
    msg = e.value.message
    assert "no PostgreSQL 17 server programs" in msg and "15 (/usr/lib/postgresql/15/bin), 18 (/opt/pg18/bin)" in msg
    assert "postgres.bin_dirs (/opt/pg18/bin, /usr/lib/postgresql/15/bin)" in msg
    assert e.value.exit_code == 10
    with pytest.raises(ToolError, match=r"PostgreSQL 19 \(or newer\).*found: none.*postgres.bin_dirs \(none set\)"):
        choose_server_bindir([], 19)


STDERR = """\
pg_restore: while PROCESSING TOC:
pg_restore: from TOC entry 2; 3079 16385 EXTENSION adminpack -
pg_restore: error: could not execute query: ERROR:  extension "adminpack" is not available
DETAIL:  Could not open extension control file "/x/adminpack.control": No such file or directory.
HINT:  The extension must first be installed on the system where PostgreSQL is running.
Command was: CREATE EXTENSION IF NOT EXISTS adminpack WITH SCHEMA pg_catalog;
pg_restore: from TOC entry 3390; 0 0 COMMENT EXTENSION adminpack{owner}
pg_restore: error: could not execute query: ERROR:  extension "adminpack" does not exist
Command was: COMMENT ON EXTENSION adminpack IS 'administrative functions for PostgreSQL';
pg_restore: from TOC entry 215; 1259 16390 TABLE old_things postgres
pg_restore: error: could not execute query: ERROR:  type "abstime" does not exist
LINE 3:     at abstime
Command was: CREATE TABLE public.old_things (
    at abstime
);
pg_restore: warning: errors ignored on restore: 3
""".format(owner=" ")  # no owner: a trailing blank


def test_restore_errors_name_each_refused_entry() -> None:
    assert IGNORED_ERRORS in STDERR
    assert restore_errors(STDERR) == [
        'EXTENSION adminpack (TOC entry 2): extension "adminpack" is not available',
        'COMMENT EXTENSION adminpack (TOC entry 3390): extension "adminpack" does not exist',
        'TABLE old_things (TOC entry 215): type "abstime" does not exist',
    ]


# What pg_restore 18 (without --verbose) wrote restoring a PostgreSQL 15 dump that has adminpack.
PLAIN = """\
pg_restore: error: could not execute query: ERROR:  extension "adminpack" is not available
HINT:  The extension must first be installed on the system where PostgreSQL is running.
Command was: CREATE EXTENSION IF NOT EXISTS adminpack WITH SCHEMA pg_catalog;


pg_restore: error: could not execute query: ERROR:  extension "adminpack" does not exist
Command was: COMMENT ON EXTENSION adminpack IS 'administrative functions for PostgreSQL';


pg_restore: warning: errors ignored on restore: 5
"""


def test_without_toc_entries_the_failed_statement_names_the_object() -> None:
    assert restore_errors(PLAIN) == [
        'CREATE EXTENSION IF NOT EXISTS adminpack WITH SCHEMA pg_catalog;: extension "adminpack" is not available',
        "COMMENT ON EXTENSION adminpack IS 'administrative functions for PostgreSQL';: "
        'extension "adminpack" does not exist',
        "and 3 more error(s) not shown",  # the output was cut to its last lines
    ]


def test_an_error_outside_any_entry_is_kept_as_said() -> None:
    assert restore_errors("pg_restore: error: connection to server failed\n") == ["connection to server failed"]
