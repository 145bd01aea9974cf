"""``pgvault recover-table``: tables (or a whole database) back from a point in time into the
live server, without stopping it.

Template: plan (the base backup and WAL for the target, :func:`make_plan`) → read production's
tables (read-only) → recover the backup into a private scratch directory, paused at the target
(:mod:`~pgvault.operations.physical.scratch_cluster`) → hold where it stopped against the target
(:func:`~pgvault.policy.recover.check_stop`) → promote it there (nothing replayed further; the
locks of transactions open at the target, a TRUNCATE's or DROP's, released) → dump the tables (definition from the
catalog, rows with COPY; every table's rows counted three ways: ``count(*)``, COPY's own count,
the lines written) → stop and remove the scratch server → only then, production: one
transaction (:mod:`~pgvault.operations.physical.recover_load`), verified before its commit.

The scratch server and every file are removed in ``finally``: on success, failure, Ctrl-C and
SIGTERM; a run killed with -9 leaves a directory the next run (or drill) sweeps.

``--database NAME --target-database NEW``: the whole database at the target, dumped with
``pg_dump -Fc`` from the scratch server, restored into a new database on production with
``pg_restore``, and every table's row count compared with the scratch server's.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pgvault import log
from pgvault.errors import NotFoundError, RecoveryError, TargetExistsError, ToolError, UsageError, VerificationError
from pgvault.operations.context import Context
from pgvault.operations.physical import recover_load
from pgvault.operations.physical.recover_load import Dump, TableReport
from pgvault.operations.physical.restore_cluster import make_plan
from pgvault.operations.physical.scratch_cluster import connectable, promote_where_paused, recover_into_scratch
from pgvault.operations.physical.table_facts import exact_count, read_facts, relation_names
from pgvault.pg.bindir import bindir_for_server
from pgvault.pg.conn import ConnInfo, connect, database_exists, server_facts
from pgvault.pg.scratch import scratch_dir, sweep_scratch_dirs
from pgvault.policy import recover as policy
from pgvault.policy.pitr import Plan, RecoveryTarget

Say = Callable[[str], None]
_UNTOUCHED = "production was not touched (recover-table changes it only after the recovered rows were dumped and verified)"


@dataclass(frozen=True)
class RecoverRequest:
    target: RecoveryTarget
    tables: tuple[str, ...] = ()
    database: str | None = None  # with tables: where they are; alone: the database to recover
    target_database: str | None = None
    backup_id: str | None = None
    mode: str = "new-table"
    into: str | None = None
    dry_run: bool = False
    pgvault_command: str | None = None
    timeout: float | None = None  # recovery of the scratch server


@dataclass
class RecoverResult:
    plan: Plan
    database: str
    mode: str
    dry_run: bool = False
    tables: list[dict[str, Any]] = field(default_factory=list)  # dry run: what production has now
    table_plans: list[dict[str, Any]] = field(default_factory=list)
    reports: list[TableReport] = field(default_factory=list)
    advice: list[dict[str, Any]] = field(default_factory=list)
    target_database: str | None = None
    database_counts: dict[str, int] = field(default_factory=dict)
    recovery: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds: unpack, replay, dump, load
    swept: list[str] = field(default_factory=list)
    would: list[str] = field(default_factory=list)  # dry run: what would change

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "database": self.database, "mode": self.mode, "dry_run": self.dry_run,
                "tables": self.tables, "table_plans": self.table_plans, "results": [r.to_json() for r in self.reports],
                "cascade_advice": self.advice, "target_database": self.target_database,
                "database_counts": self.database_counts, "recovery": self.recovery,
                "phases": {k: round(v, 3) for k, v in self.phases.items()}, "swept": self.swept,
                "would_change": self.would}


def _validate(req: RecoverRequest) -> None:
    if req.target.kind not in ("time", "lsn", "xid", "name"):
        raise UsageError("recover-table needs a target: --target-time, --target-lsn, --target-xid or --target-name")
    if req.tables and req.target_database:
        raise UsageError("--target-database is for a whole database (--database NAME without --table)")
    if not req.tables and not (req.database and req.target_database):
        raise UsageError("give --table SCHEMA.NAME (repeatable), or --database NAME --target-database NEW")
    if req.target_database and req.database == req.target_database:
        raise UsageError("--target-database must be a new database, not the one recovered")
    if req.into and len(req.tables) != 1:
        raise UsageError("--into names one table: give exactly one --table with it")
    if req.mode not in policy.MODES:
        raise UsageError(f"--mode must be one of {', '.join(policy.MODES)}")


def recover(ctx: Context, req: RecoverRequest, say: Say = lambda _m: None) -> RecoverResult:
    """The command's one entry point (``--dry-run`` included)."""
    _validate(req)
    target = replace(req.target, action="pause")  # nothing replays past it; promoted once checked
    plan = make_plan(ctx, target, req.backup_id)
    database = req.database or ctx.conn.dbname
    result = RecoverResult(plan, database, "database" if req.target_database else req.mode, dry_run=req.dry_run,
                           target_database=req.target_database)
    names = [policy.parse_table(t) for t in req.tables]
    now = _production_now(ctx, database, names, result, req)
    if req.dry_run:
        _describe_dry_run(req, plan, result)
        return result
    logger = log.get()
    result.swept = sweep_scratch_dirs(ctx.runner, ctx.settings.pg_bin_dirs)
    for item in result.swept:
        logger.warning("swept %s", item)
    cleanups: list[Callable[[], None]] = []
    spool = scratch_dir(os_user=ctx.settings.drill_os_user)
    try:
        say(f"recovering base backup {plan.backup.backup_id} + WAL from {plan.first_wal} to {target.describe()} "
            "into a scratch directory")
        t0 = time.monotonic()

        def progress(o: Any) -> None:
            say(f"recovery: {o.segments_restored} WAL files replayed (last {o.last_segment or '-'}), "
                f"{'consistent' if o.consistent_at else 'not yet consistent'}, {o.seconds:.0f}s")

        try:
            scratch = recover_into_scratch(ctx, plan, cleanups, pgvault_command=req.pgvault_command,
                                           extra={"hot_standby": "on"}, progress=progress, timeout=req.timeout)
        except RecoveryError as e:
            raise RecoveryError(e.message, hint=_UNTOUCHED + "; the scratch server was removed. A target beyond the "
                                "archived WAL cannot be reached: see 'pgvault list' for what the archive holds") from None
        result.phases["unpack"] = scratch.restore_seconds
        result.phases["replay"] = time.monotonic() - t0 - scratch.restore_seconds
        o = scratch.outcome
        result.recovery = {"stop_detail": o.stop_detail, "segments_restored": o.segments_restored,
                           "confirmed_by": o.confirmed_by, "replay_lsn": o.replay_lsn, "state_at_stop": o.state}
        problem = policy.check_stop(target.kind, target.value, target.exclusive, o.stop_detail)
        if problem:
            raise RecoveryError(f"recovery did not stop at the target: {problem}", hint=_UNTOUCHED)
        say(f"recovery stopped {o.stop_detail} (confirmed: {o.confirmed_by})")
        info = connectable(scratch.base, scratch.port, ctx)
        # Only now, with the stop point held against the target: end recovery there, or a
        # TRUNCATE/DROP open at the target would keep its lock (and the table) from the dump.
        result.recovery["promoted_at"] = promote_where_paused(ctx, scratch, info)
        result.recovery["state"] = "promoted"  # the scratch copy only: it archives nowhere
        info = info.with_db(database)
        t1 = time.monotonic()
        if req.target_database:
            dump_file = _dump_database(ctx, info, database, spool, result, say)
        else:
            at_target, dumps = _dump_tables(info, names, spool, say)
        result.phases["dump"] = time.monotonic() - t1
        # The rows are safe in the spool: the scratch server goes before production is touched.
        _run_cleanups(cleanups)
        t2 = time.monotonic()
        if req.target_database:
            _load_database(ctx, req.target_database, dump_file, result, say)
        else:
            _load_tables(ctx, req, database, at_target, dumps, now, result, say)
        result.phases["load"] = time.monotonic() - t2
    finally:
        _run_cleanups(cleanups)
        shutil.rmtree(spool, ignore_errors=True)
    return result


def _run_cleanups(cleanups: list[Callable[[], None]]) -> None:
    while cleanups:
        step = cleanups.pop(0)
        try:
            step()
        except Exception as e:  # noqa: BLE001 - keep cleaning; say what was left
            log.get().warning("recover-table cleanup step failed: %s: %s", type(e).__name__, e)


def _production_now(ctx: Context, database: str, names: list[tuple[str, str]], result: RecoverResult,
                    req: RecoverRequest) -> dict[str, policy.TableFacts | None]:
    """Production's side, read-only: the tables as they are now, and every refusal that needs no
    scratch server (a target database that exists, a copy's name that is taken, a table without a
    key for missing-rows, ...), judged on production's definitions before minutes of recovery."""
    now: dict[str, policy.TableFacts | None] = {}
    with connect(ctx.conn, dbname="postgres" if req.target_database else database) as conn:
        if req.target_database:
            if database_exists(conn, req.target_database):
                raise TargetExistsError(f"database {req.target_database!r} already exists on {ctx.conn.describe()}",
                                        hint="--target-database must name a new database")
            return now
        for schema, rel in names:
            f = read_facts(conn, schema, rel)
            key = f.name if f else _server_quoted(conn, schema, rel)  # PostgreSQL's quoting, as in TableFacts.name
            now[key] = f
            result.tables.append({"table": key, "exists_now": f is not None,
                                  "rows_now": exact_count(conn, f.name) if f else None})
        taken = relation_names(conn, {s for s, _ in names})
        present = [f for f in now.values() if f is not None]
        order = tuple(policy.fk_order([f.name for f in present], [fk for f in present for fk in f.foreign_keys]))
        result.advice = [a.to_json() for a in _advice(conn, order, now, [])]
    t = req.target
    tag = policy.target_tag(t.kind, t.value, t.exclusive)
    gone = [n for n, f in now.items() if f is None]
    if gone and req.mode != "new-table":
        raise UsageError(f"{', '.join(gone)} does not exist now: --mode {req.mode} needs the table",
                         hint="recover it with --mode new-table (--into NAME gives it its old name)")
    if present:  # the definitions as they are now stand in for those at the target (checked again later)
        early = policy.plan_tables(req.mode, present, now, tag=tag, into=req.into, taken=taken)
        result.table_plans = [p.to_json() for p in early.tables]
    return now


def _server_quoted(conn: Any, schema: str, rel: str) -> str:
    row = conn.execute("SELECT format('%%I.%%I', %s::text, %s::text)", (schema, rel)).fetchone()
    return str(row[0])


def _describe_dry_run(req: RecoverRequest, plan: Plan, result: RecoverResult) -> None:
    t = plan.target
    if req.target_database:
        result.would = [f"create database {req.target_database} holding {result.database} as of {t.describe()}"]
        return
    planned = {p["table"]: p for p in result.table_plans}
    for row in result.tables:
        name = row["table"]
        if req.mode == "new-table":
            schema, rel = policy.parse_table(name)
            tag = policy.target_tag(t.kind, t.value, t.exclusive)
            new = planned[name]["new_table"] if name in planned else policy.qualified(
                schema, req.into or policy.recovered_name(rel, tag))
            result.would.append(f"create {new} with the rows of {name} as of {t.describe()}")
        elif req.mode == "missing-rows":
            result.would.append(f"insert into {name} the rows at the target whose key "
                                f"({', '.join(planned[name]['key_columns'])}) is missing now; the {row['rows_now']} "
                                "rows there now are left alone")
        else:
            result.would.append(f"replace the contents of {name} ({row['rows_now']} rows now) with its rows at the "
                                "target, in one transaction (refused if a table not recovered references a row that "
                                "would go)")


def _dump_tables(info: ConnInfo, names: list[tuple[str, str]], spool: Path,
                 say: Say) -> tuple[list[policy.TableFacts], dict[str, Dump]]:
    at_target: list[policy.TableFacts] = []
    dumps: dict[str, Dump] = {}
    with connect(info, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for schema, rel in names:
            f = read_facts(conn, schema, rel)
            if f is None:
                raise NotFoundError(f"table {policy.qualified(schema, rel)} did not exist at the target "
                                    f"(database {info.dbname})")
            at_target.append(f)
        for i, f in enumerate(at_target):
            columns = tuple(c.name for c in f.columns)
            counted = exact_count(conn, f.name)
            path = spool / f"table-{i}.copy"
            lines = size = 0
            with conn.cursor() as cur, open(path, "wb") as out:
                cols = ", ".join(policy.ident(c) for c in columns)
                with cur.copy(f"COPY (SELECT {cols} FROM {f.name}) TO STDOUT") as cp:
                    for chunk in cp:
                        out.write(chunk)
                        lines += bytes(chunk).count(b"\n")
                        size += len(chunk)
                copied = int(cur.rowcount)
            if not counted == copied == lines:
                raise VerificationError(f"dumping {f.name} from the scratch server: count(*) {counted}, COPY {copied}, "
                                        f"lines written {lines}; production was not touched")
            dumps[f.name] = Dump(f.name, path, columns, counted, size)
            say(f"dumped {f.name}: {counted} rows at the target"
                + (f" (from {len(f.partitions)} partitions)" if f.kind == "p" else ""))
        conn.rollback()
    return at_target, dumps


def _load_tables(ctx: Context, req: RecoverRequest, database: str, at_target: list[policy.TableFacts],
                 dumps: dict[str, Dump], now: dict[str, policy.TableFacts | None], result: RecoverResult,
                 say: Say) -> None:
    t = req.target
    tag = policy.target_tag(t.kind, t.value, t.exclusive)
    with connect(ctx.conn, autocommit=False, dbname=database) as conn:
        taken = relation_names(conn, {f.schema for f in at_target})
        conn.rollback()
        # Production as it is at this moment (a table may have changed while the scratch recovered).
        fresh = {f.name: read_facts(conn, f.schema, f.relname) for f in at_target}
        conn.rollback()
        now = {**now, **fresh}
        tables = policy.plan_tables(req.mode, at_target, now, tag=tag, into=req.into, taken=taken)
        result.table_plans = [p.to_json() for p in tables.tables]
        result.advice = [a.to_json() for a in _advice(conn, tables.order, now, at_target)]
        for a in result.advice:
            say(f"note: {a['table']} references {a['references']} ON DELETE CASCADE and is not being recovered: a "
                f"DELETE on {a['references']} deleted its rows too; add --table {a['table']}")
        say(f"loading into {ctx.conn.describe().rsplit('/', 1)[0]}/{database} ({req.mode}), one transaction")
        result.reports = recover_load.load(conn, tables, dumps, now, say)


def _advice(conn: Any, order: tuple[str, ...], now: dict[str, policy.TableFacts | None],
            at_target: list[policy.TableFacts]) -> list[policy.Advice]:
    """The cascade advice, from production's view of who references whom (the tables reached
    are read as the walk finds them: projects → configs → config_history)."""
    facts = {n: f for n, f in now.items() if f is not None}
    facts.update({f.name: f for f in at_target if f.name not in facts})
    tried: set[str] = set()
    while True:
        advice = policy.cascade_advice(order, facts)
        unread = [a.table for a in advice if a.table not in facts and a.table not in tried]
        if not unread:
            conn.rollback()
            return advice
        for name in unread:
            tried.add(name)
            schema, rel = policy.parse_table(name)
            found = read_facts(conn, schema, rel)
            if found is not None:
                facts[name] = found


def _dump_database(ctx: Context, info: ConnInfo, database: str, spool: Path, result: RecoverResult, say: Say) -> Path:
    with connect(info) as conn:
        if not database_exists(conn, database):
            raise NotFoundError(f"database {database!r} did not exist at the target")
    with connect(info, dbname=database) as conn:
        result.database_counts = _all_counts(conn)
        major = server_facts(conn).major
    path = spool / "database.dump"
    bindir = bindir_for_server(major, ctx.settings.pg_bin_dirs)
    r = ctx.runner.using(bindir).run("pg_dump", ["-Fc", "-Z", "0", "-f", str(path), "-d", database],
                                     env=info.child_env(ctx.environ), timeout=24 * 3600)
    if not r.ok:
        raise ToolError(f"pg_dump of {database} from the scratch server failed: {r.detail()}")
    say(f"dumped database {database}: {len(result.database_counts)} tables, "
        f"{sum(result.database_counts.values())} rows at the target")
    return path


_COUNT_TABLES = """SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1"""


def _all_counts(conn: Any) -> dict[str, int]:
    """Every ordinary table's exact row count (partitions one by one)."""
    names = [str(r[0]) for r in conn.execute(_COUNT_TABLES).fetchall()]
    return {n: int(conn.execute(f"SELECT count(*) FROM ONLY {n}").fetchone()[0]) for n in names}  # noqa: S608


def _load_database(ctx: Context, new: str, dump_file: Path, result: RecoverResult, say: Say) -> None:
    with connect(ctx.conn, dbname="postgres") as conn:
        if database_exists(conn, new):
            raise TargetExistsError(f"database {new!r} already exists on {ctx.conn.describe()}")
        facts = server_facts(conn)
        conn.execute(f"CREATE DATABASE {policy.ident(new)} TEMPLATE template0")
    ok = False
    try:
        bindir = bindir_for_server(facts.major, ctx.settings.pg_bin_dirs)
        args = ["--exit-on-error", "--single-transaction", "-d", new, str(dump_file)]
        if not facts.is_superuser:
            args[:0] = ["--no-owner", "--no-privileges"]
        say(f"restoring into the new database {new}")
        r = ctx.runner.using(bindir).run("pg_restore", args, env=ctx.conn.child_env(ctx.environ), timeout=24 * 3600)
        if not r.ok:
                raise ToolError(f"pg_restore into {new} failed (the new database is dropped again): {r.detail()}")
        with connect(ctx.conn, dbname=new) as conn:
            got = _all_counts(conn)
        bad = [f"{t}: {n} at the target, {got.get(t, 'missing')} restored" for t, n in result.database_counts.items()
               if got.get(t) != n]
        if bad:
            raise VerificationError(f"database {new} does not match the target (dropped again): " + "; ".join(bad[:5]))
        say(f"database {new}: {len(got)} tables, every row count matches the scratch server")
        ok = True
    finally:
        if not ok:
            with connect(ctx.conn, dbname="postgres") as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {policy.ident(new)}")


__all__ = ["RecoverRequest", "RecoverResult", "recover"]
