"""``pgvault restore-cluster`` (point-in-time recovery) and ``pgvault restore-point``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pgvault.cli import context_from, emit
from pgvault.errors import UsageError
from pgvault.operations.physical.restore_cluster import (
    RecoveryOutcome,
    RestoreOptions,
    check_options,
    make_plan,
    restore_and_recover,
)
from pgvault.operations.physical.restore_point import create_restore_point
from pgvault.operations.physical.standby import PASSWORD_ENV, StandbyOptions
from pgvault.output import human_duration
from pgvault.policy.pitr import ACTIONS, RecoveryTarget


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("restore-cluster", parents=[common],
                       help="restore a base backup + WAL into a data directory (point-in-time recovery)")
    p.add_argument("--data-dir", "-D", required=True, help="where to lay out the cluster (absent or empty)")
    t = p.add_argument_group("recovery target (at most one; default: the end of the archive)")
    t.add_argument("--target-time", metavar="TIMESTAMP", help="e.g. '2026-11-25 14:03:00+00'")
    t.add_argument("--target-lsn", metavar="LSN", help="e.g. 0/3000148")
    t.add_argument("--target-xid", metavar="XID", help="stop at this transaction's commit")
    t.add_argument("--target-name", metavar="NAME", help="a restore point (see 'pgvault restore-point')")
    t.add_argument("--target-immediate", action="store_true", help="stop as soon as the backup is consistent")
    t.add_argument("--target-timeline", metavar="TLI", help="latest (default), current or a number")
    t.add_argument("--target-exclusive", action="store_true", help="stop just before the target instead of after it")
    t.add_argument("--target-action", choices=ACTIONS, help="at the target: pause (default), promote or shutdown")
    r = p.add_argument_group("standby: a replica seeded from the repository (no recovery target)")
    r.add_argument("--standby", action="store_true",
                   help="write standby.signal and primary_conninfo: the copy replays the archive, then streams")
    r.add_argument("--primary-conninfo", metavar="CONNINFO", default="",
                   help="libpq connection string of the primary, without a password (give it in "
                   f"${PASSWORD_ENV} or with passfile=PATH), e.g. 'host=db1 port=5432 user=replicator'")
    r.add_argument("--primary-slot-name", metavar="NAME", help="the replication slot on the primary to stream from")
    p.add_argument("--backup", metavar="ID", help="use this base backup instead of choosing one")
    p.add_argument("--tablespace", action="append", default=[], metavar="NAME=PATH",
                   help="restore a tablespace (by name or OID) to a new location; repeatable")
    p.add_argument("--force", action="store_true", help="delete the contents of a non-empty data directory first")
    p.add_argument("--delta", action="store_true",
                   help="restore over an existing stopped data directory: keep the files already as in the backup "
                        "(SHA-256), rewrite the others, remove what the backup does not hold")
    p.add_argument("--archive", action="store_true",
                   help="keep the backup's archive settings (by default the restored copy does not archive)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="extra setting for postgresql.auto.conf (e.g. port=5433); repeatable")
    p.add_argument("--pgvault-command", metavar="CMD",
                   help="how the restored server runs pgvault in restore_command (default: this pgvault)")
    p.add_argument("--start", action="store_true", help="start the server and follow recovery to the target")
    p.add_argument("--port", type=int, help="port for the started server")
    p.add_argument("--timeout", type=float, help="with --start: give up after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="only show which backup and WAL would be used")
    p.set_defaults(func=run_restore_cluster)

    r = sub.add_parser("restore-point", parents=[common], help="create a named restore point for --target-name")
    r.add_argument("name")
    r.add_argument("--no-switch-wal", action="store_true",
                   help="do not switch WAL segments and wait for the record to be archived")
    r.add_argument("--archive-timeout", type=float, default=120.0)
    r.set_defaults(func=run_restore_point)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k.strip():
            raise UsageError(f"{flag} expects NAME=VALUE, got {v!r}")
        out[k.strip()] = val
    return out


def run_restore_cluster(args: argparse.Namespace) -> int:
    if not args.standby and (args.primary_conninfo or args.primary_slot_name):
        raise UsageError("--primary-conninfo and --primary-slot-name need --standby")
    target = RecoveryTarget.parse(
        time=args.target_time, lsn=args.target_lsn, xid=args.target_xid, name=args.target_name,
        immediate=args.target_immediate, timeline=args.target_timeline, exclusive=args.target_exclusive,
        action=args.target_action,
    )
    opts = RestoreOptions(
        data_dir=Path(args.data_dir), target=target, backup_id=args.backup,
        tablespace_map=_pairs(args.tablespace, "--tablespace"), force=args.force, delta=args.delta, archive=args.archive,
        options=_pairs(args.option, "--option"), pgvault_command=args.pgvault_command,
        standby=StandbyOptions(args.primary_conninfo, args.primary_slot_name) if args.standby else None,
    )
    check_options(opts)
    ctx = context_from(args)
    if args.dry_run:
        plan = make_plan(ctx, target, args.backup)
        emit(args, "restore_plan", {"plan": plan.to_json()}, lambda: _describe_plan(plan.to_json()))
        return 0

    def progress(o: RecoveryOutcome) -> None:
        print(f"recovery: {o.segments_restored} WAL files restored (last {o.last_segment or '-'}), "
              f"{'consistent' if o.consistent_at else 'not yet consistent'}, {human_duration(o.seconds)}"
              + (f"; not streaming yet: {o.stream_error}" if o.stream_error and not o.streaming_from else ""),
              file=sys.stderr)

    result = restore_and_recover(ctx, opts, start=args.start, port=args.port, timeout=args.timeout, progress=progress)
    emit(args, "restore_cluster", result.to_json(), lambda: _describe(result.to_json()))
    return 0


def _describe_plan(p: dict[str, Any]) -> str:
    lines = [f"base backup {p['backup_id']}, then WAL from {p['first_wal']} on timeline {p['timeline']} "
             f"(archive continuous to {p['last_reachable_wal']})"]
    lines += [f"  passed over {x['backup_id']}: {x['reason']}" for x in p["passed_over"]]
    lines += [f"  warning: {w}" for w in p["warnings"]]
    return "\n".join(lines)


def _describe(r: dict[str, Any]) -> str:
    lines = [_describe_plan(r["plan"]), f"restored to {r['data_dir']} in {human_duration(r['restore_seconds'])}"]
    for oid, path in r["tablespaces"].items():
        lines.append(f"  tablespace {oid} -> {path}")
    rec, sb = r["recovery"], r["standby"]
    if sb is not None:
        return "\n".join(lines + _describe_standby(r, sb, rec))
    if rec is None:
        lines.append("recovery settings written to postgresql.auto.conf (+ recovery.signal); start the server "
                     f"with: pg_ctl -D {r['data_dir']} start")
        return "\n".join(lines)
    where = rec["stop_detail"] or (f"end of archive (redo done at {rec['redo_done_at']})" if rec["redo_done_at"]
                                   else f"after {rec['last_segment']}")
    lines.append(f"recovery {rec['state']} after {human_duration(rec['seconds'])}, {rec['segments_restored']} WAL files: "
                 f"stopped {where}")
    if rec.get("confirmed_by"):
        lines.append(f"confirmed by the server: {rec['confirmed_by']}")
    if rec["new_timeline"]:
        lines.append(f"new timeline {rec['new_timeline']}")
    if rec["state"] == "paused":
        lines.append("the server is paused at the target (read-only): check the data, then "
                     "SELECT pg_wal_replay_resume(); to promote, or stop it and choose another target")
    lines.append(f"server log: {rec['log_file']}")
    return "\n".join(lines)


def _describe_standby(r: dict[str, Any], sb: dict[str, Any], rec: dict[str, Any] | None) -> list[str]:
    p = sb["primary"]
    if p is None:
        lines = ["a standby without a primary: it replays the archive and keeps waiting for more WAL"]
    else:
        lines = [f"a standby of {p.get('host') or p.get('hostaddr') or 'the local socket'}:{p.get('port', '5432')}"
                 + (f" as {p['user']}" if p.get("user") else "") + (f", slot {sb['slot']}" if sb["slot"] else "")
                 + f"; password: {sb['password']}"]
    if rec is None:
        lines.append("settings written to postgresql.auto.conf (+ standby.signal); start the server with: "
                     f"pg_ctl -D {r['data_dir']} start")
        return lines
    lines.append(f"in recovery after {human_duration(rec['seconds'])}, {rec['segments_restored']} WAL files restored "
                 "from the repository" + (f", streaming from {rec['streaming_from']}" if rec["streaming_from"] else ""))
    if rec.get("confirmed_by"):
        lines.append(f"confirmed by the server: {rec['confirmed_by']}")
    lines.append(f"server log: {rec['log_file']}")
    return lines


def run_restore_point(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    p = create_restore_point(ctx, args.name, switch_wal=not args.no_switch_wal, archive_timeout=args.archive_timeout)
    emit(args, "restore_point", p.to_json(),
         lambda: f"restore point {p.name!r} at {p.lsn} on timeline {p.timeline} ({p.time})"
         + ("" if args.no_switch_wal else ", archived"))
    return 0
