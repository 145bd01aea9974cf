"""Restoring a logical backup: a whole database, or selected tables, verified against the manifest.

Nothing existing is lost on a bad backup, a failure or a kill:
- a whole database (new, or over an existing one with ``--clean``) is restored under a scratch
  name, verified, given the recorded database properties (owner, privileges, settings: see
  ``dbprops``) and only then renamed to its target in one transaction, which moves an existing
  target aside in the same breath; the old database is dropped last (``restore_scratch``);
- selected tables over an existing database: one transaction, committed only after the whole
  object was verified.  The stream feeding pg_restore is verified (age and zstd authenticate
  every chunk, sha256 at the end) before pg_restore's stdin is closed; on a mismatch pg_restore
  is killed before it can commit.

What killed restores leave behind (scratch databases, decrypted spool files) is swept by the next
restore once their process is gone.

``--jobs N`` needs a seekable archive (pg_restore cannot restore in parallel from a pipe), so the
verified, decrypted archive is spooled to a private temporary file and deleted afterwards.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgvault import log
from pgvault.errors import (
    DatabaseError,
    NotFoundError,
    PgvaultError,
    TargetExistsError,
    UsageError,
    VerificationError,
)
from pgvault.operations.context import Context
from pgvault.operations.logical import dbprops
from pgvault.operations.logical.scratch import (
    Identity,
    SpoolFile,
    check_sessions,
    drop_database,
    drop_quietly,
    put_in_place,
    scratch_name,
    sweep_databases,
    sweep_files,
)
from pgvault.operations.parallel import run_parallel
from pgvault.pg.bindir import bindir_for_server, parse_major
from pgvault.pg.conn import connection, database_exists, server_facts
from pgvault.pg.runner import Process, Runner, kill_all
from pgvault.pipeline import read_stream
from pgvault.policy import toc
from pgvault.repository import layout
from pgvault.repository.catalog import resolve_logical
from pgvault.repository.manifest import DatabaseEntry, DumpPart, LogicalManifest, StoredObject, TableCount


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore and how."""

    ref: str
    database: str
    target_database: str | None = None
    clean: bool = False
    tables: tuple[str, ...] = ()
    jobs: int = 1
    disable_triggers: bool = False
    restore_globals: bool = False
    force: bool = False
    no_owner: bool = False
    scratch_dir: str | None = None
    # An upgrade rehearsal wants every entry the new major refuses, not just the first: pg_restore
    # goes on after errors, which are collected (``RestoreResult.restore_errors``), not raised.
    keep_going: bool = False


@dataclass(frozen=True)
class CountCheck:
    """One table's row count: what the manifest says and what the restored database has."""

    table: str
    expected: int
    actual: int | None

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass
class RestoreResult:
    """Outcome of a restore, for rendering."""

    backup_id: str
    database: str
    target_database: str
    tables: tuple[str, ...]
    duration_seconds: float = 0.0
    counts_exact: bool = True
    checks: list[CountCheck] = field(default_factory=list)
    pg_restore_version: str = ""
    properties: dbprops.Outcome | None = None  # None: selected tables into an existing database
    swept: list[str] = field(default_factory=list)  # leftovers of killed restores removed first
    restore_errors: list[str] = field(default_factory=list)  # keep_going: what pg_restore skipped, per entry

    @property
    def verified(self) -> bool:
        return all(c.ok for c in self.checks)


class _ProcessSink:
    """A program's stdin as a pipeline sink that tolerates the program exiting early."""

    def __init__(self, proc: Process, tee: SpoolFile | None = None) -> None:
        self.proc = proc
        self.tee = tee
        self.broken = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.tee is not None:
            self.tee.write(data)
        if not self.broken:
            try:
                self.proc.stdin.write(data)
            except BrokenPipeError:
                self.broken = True
        return len(data)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass


def _relation_exists(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    q = sql.SQL("SELECT to_regclass({})").format(sql.Literal(sql.Identifier(schema, name).as_string(None)))
    row = conn.execute(q).fetchone()
    return row is not None and row[0] is not None


def _table_keys(name: str) -> list[tuple[str, str]]:
    """Every (schema, table) ``name`` can mean: split at each dot (names may hold dots), or the bare
    name in public."""
    keys = [(name[:i], name[i + 1:]) for i, c in enumerate(name) if c == "."]
    return [*keys, ("public", name)]


def _selected(entry: DatabaseEntry, tables: tuple[str, ...]) -> list[TableCount]:
    if not tables:
        return list(entry.tables)
    known = {(t.schema, t.name): t for t in entry.tables}
    chosen = []
    for name in tables:
        matches = [k for k in dict.fromkeys(_table_keys(name)) if k in known]
        if not matches:
            raise NotFoundError(
                f"table {name} is not in backup of database {entry.name!r}",
                hint="'pgvault show ID' lists the tables of a backup",
            )
        if len(matches) > 1:
            raise UsageError(f"--table {name} is ambiguous: it could be "
                             + " or ".join(f"table {t!r} in schema {s!r}" for s, t in matches))
        chosen.append(known[matches[0]])
    return chosen


def _create_database(conn: psycopg.Connection[Any], name: str, entry: DatabaseEntry, tablespace: str | None) -> None:
    ident = sql.Identifier(name)
    where = sql.SQL(" TABLESPACE {}").format(sql.Identifier(tablespace)) if tablespace else sql.SQL("")
    try:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}{}").format(
                ident, sql.Literal(entry.encoding), sql.Literal(entry.collate), sql.Literal(entry.ctype), where
            )
        )
    except psycopg.errors.InvalidParameterValue:
        # The source's locale may not exist on this machine; fall back to the server default.
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {}{}").format(ident, sql.Literal(entry.encoding), where))
    except psycopg.Error as e:
        raise DatabaseError(f"cannot create database {name!r}: {str(e).strip()}") from None


class _Restorer:
    def __init__(self, ctx: Context, manifest: LogicalManifest, req: RestoreRequest, me: Identity) -> None:
        self.ctx = ctx
        self.manifest = manifest
        self.req = req
        self.me = me
        self.identities = ctx.identities() if manifest.pipeline.encryption != "none" else []
        self.prefix = layout.logical_prefix(ctx.cluster, manifest.backup_id)
        self.errors: list[str] = []  # keep_going: the entries pg_restore could not restore

    def open_object(self, obj: StoredObject) -> BinaryIO:
        return self.ctx.storage.open_read(self.prefix + obj.key)

    def stream_into(self, obj: StoredObject, proc: Process, *, tee: SpoolFile | None = None) -> None:
        """Feed a verified object into ``proc``'s stdin; kill it on any problem so nothing commits.

        A program may exit before reading everything (pg_restore stops once it has what a table
        selection needs); the rest of the stream is still read and verified, then the program's
        own exit status decides.
        """
        sink = _ProcessSink(proc, tee)
        try:
            with self.open_object(obj) as src:
                read_stream(src, sink, self.manifest.pipeline, identities=self.identities, expected=obj.result)
        except BaseException:
            proc.kill()
            raise
        sink.close()

    def new_spool(self, obj: StoredObject) -> SpoolFile:
        return SpoolFile(self.me, "restore", self.req.scratch_dir, ".dump", needed=obj.result.raw_size)

    def spool(self, obj: StoredObject) -> SpoolFile:
        """Verify the whole object into a private temporary file."""
        out = self.new_spool(obj)
        try:
            with self.open_object(obj) as src:
                read_stream(src, out, self.manifest.pipeline, identities=self.identities, expected=obj.result)
            out.close()
        except BaseException:
            out.remove()
            raise
        return out

    def restore_globals(self, runner: Runner) -> None:
        if self.manifest.globals is None:
            raise NotFoundError(f"backup {self.manifest.backup_id} has no globals")
        # ON_ERROR_STOP stays off: "role ... already exists" is expected on a live server.
        proc = runner.start("psql", ["-X", "-q", "-f", "-"], env=self.ctx.child_env("postgres"), stdin=True, stdout=False)
        self.stream_into(self.manifest.globals, proc)
        proc.check("(globals)")
        errors = [ln for ln in proc.stderr_text().splitlines() if "ERROR" in ln]
        if errors:
            log.get().warning("globals restored with %d error(s), e.g. %s", len(errors), errors[0])

    def _env(self, target: str) -> dict[str, str]:
        env = self.ctx.child_env(target)
        if self.req.disable_triggers:
            # Loads without firing user triggers or FK checks; needs superuser (like pg_restore's
            # --disable-triggers, but for the whole session and every table).
            env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " -c session_replication_role=replica").strip()
        return env

    def _ownership_args(self) -> list[str]:
        return ["--no-owner", "--no-privileges"] if self.req.no_owner else []

    def _finish(self, proc: Process, what: str) -> None:
        """Wait for pg_restore; with ``keep_going``, the errors it went on after are collected."""
        if self.req.keep_going:
            rc = proc.wait()
            text = proc.stderr_text()
            if rc != 0 and toc.IGNORED_ERRORS in text:
                self.errors += toc.restore_errors(text) or [text.strip().splitlines()[-1]]
                return
        proc.check(what)

    def restore_database(self, runner: Runner, entry: DatabaseEntry, target: str) -> None:
        """The whole database into the empty database ``target``."""
        stop = [] if self.req.keep_going else ["--exit-on-error"]
        args = [*stop, "--no-password", "-d", make_conninfo(dbname=target), *self._ownership_args()]
        env = self._env(target)
        if entry.parts:
            self._restore_parts(runner, entry, target, args, env)
            return
        if self.req.jobs == 1:
            proc = runner.start("pg_restore", args, env=env, stdin=True, stdout=False)
            self.stream_into(entry.object, proc)
            self._finish(proc, f"into {target!r}")
            return
        # Parallel pg_restore needs a seekable file, not a pipe. Rather than spool first and
        # restore after, the schema and data are streamed into one pg_restore while the same
        # bytes are written to the spool file; only post-data (indexes, constraints: the part
        # that parallelises well) then runs with --jobs from the spool.
        spool = self.new_spool(entry.object)
        try:
            proc = runner.start("pg_restore", [*args, "--section=pre-data", "--section=data"], env=env, stdin=True, stdout=False)
            self.stream_into(entry.object, proc, tee=spool)
            spool.close()
            self._finish(proc, f"into {target!r}")
            post = [*args, "--section=post-data", f"--jobs={self.req.jobs}", spool.path]
            self._finish(runner.start("pg_restore", post, env=env, stdout=False), f"(post-data) into {target!r}")
        finally:
            spool.remove()

    def _restore_parts(self, runner: Runner, entry: DatabaseEntry, target: str, args: list[str], env: dict[str, str]) -> None:
        """A ``backup --jobs`` database: the main dump's definitions (streamed, and spooled on the
        way), then its data and every part's data side by side (``--jobs`` at a time), then its
        post-data (indexes, constraints) from the spool.  Each object is verified as it streams;
        a mismatch kills its pg_restore, and the scratch database it loads into is never renamed
        into place."""
        spool = self.new_spool(entry.object)
        try:
            proc = runner.start("pg_restore", [*args, "--section=pre-data"], env=env, stdin=True, stdout=False)
            self.stream_into(entry.object, proc, tee=spool)
            spool.close()
            self._finish(proc, f"(pre-data) into {target!r}")
            procs: list[Process] = []

            def main_data() -> None:
                proc = runner.start("pg_restore", [*args, "--section=data", spool.path], env=env, stdout=False)
                procs.append(proc)
                self._finish(proc, f"(data) into {target!r}")

            def loader(part: DumpPart) -> Callable[[], None]:
                def load() -> None:
                    proc = runner.start("pg_restore", [*args, "--data-only"], env=env, stdin=True, stdout=False)
                    procs.append(proc)
                    self.stream_into(part.object, proc)
                    self._finish(proc, f"({part.object.name}) into {target!r}")

                return load

            run_parallel([main_data, *(loader(p) for p in entry.parts)], self.req.jobs, abort=lambda: kill_all(procs))
            post = [*args, "--section=post-data", f"--jobs={self.req.jobs}", spool.path]
            self._finish(runner.start("pg_restore", post, env=env, stdout=False), f"(post-data) into {target!r}")
        finally:
            spool.remove()

    def restore_tables(
        self, runner: Runner, entry: DatabaseEntry, target: str, tables: list[TableCount], *, new_database: bool, superuser: bool
    ) -> None:
        """Selected tables, in one transaction, after the whole object has been verified.

        Into a new database: the whole schema with data for the selected tables only.  Into an
        existing database: a table that still exists gets its rows replaced (DELETE + reload, its
        definition, indexes and grants untouched); a table that is gone is re-created with its
        indexes, constraints, triggers and sequences.
        """
        selected = {(t.schema, t.name) for t in tables}
        # Nothing reaches the database before the whole stream is verified: pg_restore stops
        # reading as soon as it has the selected entries, before a checksum mismatch at the end
        # of the stream could be noticed.
        spool_file = self.spool(entry.object)
        spool = spool_file.path
        listing: SpoolFile | None = None
        extra: list[SpoolFile] = []  # the parts holding selected rows (backup --jobs), and their lists
        try:
            env = self.ctx.child_env(target)
            entries = toc.parse_toc(runner.output("pg_restore", ["-l", spool], env=env))
            bodies = toc.parse_schema_script(runner.output("pg_restore", ["-s", "-f", "-", spool], env=env))
            present: set[tuple[str, str]] = set()
            if new_database:
                chosen = toc.schema_with_data_of(entries, bodies, selected)
            else:
                with connection(self.ctx.conn, dbname=target) as conn:
                    present = {t for t in selected if _relation_exists(conn, *t)}
                    sequences = {(str(r[0]), str(r[1])) for r in conn.execute(
                        "SELECT schemaname, sequencename FROM pg_sequences").fetchall()}
                    schemas = {str(r[0]) for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
                missing = selected - present
                wanted = set(toc.data_entries(entries, present)) | set(
                    toc.full_entries(entries, bodies, missing, existing_sequences=sequences,
                                     missing_schemas={s for s, _ in missing} - schemas)
                )
                chosen = [e for e in entries if e in wanted]
            listing = self._list_file(chosen)
            scripts = [["-L", listing.path, "-f", "-", *self._ownership_args(), spool]]
            data_parts = [p for p in entry.parts if selected & set(p.tables)]
            if data_parts:
                # Their definitions are in the main dump, their rows in parts: definitions and the
                # main dump's rows first, then the parts' rows, then indexes and constraints.
                scripts = [[*scripts[0], "--section=pre-data", "--section=data"]]
                for part in data_parts:
                    part_spool = self.spool(part.object)
                    extra.append(part_spool)
                    part_entries = toc.parse_toc(runner.output("pg_restore", ["-l", part_spool.path], env=env))
                    part_list = self._list_file(toc.data_entries(part_entries, selected & set(part.tables)))
                    extra.append(part_list)
                    scripts.append(["-L", part_list.path, "-f", "-", part_spool.path])
                scripts.append(["-L", listing.path, "-f", "-", *self._ownership_args(), "--section=post-data", spool])
            loader = runner.start("psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"], env=self._env(target),
                                  stdin=True, stdout=False)
            # We write BEGIN and COMMIT ourselves: COMMIT goes in only after pg_restore has exited
            # successfully, so a pg_restore that dies half-way can never leave half the rows.
            head = ["BEGIN;"]
            if superuser and (present or self.req.disable_triggers):
                # Rows go out and come back in one transaction; with FK triggers off, other
                # tables' references to them neither block the DELETE nor cascade.
                head.append("SET LOCAL session_replication_role = replica;")
            for schema, name in sorted(present):
                head.append(sql.SQL("DELETE FROM ONLY {}.{};").format(sql.Identifier(schema), sql.Identifier(name)).as_string(None))
            script: Process | None = None
            try:
                loader.stdin.write(("\n".join(head) + "\n").encode())
                for args in scripts:
                    script = runner.start("pg_restore", args, env=env)
                    shutil.copyfileobj(script.stdout, loader.stdin, 1 << 20)
                    script.check("(table selection)")
                loader.stdin.write(b"COMMIT;\n")
                loader.stdin.close()
            except BrokenPipeError:
                if script is not None:
                    script.kill()
                loader.check(f"(loading tables into {target!r})")
                raise
            except BaseException:
                if script is not None:
                    script.kill()
                loader.kill()
                raise
            loader.check(f"(loading tables into {target!r})")
        finally:
            spool_file.remove()
            for f in [*extra, *([listing] if listing else [])]:
                f.remove()

    def _list_file(self, chosen: list[toc.TocEntry]) -> SpoolFile:
        listing = SpoolFile(self.me, "toc", self.req.scratch_dir, ".list")
        listing.write(toc.list_file(chosen).encode())
        listing.close()
        return listing

    def verify(self, target: str, tables: list[TableCount]) -> list[CountCheck]:
        checks = []
        with connection(self.ctx.conn, dbname=target) as conn:
            for t in tables:
                q = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(t.schema), sql.Identifier(t.name))
                try:
                    row = conn.execute(q).fetchone()
                    actual: int | None = int(row[0]) if row else None
                except psycopg.errors.UndefinedTable:
                    actual = None
                checks.append(CountCheck(t.qualified, t.rows, actual))
        return checks


def restore(ctx: Context, req: RestoreRequest) -> RestoreResult:
    """Restore ``req.database`` from backup ``req.ref`` and verify row counts against the manifest."""
    logger = log.get()
    if req.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    manifest = resolve_logical(ctx.storage, ctx.cluster, req.ref, database=req.database)
    entry = manifest.database(req.database)
    if entry is None:
        have = ", ".join(d.name for d in manifest.databases)
        raise NotFoundError(f"backup {manifest.backup_id} has no database {req.database!r} (it has: {have})")
    tables = _selected(entry, req.tables)
    target = req.target_database or req.database
    result = RestoreResult(manifest.backup_id, req.database, target, req.tables, counts_exact=entry.row_counts_exact)
    t0 = time.monotonic()
    try:
        with connection(ctx.conn) as conn:
            me = Identity.current(conn)
            restorer = _Restorer(ctx, manifest, req, me)
            # Leftovers of killed restores: scratch databases and decrypted spool files.
            result.swept = sweep_databases(conn, me) + sweep_files(req.scratch_dir, me)
            for item in result.swept:
                logger.warning("swept %s", item)
            facts = server_facts(conn)
            # pg_restore must be at least as new as the pg_dump that wrote the archive.
            dump_major = parse_major(manifest.pg_dump_version) or facts.major
            bindir = bindir_for_server(max(facts.major, dump_major), ctx.settings.pg_bin_dirs)
            runner = ctx.runner.using(bindir)
            result.pg_restore_version = runner.version("pg_restore", ctx.environ)
            exists = database_exists(conn, target)
            if exists and not req.clean:
                raise TargetExistsError(
                    f"database {target!r} already exists on {ctx.conn.describe()}",
                    hint="restore into a new database with --target-database NAME, or replace it with --clean",
                )
            if exists:
                check_sessions(conn, target, req.force)
            if req.restore_globals:
                restorer.restore_globals(runner)
            if req.tables and exists:
                logger.info("restoring %d table(s) of %s into existing %s", len(tables), req.database, target)
                restorer.restore_tables(runner, entry, target, tables, new_database=False, superuser=facts.is_superuser)
                result.checks = restorer.verify(target, tables)
            else:
                _restore_copy(conn, restorer, runner, entry, tables, result, replace=exists, superuser=facts.is_superuser)
    except psycopg.Error as e:
        # Whatever query failed, it is a database error with a stable exit code, not a crash.
        raise DatabaseError(f"restoring {req.database!r} into {target!r}: {_first_line(e)}") from None
    result.duration_seconds = time.monotonic() - t0
    if entry.row_counts_exact and not result.verified:
        # A new database is kept for inspection; an existing one was never replaced.
        raise _mismatch(result)
    return result


def _restore_copy(conn: psycopg.Connection[Any], restorer: _Restorer, runner: Runner, entry: DatabaseEntry,
                  tables: list[TableCount], result: RestoreResult, *, replace: bool, superuser: bool) -> None:
    """A whole database (or a new one with selected tables) via a scratch copy renamed at the end."""
    req, target, me = restorer.req, result.target_database, restorer.me
    build = scratch_name(target)
    log.get().info("restoring %s from backup %s into %s (renamed to %s once verified)",
                   req.database, restorer.manifest.backup_id, build, target)
    outcome = result.properties = dbprops.Outcome(recorded=entry.properties is not None)
    _create_database(conn, build, entry, dbprops.tablespace_for(conn, entry.properties, outcome))
    old, swapping = None, False
    try:
        # The mark says whose copy this is, so that the next run can tell a dead run's leftover.
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(build), sql.Literal(me.mark("copy", target))))
        if req.tables:
            restorer.restore_tables(runner, entry, build, tables, new_database=True, superuser=superuser)
        else:
            restorer.restore_database(runner, entry, build)
            result.restore_errors = list(restorer.errors)
        result.checks = restorer.verify(build, tables)
        if replace and entry.row_counts_exact and not result.verified:
            raise _mismatch(result)  # never replace a good database with a bad copy
        if entry.properties is not None:
            dbprops.apply(conn, build, entry.properties, outcome, no_owner=req.no_owner)
        swapping = True  # from here on, put_in_place's errors say what became of the target
        old = put_in_place(conn, build, target, me, replace=replace, force=req.force,
                           final=dbprops.final_statements(entry.properties, target, outcome))
    except BaseException as e:
        # Every way out says where each database is: the target, and the copy (dropped here).
        where = drop_quietly(conn, build)
        if not swapping:
            where += f"; {target!r} was not touched" if replace else f"; {target!r} was not created"
        if isinstance(e, PgvaultError) and not isinstance(e, VerificationError):
            e.message = f"{e.message}; {where}"
        elif isinstance(e, psycopg.Error):
            raise DatabaseError(f"restoring {req.database!r} into {target!r}: {_first_line(e)}; {where}") from None
        else:
            log.get().warning("restore stopped: %s", where)
        raise
    if old is not None:
        try:
            drop_database(conn, old)
        except psycopg.Error as e:
            raise DatabaseError(
                f"restored {target!r}, but the previous database, now {old!r}, could not be dropped: {_first_line(e)}",
                hint=f"DROP DATABASE {old} when convenient; the next pgvault restore on this server drops it otherwise",
            ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _mismatch(result: RestoreResult) -> VerificationError:
    bad = [c for c in result.checks if not c.ok]
    shown = "; ".join(f"{c.table}: expected {c.expected}, got {'missing' if c.actual is None else c.actual}" for c in bad[:5])
    err = VerificationError(f"restored database {result.target_database!r} does not match the manifest: {shown}")
    err.details = result  # the CLI prints the full comparison
    return err
