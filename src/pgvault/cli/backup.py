"""``pgvault backup``: logical backup of one, several or all databases plus globals."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault.cli import context_from, emit
from pgvault.operations.logical.backup import BackupRequest, backup
from pgvault.output import human_bytes, human_duration, table
from pgvault.pipeline.compress import CODECS  # loaded by operations.logical anyway


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("backup", parents=[common], help="logical backup (pg_dump) into the repository")
    p.add_argument("--database", "-d", action="append", default=[], help="database to back up (repeatable)")
    p.add_argument("--all", action="store_true", help="every database that accepts connections")
    p.add_argument("--no-globals", action="store_true", help="skip roles and tablespaces (pg_dumpall --globals-only)")
    p.add_argument("--no-exact-counts", action="store_true", help="record estimated row counts instead of counting (huge databases)")
    p.add_argument("--compression", choices=list(CODECS), help="override compression.algorithm")
    p.add_argument("--jobs", "-j", type=int, help="pg_dump processes per database sharing one snapshot, largest tables "
                   "split out first (default backup.jobs, 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ctx = context_from(args, **({"compression.algorithm": args.compression} if args.compression else {}))
    exact = ctx.settings.exact_row_counts and not args.no_exact_counts
    jobs = args.jobs if args.jobs is not None else ctx.settings.backup_jobs
    m = backup(
        ctx,
        BackupRequest(
            databases=tuple(args.database), all_databases=args.all, include_globals=not args.no_globals,
            exact_row_counts=exact, jobs=jobs, counts_from=ctx.settings.row_counts_from,
        ),
    )
    args.job_details = {"backup_id": m.backup_id}  # kept in the job record and notified

    def human() -> str:
        rows = [
            (d.name, len(d.tables), sum(t.rows for t in d.tables), len(d.objects()),
             human_bytes(d.raw_size), human_bytes(d.stored_size))
            for d in m.databases
        ]
        head = (
            f"backup {m.backup_id} complete: {len(m.databases)} database(s) in {human_duration(m.duration_seconds)}, "
            f"{human_bytes(m.raw_size)} dumped, {human_bytes(m.stored_size)} stored ({m.pipeline.suffix() or 'plain'})"
        )
        return head + "\n" + table(["database", "tables", "rows", "objects", "dumped", "stored"], rows, right=(1, 2, 3, 4, 5))

    emit(args, "backup", {"backup": m.to_json()}, human)
    return 0
