"""Logical backups: ``pg_dump`` of one, several or all databases plus the cluster globals.

Each database is dumped in pg_dump's custom format (selective and parallel ``pg_restore``) with
pg_dump's own compression off, so our pipeline compresses it once, with zstd, in another thread
than pg_dump.  The bytes flow pg_dump → digest → compress → encrypt → digest → repository object;
nothing is buffered whole and nothing unencrypted touches local disk.

Row counts are exact and describe precisely the rows in the archive: they are counted in the
archive itself as it streams past (:mod:`pgvault.pg.dump_archive`: one line of COPY text per row),
at no cost to the server.  We open a REPEATABLE READ transaction, export its snapshot and hand it
to ``pg_dump --snapshot``; a table the streams cannot account for is counted with count(*) in that
same transaction once every pg_dump is done, so the counts are exact either way.

``--jobs N`` splits a database over up to N pg_dump processes that all import that one snapshot
(``policy.parallel_dump``: a main dump of everything but the data other parts take, and data-only
parts of the largest tables).  Before exporting the snapshot the transaction takes ACCESS SHARE
locks on every table a part dumps: LOCK TABLE takes no snapshot, so the snapshot comes after the
locks and no part's table can be altered or dropped under it until the backup ends.  Each object
commits when its own pg_dump succeeded; if any fails, the others are stopped and no manifest is
written (the committed parts are debris of a backup that does not exist, swept by ``expire``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

import pgvault
from pgvault import log
from pgvault.errors import NotFoundError, ToolError, UsageError
from pgvault.operations.context import Context
from pgvault.operations.logical import dbprops
from pgvault.operations.parallel import run_parallel
from pgvault.operations.progress import CountingReader
from pgvault.pg.bindir import bindir_for_server
from pgvault.pg.conn import ServerFacts, connect, connection, list_databases, server_facts
from pgvault.pg.dump_archive import ArchiveFormatError, RowCounter
from pgvault.pg.runner import Process, Runner, kill_all
from pgvault.pipeline import PipelineSpec, write_stream
from pgvault.pipeline.digest import SupportsRead
from pgvault.policy.parallel_dump import DumpPlan, TableSize, plan_shares
from pgvault.procs import hostname
from pgvault.repository import catalog, layout
from pgvault.repository.cluster import ensure_cluster
from pgvault.repository.locks import RepositoryLock
from pgvault.repository.manifest import DatabaseEntry, DumpPart, LogicalManifest, StoredObject, TableCount
from pgvault.storage import Storage

LOCK_OPERATION = "logical-backup"
#: Tables smaller than this stay in the main dump of ``--jobs N``: a pg_dump process of its own
#: (connection, catalog reads, an object) costs more than dumping a few megabytes.
PART_MIN_BYTES = 16 * 1024 * 1024
#: Times the tables are listed and locked again when one vanished in between (a DROP TABLE).
_LOCK_ATTEMPTS = 3

# Sizes for ``--jobs`` come from the statistics (pages of the table and its TOAST table, as pg_dump -j
# orders its work), not pg_table_size(), which would wait for the lock of a table under ALTER.
# Ordinary tables only: partitioned parents hold no rows of their own (their leaves are counted),
# views and foreign tables are not dumped as data, and extension member tables are skipped by
# pg_dump unless the extension marks them as configuration.
_TABLES_SQL = """
SELECT n.nspname, c.relname, greatest(c.reltuples, 0)::bigint,
       (c.relpages::bigint + coalesce(t.relpages, 0)) * current_setting('block_size')::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class BackupRequest:
    """What to back up."""

    databases: tuple[str, ...] = ()
    all_databases: bool = False
    include_globals: bool = True
    exact_row_counts: bool = True
    counts_from: str = "dump"  # backup.row_counts_from: "dump" (the archive stream) or "snapshot" (count(*))
    jobs: int = 1  # pg_dump processes per database, sharing one snapshot


@dataclass
class _DumpPlan:
    facts: ServerFacts
    databases: list[str]
    db_meta: dict[str, tuple[str, str, str, int]] = field(default_factory=dict)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _plan(ctx: Context, req: BackupRequest) -> _DumpPlan:
    if req.all_databases and req.databases:
        raise UsageError("give either --all or --database, not both")
    if not req.all_databases and not req.databases:
        raise UsageError("nothing to back up: give --database NAME (repeatable) or --all")
    if req.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {req.jobs}")
    with connection(ctx.conn) as conn:
        facts = server_facts(conn)
        existing = list_databases(conn)
        if req.all_databases:
            dbs = existing
        else:
            missing = [d for d in req.databases if d not in existing]
            if missing:
                raise NotFoundError(
                    f"database {', '.join(repr(m) for m in missing)} does not exist on {ctx.conn.describe()}",
                    hint=f"databases there: {', '.join(existing)}",
                )
            dbs = list(dict.fromkeys(req.databases))
        rows = conn.execute(
            "SELECT datname, pg_encoding_to_char(encoding), datcollate, datctype, pg_database_size(oid)"
            " FROM pg_database"
        ).fetchall()
    meta = {str(r[0]): (str(r[1]), str(r[2]), str(r[3]), int(r[4])) for r in rows}
    return _DumpPlan(facts, dbs, meta)


# pg_dump's pipe: Linux's default 64 KiB fills while this thread compresses and hashes one 1 MiB
# piece, and pg_dump (then its server backend, whose COPY output blocks on the socket) stalls.
# 1 MiB is what an unprivileged process may ask for (/proc/sys/fs/pipe-max-size's default).
_PIPE_SIZE = 1 << 20


def _widen_pipe(pipe: Any) -> None:
    try:
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
    except (OSError, AttributeError, ValueError):
        pass  # not Linux, or a lower limit: the default pipe works, only slower


def _stream_process(
    proc: Process,
    storage: Storage,
    key: str,
    spec: PipelineSpec,
    threads: int,
    label: str,
    *,
    before_commit: Callable[[], None] = lambda: None,
    wrap: Callable[[SupportsRead], SupportsRead] = lambda source: source,
) -> StoredObject:
    """Stream a program's stdout through the pipeline into ``key``; commit only if it succeeded.

    ``wrap`` may put an observer between the program and the pipeline (it runs in this thread)."""
    name = key.rsplit("/", 1)[-1]
    _widen_pipe(proc.stdout)
    try:
        with storage.open_write(key) as writer:
            result = write_stream(wrap(CountingReader(proc.stdout, label)), writer, spec, threads=threads)
            proc.check()
            before_commit()
    except BaseException:
        proc.kill()
        raise
    return StoredObject(name=label, key=name, result=result)


def _dump_globals(ctx: Context, runner: Runner, prefix: str, spec: PipelineSpec, superuser: bool) -> StoredObject:
    args = ["--globals-only", "--no-password"]
    if not superuser:
        # pg_authid (role passwords) is readable by superusers only.
        args.append("--no-role-passwords")
    proc = runner.start("pg_dumpall", args, env=ctx.child_env())
    key = prefix + layout.globals_object(spec.suffix())
    return _stream_process(proc, ctx.storage, key, spec, ctx.settings.compression_threads, "globals")


class _RowCountingReader:
    """pg_dump's stdout as the pipeline pulls it, every byte shown to the archive's row counter.

    The counter never changes or holds the bytes; a format it cannot follow only switches it off
    (``error``), and the backup then counts those tables in the snapshot instead."""

    def __init__(self, source: SupportsRead) -> None:
        self._source = source
        self.counter = RowCounter()
        self.error: ArchiveFormatError | None = None

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        if data and self.error is None:
            try:
                self.counter.feed(data)
            except ArchiveFormatError as exc:
                self.error = exc
        return data

    def rows(self) -> dict[tuple[str, str], int]:
        """Rows per (schema, table) of the archive's TABLE DATA blocks; {} if it could not tell."""
        if self.error is None:
            try:
                return {(t.schema, t.name): t.rows for t in self.counter.finish()}
            except ArchiveFormatError as exc:
                self.error = exc
        return {}


def _count_in_snapshot(conn: psycopg.Connection[Any], schema: str, name: str) -> int:
    q = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    row = conn.execute(q).fetchone()
    return int(row[0]) if row else 0


def _row_counts(
    snap: psycopg.Connection[Any],
    db: str,
    tables: Sequence[tuple[str, str, int]],
    streams: Sequence[_RowCountingReader] | None,
) -> list[TableCount]:
    """The manifest's counts: from the archives themselves when exact, else the planner's estimates.

    ``streams`` are the readers of the database's dumps (the main one and the ``--jobs`` parts).  A
    table no stream holds exactly one data block for, or every table of a stream the counter could
    not read, is counted with count(*) in the dump's snapshot (still open, every pg_dump done), so
    the counts stay exact either way; only the cost differs."""
    if streams is None:
        return [TableCount(schema, name, estimate) for schema, name, estimate in tables]
    archived: dict[tuple[str, str], int] = {}
    seen_twice: set[tuple[str, str]] = set()
    for stream in streams:
        rows = stream.rows()
        if stream.error is not None:
            log.get().warning("%s: counting rows in the snapshot instead of the dump stream (%s)", db, stream.error)
        seen_twice.update(archived.keys() & rows.keys())
        archived.update(rows)
    counts = []
    for schema, name, _ in tables:
        counted = None if (schema, name) in seen_twice else archived.get((schema, name))
        counts.append(TableCount(schema, name, _count_in_snapshot(snap, schema, name) if counted is None else counted))
    return counts


class _SnapshotCounter(threading.Thread):
    """``backup.row_counts_from: snapshot``: count(*) of every table in the exporting transaction,
    beside the pg_dumps that imported its snapshot (server CPU and reads instead of client CPU)."""

    def __init__(self, snap: psycopg.Connection[Any], db: str, tables: Sequence[tuple[str, str, int]]) -> None:
        super().__init__(name="row-counter", daemon=True)
        self._snap, self._db, self._tables = snap, db, tables
        self.counts: list[TableCount] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.counts = _row_counts(self._snap, self._db, self._tables, [])
        except BaseException as exc:  # noqa: BLE001 - handed to the dumping thread
            self.error = exc

    def result(self) -> list[TableCount]:
        self.join()
        if isinstance(self.error, psycopg.Error):
            raise ToolError(f"counting rows of database {self._db!r} failed: {self.error}") from self.error
        if self.error is not None:
            raise self.error
        return self.counts

    def stop(self) -> None:
        """The backup failed: cancel a count in flight and wait for the thread to leave the connection."""
        if self.is_alive():
            self._snap.cancel_safe()
            self.join(30)


def _table_sizes(ctx: Context, db: str) -> list[TableSize]:
    with connection(ctx.conn, dbname=db) as conn:
        return [TableSize(str(r[0]), str(r[1]), int(r[3] or 0)) for r in conn.execute(_TABLES_SQL).fetchall()]


def _lock_and_export(ctx: Context, snap: psycopg.Connection[Any], db: str, jobs: int) -> tuple[str, DumpPlan]:
    """Plan the parts, lock their tables, then export the snapshot (in that order: see the module doc)."""
    for attempt in range(1, _LOCK_ATTEMPTS + 1):
        plan = plan_shares(_table_sizes(ctx, db), jobs, min_bytes=PART_MIN_BYTES) if jobs > 1 else plan_shares([], 1)
        locked = [t for share in plan.shares[1:] for t in share.tables]
        try:
            if locked:
                names = sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in locked)
                snap.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(names))
            row = snap.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            return str(row[0]), plan
        except psycopg.errors.UndefinedTable:
            snap.rollback()
            if attempt == _LOCK_ATTEMPTS:
                raise
            log.get().info("%s: a table was dropped while the backup planned its parts; planning again", db)
    raise AssertionError("unreachable")


def _dump_database(
    ctx: Context,
    runner: Runner,
    prefix: str,
    spec: PipelineSpec,
    db: str,
    meta: tuple[str, str, str, int],
    exact: bool,
    jobs: int = 1,
    counts_from: str = "dump",
) -> DatabaseEntry:
    snap = connect(ctx.conn, dbname=db, autocommit=False)
    procs: list[Process] = []
    counter: _SnapshotCounter | None = None
    try:
        snap.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snap.read_only = True
        snapshot, plan = _lock_and_export(ctx, snap, db, jobs)
        tables = [(str(r[0]), str(r[1]), int(r[2])) for r in snap.execute(_TABLES_SQL).fetchall()]
        # Owner, privileges, settings...: pg_restore would apply them only under the original
        # name (--create); read in the dump's snapshot so they match the dumped contents.
        properties = dbprops.read(snap, db)
        base_args = ["--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password"]
        # One row counter per pg_dump, fed in the thread that pumps that pg_dump's stdout (or
        # count(*) beside them, backup.row_counts_from: snapshot).
        streams: list[_RowCountingReader] | None = [] if exact and counts_from == "dump" else None

        def counting(source: SupportsRead) -> SupportsRead:
            if streams is None:
                return source
            streams.append(_RowCountingReader(source))
            return streams[-1]

        def streamer(args: list[str], key: str, label: str) -> Callable[[], StoredObject]:
            proc = runner.start("pg_dump", [*base_args, *args], env=ctx.child_env(db))
            procs.append(proc)
            return lambda: _stream_process(
                proc, ctx.storage, prefix + key, spec, ctx.settings.compression_threads, label, wrap=counting
            )

        tasks = [streamer(plan.main_args(), layout.database_object(db, spec.suffix()), db)]
        tasks += [
            streamer(plan.data_args(i), layout.database_part_object(db, i, spec.suffix()), f"{db} (part {i})")
            for i in range(1, plan.jobs)
        ]
        if exact and counts_from == "snapshot":
            counter = _SnapshotCounter(snap, db, tables)
            counter.start()
        if len(tasks) == 1:
            objs = [tasks[0]()]
        else:
            objs = run_parallel(tasks, len(tasks), abort=lambda: kill_all(procs))
        # Before the manifest (the backup's commit point): a failure to count leaves no backup.
        if counter is not None:
            counts = counter.result()
        else:
            try:
                counts = _row_counts(snap, db, tables, streams)
            except psycopg.Error as exc:
                raise ToolError(f"counting rows of database {db!r} failed: {exc}") from exc
    except BaseException:
        kill_all(procs)  # some may have started but never reached a stream (a later start failed)
        if counter is not None:
            counter.stop()
        raise
    finally:
        snap.close()
    encoding, collate, ctype, size = meta
    parts = tuple(
        DumpPart(object=obj, tables=tuple((t.schema, t.name) for t in share.tables))
        for obj, share in zip(objs[1:], plan.shares[1:], strict=True)
    )
    return DatabaseEntry(
        name=db,
        object=objs[0],
        encoding=encoding,
        collate=collate,
        ctype=ctype,
        size_bytes=size,
        row_counts_exact=exact,
        tables=tuple(counts),
        properties=properties,
        parts=parts,
    )


def backup(ctx: Context, req: BackupRequest) -> LogicalManifest:
    """Run one logical backup and return its manifest (already stored, written last)."""
    logger = log.get()
    plan = _plan(ctx, req)
    bindir = bindir_for_server(plan.facts.major, ctx.settings.pg_bin_dirs)
    runner = ctx.runner.using(bindir)
    pg_dump_version = runner.version("pg_dump", ctx.environ)
    spec = ctx.settings.pipeline()
    ctx.storage.check_writable()
    ensure_cluster(ctx.storage, ctx.cluster, system_identifier=plan.facts.system_identifier, server_major=plan.facts.major)
    with RepositoryLock(ctx.storage, ctx.cluster, LOCK_OPERATION):
        started = _utcnow()
        t0 = time.monotonic()
        backup_id = catalog.free_backup_id(ctx.storage, lambda i: layout.logical_prefix(ctx.cluster, i), started)
        prefix = layout.logical_prefix(ctx.cluster, backup_id)
        logger.info(
            "backup %s of %s (%s) to %s using %s",
            backup_id, ", ".join(plan.databases), plan.facts.version, ctx.storage.url, pg_dump_version,
        )
        globals_obj = _dump_globals(ctx, runner, prefix, spec, plan.facts.is_superuser) if req.include_globals else None
        entries = []
        for db in plan.databases:
            entry = _dump_database(ctx, runner, prefix, spec, db, plan.db_meta[db], req.exact_row_counts, req.jobs,
                                  req.counts_from)
            logger.info(
                "%s: %d bytes dumped, %d stored, %d tables, %d object(s)", db, entry.raw_size,
                entry.stored_size, len(entry.tables), len(entry.objects()),
            )
            entries.append(entry)
        manifest = LogicalManifest(
            backup_id=backup_id,
            cluster=ctx.cluster,
            system_identifier=plan.facts.system_identifier,
            server_version=plan.facts.version,
            server_version_num=plan.facts.version_num,
            pg_dump_version=pg_dump_version,
            client_bindir=str(bindir.path),
            started_at=started.isoformat(),
            finished_at=_utcnow().isoformat(),
            duration_seconds=time.monotonic() - t0,
            pipeline=spec,
            host=hostname(),
            pgvault_version=pgvault.__version__,
            databases=tuple(entries),
            globals=globals_obj,
        )
        # Written last: until this object exists the backup does not exist.
        with ctx.storage.open_write(prefix + layout.MANIFEST_NAME) as w:
            w.write(manifest.dumps())
    return manifest
