"""``pgvault wal find``: when did the rows of this table go?  Read from the archived WAL.

Template: choose the anchor (the base backup whose manifest maps the table to its heap file,
:mod:`pgvault.repository.physical`) → plan the segments from that backup's start to the end of the
archive along the newest timeline (holes refused, naming the missing segment) → fetch them through
the usual pipeline (decrypt, decompress, verify: :func:`push_fetch.fetch`) into a private temporary
directory, a batch at a time, the next batch fetched while ``pg_waldump`` (of the WAL's major, with
``TZ=UTC``) reads the current one → stream its lines into :class:`~pgvault.policy.wal_find.TableTracker`
→ delete each batch's segments once read → cross-check the table's file with the live server.

The temporary directory (mode 0700, under the system's temp directory, never the repository) is
removed on every exit path, also on Ctrl-C / SIGTERM (they unwind through ``finally``).

Batches and ``pg_waldump``: each run sees (a directory of links) only the batch's segments plus
the next one (a record crossing into it is read whole) and stops at the end of the last of them
(``-e``; without it pg_waldump would wait 5 s for the file after it, then fail); a record crossing
that end is not printed, and the next run, which starts just after the last record taken (``-s``:
pg_waldump finds the first record at or after it), prints it.  One run reads one timeline
(``-t``); the run before a timeline switch reads up to the switch point, with the child's first
file (which holds the parent's WAL up to there) under the parent's name, and the child's first
run starts at the switch point.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import io
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgvault import log
from pgvault.errors import NotFoundError, ToolError
from pgvault.operations.archive.push_fetch import fetch
from pgvault.operations.context import Context
from pgvault.pg import wal
from pgvault.pg.bindir import BinDir, available_bindirs
from pgvault.policy import wal_find as policy
from pgvault.policy.pitr import first_after_hole, reachable_end
from pgvault.repository.archive_scan import load_archive_index
from pgvault.repository.catalog import list_physical
from pgvault.repository.cluster import read_cluster_info
from pgvault.repository.physical import DatabaseRelations, PhysicalManifest, RelationEntry

# Segments per pg_waldump run: with the one being fetched ahead, at most 2 x 8 x 16 MiB on disk.
BATCH_SEGMENTS = 8
FETCH_THREADS = 2
# One pg_waldump run reads BATCH_SEGMENTS segments at ~0.5 GB/s; minutes mean it hangs.
WALDUMP_TIMEOUT = 600.0
# Commit times follow LSN order only roughly (taken before the commit record is inserted).
_TIME_SLACK = dt.timedelta(seconds=5)
_RMGRS = ("Heap", "Transaction", "Storage", "Standby")
_MISSING_FILE = re.compile(r'could not find file "([0-9A-F]{24})"')


@dataclass(frozen=True)
class FindRequest:
    schema: str
    name: str
    database: str | None = None
    ops: tuple[str, ...] = policy.DEFAULT_OPS
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    backup_id: str | None = None
    live_check: bool = True
    batch_segments: int = BATCH_SEGMENTS


@dataclass
class FindResult:
    table: str
    database: str
    table_oid: int
    anchor_backup: str
    anchor_relfilenode: int
    timeline: int
    start_lsn: str
    first_segment: str
    last_segment: str = ""
    segments_read: int = 0
    wal_bytes: int = 0
    records: int = 0
    seconds: float = 0.0
    fetch_seconds: float = 0.0  # summed over the fetching threads
    fetch_wait_seconds: float = 0.0  # spent waiting for segments not fetched yet
    waldump_seconds: float = 0.0  # pg_waldump runs, with the parsing of their output
    waldump: str = ""
    complete: bool = False  # read to the end of the archive (not stopped by --to)
    events: list[policy.Event] = field(default_factory=list)
    aborted: list[dict[str, Any]] = field(default_factory=list)
    final_relfilenode: int | None = None
    dropped: bool = False
    lost: str | None = None
    live: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table, "database": self.database, "table_oid": self.table_oid,
            "anchor_backup": self.anchor_backup, "anchor_relfilenode": self.anchor_relfilenode,
            "timeline": self.timeline, "start_lsn": self.start_lsn, "first_segment": self.first_segment,
            "last_segment": self.last_segment, "segments_read": self.segments_read, "wal_bytes": self.wal_bytes,
            "records": self.records, "seconds": round(self.seconds, 3), "fetch_seconds": round(self.fetch_seconds, 3),
            "fetch_wait_seconds": round(self.fetch_wait_seconds, 3), "waldump_seconds": round(self.waldump_seconds, 3),
            "pg_waldump": self.waldump, "complete": self.complete,
            "events": [e.to_json() for e in self.events], "aborted": self.aborted,
            "final_relfilenode": self.final_relfilenode, "dropped": self.dropped, "identity_lost": self.lost,
            "live_check": self.live, "warnings": self.warnings,
        }


def _parse_time(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def choose_anchor(backups: list[PhysicalManifest], database: str, since: dt.datetime | None,
                  backup_id: str | None) -> tuple[PhysicalManifest, DatabaseRelations]:
    """The base backup to start from, among those whose manifest maps ``database``'s tables:
    named; else the newest that started before ``since`` (none: the oldest); without ``since``
    the newest."""
    usable = [(b, m) for b in backups for m in (b.relation_maps or ()) if m.name == database]
    if backup_id is not None:
        named = [x for x in usable if x[0].backup_id == backup_id]
        if not named:
            raise NotFoundError(f"base backup {backup_id} does not exist or records no table map of database "
                                f"{database!r}", hint="base backups taken by this pgvault version record one")
        return named[0]
    if not usable:
        raise NotFoundError(
            f"no base backup records which files database {database!r}'s tables had, so the WAL cannot be tied "
            "to a table", hint="take a base backup ('pgvault basebackup'): from this version on each one records "
            "the map, and 'wal find' reads the WAL from there")
    if since is None:
        return usable[-1]
    before = [x for x in usable if _parse_time(x[0].started_at) <= since]
    return before[-1] if before else usable[0]  # --from before them all: the oldest covers the most


def waldump_for(major: int, extra: tuple[str, ...]) -> BinDir:
    """A bin directory of exactly ``major`` with pg_waldump (WAL formats differ between majors)."""
    found = available_bindirs(extra)
    for b in found:
        if b.major == major and b.program("pg_waldump").exists():
            return b
    have = ", ".join(f"{b.major} ({b.path})" for b in found) or "none"
    raise ToolError(f"no pg_waldump of PostgreSQL {major} found (the WAL is {major}'s; found bin directories: {have})",
                    hint=f"install postgresql-{major} (its server package has pg_waldump) or set postgres.bin_dirs")


def find(ctx: Context, req: FindRequest) -> FindResult:
    logger = log.get()
    t0 = time.monotonic()
    info = read_cluster_info(ctx.storage, ctx.cluster)
    if info is None:
        raise NotFoundError(f"cluster {ctx.cluster!r} has nothing in {ctx.storage.url}")
    database = req.database or ctx.conn.dbname
    anchor, dbmap = choose_anchor(list_physical(ctx.storage, ctx.cluster), database, req.since, req.backup_id)
    entry = dbmap.find(req.schema, req.name)
    if entry is None:
        raise NotFoundError(
            f"table {req.schema}.{req.name} is not in database {database!r} as of base backup {anchor.backup_id} "
            f"({anchor.started_at}): its identity in the WAL cannot be established",
            hint="check the name (SCHEMA.NAME); a table created after that backup needs a newer one (--backup)")
    if req.since is not None and _parse_time(anchor.started_at) > req.since:
        result_warning = (f"--from is before base backup {anchor.backup_id} (started {anchor.started_at}), the oldest "
                          "with a table map: transactions before it are not searched")
    else:
        result_warning = None
    seg_size = anchor.wal_segment_size
    index = load_archive_index(ctx.storage, ctx.cluster, seg_size, identities=ctx.identities)
    tli = index.newest_timeline(anchor.timeline)
    history = index.history(tli)
    if wal.timeline_of_lsn(history, tli, wal.LSN.parse(anchor.start_lsn)) != anchor.timeline:
        # The backup lies on a timeline that was abandoned before it started: follow its own.
        tli = anchor.timeline
        history = index.history(tli)
    first = wal.parse_segment_name(anchor.first_wal, seg_size)[1]
    owner = wal.segment_owner(history, tli, seg_size)
    end = reachable_end(index, tli, history, first)
    if end is None:
        raise NotFoundError(f"WAL segment {anchor.first_wal} (the start of base backup {anchor.backup_id}) is not "
                            "in the archive", hint="run 'pgvault verify --all'")
    hole = first_after_hole(index, tli, history, end)
    major = anchor.server_version_num // 10000
    bindir = waldump_for(major, ctx.settings.pg_bin_dirs)
    result = FindResult(
        table=f"{req.schema}.{req.name}", database=database, table_oid=entry.oid, anchor_backup=anchor.backup_id,
        anchor_relfilenode=entry.relfilenode, timeline=tli, start_lsn=anchor.start_lsn,
        first_segment=anchor.first_wal, waldump=str(bindir.program("pg_waldump")))
    if result_warning:
        result.warnings.append(result_warning)
    tracker = policy.TableTracker(
        db_oid=dbmap.oid, table_oid=entry.oid, relfilenode=entry.relfilenode,
        other_tables=[r.oid for r in dbmap.relations if r.relkind in policy.TABLE_KINDS],
        switches=[h.switch_lsn for h in history if h.switch_lsn > wal.LSN.parse(anchor.start_lsn)],
        keep=policy.selector(req.ops, req.since, req.until), ops=req.ops, every_commit=req.until is not None)
    names = [wal.segment_name(owner(s), s, seg_size) for s in range(first, end + 1)]
    logger.info("wal find: %s.%s (oid %d, file %d at backup %s), WAL %s..%s on timeline %d", req.schema, req.name,
                entry.oid, entry.relfilenode, anchor.backup_id, names[0], names[-1], tli)
    switch_at = {h.parent_tli: h.switch_lsn for h in history}
    _walk(ctx, req, bindir, names, seg_size, wal.LSN.parse(anchor.start_lsn), switch_at, tracker, result)
    if result.complete and hole is not None:
        missing = wal.segment_name(owner(end + 1), end + 1, seg_size)
        raise NotFoundError(
            f"the archive has a hole at {missing} (WAL after it is archived, from "
            f"{wal.segment_name(owner(hole), hole, seg_size)}): transactions after {names[-1]} cannot be searched",
            hint=f"run 'pgvault verify --all'; --to before the hole searches what precedes it ({len(tracker.events)} "
                 "matching transactions were found before it)")
    result.events = tracker.events
    if tracker.omitted:
        result.warnings.append(f"{tracker.omitted} more matching transactions are not listed (at most "
                               f"{policy.MAX_EVENTS}): narrow the search with --from/--to or --op")
    result.aborted = [a for a in tracker.aborted if a["time"] is None or _in_range(a["time"], req)]
    result.final_relfilenode, result.dropped, result.lost = tracker.relfilenode, tracker.dropped, tracker.lost
    result.records = tracker.records
    if tracker.lost:
        result.warnings.append(tracker.lost)
    if tracker.open_transactions():
        result.warnings.append(f"{tracker.open_transactions()} transaction(s) touching the table had not ended where "
                               "the archived WAL ends (still running, or not archived yet)")
    if req.live_check and result.complete and tracker.relfilenode is not None:
        result.live = _live_check(ctx, database, entry, tracker.relfilenode, result)
    result.seconds = time.monotonic() - t0
    return result


def _in_range(iso: str, req: FindRequest) -> bool:
    t = dt.datetime.fromisoformat(iso)
    return (req.since is None or t >= req.since) and (req.until is None or t <= req.until)


def _walk(ctx: Context, req: FindRequest, bindir: BinDir, names: list[str], seg_size: int, start: wal.LSN,
          switch_at: dict[int, wal.LSN], tracker: policy.TableTracker, result: FindResult) -> None:
    """Fetch ``names`` a batch ahead and run pg_waldump over each batch.  ``switch_at``: where each
    parent timeline on the way ends (the history file's switch points)."""
    batches: list[list[str]] = []
    for name in names:  # consecutive segments of one timeline
        if batches and len(batches[-1]) < max(1, req.batch_segments) and batches[-1][-1][:8] == name[:8]:
            batches[-1].append(name)
        else:
            batches.append([name])
    tmp = Path(tempfile.mkdtemp(prefix="pgvault-walfind-"))  # mode 0700
    pool = cf.ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="walfind-fetch")
    fetched: dict[str, cf.Future[float]] = {}

    def get(name: str) -> cf.Future[float]:
        if name not in fetched:
            fetched[name] = pool.submit(_fetch_one, ctx, name, tmp)
        return fetched[name]

    try:
        for name in batches[0] + (batches[1][:1] if len(batches) > 1 else []):
            get(name)
        for i, batch in enumerate(batches):
            after = batches[i + 1] if i + 1 < len(batches) else []
            for name in after[1:] + (batches[i + 2][:1] if i + 2 < len(batches) else []):
                get(name)  # the next batch downloads while pg_waldump reads this one
            waited = time.monotonic()
            for name in batch + after[:1]:
                result.fetch_seconds += get(name).result()
            result.fetch_wait_seconds += time.monotonic() - waited
            tli = int(batch[0][:8], 16)
            begin = _begin(i, batches, start, seg_size, tracker.last_lsn, switch_at)
            # pg_waldump reads on while files are there: it sees only this run's (the segments
            # fetched ahead for the next run stay out of its sight).
            view = tmp / f"run-{i}"
            view.mkdir()
            kept = [batches[i - 1][-1]] if i > 0 and batches[i - 1][-1][:8] == batch[0][:8] else []
            for name in kept + batch:
                (view / name).symlink_to(tmp / name)
            # -e: the end of the last file in the view.  Without it pg_waldump looks for the next
            # file when the last one ends, and waits 5 s for it to appear.
            if after:
                nxt = after[0]
                # Before a timeline switch the child's first file holds this timeline's WAL up to
                # the switch point: under this timeline's name it completes a record crossing into it.
                (view / wal.segment_name(tli, wal.parse_segment_name(nxt, seg_size)[1], seg_size)).symlink_to(tmp / nxt)
                seg_end = wal.segment_start_lsn(wal.parse_segment_name(nxt, seg_size)[1], seg_size) + seg_size
                end = seg_end if nxt[:8] == batch[0][:8] else switch_at[tli]
            else:
                end = wal.segment_start_lsn(wal.parse_segment_name(batch[-1], seg_size)[1], seg_size) + seg_size
            ran = time.monotonic()
            try:
                stop = _run_waldump(ctx, bindir, view, tli, begin, end, batch, after[:1], tracker, req)
            finally:
                shutil.rmtree(view, ignore_errors=True)
            result.waldump_seconds += time.monotonic() - ran
            result.segments_read += len(batch)
            result.wal_bytes += len(batch) * seg_size
            result.last_segment = batch[-1]
            # The last segment of this batch stays: the next run may start inside it.
            for name in batch[:-1]:
                (tmp / name).unlink(missing_ok=True)
            if i > 0:
                (tmp / batches[i - 1][-1]).unlink(missing_ok=True)
            if stop:
                return
        result.complete = True
    finally:
        for fut in fetched.values():
            fut.cancel()
        pool.shutdown(wait=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _begin(i: int, batches: list[list[str]], start: wal.LSN, seg_size: int, last: wal.LSN | None,
           switch_at: dict[int, wal.LSN]) -> wal.LSN:
    """Where run ``i`` starts.  On the timeline of the run before: just after the last record the
    tracker took (the records between it and the end of that run's output were of no interest, so
    reading them again counts nothing twice), but not before that run's last segment, the only
    one kept.  On a new timeline: at the switch point (the run before read up to it)."""
    if i == 0:
        return start
    kept = batches[i - 1][-1]
    if kept[:8] != batches[i][0][:8]:
        return switch_at[int(kept[:8], 16)]
    floor = wal.segment_start_lsn(wal.parse_segment_name(kept, seg_size)[1], seg_size)
    return max(last + 1, floor) if last is not None else floor


def _fetch_one(ctx: Context, name: str, tmp: Path) -> float:
    t = time.monotonic()
    fetch(ctx, name, str(tmp / name), pgdata=str(tmp), foreground=False)
    return time.monotonic() - t


def _run_waldump(ctx: Context, bindir: BinDir, view: Path, tli: int, begin: wal.LSN, end: wal.LSN,
                 batch: list[str], next_one: list[str], tracker: policy.TableTracker, req: FindRequest) -> bool:
    """One pg_waldump run; True when the walk can stop (past ``--to``, or the table is gone)."""
    args = ["-p", str(view), "-t", str(tli), "-s", str(begin), "-e", str(end)]
    for rmgr in _RMGRS:
        args += ["-r", rmgr]
    # pg_waldump prints commit times in its own time zone: UTC, always.
    env = {**{k: v for k, v in ctx.environ.items() if not k.startswith("PG")}, "TZ": "UTC", "LC_ALL": "C"}
    env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    proc = ctx.runner.using(bindir).start("pg_waldump", args, env=env)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        if proc.popen.poll() is None:
            proc.popen.kill()

    timer = threading.Timer(WALDUMP_TIMEOUT, kill)
    timer.daemon = True
    timer.start()
    stop = False
    printed = 0
    try:
        until = req.until + _TIME_SLACK if req.until else None
        # The pipe is unbuffered: line iteration over it would read byte by byte.
        raw: Any = proc.stdout  # a raw pipe (Popen bufsize=0)
        lines = io.TextIOWrapper(io.BufferedReader(raw, 1 << 20), encoding="utf-8", errors="replace")
        for line in lines:
            printed += 1
            ended = tracker.feed_line(line, tli)
            if ended is not None and ended.committed and until is not None and ended.time > until:
                stop = True
                break
            if tracker.dropped or tracker.lost:
                stop = True
                break
    except BaseException:
        proc.kill()
        raise
    finally:
        timer.cancel()
    if stop:
        proc.kill()
        return True
    rc = proc.wait(timeout=60)
    if timed_out.is_set():
        raise ToolError(f"pg_waldump did not finish {batch[0]}..{batch[-1]} within {WALDUMP_TIMEOUT:g}s (killed)")
    if rc != 0:
        _judge_failure(proc.stderr_text(), batch, next_one, printed)
    return False


def _judge_failure(stderr: str, batch: list[str], next_one: list[str], printed: int) -> None:
    """pg_waldump ends every run with an error (it reads until a file is missing): fine when the
    file is past what this run was given, or WAL simply ends in the last file; anything else is not."""
    text = stderr.strip()
    m = _MISSING_FILE.search(text)
    given = batch + next_one
    if m and m.group(1) not in given and m.group(1)[8:] > batch[-1][8:]:
        return  # past the batch (the next one on this timeline, or the child's at a switch)
    if printed and "error in WAL record" in text and not m:
        return  # the WAL ends inside the last file (zeros after the last record)
    tail = " | ".join(text.splitlines()[-3:]) or "(no output)"
    raise ToolError(f"pg_waldump failed reading {batch[0]}..{batch[-1]}: {tail}",
                    hint="a pg_waldump of another major than the WAL's fails like this; or the segments are damaged "
                         "('pgvault verify --all')")


def _live_check(ctx: Context, database: str, entry: RelationEntry, relfilenode: int,
                result: FindResult) -> dict[str, Any]:
    """The live server's view of the table now, compared with where the WAL walk ended."""
    from pgvault.pg.conn import connect

    try:
        conn = connect(ctx.conn, dbname=database)
    except Exception as e:  # noqa: BLE001 - the server may be down (that is often why we are here)
        return {"checked": False, "reason": getattr(e, "message", str(e))}
    try:
        conn.execute("SET statement_timeout = '30s'")
        row = conn.execute("SELECT c.oid::int8, pg_relation_filenode(c.oid)::int8 FROM pg_class c JOIN pg_namespace n"
                           " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                           (entry.schema, entry.name)).fetchone()
    except Exception as e:  # noqa: BLE001
        return {"checked": False, "reason": str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}
    finally:
        conn.close()
    if row is None:
        result.warnings.append(f"the live server has no table {entry.schema}.{entry.name} now, but the archived WAL "
                               "shows no DROP: it was dropped after the last archived segment, or renamed")
        return {"checked": True, "exists": False, "matches": False}
    oid, live_file = int(row[0]), int(row[1])
    matches = oid == entry.oid and live_file == relfilenode
    if not matches:
        result.warnings.append(
            f"the live server's {entry.schema}.{entry.name} is OID {oid} with file {live_file}; the WAL walk ended at "
            f"OID {entry.oid} with file {relfilenode}: the table was rewritten or recreated after the last archived "
            "segment, or the walk lost it; treat the result as uncertain")
    return {"checked": True, "exists": True, "oid": oid, "relfilenode": live_file, "matches": matches}
