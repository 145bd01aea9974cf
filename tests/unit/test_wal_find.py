"""``wal find``'s parsing and grouping (policy/wal_find.py) on verbatim pg_waldump output of
PostgreSQL 15.18 and 18.6 (tests/unit/data/waldump{15,18}.txt: the Heap, Transaction, Storage and
Standby records of one scripted session each, plus a few noise records, as printed with TZ=UTC).

The sessions (db OID 5, table ``orgs`` OID 16384, 1000 rows): a 3-row DELETE, a 500-row DELETE, a
5-row UPDATE, TRUNCATE, 10 INSERTs, VACUUM FULL, (18 only: a DELETE with a savepoint, a rolled
back DELETE), DROP TABLE.  xids and files were recorded by the session (txid_current,
pg_relation_filenode)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shlex
from pathlib import Path

import pytest

from pgvault.errors import NotFoundError, ToolError
from pgvault.operations.archive.wal_find import _begin, _judge_failure, choose_anchor, waldump_for
from pgvault.pg import wal
from pgvault.pipeline import PipelineSpec, StreamResult
from pgvault.policy import wal_find as p
from pgvault.repository.manifest import StoredObject
from pgvault.repository.physical import DatabaseRelations, PhysicalManifest, RelationEntry

DATA = Path(__file__).parent / "data"

DELETE15 = ("rmgr: Heap        len (rec/tot):     54/    54, tx:        726, lsn: 0/0178E328, prev 0/0178C2F8, desc: "
            "DELETE off 10 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/16384 blk 0")
DELETE18 = ("rmgr: Heap        len (rec/tot):     54/    54, tx:        754, lsn: 0/01747160, prev 0/01745130, desc: "
            "DELETE xmax: 754, off: 10, infobits: [KEYS_UPDATED], flags: 0x00, blkref #0: rel 1663/5/16384 blk 0")
UPDATE15 = ("rmgr: Heap        len (rec/tot):     80/    80, tx:        728, lsn: 0/0179E168, prev 0/0179E130, desc: "
            "UPDATE off 24 xmax 728 flags 0x00 ; new off 76 xmax 0, blkref #0: rel 1663/5/16384 blk 5, "
            "blkref #1: rel 1663/5/16384 blk 0")
HOT18 = ("rmgr: Heap        len (rec/tot):     54/    54, tx:        756, lsn: 0/01756F00, prev 0/01756EC8, desc: "
         "HOT_UPDATE old_xmax: 756, old_off: 20, old_infobits: [], flags: 0x20, new_xmax: 0, new_off: 186, "
         "blkref #0: rel 1663/5/16384 blk 0")
LOCK18 = ("rmgr: Heap        len (rec/tot):     54/    54, tx:        756, lsn: 0/01756F68, prev 0/01756F20, desc: "
          "LOCK xmax: 756, off: 24, infobits: [LOCK_ONLY, EXCL_LOCK], flags: 0x00, blkref #0: rel 1663/5/16384 blk 0")
COMMIT_PLAIN = ("rmgr: Transaction len (rec/tot):     34/    34, tx:        726, lsn: 0/0178E3D0, prev 0/0178E398, "
                "desc: COMMIT 2026-12-04 12:59:40.816614 UTC")
COMMIT_SUB = ("rmgr: Transaction len (rec/tot):     46/    46, tx:        760, lsn: 0/017885C0, prev 0/01788588, "
              "desc: COMMIT 2026-12-04 13:00:19.144646 UTC; subxacts: 761")
ABORT18 = ("rmgr: Transaction len (rec/tot):     34/    34, tx:        762, lsn: 0/01788628, prev 0/017885F0, "
           "desc: ABORT 2026-12-04 13:00:19.157683 UTC")
FPI_HINT = ("rmgr: XLOG        len (rec/tot):     49/  8213, tx:        727, lsn: 0/0178C2F8, prev 0/0178C280, desc: "
            "FPI_FOR_HINT , blkref #0: rel 1663/5/16384 blk 3 FPW")


def _replay(path: Path, **kw: object) -> p.TableTracker:
    t = p.TableTracker(db_oid=5, table_oid=16384, relfilenode=16384, **kw)  # type: ignore[arg-type]
    for line in path.read_text().splitlines():
        t.feed_line(line, 1)
    return t


def _summary(t: p.TableTracker) -> list[tuple[int, tuple[str, ...], int, int, int, int | None]]:
    return [(e.xid, e.ops, e.deleted, e.updated, e.relfilenode, e.new_relfilenode) for e in t.events]


def test_pg15_session_every_transaction_with_its_xid_counts_and_files() -> None:
    t = _replay(DATA / "waldump15.txt")
    assert _summary(t) == [
        (726, ("delete",), 3, 0, 16384, None),
        (727, ("delete",), 500, 0, 16384, None),
        (728, ("update",), 0, 5, 16384, None),  # 4 HOT_UPDATE + 1 UPDATE; the LOCK is not a change
        (729, ("truncate",), 0, 0, 16384, 16391),
        (731, ("rewrite",), 0, 0, 16391, 16395),  # VACUUM FULL
        (732, ("drop",), 0, 0, 16395, None),
    ]
    mass = t.events[1]
    assert str(mass.commit_lsn) == "0/179DFD0"
    assert mass.commit_time == dt.datetime(2026, 12, 4, 12, 59, 40, 843571, tzinfo=dt.UTC)
    assert t.dropped and t.relfilenode is None and t.lost is None and t.aborted == []


def test_pg18_session_savepoint_rows_count_for_the_top_level_xid_and_the_rollback_is_left_out() -> None:
    t = _replay(DATA / "waldump18.txt")
    assert _summary(t) == [
        (754, ("delete",), 3, 0, 16384, None),
        (755, ("delete",), 500, 0, 16384, None),
        (756, ("update",), 0, 5, 16384, None),
        (757, ("truncate",), 0, 0, 16384, 16392),
        (759, ("rewrite",), 0, 0, 16392, 16396),
        (760, ("delete",), 3, 0, 16396, None),  # 1 row as xid 760, 2 as its subtransaction 761
        (763, ("drop",), 0, 0, 16396, None),
    ]
    assert t.aborted == [{"xid": 762, "time": "2026-12-04T13:00:19.157683+00:00", "lsn": "0/1788628",
                          "rows_deleted": 1, "rows_updated": 0}]
    assert t.open_transactions() == 0


@pytest.mark.parametrize("line, xid, lsn, op, blocks", [
    (DELETE15, 726, "0/178E328", "DELETE", ((1663, 5, 16384, "main"),)),
    (DELETE18, 754, "0/1747160", "DELETE", ((1663, 5, 16384, "main"),)),
    (UPDATE15, 728, "0/179E168", "UPDATE", ((1663, 5, 16384, "main"), (1663, 5, 16384, "main"))),
    (HOT18, 756, "0/1756F00", "HOT_UPDATE", ((1663, 5, 16384, "main"),)),
    (COMMIT_PLAIN, 726, "0/178E3D0", "COMMIT", ()),
])
def test_parse_line(line: str, xid: int, lsn: str, op: str, blocks: tuple[tuple[int, int, int, str], ...]) -> None:
    rec = p.parse_line(line)
    assert rec is not None and rec.xid == xid and str(rec.lsn) == lsn and rec.op == op and rec.blocks == blocks
    assert "blkref" not in rec.desc


def test_parse_line_other_lines_and_forks() -> None:
    assert p.parse_line("pg_waldump: error: could not find file \"000000010000000000000009\"") is None
    assert p.parse_line("") is None
    rec = p.parse_line("rmgr: Heap2       len (rec/tot):     59/  8215, tx:          0, lsn: 0/01500028, prev "
                       "0/01500000, desc: VISIBLE cutoff xid 0 flags 0x03, blkref #0: rel 1663/5/16384 fork vm blk 0 "
                       "FPW, blkref #1: rel 1663/5/16384 blk 0")
    assert rec is not None and rec.blocks == ((1663, 5, 16384, "vm"), (1663, 5, 16384, "main"))


def test_parse_xact_commit_shapes() -> None:
    def x(line: str) -> p.XactEnd:
        rec = p.parse_line(line)
        assert rec is not None
        end = p.parse_xact(rec)
        assert end is not None
        return end

    sub = x(COMMIT_SUB)
    assert sub.committed and sub.xid == 760 and sub.subxacts == (761,) and sub.rels == ()
    ab = x(ABORT18)
    assert not ab.committed and ab.xid == 762
    truncate = next(line for line in (DATA / "waldump15.txt").read_text().splitlines() if "tx:        729" in line
                    and "COMMIT" in line)
    tr = x(truncate)
    assert tr.rels == ((5, 16388), (5, 16389), (5, 16387), (5, 16384)) and tr.dropped_stats == ()
    drop = next(line for line in (DATA / "waldump15.txt").read_text().splitlines() if "tx:        732" in line
                and "COMMIT" in line)
    dr = x(drop)
    assert dr.dropped_stats == ((5, 16389), (5, 16388), (5, 16387), (5, 16384))
    # Without fractional seconds (timestamptz_to_str omits .000000), in another tablespace, prepared:
    prep = x("rmgr: Transaction len (rec/tot):     90/    90, tx:          0, lsn: 0/02000100, prev 0/020000C8, desc: "
             "COMMIT_PREPARED 745: 2026-12-04 13:00:00 UTC; rels: pg_tblspc/16385/PG_15_202209061/5/16390")
    assert prep.xid == 745 and prep.time == dt.datetime(2026, 12, 4, 13, 0, tzinfo=dt.UTC)
    assert prep.rels == ((5, 16390),)
    rec = p.parse_line(DELETE15)
    assert rec is not None and p.parse_xact(rec) is None


def test_a_commit_time_in_another_zone_is_refused() -> None:
    rec = p.parse_line(COMMIT_PLAIN.replace("12:59:40.816614 UTC", "13:59:40.816614 CET"))
    assert rec is not None
    with pytest.raises(ValueError, match="TZ=UTC"):
        p.parse_xact(rec)


def _lines(*lines: str) -> p.TableTracker:
    t = p.TableTracker(db_oid=5, table_oid=16384, relfilenode=16384, other_tables=[16384, 16500])
    for line in lines:
        t.feed_line(line, 1)
    return t


def _rec(xid: int, lsn: str, rmgr: str, desc: str) -> str:
    return f"rmgr: {rmgr:<11} len (rec/tot):     54/    54, tx: {xid:>10}, lsn: {lsn}, prev 0/00000000, desc: {desc}"


def _commit(xid: int, lsn: str, extra: str = "") -> str:
    return _rec(xid, lsn, "Transaction", f"COMMIT 2026-12-04 13:00:00.000001 UTC{extra}")


def test_noise_is_not_counted() -> None:
    t = _lines(
        FPI_HINT,
        LOCK18.replace("756", "800"),
        # a super-delete (INSERT ... ON CONFLICT taking back its own tuple): flags 0x08
        DELETE18.replace("754", "800").replace("flags: 0x00", "flags: 0x08"),
        # VACUUM cutting empty pages off the end: not an SQL TRUNCATE
        _rec(800, "0/01000100", "Storage", "TRUNCATE base/5/16384 to 3 blocks flags 7"),
        # the table's toast (another file) and another table
        DELETE15.replace("726", "800").replace("5/16384", "5/16387"),
        DELETE15.replace("726", "800").replace("5/16384", "5/163840"),
        DELETE15.replace("726", "800").replace("rel 1663/5/", "rel 1663/6/"),
        _commit(800, "0/01000200"),
    )
    assert t.events == [] and t.relfilenode == 16384


def test_a_rolled_back_savepoint_is_not_counted_in_its_committed_parent() -> None:
    t = _lines(
        DELETE15.replace("726", "900"),
        DELETE15.replace("726", "901"),  # in a savepoint, rolled back:
        _rec(901, "0/01000100", "Transaction", "ABORT 2026-12-04 13:00:00.000001 UTC"),
        DELETE15.replace("726", "902"),  # in a savepoint, released:
        _commit(900, "0/01000200", "; subxacts: 902"),
    )
    assert _summary(t) == [(900, ("delete",), 2, 0, 16384, None)]
    assert t.aborted[0]["xid"] == 901


def test_several_tables_truncated_at_once_are_reported_then_the_table_is_lost_instead_of_guessed() -> None:
    t = _lines(
        _rec(950, "0/01000010", "Standby", "LOCK xid 950 db 5 rel 16384 "),
        _rec(950, "0/01000020", "Standby", "LOCK xid 950 db 5 rel 16500 "),
        _rec(950, "0/01000030", "Storage", "CREATE base/5/17000"),
        _rec(950, "0/01000040", "Storage", "CREATE base/5/17001"),
        _commit(950, "0/01000100", "; rels: base/5/16501 base/5/16384"),
        DELETE15.replace("726", "951"),
        _commit(951, "0/01000200"),
    )
    # The transaction is reported (its target is certain); what follows it is not.
    assert [(e.xid, e.ops, e.relfilenode, e.new_relfilenode) for e in t.events] == [(950, ("truncate",), 16384, None)]
    assert t.relfilenode is None
    assert t.lost is not None and "950" in t.lost and "16500" in t.lost


def test_files_dropped_without_new_ones_and_without_drop_lose_the_table() -> None:
    t = _lines(_commit(960, "0/01000100", "; rels: base/5/16384"))
    assert t.lost is not None and "without a new one" in t.lost


def test_an_aborted_truncate_changes_nothing() -> None:
    t = _lines(
        _rec(970, "0/01000030", "Storage", "CREATE base/5/17000"),
        _rec(970, "0/01000040", "Transaction", "ABORT 2026-12-04 13:00:00.000001 UTC; rels: base/5/17000"),
        DELETE15.replace("726", "971"),
        _commit(971, "0/01000200"),
    )
    assert _summary(t) == [(971, ("delete",), 1, 0, 16384, None)]


def test_select_by_ops_and_time() -> None:
    t = _replay(DATA / "waldump15.txt")
    assert [e.xid for e in p.select(t.events, p.DEFAULT_OPS, None, None)] == [726, 727, 729, 732]
    assert [e.xid for e in p.select(t.events, ("update", "rewrite"), None, None)] == [728, 731]
    since = dt.datetime(2026, 12, 4, 12, 59, 40, 843571, tzinfo=dt.UTC)
    until = dt.datetime(2026, 12, 4, 12, 59, 40, 880334, tzinfo=dt.UTC)
    assert [e.xid for e in p.select(t.events, p.OPS, since, until)] == [727, 728, 729]


def test_parse_ops_and_split_table() -> None:
    assert p.parse_ops("truncate, DELETE") == ("delete", "truncate")
    for bad in ("", "delete,insert"):
        with pytest.raises(ValueError, match="--op"):
            p.parse_ops(bad)
    assert p.split_table("Public.Orgs") == ("public", "orgs")
    assert p.split_table("orgs") == ("public", "orgs")
    assert p.split_table('"My Schema"."a.b"') == ("My Schema", "a.b")
    for bad in ("a.b.c", "a.", '"open'):
        with pytest.raises(ValueError, match="SCHEMA.NAME"):
            p.split_table(bad)


def test_recovery_commands_and_descriptions() -> None:
    t = _replay(DATA / "waldump15.txt")
    mass, truncate = t.events[1], t.events[3]
    c = p.recovery_commands(mass, schema="public", name="orgs", database="app", cluster="pitr")
    assert c["target"] == ["--target-xid", "727", "--target-exclusive"]
    assert c["target_lsn"] == ["--target-lsn", "0/179DFD0", "--target-exclusive"]
    assert c["restore_cluster"] == "pgvault --cluster pitr restore-cluster -D NEW_DATA_DIR --target-xid 727 --target-exclusive"
    assert c["recover_table"] == ("pgvault --cluster pitr recover-table --table public.orgs --database app "
                                  "--target-xid 727 --target-exclusive")
    assert p.recovery_commands(truncate, schema="public", name="orgs", database="app", cluster=None)["restore_cluster"] == (
        "pgvault restore-cluster -D NEW_DATA_DIR --target-xid 729 --target-exclusive --target-action promote")
    # Every printed line parses as the command it names; a name needing quotes reaches recover-table whole.
    from pgvault.cli import build_parser
    from pgvault.policy.recover import parse_table

    odd = p.recovery_commands(mass, schema="My Schema", name="Orgs 2", database="my app", cluster="c 1",
                              repository="/srv/repo x", config="/etc/pg vault.yaml")
    for line in (odd["restore_cluster"], odd["recover_table"]):
        argv = shlex.split(line)
        assert argv[0] == "pgvault"
        args = build_parser().parse_args(argv[1:])
        assert (args.cluster, args.repository, args.config) == ("c 1", "/srv/repo x", "/etc/pg vault.yaml")
        assert (args.target_xid, args.target_exclusive) == ("727", True)
    args = build_parser().parse_args(shlex.split(odd["recover_table"])[1:])
    assert [parse_table(t) for t in args.table] == [("My Schema", "Orgs 2")] and args.database == "my app"
    assert args.into is None
    dropped = dataclasses.replace(truncate, ops=("drop",))
    args = build_parser().parse_args(shlex.split(p.recovery_commands(
        dropped, schema="public", name="Orgs", database="app", cluster=None)["recover_table"])[1:])
    assert args.into == "Orgs" and args.mode == "new-table" and args.table == ['public."Orgs"']
    assert p.describe_rows(mass) == "DELETE 500 rows"
    assert p.describe_rows(truncate).startswith("TRUNCATE (all rows")
    assert truncate.all_rows() and not mass.all_rows()
    assert json.loads(json.dumps(truncate.to_json()))["new_relfilenode"] == 16391


# --- the verb's pure helpers and the manifest field ----------------------------------------------

SEG = 16 * 1024 * 1024


def _manifest(backup_id: str, started: str, maps: tuple[DatabaseRelations, ...] | None) -> PhysicalManifest:
    obj = StoredObject("base", "base.tar", StreamResult(1, "0" * 64, 1, "0" * 64))
    return PhysicalManifest(
        backup_id=backup_id, cluster="c", system_identifier="1", server_version="15.0", server_version_num=150018,
        wal_segment_size=SEG, timeline=1, start_lsn="0/2000028", stop_lsn="0/3000000",
        first_wal=wal.segment_name(1, 2, SEG), last_wal=wal.segment_name(1, 2, SEG), started_at=started,
        finished_at=started, duration_seconds=1.0, backup_label="", tablespace_map="", pipeline=PipelineSpec(),
        base=obj, base_files=1, tablespaces=(), host="h", pgvault_version="0", relation_maps=maps)


APP = DatabaseRelations("app", 16390, "0/2000100", (RelationEntry(16400, 16400, "public", "orgs", "r", 16403),))


def test_manifest_relation_maps_round_trip_and_old_manifests_still_read() -> None:
    m = _manifest("b1", "2026-12-04T10:00:00+00:00", (APP,))
    again = PhysicalManifest.loads(m.dumps(), where="x")
    assert again.relation_maps == (APP,) and again.relation_maps[0].find("public", "orgs") is not None
    old = json.loads(m.dumps())
    del old["relation_maps"]
    assert PhysicalManifest.loads(json.dumps(old).encode(), where="x").relation_maps is None
    assert "relation_maps" not in json.loads(_manifest("b0", "2026-12-04T09:00:00+00:00", None).dumps())


def test_choose_anchor() -> None:
    old = _manifest("b0", "2026-12-04T09:00:00+00:00", None)
    b1 = _manifest("b1", "2026-12-04T10:00:00+00:00", (APP,))
    b2 = _manifest("b2", "2026-12-04T12:00:00+00:00", (APP,))
    assert choose_anchor([old, b1, b2], "app", None, None)[0] is b2
    assert choose_anchor([old, b1, b2], "app", dt.datetime(2026, 12, 4, 11, tzinfo=dt.UTC), None)[0] is b1
    # --from before every backup: the oldest that has a map covers the most of the range
    assert choose_anchor([old, b1, b2], "app", dt.datetime(2026, 12, 4, 8, tzinfo=dt.UTC), None)[0] is b1
    assert choose_anchor([old, b1, b2], "app", None, "b1")[0] is b1
    with pytest.raises(NotFoundError, match="b0"):
        choose_anchor([old, b1, b2], "app", None, "b0")
    with pytest.raises(NotFoundError, match="no base backup records"):
        choose_anchor([old], "app", None, None)
    with pytest.raises(NotFoundError):
        choose_anchor([b1], "other", None, None)


def test_begin_of_each_pg_waldump_run() -> None:
    n = [wal.segment_name(1, s, SEG) for s in range(2, 8)]
    batches = [n[0:2], n[2:4], n[4:6]]
    start = wal.LSN.parse("0/2000028")
    assert _begin(0, batches, start, SEG, None, {}) == start
    # after the last record taken, but never before the kept last segment of the run before
    assert _begin(1, batches, start, SEG, wal.LSN.parse("0/3FFFF00"), {}) == wal.LSN.parse("0/3FFFF01")
    assert _begin(1, batches, start, SEG, wal.LSN.parse("0/2000100"), {}) == wal.LSN.parse("0/3000000")
    assert _begin(1, batches, start, SEG, None, {}) == wal.LSN.parse("0/3000000")
    # a new timeline starts at the switch point (the run before read up to it)
    child = [[wal.segment_name(1, 2, SEG)], [wal.segment_name(2, 3, SEG)]]
    switch = wal.LSN.parse("0/3000A58")
    assert _begin(1, child, start, SEG, wal.LSN.parse("0/2FFFF00"), {1: switch}) == switch


def test_pg_waldump_failures_expected_and_not() -> None:
    batch = [wal.segment_name(1, s, SEG) for s in (2, 3)]
    nxt = [wal.segment_name(1, 4, SEG)]
    _judge_failure(f'pg_waldump: error: could not find file "{wal.segment_name(1, 5, SEG)}": No such file', batch,
                   nxt, 10)
    _judge_failure("pg_waldump: error: error in WAL record at 0/3FFFF28: invalid record length at 0/3FFFF60: "
                   "expected at least 24, got 0", batch, [], 10)
    # at a timeline switch the next file is the child's: the parent's one of that number is not given
    _judge_failure(f'pg_waldump: error: could not find file "{wal.segment_name(1, 4, SEG)}": No such file', batch,
                   [wal.segment_name(2, 4, SEG)], 10)
    with pytest.raises(ToolError, match="could not find a valid record"):
        _judge_failure("pg_waldump: error: could not find a valid record after 0/2000028", batch, nxt, 0)
    with pytest.raises(ToolError):
        _judge_failure(f'pg_waldump: error: could not find file "{batch[1]}": No such file', batch, nxt, 3)


def test_no_pg_waldump_of_the_wal_major_is_a_tool_error() -> None:
    with pytest.raises(ToolError, match="no pg_waldump of PostgreSQL 99") as e:
        waldump_for(99, ())
    assert e.value.exit_code == 10


def test_a_transaction_open_at_a_timeline_switch_never_committed_on_the_timeline_followed() -> None:
    t = p.TableTracker(db_oid=5, table_oid=16384, relfilenode=16384, switches=[wal.LSN.parse("0/02000000")])
    for line in (DELETE15.replace("726", "990"),  # before the switch, uncommitted there
                 _rec(991, "0/02000200", "Heap", "DELETE off 1 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/16384 blk 0"),
                 _commit(991, "0/02000300")):
        t.feed_line(line, 2)
    assert _summary(t) == [(991, ("delete",), 1, 0, 16384, None)]
    assert t.aborted == [{"xid": 990, "time": None, "lsn": "0/2000000", "rows_deleted": 1, "rows_updated": 0,
                          "why": "open at the timeline switch"}]
    assert t.open_transactions() == 0


@pytest.mark.parametrize("name", ["waldump15.txt", "waldump18.txt"])
def test_skipping_idle_commits_and_keeping_only_what_is_asked_change_nothing_else(name: str) -> None:
    full = _replay(DATA / name)
    fast = _replay(DATA / name, every_commit=False)
    assert _summary(fast) == _summary(full) and fast.aborted == full.aborted
    only = _replay(DATA / name, keep=p.selector(("truncate", "drop"), None, None), every_commit=False,
                   ops=("truncate", "drop"))
    assert [e.ops for e in only.events] == [("truncate",), ("drop",)] and only.dropped
    assert only.relfilenode is None and only.open_transactions() == 0 and only.aborted == full.aborted
    deletes = _replay(DATA / name, keep=p.selector(("delete",), None, None), every_commit=False, ops=("delete",))
    assert _summary(deletes) == [s for s in _summary(full) if "delete" in s[1]]
    capped = _replay(DATA / name, max_events=2)
    assert _summary(capped) == _summary(full)[:2] and capped.omitted == len(full.events) - 2


def test_a_table_created_earlier_in_the_truncating_transaction_is_not_taken_for_the_new_file() -> None:
    t = _lines(
        _rec(980, "0/01000010", "Storage", "CREATE base/5/17100"),  # CREATE TABLE x (...)
        _rec(980, "0/01000020", "Standby", "LOCK xid 980 db 5 rel 16384 "),  # TRUNCATE orgs
        _rec(980, "0/01000030", "Storage", "CREATE base/5/17101"),
        _rec(980, "0/01000040", "Storage", "CREATE base/5/17102"),
        _commit(980, "0/01000100", "; rels: base/5/16387 base/5/16384"),
        DELETE15.replace("726", "981").replace("0/0178E328", "0/01000200").replace("5/16384", "5/17101"),
        _commit(981, "0/01000300"),
    )
    assert _summary(t) == [(980, ("truncate",), 0, 0, 16384, 17101), (981, ("delete",), 1, 0, 17101, None)]
