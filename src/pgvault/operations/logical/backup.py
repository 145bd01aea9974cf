"""Logical backups: ``pg_dump`` of one, several or all databases plus the cluster globals.

Each database is dumped in pg_dump's custom format (selective and parallel ``pg_restore``) with
pg_dump's own compression off, so our pipeline compresses it once, with zstd, in another thread
than pg_dump.  The bytes flow pg_dump → digest → compress → encrypt → digest → repository object;
nothing is buffered whole and nothing unencrypted touches local disk.

Row counts are exact and describe precisely the rows in the archive: they are counted in the
archive itself as it streams past (:mod:`pgvault.pg.dump_archive`: one line of COPY text per row),
at no cost to the server.  We open a REPEATABLE READ transaction, export its snapshot and hand it
to ``pg_dump --snapshot``; a table the stream cannot account for is counted with count(*) in that
same transaction once pg_dump is done, so the counts are exact either way.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

import pgvault
from pgvault import log
from pgvault.errors import NotFoundError, PgvaultError, ToolError, UsageError
from pgvault.operations.context import Context
from pgvault.operations.logical import dbprops
from pgvault.operations.progress import CountingReader
from pgvault.pg.bindir import bindir_for_server
from pgvault.pg.conn import ServerFacts, connect, connection, list_databases, server_facts
from pgvault.pg.dump_archive import ArchiveFormatError, RowCounter
from pgvault.pg.runner import Process, Runner
from pgvault.pipeline import PipelineSpec, write_stream
from pgvault.pipeline.digest import SupportsRead
from pgvault.procs import hostname
from pgvault.repository import layout
from pgvault.repository.cluster import ensure_cluster
from pgvault.repository.locks import RepositoryLock
from pgvault.repository.manifest import DatabaseEntry, LogicalManifest, StoredObject, TableCount
from pgvault.storage import ObjectNotFound, Storage

LOCK_OPERATION = "logical-backup"

# Ordinary tables only: partitioned parents hold no rows of their own (their leaves are counted),
# views and foreign tables are not dumped as data, and extension member tables are skipped by
# pg_dump unless the extension marks them as configuration.
_TABLES_SQL = """
SELECT n.nspname, c.relname, greatest(c.reltuples, 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
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


def _new_id(storage: Storage, cluster: str, now: dt.datetime) -> str:
    for seq in range(0, 100):
        backup_id = layout.new_backup_id(now, seq)
        try:
            storage.stat(layout.logical_prefix(cluster, backup_id) + layout.MANIFEST_NAME)
        except ObjectNotFound:
            return backup_id
    raise PgvaultError("could not allocate a backup id")


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
    snap: psycopg.Connection[Any], db: str, tables: Sequence[tuple[str, str, int]], stream: _RowCountingReader | None
) -> list[TableCount]:
    """The manifest's counts: from the archive itself when exact, else the planner's estimates.

    A table the archive holds no data block for, or every table when the counter could not read
    the archive, is counted with count(*) in the dump's snapshot (still open), so the counts stay
    exact either way; only the cost differs."""
    if stream is None:
        return [TableCount(schema, name, estimate) for schema, name, estimate in tables]
    archived = stream.rows()
    if stream.error is not None:
        log.get().warning("%s: counting rows in the snapshot instead of the dump stream (%s)", db, stream.error)
    counts = []
    for schema, name, _ in tables:
        rows = archived.get((schema, name))
        counts.append(TableCount(schema, name, _count_in_snapshot(snap, schema, name) if rows is None else rows))
    return counts


def _dump_database(
    ctx: Context, runner: Runner, prefix: str, spec: PipelineSpec, db: str, meta: tuple[str, str, str, int], exact: bool
) -> DatabaseEntry:
    snap = connect(ctx.conn, dbname=db, autocommit=False)
    try:
        snap.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snap.read_only = True
        row = snap.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        tables = [(str(r[0]), str(r[1]), int(r[2])) for r in snap.execute(_TABLES_SQL).fetchall()]
        # Owner, privileges, settings...: pg_restore would apply them only under the original
        # name (--create); read in the dump's snapshot so they match the dumped contents.
        properties = dbprops.read(snap, db)
        proc = runner.start(
            "pg_dump", ["--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password"], env=ctx.child_env(db)
        )
        stream: _RowCountingReader | None = None

        def counting(source: SupportsRead) -> SupportsRead:
            nonlocal stream
            stream = _RowCountingReader(source) if exact else None
            return stream or source

        counts: list[TableCount] = []

        def count_rows() -> None:
            # Before the object is committed: a failure to count leaves no backup behind.
            try:
                counts.extend(_row_counts(snap, db, tables, stream))
            except psycopg.Error as exc:
                raise ToolError(f"counting rows of database {db!r} failed: {exc}") from exc

        key = prefix + layout.database_object(db, spec.suffix())
        obj = _stream_process(
            proc, ctx.storage, key, spec, ctx.settings.compression_threads, db, before_commit=count_rows, wrap=counting
        )
    finally:
        snap.close()
    encoding, collate, ctype, size = meta
    return DatabaseEntry(
        name=db,
        object=obj,
        encoding=encoding,
        collate=collate,
        ctype=ctype,
        size_bytes=size,
        row_counts_exact=exact,
        tables=tuple(counts),
        properties=properties,
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
        backup_id = _new_id(ctx.storage, ctx.cluster, started)
        prefix = layout.logical_prefix(ctx.cluster, backup_id)
        logger.info(
            "backup %s of %s (%s) to %s using %s",
            backup_id, ", ".join(plan.databases), plan.facts.version, ctx.storage.url, pg_dump_version,
        )
        globals_obj = _dump_globals(ctx, runner, prefix, spec, plan.facts.is_superuser) if req.include_globals else None
        entries = []
        for db in plan.databases:
            entry = _dump_database(ctx, runner, prefix, spec, db, plan.db_meta[db], req.exact_row_counts)
            logger.info(
                "%s: %d bytes dumped, %d stored, %d tables", db, entry.object.result.raw_size,
                entry.object.result.stored_size, len(entry.tables),
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
