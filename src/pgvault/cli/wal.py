"""``pgvault wal push %p`` (archive_command) and ``pgvault wal fetch %f %p`` (restore_command)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pgvault.cli import context_from, emit, settings_from

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
    # Started by push / fetch themselves (see operations/archive/background.py); not for people.
    ad = wsub.add_parser("archive-daemon", parents=[common])
    ad.add_argument("--pgdata", required=True)
    ad.set_defaults(func=run_pusher_daemon)
    pd = wsub.add_parser("prefetch-daemon", parents=[common])
    pd.add_argument("--pgdata", required=True)
    pd.set_defaults(func=run_prefetch_daemon)


def fetch_exit_code(error: BaseException) -> int:
    """Exit status for restore_command: 1 only for a confirmed absence."""
    from pgvault.storage import ObjectNotFound

    return FETCH_NOT_FOUND if isinstance(error, ObjectNotFound) else FETCH_FAILED


def _passthrough(args: argparse.Namespace) -> list[str]:
    from pgvault.operations.archive.background import passthrough_args

    return passthrough_args(args.config, args.cluster, args.repository)


def _async_ready(data_dir: Path, path: str) -> bool:
    from pgvault.operations.archive.background import is_ready

    return is_ready(data_dir, path)


def run_push(args: argparse.Namespace) -> int:
    from pgvault.operations.context import build_context

    settings = settings_from(args)
    data_dir = Path(args.pgdata) if args.pgdata else Path.cwd()
    # The background pusher's module only when it is used (archive.async): each import is
    # start-up time PostgreSQL waits for, once per segment.
    if settings.archive_async and _async_ready(data_dir, args.path):
        from pgvault.operations.archive.background import push_async

        r = push_async(settings, args.path, pgdata=str(data_dir), passthrough=_passthrough(args),
                       make_context=lambda: build_context(settings))
    else:
        from pgvault.operations.archive.push_fetch import push

        r = push(build_context(settings), args.path, pgdata=args.pgdata)
    emit(args, "wal_push", {"name": r.name, "key": r.key, "already_archived": r.already_archived,
                            "raw_size": r.raw_size, "stored_size": r.stored_size},
         lambda: f"{r.name}: {'already archived' if r.already_archived else 'archived'} as {r.key}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from pgvault.operations.archive.background import fetch_prefetching
    from pgvault.operations.archive.push_fetch import fetch
    from pgvault.storage import ObjectNotFound

    ctx = context_from(args)
    try:
        if ctx.settings.restore_prefetch > 0:
            res = fetch_prefetching(ctx, args.name, args.destination, pgdata=args.pgdata,
                                    passthrough=_passthrough(args))
        else:
            res = fetch(ctx, args.name, args.destination, pgdata=args.pgdata)
    except ObjectNotFound as e:
        # Routine: PostgreSQL probes for the next timeline's history and for the segment after the
        # end of the archive.  One quiet line in the server log, not an "error" for the on-call.
        why = e.message if e.message.startswith(args.name) else f"{args.name} is not in the archive"
        print(f"pgvault: info: {why} (routine at the end of recovery)", file=sys.stderr)
        return FETCH_NOT_FOUND
    if args.json:
        emit(args, "wal_fetch", {"name": args.name, "prefetched": res is None,
                                 "raw_size": res.raw_size if res else None}, lambda: "")
    return 0


def run_pusher_daemon(args: argparse.Namespace) -> int:
    from pgvault.operations.archive.background import run_pusher

    return run_pusher(context_from(args), Path(args.pgdata))


def run_prefetch_daemon(args: argparse.Namespace) -> int:
    from pgvault.operations.archive.background import run_prefetcher

    return run_prefetcher(context_from(args), Path(args.pgdata))
