"""``pgvault restore``: restore a database (or tables) from a logical backup, verified."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault.cli import context_from, emit
from pgvault.errors import VerificationError
from pgvault.operations.logical.restore import RestoreRequest, RestoreResult, restore
from pgvault.output import human_duration, table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("restore", parents=[common], help="restore a database from a logical backup")
    p.add_argument("backup_id", metavar="ID", help="backup id or 'latest'")
    p.add_argument("--database", "-d", required=True, help="database in the backup to restore")
    p.add_argument("--target-database", "-t", help="restore into this database (default: same name)")
    p.add_argument("--clean", action="store_true", help="replace an existing target database (or the selected tables)")
    p.add_argument("--table", action="append", default=[], metavar="SCHEMA.NAME", help="restore only this table (repeatable)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="parallel pg_restore jobs")
    p.add_argument("--disable-triggers", action="store_true", help="load with session_replication_role = replica")
    p.add_argument("--globals", action="store_true", help="also restore roles and tablespaces")
    p.add_argument("--force", action="store_true", help="terminate sessions connected to the target")
    p.add_argument("--no-owner", action="store_true", help="do not restore ownership and privileges")
    p.add_argument("--scratch-dir", help="directory for the decrypted archive spooled with --jobs > 1 or --table")
    p.set_defaults(func=run)


def _render(r: RestoreResult) -> str:
    status = "verified" if r.verified else ("MISMATCH" if r.counts_exact else "counts are estimates")
    head = (
        f"restored {r.database} from backup {r.backup_id} into {r.target_database} in "
        f"{human_duration(r.duration_seconds)}: row counts {status}"
    )
    rows = [(c.table, c.expected, "missing" if c.actual is None else c.actual, "ok" if c.ok else "MISMATCH") for c in r.checks]
    lines = [head]
    lines += [f"swept {item}" for item in r.swept]
    if r.properties is not None:
        applied = ", ".join(r.properties.applied) or "nothing to change"
        lines.append(f"database properties restored: {applied}" if r.properties.recorded else "database properties: not recorded")
        if r.properties.asked:
            lines.append(f"database properties not restored, as asked: {', '.join(sorted(r.properties.asked))}")
        lines += [f"warning: {w}" for w in r.properties.warnings]
    return "\n".join(lines) + "\n" + table(["table", "manifest", "restored", "check"], rows, right=(1, 2))


def _payload(r: RestoreResult) -> dict[str, Any]:
    return {
        "backup_id": r.backup_id,
        "database": r.database,
        "target_database": r.target_database,
        "tables": list(r.tables),
        "duration_seconds": round(r.duration_seconds, 3),
        "verified": r.verified,
        "row_counts_exact": r.counts_exact,
        "pg_restore_version": r.pg_restore_version,
        "checks": [{"table": c.table, "expected": c.expected, "actual": c.actual, "ok": c.ok} for c in r.checks],
        "properties": None if r.properties is None else {**r.properties.to_json(), "warnings": r.properties.warnings},
        "swept": list(r.swept),
    }


def run(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    req = RestoreRequest(
        ref=args.backup_id,
        database=args.database,
        target_database=args.target_database,
        clean=args.clean,
        tables=tuple(args.table),
        jobs=args.jobs,
        disable_triggers=args.disable_triggers,
        restore_globals=args.globals,
        force=args.force,
        no_owner=args.no_owner,
        scratch_dir=args.scratch_dir,
    )
    try:
        result = restore(ctx, req)
    except VerificationError as e:
        details = e.details
        if isinstance(details, RestoreResult):
            # One document on stdout: the full comparison (verified: false); the reason on stderr.
            raise e.with_report("restore", {"restore": _payload(details)}, lambda: _render(details)) from None
        raise
    emit(args, "restore", {"restore": _payload(result)}, lambda: _render(result))
    return 0
