"""``pgvault recover-table``: tables (or a database) back from a point in time into the live server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pgvault.cli import context_from, emit
from pgvault.output import human_duration


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("recover-table", parents=[common],
                       help="bring tables (or a database) back from a point in time into the running server")
    what = p.add_argument_group("what to recover")
    what.add_argument("--table", "-t", action="append", default=[], metavar="SCHEMA.NAME",
                      help="a table to recover (repeatable; related tables together: parents and children)")
    what.add_argument("--database", "-d", metavar="NAME",
                      help="the database the tables are in (default: the connection's); without --table, the "
                           "whole database (with --target-database)")
    what.add_argument("--target-database", metavar="NEW", help="recover the whole --database into this new database")
    t = p.add_argument_group("recovery target (exactly one)")
    t.add_argument("--target-time", metavar="TIMESTAMP", help="e.g. '2026-11-25 14:03:00+00'")
    t.add_argument("--target-lsn", metavar="LSN")
    t.add_argument("--target-xid", metavar="XID",
                   help="with --target-exclusive: just before this transaction (as 'pgvault wal find' prints it)")
    t.add_argument("--target-name", metavar="NAME", help="a restore point")
    t.add_argument("--target-exclusive", action="store_true", help="stop just before the target instead of after it")
    t.add_argument("--target-timeline", metavar="TLI", help="latest (default), current or a number")
    p.add_argument("--backup", metavar="ID", help="use this base backup instead of choosing one")
    p.add_argument("--mode", choices=("new-table", "missing-rows", "replace"), default="new-table",
                   help="new-table (default): a copy beside the original; missing-rows: insert the rows whose key is "
                        "missing now; replace: the table's contents become the target's (one transaction)")
    p.add_argument("--into", metavar="NAME", help="new-table: the copy's name (default <table>__recovered_<target>)")
    p.add_argument("--dry-run", action="store_true", help="show the plan; change nothing, start nothing")
    p.add_argument("--pgvault-command", metavar="CMD",
                   help="how the scratch server runs pgvault in restore_command (default: this pgvault)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up if recovery takes longer than this")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgvault.operations.physical.recover_table import RecoverRequest, recover
    from pgvault.policy.pitr import RecoveryTarget

    target = RecoveryTarget.parse(time=args.target_time, lsn=args.target_lsn, xid=args.target_xid, name=args.target_name,
                                  timeline=args.target_timeline, exclusive=args.target_exclusive, action="pause"
                                  if (args.target_time or args.target_lsn or args.target_xid or args.target_name) else None)
    ctx = context_from(args)
    req = RecoverRequest(target=target, tables=tuple(args.table), database=args.database,
                         target_database=args.target_database, backup_id=args.backup, mode=args.mode, into=args.into,
                         dry_run=args.dry_run, pgvault_command=args.pgvault_command, timeout=args.timeout)

    def say(message: str) -> None:
        print(f"recover-table: {message}", file=sys.stderr, flush=True)

    result = recover(ctx, req, say)
    doc = result.to_json()
    emit(args, "recover_table", doc, lambda: describe(doc))
    return 0


def describe(r: dict[str, Any]) -> str:
    p = r["plan"]
    t = p["target"]
    word = "before" if t["exclusive"] else "up to and including"
    target = f"restore point {t['value']!r}" if t["kind"] == "name" else f"{word} {t['kind']} {t['value']}"
    lines = [f"{'plan' if r['dry_run'] else 'recovered'}: database {r['database']} as of {target}",
             f"  base backup {p['backup_id']}, WAL from {p['first_wal']} on timeline {p['timeline']} "
             f"(archive continuous to {p['last_reachable_wal']})"]
    lines += [f"  warning: {w}" for w in p["warnings"]]
    if r["dry_run"]:
        lines.append(f"  mode: {r['mode']}")
        for row in r["tables"]:
            now = f"{row['rows_now']} rows now" if row["exists_now"] else "does not exist now"
            lines.append(f"  table {row['table']}: {now}")
        lines += [f"  would: {w}" for w in r["would_change"]]
        lines += _advice(r)
        lines.append("  nothing was changed (dry run)")
        return "\n".join(lines)
    rec = r["recovery"]
    lines.append(f"  recovery stopped {rec.get('stop_detail')} ({rec.get('segments_restored')} WAL files replayed)")
    ph = r["phases"]
    lines.append("  took: " + ", ".join(f"{k} {human_duration(v)}" for k, v in ph.items()))
    if r["target_database"]:
        counts = r["database_counts"]
        lines.append(f"  new database {r['target_database']}: {len(counts)} tables, {sum(counts.values())} rows, every "
                     "table's row count equal to the scratch server's")
        return "\n".join(lines)
    for res in r["results"]:
        if res["mode"] == "new-table":
            lines.append(f"  created {res['created']} from {res['table']}: {res['rows_after']} rows "
                         f"(= {res['rows_at_target']} at the target)")
            lines += [f"    constraint {c}" for c in res["constraints"]]
            lines += [f"    not copied: {n}" for n in res["not_copied"]]
            continue
        lines.append(f"  {res['table']} ({res['mode']}): {res['rows_before']} rows before, {res['rows_at_target']} at "
                     f"the target, {res['inserted']} inserted, {res['updated']} updated, {res['deleted']} deleted, "
                     f"{res['rows_after']} now")
        if res["mode"] == "missing-rows":
            lines.append(f"    {res['not_at_target']} rows there now were not at the target (written since): left alone")
        if res["triggers_disabled"]:
            lines.append(f"    not fired for the recovered rows: triggers {', '.join(res['triggers_disabled'])}"
                         + (f" ({res['triggers_how']})" if res.get("triggers_how") else ""))
        lines += [f"    note: {n}" for n in res["notes"]]
    return "\n".join(lines + _advice(r))


def _advice(r: dict[str, Any]) -> list[str]:
    return [f"  note: {a['table']} references {a['references']} ({a['foreign_key']}, ON DELETE {a['on_delete']}) "
            f"and is not being recovered: recover it too (--table {a['table']})" for a in r.get("cascade_advice", [])]
