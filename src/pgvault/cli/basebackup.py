"""``pgvault basebackup``: a physical base backup for point-in-time recovery."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault.cli import context_from, emit
from pgvault.operations.physical.basebackup import basebackup
from pgvault.output import human_bytes, human_duration


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("basebackup", parents=[common], help="physical base backup (run on the database host)")
    p.add_argument("--pgdata", help="data directory as this host sees it (default: the server's data_directory)")
    p.add_argument("--spread-checkpoint", action="store_true", help="wait for a spread checkpoint instead of a fast one")
    p.add_argument("--type", dest="backup_type", choices=("full", "incr", "diff"), default="full",
                   help="full (default); incr: only pages changed since the newest base backup; diff: since the newest "
                        "full one (taken full, with the reason, when that is not safe)")
    p.add_argument("--archive-timeout", type=float, default=300.0, help="seconds to wait for the needed WAL to be archived")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    m = basebackup(ctx, pgdata=args.pgdata, fast=not args.spread_checkpoint, archive_timeout=args.archive_timeout,
                   backup_type=args.backup_type)
    args.job_details = {"backup_id": m.backup_id, "backup_type": m.backup_type}  # kept in the job record and notified
    kind = "base backup" if m.backup_type == "full" else f"{m.backup_type} base backup (of {m.reference})"
    emit(args, "basebackup", {"backup": m.to_json()}, lambda: (
        f"{kind} {m.backup_id} complete in {human_duration(m.duration_seconds)}: "
        f"{m.start_lsn} .. {m.stop_lsn} on timeline {m.timeline}, WAL {m.first_wal} .. {m.last_wal} archived, "
        f"{human_bytes(m.raw_size)} read, {human_bytes(m.stored_size)} stored, {len(m.tablespaces)} tablespace(s)"))
    return 0
