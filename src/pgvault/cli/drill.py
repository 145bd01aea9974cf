"""``pgvault drill``: restore a backup somewhere disposable and prove it; ``pgvault drill list``."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault.cli import context_from, emit, parse_now
from pgvault.errors import UsageError, VerificationError
from pgvault.output import human_duration, table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("drill", parents=[common], help="restore drill: restore, verify, measure, clean up")
    p.add_argument("what", nargs="?", default="latest", metavar="ID|latest|list",
                   help="the backup to drill (default: latest), or 'list' for the drill history")
    p.add_argument("--kind", choices=("logical", "physical"), default="logical")
    p.add_argument("--target-dsn", help="logical: restore into scratch databases on this server "
                   "(default: drill.target_dsn, else a throwaway server from local binaries)")
    p.add_argument("--major", type=int, metavar="N",
                   help="logical: rehearse an upgrade: restore into a throwaway server of PostgreSQL N (not older "
                        "than the backup's) with N's pg_restore, and report each object N refused")
    p.add_argument("--only-on", metavar="RULE",
                   help="run only on this day of the month (UTC), else exit 0 'skipped: not due': "
                        "'first saturday', 'last sunday', ... (cron cannot say 'first Saturday': schedule "
                        "every Saturday with this)")
    p.add_argument("--now", metavar="ISO8601", help="judge --only-on as if it were this time (e.g. 2026-12-05T10:00:00Z)")
    t = p.add_argument_group("physical drills: recovery target (default: the end of the archive)")
    t.add_argument("--target-time")
    t.add_argument("--target-lsn")
    t.add_argument("--target-xid")
    t.add_argument("--target-name")
    t.add_argument("--pgvault-command", help="how the restored server runs pgvault in restore_command")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.only_on and args.what != "list" and not _due(args):
        return 0
    ctx = context_from(args)
    if args.what == "list":
        return _list(args, ctx)
    from pgvault.operations.maintenance.drill import DrillRequest, run_drill
    from pgvault.policy.pitr import RecoveryTarget

    if args.major is not None and args.target_dsn:
        raise UsageError("--major restores into a throwaway server of that major, not into --target-dsn")
    target = RecoveryTarget.parse(time=args.target_time, lsn=args.target_lsn, xid=args.target_xid, name=args.target_name,
                                  action="promote" if (args.target_time or args.target_lsn or args.target_xid
                                                       or args.target_name) else None)
    report = run_drill(ctx, DrillRequest(kind=args.kind, ref=args.what,
                                         # --major: always a scratch server of that major
                                         target_dsn="" if args.major is not None
                                         else args.target_dsn or ctx.settings.drill_target_dsn,
                                         recovery_target=target, pgvault_command=args.pgvault_command,
                                         major=args.major))
    doc = report.to_json()
    args.job_details = {"ok": report.ok, "restore_seconds": report.restore_seconds, "backup_id": report.backup_id}

    def human() -> str:
        t = report.target
        majors = f" (PostgreSQL {t['backup_major']} → {t['server_major']})" if "server_major" in t else ""
        lines = [f"drill {report.drill_id}: {report.backup_kind} backup {report.backup_id} into "
                 f"{t.get('kind', '?')}{majors}: {'PASSED' if report.ok else 'FAILED'}",
                 f"restore (recovery time): {human_duration(report.restore_seconds) if report.restore_seconds is not None else '-'}, "
                 f"total {human_duration(report.total_seconds)}"]
        if report.error:
            lines.append(f"error: {report.error}")
        lines.append(table(["check", "result", "took", "detail"],
                           [(c.name, "ok" if c.ok else "FAILED", human_duration(c.seconds), c.detail) for c in report.checks]))
        return "\n".join(lines)

    if not report.ok:
        failed = [c.name for c in report.checks if not c.ok]
        why = report.error or f"{len(failed)} check(s) failed: {', '.join(failed[:5])}"
        raise VerificationError(f"drill {report.drill_id} of backup {report.backup_id} FAILED: {why}").with_report(
            "drill", {"drill": doc}, human)
    emit(args, "drill", {"drill": doc}, human)
    return 0


def _due(args: argparse.Namespace) -> bool:
    """``--only-on``: whether today (UTC) is the day; when it is not, say so and make this run no
    job run, so a skipped Saturday never counts as a drill job that succeeded.  Decided before the
    configuration or the repository is touched: a skipped run needs neither."""
    import datetime as dt

    from pgvault.policy.schedule import parse_day_rule, utc_day

    try:
        rule = parse_day_rule(args.only_on)
    except ValueError as e:
        raise UsageError(f"--only-on: {e}") from None
    today = utc_day(parse_now(args.now) if args.now else dt.datetime.now(dt.UTC))
    if rule.is_due(today):
        return True
    args.job_name = None
    nxt = rule.next_due(today)
    emit(args, "drill_skipped", {"skipped": True, "reason": "not due", "rule": str(rule), "today": today.isoformat(),
                                 "next_due": nxt.isoformat()},
         lambda: f"drill skipped: not due: {today:%A %Y-%m-%d} (UTC) is not the {rule} of the month; "
                 f"next due {nxt:%A %Y-%m-%d}")
    return False


def _list(args: argparse.Namespace, ctx: Any) -> int:
    from pgvault.repository.drills import list_drills

    reports = list_drills(ctx.storage, ctx.cluster)
    emit(args, "drill_list", {"cluster": ctx.cluster, "drills": [r.to_json() for r in reports]}, lambda: (
        table(["drill", "kind", "backup", "result", "restore", "total", "failed checks"],
              [(r.drill_id, r.backup_kind, r.backup_id, "ok" if r.ok else "FAILED",
                human_duration(r.restore_seconds) if r.restore_seconds is not None else "-",
                human_duration(r.total_seconds), ", ".join(c.name for c in r.checks if not c.ok) or r.error[:40])
               for r in reports]) if reports else f"no drills of cluster {ctx.cluster!r} yet"))
    return 0
