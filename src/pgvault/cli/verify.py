"""``pgvault verify ID|latest|--all``: re-read stored backups and WAL; never connects to PostgreSQL."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault.cli import context_from, emit
from pgvault.errors import IntegrityError, UsageError
from pgvault.operations.maintenance.verify import NO_IDENTITY, VerifyReport, verify
from pgvault.output import human_bytes, table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "verify", parents=[common],
        help="re-read stored backups and WAL: sizes, checksums, decryption, WAL continuity (no PostgreSQL needed)",
    )
    p.add_argument("backup_id", metavar="ID", nargs="?", help="a logical or base backup id, or 'latest'")
    p.add_argument("--all", dest="all_backups", action="store_true",
                   help="every logical and base backup and every archived WAL file")
    p.set_defaults(func=run)


_SHOWN = {"ok": "ok", "partial": "PARTIAL", "warning": "WARNING", "failed": "FAILED"}


def render(report: VerifyReport) -> str:
    """The report for people: one line per item, then the summary."""
    what = "every backup and the WAL archive" if report.scope == "all" else f"backup {report.scope}"
    lines = [f"verify {what} of cluster {report.cluster} in {report.repository}", ""]
    rows = [(_SHOWN.get(f.status, f.status), f.kind, f.backup_id or "", f.subject,
             "" if f.status == "partial" and f.detail == NO_IDENTITY else f.detail)
            for f in report.findings]
    lines.append(table(["result", "what", "backup", "item", "problem"], rows))
    lines.append("")
    lines.append(f"{report.objects} objects checked, {human_bytes(report.bytes_read)} read: "
                 f"{report.failures} failure(s), {report.warnings} warning(s)")
    if report.undecrypted:
        lines.append(f"NOT CHECKED: {report.undecrypted} encrypted object(s) (PARTIAL) were checked by stored size and "
                     "sha256 only: no age identity is configured, so decryption and decompression were not tested "
                     "(set encryption.age_identity_file or PGVAULT_ENCRYPTION_AGE_IDENTITY)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if bool(args.backup_id) == bool(args.all_backups):
        raise UsageError("give one backup id (or 'latest'), or --all")
    ctx = context_from(args)
    report = verify(ctx, None if args.all_backups else args.backup_id)
    # Picked up by whoever records scheduled jobs' outcomes (metrics); harmless otherwise.
    args.job_details = {**report.job_details(), **({"backup_id": report.scope} if report.scope != "all" else {})}
    if not report.ok:
        # The report is the full answer (one JSON document with --json); the exit status is the
        # integrity one (README: exit codes).
        raise IntegrityError(f"verify found {report.failures} problem(s) in {report.repository}").with_report(
            "verify", report.to_json(), lambda: render(report))
    emit(args, "verify", report.to_json(), lambda: render(report))
    return 0
