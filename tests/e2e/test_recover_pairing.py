"""``pgvault wal find`` and ``pgvault recover-table`` together (issue 11: "the target it prints,
handed to the recovery command, gives back exactly the rows from just before").

The on-call's path, through the CLI only: a workload on the sample database, the mistake (a mass
``DELETE``, a ``TRUNCATE`` or a ``DROP TABLE``), more writes after it; then ``wal find --json``
names the transaction and prints a ready-to-paste ``recover-table`` line, which is run *as
printed* (split like a shell would; only the mode and the test harness's options appended).  The
table must then hold exactly the rows from just before the mistake (plus every row written since,
for ``--mode missing-rows``), and the production server must never have restarted.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from support.archiving import ArchivingCluster
from support.cli import pgvault
from support.pg_fixtures import pg_majors
from support.pgcluster import postgres_tmpdir

from .test_recover_table import DB, KEYS, TABLES, _leftovers, _rows, _snapshot, _workload

MAJORS = pg_majors() or [None]
KEYS.setdefault("tickets", "id")


def _scene(archiving: Any, major: int | None) -> ArchivingCluster:
    a = archiving(major, cluster_name="pairing")
    a.cluster.load_sample(DB)
    a.cluster.psql("CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);"
                   "INSERT INTO tickets (note) SELECT 'seed ' || g FROM generate_series(1, 50) g", dbname=DB)
    a.basebackup()
    for i in range(3):
        _workload(a, f"before{i}")
    return a


def _mistake(a: ArchivingCluster, sql: str) -> int:
    """Run ``sql`` in a transaction that reports its xid."""
    out = a.cluster.psql(f"BEGIN; {sql}; SELECT txid_current(); COMMIT;", dbname=DB)
    return int(out.splitlines()[-1])


def _printed(a: ArchivingCluster, table: str, xid: int, ops: list[str]) -> dict[str, Any]:
    """``wal find --json``'s event for transaction ``xid``."""
    doc = pgvault(["wal", "find", "--json", "--table", table, "--database", DB, "--op", "delete,truncate,drop"],
                  a.env()).json()
    [ev] = [e for e in doc["events"] if e["xid"] == xid]
    assert ev["ops"] == ops, ev
    return dict(ev)


def _run_printed(a: ArchivingCluster, event: dict[str, Any], *extra: str, tmp: Any) -> dict[str, Any]:
    """The printed ``recover-table`` line, as a shell would split it, with ``extra`` appended."""
    argv = shlex.split(event["recover_table"])
    assert argv[0] == "pgvault" and "recover-table" in argv, argv
    # The line carries the printed target, verbatim.
    assert " ".join(event["target"]) in " ".join(argv), (event["target"], argv)
    r = pgvault([*argv[1:], *extra, "--json", "--pgvault-command", str(a.launcher), "--timeout", "300"],
                a.env(PGDATABASE=DB, TMPDIR=str(tmp)), check=False, timeout=240)
    assert r.returncode == 0, str(r)
    return dict(r.json())


def _started(a: ArchivingCluster) -> str:
    return a.cluster.psql("SELECT pg_postmaster_start_time()")


@pytest.mark.parametrize("major", MAJORS)
def test_mass_delete_found_then_recovered_with_the_printed_line(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = _scene(archiving, major)
    before = _snapshot(a)
    xid = _mistake(a, "DELETE FROM organizations")  # the cascade empties projects, configs, config_history
    assert _rows(a, "organizations") == {} and _rows(a, "configs") == {}
    for i in range(2):
        _workload(a, f"after{i}")
    a.switch_and_wait()
    after = _snapshot(a)
    started = _started(a)

    ev = _printed(a, "public.organizations", xid, ["delete"])
    assert ev["rows_deleted"] == len(before["organizations"]), ev
    tmp = postgres_tmpdir("pgvault-pairing-")
    doc = _run_printed(a, ev, *[x for t in TABLES[1:] for x in ("--table", f"public.{t}")], "--mode", "missing-rows",
                       tmp=tmp)
    assert f"before commit of transaction {xid}" in doc["recovery"]["stop_detail"], doc["recovery"]
    # Paused at the checked stop, then promoted there (the scratch copy only).
    assert (doc["recovery"]["state_at_stop"], doc["recovery"]["state"]) == ("paused", "promoted"), doc["recovery"]
    for t in TABLES:
        assert _rows(a, t) == {**before[t], **after[t]}, t
    assert _rows(a, "tickets") == after["tickets"]
    # The LSN form it prints (the commit record's start, exclusive) stops at the same place.
    lsn_form = {**ev, "target": ev["target_lsn"],
                "recover_table": ev["recover_table"].replace(" ".join(ev["target"]), " ".join(ev["target_lsn"]))}
    doc = _run_printed(a, lsn_form, "--into", "orgs_by_lsn", tmp=tmp)
    assert f'before WAL location (LSN) "{ev["commit_lsn"]}"' in doc["recovery"]["stop_detail"], doc["recovery"]
    copy = a.cluster.psql("SELECT id::text, t::text FROM orgs_by_lsn t", dbname=DB).splitlines()
    assert dict(line.split("|", 1) for line in copy) == before["organizations"]
    assert _started(a) == started
    assert not _leftovers(tmp), _leftovers(tmp)


@pytest.mark.parametrize("mode", ["missing-rows", "replace"])
@pytest.mark.parametrize("major", MAJORS)
def test_truncate_found_then_recovered_with_the_printed_line(major, mode, archiving) -> None:  # type: ignore[no-untyped-def]
    """TRUNCATE holds an ACCESS EXCLUSIVE lock until it commits, and that lock is in the WAL before
    the commit: a server paused just before the commit cannot read the table."""
    a = _scene(archiving, major)
    before = _rows(a, "tickets")
    xid = _mistake(a, "TRUNCATE tickets")
    for i in range(2):
        _workload(a, f"after{i}")
    a.switch_and_wait()
    since = _rows(a, "tickets")
    others = {t: _rows(a, t) for t in TABLES}
    started = _started(a)

    ev = _printed(a, "public.tickets", xid, ["truncate"])
    tmp = postgres_tmpdir("pgvault-pairing-")
    doc = _run_printed(a, ev, "--mode", mode, tmp=tmp)
    assert f"before commit of transaction {xid}" in doc["recovery"]["stop_detail"], doc["recovery"]
    [res] = doc["results"]
    assert res["rows_at_target"] == len(before), res
    assert _rows(a, "tickets") == ({**before, **since} if mode == "missing-rows" else before)
    assert {t: _rows(a, t) for t in TABLES} == others
    assert _started(a) == started
    assert not _leftovers(tmp), _leftovers(tmp)


@pytest.mark.parametrize("major", MAJORS)
def test_drop_found_then_recovered_under_its_old_name(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = _scene(archiving, major)
    before = _rows(a, "tickets")
    xid = _mistake(a, "DROP TABLE tickets")
    a.cluster.psql("CREATE TABLE unrelated (i int); INSERT INTO unrelated VALUES (1)", dbname=DB)
    a.switch_and_wait()
    others = {t: _rows(a, t) for t in TABLES}
    started = _started(a)

    ev = _printed(a, "public.tickets", xid, ["drop"])
    tmp = postgres_tmpdir("pgvault-pairing-")
    # The printed line alone: new-table (the default) under the old name (--into, printed for a DROP).
    assert shlex.split(ev["recover_table"])[-2:] == ["--into", "tickets"], ev
    doc = _run_printed(a, ev, tmp=tmp)
    assert f"before commit of transaction {xid}" in doc["recovery"]["stop_detail"], doc["recovery"]
    [res] = doc["results"]
    assert res["created"] == "public.tickets" and res["rows_after"] == len(before), res
    assert _rows(a, "tickets") == before
    assert {t: _rows(a, t) for t in TABLES} == others
    assert _started(a) == started
    assert not _leftovers(tmp), _leftovers(tmp)


@pytest.mark.parametrize("major", MAJORS)
def test_truncate_cascade_found_then_recovered_with_the_printed_line(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """TRUNCATE organizations CASCADE empties the four tables tied by foreign keys in one
    transaction: which new file is whose cannot be told from the WAL, but the transaction is
    certain, and wal find reports it (then stops following the table, with a warning)."""
    a = _scene(archiving, major)
    before = _snapshot(a)
    xid = _mistake(a, "TRUNCATE organizations CASCADE")
    assert _rows(a, "config_history") == {}
    for i in range(2):
        _workload(a, f"after{i}")
    a.switch_and_wait()
    after = _snapshot(a)
    started = _started(a)

    ev = _printed(a, "public.organizations", xid, ["truncate"])
    tmp = postgres_tmpdir("pgvault-pairing-")
    doc = _run_printed(a, ev, *[x for t in TABLES[1:] for x in ("--table", f"public.{t}")], "--mode", "missing-rows",
                       tmp=tmp)
    assert f"before commit of transaction {xid}" in doc["recovery"]["stop_detail"], doc["recovery"]
    for t in TABLES:
        assert _rows(a, t) == {**before[t], **after[t]}, t
    assert _rows(a, "tickets") == after["tickets"]
    assert _started(a) == started
    assert not _leftovers(tmp), _leftovers(tmp)
