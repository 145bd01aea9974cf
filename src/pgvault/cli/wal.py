"""``pgvault wal push %p`` (archive_command) and ``pgvault wal fetch %f %p`` (restore_command)."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault.cli import context_from, emit
from pgvault.operations.archive import fetch, push
from pgvault.storage import ObjectNotFound

# restore_command: exit 1 means "this file does not exist" and may end recovery; any other failure
# must exit above 125 so that PostgreSQL aborts recovery instead of promoting early.
FETCH_NOT_FOUND = 1
FETCH_FAILED = 126


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("wal", parents=[common], help="WAL archiving: archive_command / restore_command helpers")
    wsub = p.add_subparsers(dest="wal_command", metavar="SUBCOMMAND")
    ps = wsub.add_parser("push", parents=[common], help="archive one WAL file (archive_command = 'pgvault wal push %%p')")
    ps.add_argument("path", help="the file to archive (%%p), relative to the data directory")
    ps.add_argument("--pgdata", help="data directory (default: the current directory, as PostgreSQL runs it)")
    ps.set_defaults(func=run_push)
    fs = wsub.add_parser("fetch", parents=[common], help="restore one WAL file (restore_command = 'pgvault wal fetch %%f %%p')")
    fs.add_argument("name", help="the file wanted (%%f)")
    fs.add_argument("destination", help="where to write it (%%p)")
    fs.add_argument("--pgdata", help="data directory (default: the current directory)")
    fs.set_defaults(func=run_fetch, remap_exit=fetch_exit_code)


def fetch_exit_code(error: BaseException) -> int:
    """Exit status for restore_command: 1 only for a confirmed absence."""
    return FETCH_NOT_FOUND if isinstance(error, ObjectNotFound) else FETCH_FAILED


def run_push(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    r = push(ctx, args.path, pgdata=args.pgdata)
    emit(args, "wal_push", {"name": r.name, "key": r.key, "already_archived": r.already_archived,
                            "raw_size": r.raw_size, "stored_size": r.stored_size},
         lambda: f"{r.name}: {'already archived' if r.already_archived else 'archived'} as {r.key}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    res = fetch(ctx, args.name, args.destination, pgdata=args.pgdata)
    if args.json:
        emit(args, "wal_fetch", {"name": args.name, "raw_size": res.raw_size}, lambda: "")
    return 0
