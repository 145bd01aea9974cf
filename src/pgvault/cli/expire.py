"""``pgvault expire``: the retention plan, with a reason for every backup; deletes only with ``--apply``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from pgvault.cli import context_from, emit, parse_now
from pgvault.output import human_bytes, table
from pgvault.policy.retention import Decision, RetentionPlan, fmt_duration, fmt_time


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("expire", parents=[common], help="apply the retention policy (a dry run unless --apply)")
    p.add_argument("--apply", action="store_true", help="delete what the plan says (default: only print the plan)")
    p.add_argument("--now", metavar="ISO8601", help="plan as if it were this time (e.g. 2026-11-25T02:00:00Z)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgvault.operations.maintenance.expire import expire

    now = parse_now(args.now) if args.now else None
    ctx = context_from(args)
    result = expire(ctx, now=now, apply=args.apply)
    plan = result.plan
    payload = {"cluster": ctx.cluster, "repository": ctx.storage.url, "applied": result.applied is not None,
               **plan.to_json(), "deleted": result.applied.to_json() if result.applied else None,
               "retained": result.retained}
    emit(args, "expire_plan", payload, lambda: render(plan, cluster=ctx.cluster, url=ctx.storage.url,
                                                      applied=result.applied is not None, given_now=now is not None)
         + _retained(result.retained, result.applied.swept if result.applied else None))
    return 0


def _retained(held: list[dict[str, Any]] | None, swept: Any) -> str:
    """Object Lock: what the store keeps until its date (not an error), and the versions swept."""
    if held is None:
        return ""
    lines = ["", "object lock: " + (f"{len(held)} item(s) retained, not deleted before their date:" if held
                                    else "nothing the plan deletes is retained")]
    lines += [f"  {h['what']}: retained until {h['retained_until']}" for h in held]
    if swept is not None:
        lines.append(f"old versions removed: {swept.versions} ({human_bytes(swept.bytes)}), "
                     f"superseded job records: {swept.job_records}")
    return "\n".join(lines)


def _decisions(title: str, policy: str, ds: Sequence[Decision]) -> list[str]:
    lines = [f"{title} (policy: {policy})"]
    if not ds:
        return lines + ["  none"]
    rows = [(d.backup_id, d.action, fmt_time(d.taken_at), human_bytes(d.size), "; ".join(d.reasons)) for d in ds]
    lines.append(table(["id", "action", "taken (UTC)", "stored", "reasons"], rows, right=(3,)))
    return lines


def render(plan: RetentionPlan, *, cluster: str, url: str, applied: bool, given_now: bool) -> str:
    """The plan for people: a table per kind, WAL ranges, debris, a summary line."""
    when = f"as of {fmt_time(plan.now)} UTC" + (" (--now)" if given_now else "")
    head = f"retention plan for cluster {cluster} in {url}, {when}"
    lines = [head, "applied: what the plan marks 'delete' was deleted" if applied
             else "dry run: nothing is deleted; run with --apply to delete", ""]
    lines += [f"note: {n}" for n in plan.notes]
    if plan.notes:
        lines.append("")
    lines += _decisions("logical backups", plan.policy.logical.describe(), plan.logical)
    lines.append("")
    lines += _decisions("base backups", plan.policy.physical.describe(), plan.physical)
    lines.append("")
    w = plan.wal
    lines.append(f"WAL: {w.note}")
    lines.append(f"  keep {w.kept_files} file(s), {human_bytes(w.kept_bytes)}")
    ranges = w.ranges
    if ranges:
        lines.append(table(["timeline", "delete first", "delete last", "files", "stored"],
                           [(r.timeline, r.first, r.last, r.files, human_bytes(r.bytes)) for r in ranges],
                           right=(3, 4)))
    else:
        lines.append("  delete nothing")
    lines.append("")
    if plan.debris:
        lines.append(f"debris (objects without a manifest or checksum record; grace {fmt_duration(plan.policy.debris_grace)})")
        lines.append(table(["kind", "where", "action", "objects", "stored", "reason"],
                           [(d.kind, d.where, "delete" if d.delete else "keep", len(d.keys), human_bytes(d.size), d.reason)
                            for d in plan.debris], right=(3, 4)))
    else:
        lines.append("debris: none")
    lines.append("")
    if plan.unfinished:
        lines.append("unfinished writes (local .tmp-* files, incomplete S3 multipart uploads of killed writers; "
                     f"grace {fmt_duration(plan.policy.debris_grace)})")
        lines.append(table(["where", "action", "last written (UTC)", "stored", "reason"],
                           [(u.write.key, "delete" if u.delete else "keep", fmt_time(u.write.modified),
                             human_bytes(u.write.size), u.reason) for u in plan.unfinished], right=(3,)))
    else:
        lines.append("unfinished writes: none")
    s = plan.summary()
    verb = "deleted" if applied else "would delete"
    kinds = ("logical", "physical", "wal", "debris", "unfinished_writes")
    lines += ["", (f"{verb}: {s['logical']['delete']} logical backup(s), {s['physical']['delete']} base backup(s), "
                   f"{s['wal']['delete']} WAL file(s), {s['debris']['delete']} debris item(s), "
                   f"{s['unfinished_writes']['delete']} unfinished write(s); "
                   f"{human_bytes(sum(s[k]['delete_bytes'] for k in kinds))} in all")]
    return "\n".join(lines)
