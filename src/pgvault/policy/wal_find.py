"""``wal find``: which committed transactions deleted, updated, truncated or dropped one table,
read from ``pg_waldump`` text (pure: lines in, events out; the verb feeds it).

What the WAL says at ``wal_level = replica`` (verified on PostgreSQL 15 and 18, see docs/design.md
"Finding the moment in the WAL"):

* a row DELETE / UPDATE / HOT_UPDATE is one Heap record per row, whose block reference names the
  relation by its *file* (``rel SPC/DB/RELFILENODE``), not by the table's OID;
* the transaction's fate and time are in its COMMIT / ABORT record (``rmgr: Transaction``), which
  lists the subtransactions it commits (``subxacts:``; their rows carry the subtransaction's xid),
  the files it drops (``rels:``) and, since 15, the OIDs whose statistics it drops
  (``dropped stats: 2/DB/OID``);
* TRUNCATE, VACUUM FULL, CLUSTER and rewriting ALTERs log no row records: they create new files
  (``Storage CREATE``, the new heap first) and drop the old ones at commit.  VACUUM FULL & co.
  build the new heap as a transient table whose OID equals the new file's number, so their
  commit drops that OID's statistics; TRUNCATE does not.  DROP TABLE drops the table OID's
  statistics.  ``Standby LOCK`` records name the OIDs a transaction locked exclusively.

So the table is followed by its heap file number, anchored by a map taken at a known point (a base
backup records one) and carried across rewrites: a committed transaction that drops the current
file and created files in the same database moved the table to the first of them.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pgvault.pg.wal import LSN
from pgvault.policy.recover import qualified
from pgvault.policy.wal_find_ops import DEFAULT_OPS as DEFAULT_OPS  # re-exported
from pgvault.policy.wal_find_ops import OPS as OPS  # re-exported

# Events kept at most (a busy table's every UPDATE would otherwise fill the memory).
MAX_EVENTS = 10_000
# Relation kinds whose rows live in a heap file of their own.
TABLE_KINDS = frozenset("rm")

_LINE = re.compile(
    r"rmgr: (\w+)\s+len \(rec/tot\):\s*\d+/\s*\d+, tx:\s*(\d+), lsn: ([0-9A-Fa-f]+/[0-9A-Fa-f]+), "
    r"prev [0-9A-Fa-f]+/[0-9A-Fa-f]+, desc: (.*)$"
)
_BLKREF = re.compile(r"rel (\d+)/(\d+)/(\d+)(?: fork (\w+))? blk (\d+)")
_FILE = re.compile(r"(?:base/(\d+)/(\d+)|pg_tblspc/\d+/[^/\s]+/(\d+)/(\d+))")
_FLAGS = re.compile(r"flags:? (0x[0-9A-Fa-f]+)")
_XACT = re.compile(
    r"(COMMIT|ABORT)(?:_PREPARED (\d+):)? (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) ([A-Z]+|[+-]\d\d)(.*)$"
)
_STANDBY_LOCK = re.compile(r"LOCK xid (\d+) db (\d+) rel (\d+)")
# xl_heap_delete.flags: XLH_DELETE_IS_SUPER (an INSERT ... ON CONFLICT that lost the race takes
# back its own tuple): not a row anyone deleted.
_DELETE_IS_SUPER = 0x08


@dataclass(frozen=True, slots=True)
class Record:
    """One ``pg_waldump`` line, reduced to what ``wal find`` reads."""

    rmgr: str
    xid: int
    lsn: LSN
    desc: str  # without the block references
    blocks: tuple[tuple[int, int, int, str], ...] = ()  # (spc, db, relfilenode, fork)

    @property
    def op(self) -> str:
        return self.desc.split(" ", 1)[0]


def parse_line(line: str) -> Record | None:
    """The record on one ``pg_waldump`` output line, or None for anything else."""
    m = _LINE.match(line)
    if m is None:
        return None
    desc = m.group(4)
    blocks: tuple[tuple[int, int, int, str], ...] = ()
    cut = desc.find(", blkref #")
    if cut >= 0:
        blocks = tuple((int(b[0]), int(b[1]), int(b[2]), b[3] or "main") for b in _BLKREF.findall(desc[cut:]))
        desc = desc[:cut]
    hi, _, lo = m.group(3).partition("/")  # LSN.parse's checks cost more than the rest of the line
    return Record(m.group(1), int(m.group(2)), LSN(int(hi, 16) << 32 | int(lo, 16)), desc.rstrip(), blocks)


def _files(text: str) -> list[tuple[int, int]]:
    """(db, relfilenode) of each ``base/DB/N`` or ``pg_tblspc/SPC/VER/DB/N`` path in ``text``."""
    out = []
    for m in _FILE.finditer(text):
        db, rel = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        out.append((int(db), int(rel)))
    return out


@dataclass(frozen=True, slots=True)
class XactEnd:
    """A COMMIT or ABORT record."""

    committed: bool
    xid: int  # the top-level transaction (for *_PREPARED the prepared one)
    lsn: LSN
    time: dt.datetime
    subxacts: tuple[int, ...] = ()
    rels: tuple[tuple[int, int], ...] = ()  # files dropped: (db, relfilenode)
    dropped_stats: tuple[tuple[int, int], ...] = ()  # (db, oid) of relation statistics dropped


def parse_xact(rec: Record) -> XactEnd | None:
    """The transaction end in a ``Transaction`` record (COMMIT, ABORT and their _PREPARED forms)."""
    if rec.rmgr != "Transaction":
        return None
    m = _XACT.match(rec.desc)
    if m is None:
        return None
    when = _timestamp(m.group(3), m.group(4))
    subxacts: tuple[int, ...] = ()
    rels: list[tuple[int, int]] = []
    stats: list[tuple[int, int]] = []
    for part in m.group(5).split("; "):
        part = part.strip().lstrip(";").strip()
        if part.startswith("subxacts:"):
            subxacts = tuple(int(x) for x in part[len("subxacts:"):].split())
        elif part.startswith("rels:"):
            rels = _files(part)
        elif part.startswith("dropped stats:"):
            # kind/db/oid; kind 2 = relation (PGSTAT_KIND_RELATION)
            for item in part[len("dropped stats:"):].split():
                bits = item.split("/")
                if len(bits) == 3 and bits[0] == "2":
                    stats.append((int(bits[1]), int(bits[2])))
    xid = int(m.group(2)) if m.group(2) else rec.xid
    return XactEnd(m.group(1) == "COMMIT", xid, rec.lsn, when, subxacts, tuple(rels), tuple(stats))


def _timestamp(text: str, zone: str) -> dt.datetime:
    if zone not in ("UTC", "GMT", "+00"):
        # pg_waldump prints commit times in its own TZ: the verb runs it with TZ=UTC.
        raise ValueError(f"pg_waldump printed a commit time in zone {zone!r}, not UTC (run it with TZ=UTC)")
    # fromisoformat, not strptime: one call per commit record, ten times faster.
    frac = text.find(".")
    if frac >= 0:  # pad to microseconds (the fraction is printed without trailing zeros)
        text = text[:frac + 1] + text[frac + 1:].ljust(6, "0")[:6]
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Event:
    """One committed transaction that changed the table."""

    xid: int
    commit_time: dt.datetime
    commit_lsn: LSN
    timeline: int
    ops: tuple[str, ...]
    deleted: int = 0
    updated: int = 0
    relfilenode: int = 0  # the table's file during the transaction
    new_relfilenode: int | None = None  # after a TRUNCATE / rewrite

    def all_rows(self) -> bool:
        """TRUNCATE and DROP take every row, and the WAL does not say how many there were."""
        return "truncate" in self.ops or "drop" in self.ops

    def to_json(self) -> dict[str, Any]:
        return {
            "xid": self.xid, "commit_time": self.commit_time.isoformat(), "commit_lsn": str(self.commit_lsn),
            "timeline": self.timeline, "ops": list(self.ops), "rows_deleted": self.deleted,
            "rows_updated": self.updated, "all_rows": self.all_rows(), "relfilenode": self.relfilenode,
            "new_relfilenode": self.new_relfilenode,
        }


@dataclass
class _Open:
    """What one (sub)transaction did so far, as far as the table is concerned."""

    deleted: int = 0
    updated: int = 0
    creates: list[tuple[LSN, int]] = field(default_factory=list)  # new files in the table's database
    locked: set[int] = field(default_factory=set)  # OIDs locked exclusively in the table's database
    locked_table_at: LSN | None = None  # where the table itself was locked exclusively


class TableTracker:
    """Follows one table through the WAL (records in LSN order) and collects its events.

    ``relfilenode``: the table's heap file at the start of the walk (from the anchor map);
    ``other_tables``: OIDs of the database's other tables, to notice a transaction that rewrote
    several tables at once (then which new file is ours cannot be told: the tracker stops and
    says so, instead of guessing).
    """

    def __init__(self, *, db_oid: int, table_oid: int, relfilenode: int, other_tables: Iterable[int] = (),
                 switches: Iterable[LSN] = (), keep: Callable[[Event], bool] | None = None,
                 ops: Iterable[str] | None = None, every_commit: bool = True, max_events: int = MAX_EVENTS) -> None:
        self.db = db_oid
        self.table_oid = table_oid
        self.relfilenode: int | None = relfilenode
        self.other_tables = frozenset(other_tables) - {table_oid}
        # Only the events asked for are kept, at most max_events (memory stays bounded on a busy
        # table: pgbench updates its accounts in every transaction); ``omitted`` counts the rest.
        self.events: list[Event] = []
        self.omitted = 0
        self._keep = keep
        self._max = max_events
        # every_commit=False: COMMITs of transactions that did nothing to the table are skipped
        # unparsed (their time is then not reported to the caller, who did not need it).
        # ... and with ``ops``, also those whose changes to it are of a kind not asked for.
        self._every_commit = every_commit
        self._ops = frozenset(ops) if ops is not None else None
        self.aborted: list[dict[str, Any]] = []
        self.lost: str | None = None  # why the table's identity could no longer be followed
        self.dropped = False
        self.records = 0
        self.last_lsn: LSN | None = None
        self.last_commit_time: dt.datetime | None = None
        self._open: dict[int, _Open] = {}
        # Timeline switch points on the way (from the history file): a transaction still open
        # there never committed on the timeline followed (promotion ends it without a record).
        self._switches = sorted(switches)
        self._needle = ""
        self._set_needle()

    def _set_needle(self) -> None:
        # A cheap substring test before any parsing: most Heap lines are about other relations.
        self._needle = f"/{self.db}/{self.relfilenode} blk " if self.relfilenode is not None else "\0"

    @property
    def following(self) -> bool:
        return self.relfilenode is not None

    def wants(self, line: str) -> bool:
        """Whether ``line`` can matter (the verb skips parsing the others)."""
        if line.startswith("rmgr: Heap "):
            return self._needle in line
        return line.startswith(("rmgr: Transaction", "rmgr: Storage", "rmgr: Standby"))

    def feed_line(self, line: str, timeline: int) -> XactEnd | None:
        if not self.wants(line):
            return None
        if line.startswith("rmgr: Heap "):
            self._heap_line(line)
            return None
        if not self._every_commit and line.startswith("rmgr: Transaction") and self._idle_commit(line):
            return None
        rec = parse_line(line)
        return self.feed(rec, timeline) if rec is not None else None

    def _heap_line(self, line: str) -> None:
        """A Heap line naming the table's file (``wants`` checked the needle, which only a main-fork
        block reference matches): counted without the regexes, the hot path on a busy table."""
        d = line.find("desc: ")
        op = line[d + 6:line.find(" ", d + 6)]
        if op not in ("DELETE", "UPDATE", "HOT_UPDATE"):
            return  # INSERT, LOCK, INPLACE, CONFIRM...: no row goes away or changes
        t = line.find(", tx:")
        xid = int(line[t + 5:line.find(",", t + 5)])
        at = line.find(", lsn: ")
        hi, _, lo = line[at + 7:line.find(",", at + 7)].partition("/")
        self.records += 1
        lsn = LSN(int(hi, 16) << 32 | int(lo, 16))
        self.last_lsn = lsn
        while self._switches and lsn >= self._switches[0]:
            self._cut_at_switch(self._switches.pop(0))
        if not xid:
            return
        if op == "DELETE":
            m = _FLAGS.search(line, d)
            if m and int(m.group(1), 16) & _DELETE_IS_SUPER:
                return
            self._state(xid).deleted += 1
        else:
            self._state(xid).updated += 1

    def _idle_commit(self, line: str) -> bool:
        """Whether a transaction end can be passed over unparsed (the common case, decided without
        the regexes): it has no subtransactions, drops no files, and either did nothing to the
        table or committed changes of a kind not asked for (their state is dropped here)."""
        if "; rels:" in line or "subxacts:" in line or "_PREPARED" in line:
            return False
        i = line.find(", tx:")
        try:
            xid = int(line[i + 5:line.find(",", i + 5)])
        except ValueError:
            return False
        st = self._open.get(xid)
        if st is None:
            return True
        if self._ops is None or "desc: COMMIT " not in line:
            return False
        if (st.deleted and "delete" in self._ops) or (st.updated and "update" in self._ops):
            return False
        del self._open[xid]
        return True

    def feed(self, rec: Record, timeline: int) -> XactEnd | None:
        """Take one record; returns the transaction end it was, if any (the verb watches the time)."""
        self.records += 1
        self.last_lsn = rec.lsn
        while self._switches and rec.lsn >= self._switches[0]:
            self._cut_at_switch(self._switches.pop(0))
        if rec.rmgr == "Heap":
            self._heap(rec)
        elif rec.rmgr == "Storage":
            if rec.op == "CREATE" and rec.xid:
                for db, rel in _files(rec.desc):
                    if db == self.db:
                        self._state(rec.xid).creates.append((rec.lsn, rel))
        elif rec.rmgr == "Standby":
            m = _STANDBY_LOCK.match(rec.desc)
            if m and int(m.group(2)) == self.db:
                st, oid = self._state(int(m.group(1))), int(m.group(3))
                st.locked.add(oid)
                if oid == self.table_oid and st.locked_table_at is None:
                    st.locked_table_at = rec.lsn
        elif rec.rmgr == "Transaction":
            end = parse_xact(rec)
            if end is not None:
                self._end(end, timeline)
                return end
        return None

    def _cut_at_switch(self, at: LSN) -> None:
        for xid, st in self._open.items():
            if st.deleted or st.updated:
                self.aborted.append({"xid": xid, "time": None, "lsn": str(at), "rows_deleted": st.deleted,
                                     "rows_updated": st.updated, "why": "open at the timeline switch"})
        self._open.clear()

    def _state(self, xid: int) -> _Open:
        st = self._open.get(xid)
        if st is None:
            st = self._open[xid] = _Open()
        return st

    def _heap(self, rec: Record) -> None:
        if self.relfilenode is None or not rec.xid:
            return
        op = rec.op
        if op not in ("DELETE", "UPDATE", "HOT_UPDATE"):
            return  # INSERT, LOCK, INPLACE, CONFIRM...: no row goes away or changes
        # UPDATE's block references: the new tuple's block first, then the old one's (same relation).
        if not any(db == self.db and rel == self.relfilenode and fork == "main" for _spc, db, rel, fork in rec.blocks):
            return
        if op == "DELETE":
            m = _FLAGS.search(rec.desc)
            if m and int(m.group(1), 16) & _DELETE_IS_SUPER:
                return
            self._state(rec.xid).deleted += 1
        else:
            self._state(rec.xid).updated += 1

    def _end(self, end: XactEnd, timeline: int) -> None:
        parts = [self._open.pop(x, None) for x in (end.xid, *end.subxacts)]
        if end.committed:
            self.last_commit_time = end.time
        states = [p for p in parts if p is not None]
        deleted = sum(p.deleted for p in states)
        updated = sum(p.updated for p in states)
        if not end.committed:
            if (deleted or updated) and len(self.aborted) < self._max:
                self.aborted.append({"xid": end.xid, "time": end.time.isoformat(), "lsn": str(end.lsn),
                                     "rows_deleted": deleted, "rows_updated": updated})
            return
        if self.relfilenode is None:
            return
        ops: list[str] = []
        if deleted:
            ops.append("delete")
        if updated:
            ops.append("update")
        before = self.relfilenode
        new: int | None = None
        if (self.db, before) in end.rels:
            if (self.db, self.table_oid) in end.dropped_stats:
                ops.append("drop")
                self.relfilenode = None
                self.dropped = True
            else:
                creates = sorted(c for p in states for c in p.creates)
                # The new heap is created right after the table's ACCESS EXCLUSIVE lock is logged
                # (a CREATE TABLE earlier in the same transaction makes a file of its own first).
                lock_at = min((p.locked_table_at for p in states if p.locked_table_at is not None), default=None)
                after_lock = [c for c in creates if lock_at is not None and c[0] > lock_at]
                locked = {o for p in states for o in p.locked}
                others = sorted(locked & self.other_tables)
                if not creates:
                    self._lose(end, f"its file {before} was dropped without a new one and without dropping the table")
                elif others:
                    # TRUNCATE ... CASCADE over tables tied by foreign keys: which new file is this
                    # table's cannot be told, but the transaction itself is certain (it dropped the
                    # table's file at commit), and its target is what the on-call needs.
                    ops.append("rewrite" if any((self.db, c) in end.dropped_stats for _, c in creates) else "truncate")
                    self._lose(end, f"it rewrote several tables at once (also OIDs {', '.join(map(str, others))}); "
                                    "which new file belongs to this table cannot be told from the WAL")
                else:
                    new = (after_lock or creates)[0][1]
                    # A rewrite builds the new heap as a transient table (OID = new file number)
                    # and drops that OID's statistics at commit; TRUNCATE only swaps the file.
                    ops.append("rewrite" if (self.db, new) in end.dropped_stats else "truncate")
                    self.relfilenode = new
        self._set_needle()
        if ops:
            event = Event(end.xid, end.time, end.lsn, timeline, tuple(ops), deleted, updated, before, new)
            if self._keep is None or self._keep(event):
                if len(self.events) < self._max:
                    self.events.append(event)
                else:
                    self.omitted += 1

    def _lose(self, end: XactEnd, why: str) -> None:
        self.lost = (f"transaction {end.xid} (committed {end.time.isoformat()} at {end.lsn}) changed the table's "
                     f"files, but {why}; events after it are not reported")
        self.relfilenode = None

    def open_transactions(self) -> int:
        """Transactions that touched the table and had not ended where the walk stopped."""
        return sum(1 for s in self._open.values() if s.deleted or s.updated)


def select(events: Iterable[Event], ops: Iterable[str], since: dt.datetime | None,
           until: dt.datetime | None) -> list[Event]:
    """Events with one of ``ops`` whose commit time is within [since, until]."""
    keep = selector(ops, since, until)
    return [e for e in events if keep(e)]


def selector(ops: Iterable[str], since: dt.datetime | None, until: dt.datetime | None) -> Callable[[Event], bool]:
    wanted = set(ops)
    return lambda e: bool(wanted & set(e.ops)) and (since is None or e.commit_time >= since) and (
        until is None or e.commit_time <= until)


def parse_ops(text: str) -> tuple[str, ...]:
    """``--op delete,truncate``: validated, in the canonical order."""
    asked = {w.strip().lower() for w in text.split(",") if w.strip()}
    unknown = sorted(asked - set(OPS))
    if unknown or not asked:
        raise ValueError(f"--op: unknown operation {', '.join(unknown) or '(none)'}; choose from {', '.join(OPS)}")
    return tuple(o for o in OPS if o in asked)


def split_table(text: str) -> tuple[str, str]:
    """``SCHEMA.NAME`` (or ``NAME``: public); double quotes keep dots and case."""
    parts: list[str] = []
    cur, quoted, i = "", False, 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if quoted and i + 1 < len(text) and text[i + 1] == '"':
                cur += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch if quoted else ch.lower()
        i += 1
    parts.append(cur)
    if quoted or len(parts) > 2 or any(not p for p in parts):
        raise ValueError(f"--table: {text!r} is not SCHEMA.NAME")
    return (parts[0], parts[1]) if len(parts) == 2 else ("public", parts[0])


def describe_rows(e: Event) -> str:
    """``DELETE 3 rows, UPDATE 1 row`` / ``TRUNCATE (all rows)``."""
    bits = []
    for op in e.ops:
        if op == "delete":
            bits.append(f"DELETE {e.deleted} row{'s' if e.deleted != 1 else ''}")
        elif op == "update":
            bits.append(f"UPDATE {e.updated} row{'s' if e.updated != 1 else ''}")
        elif op == "truncate":
            bits.append("TRUNCATE (all rows; the WAL does not count them)")
        elif op == "drop":
            bits.append("DROP TABLE (all rows)")
        elif op == "rewrite":
            bits.append("rewrite (VACUUM FULL / CLUSTER / ALTER TABLE; rows kept)")
    return ", ".join(bits)


def recovery_commands(e: Event, *, schema: str, name: str, database: str, cluster: str | None,
                      repository: str | None = None, config: str | None = None) -> dict[str, Any]:
    """The target that stops recovery just before ``e`` committed, and ready-to-paste commands
    (for the repository, cluster and config file this search read)."""
    xid = ["--target-xid", str(e.xid), "--target-exclusive"]
    lsn = ["--target-lsn", str(e.commit_lsn), "--target-exclusive"]
    head = ["pgvault"] + (["--config", config] if config else []) + (["--repository", repository] if repository
                                                                      else []) + (["--cluster", cluster] if cluster else [])
    # recover-table reads --table with SQL's quoting: "Mixed Case" must reach it quoted.
    table = qualified(schema, name)
    # After a DROP the recovered copy takes the table's old name (new-table is the default mode).
    into = ["--into", name] if "drop" in e.ops else []
    # TRUNCATE, DROP and rewrites hold an ACCESS EXCLUSIVE lock until they commit: a server paused
    # just before the commit replays the lock too, so no query can read the table there.  Promoting
    # at the target ends the unfinished transaction (and its lock).
    action = ["--target-action", "promote"] if {"truncate", "drop", "rewrite"} & set(e.ops) else []
    return {
        "target": xid,
        "target_lsn": lsn,
        "restore_cluster": shlex.join(head + ["restore-cluster", "-D", "NEW_DATA_DIR", *xid, *action]),
        "recover_table": shlex.join(head + ["recover-table", "--table", table, "--database", database, *xid, *into]),
    }
