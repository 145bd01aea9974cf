"""``pgvault wal push %p`` (archive_command), ``pgvault wal fetch %f %p`` (restore_command) and
``pgvault wal find`` (when did a table's rows go)."""

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
    register_find(wsub, common)
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


def _remember_spool(args: argparse.Namespace, settings: Any, data_dir: Path, verb: str = "push") -> None:
    """Let the next ``wal push`` (``wal fetch``) with this command line, config and environment find
    the spool without loading the settings (pgvault.entry's fast paths; see
    operations/archive/confirm.py and prefetched.py)."""
    import os

    from pgvault.operations.archive import confirm
    from pgvault.operations.archive.background import fetch_spool_dir, spool_dir

    cwd = os.getcwd()
    fp = confirm.fingerprint(config=args.config, cluster=args.cluster, repository=args.repository,
                             pgdata=args.pgdata, cwd=cwd, environ=os.environ, verb=verb)
    if fp:
        spool = fetch_spool_dir(settings, data_dir) if verb == "fetch" else spool_dir(settings, data_dir)
        confirm.remember(str(data_dir), fp, str(spool), settings.archive_wait_timeout)


def run_push(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    data_dir = Path(args.pgdata) if args.pgdata else Path.cwd()
    # The background pusher's module only when it is used (archive.async): each import is
    # start-up time PostgreSQL waits for, once per segment.
    if settings.archive_async and _async_ready(data_dir, args.path):
        from pgvault.operations.archive.background import push_async

        def make_context() -> Any:
            from pgvault.operations.context import build_context

            return build_context(settings)

        _remember_spool(args, settings, data_dir)
        r = push_async(settings, args.path, pgdata=str(data_dir), passthrough=_passthrough(args),
                       make_context=make_context)
    else:
        from pgvault.operations.archive.push_fetch import push
        from pgvault.operations.context import build_context

        r = push(build_context(settings), args.path, pgdata=args.pgdata)
    emit(args, "wal_push", {"name": r.name, "key": r.key, "already_archived": r.already_archived,
                            "raw_size": r.raw_size, "stored_size": r.stored_size},
         lambda: f"{r.name}: {'already archived' if r.already_archived else 'archived'} as {r.key}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from pgvault.operations.archive.push_fetch import fetch
    from pgvault.pg import wal
    from pgvault.storage import ObjectNotFound

    ctx = context_from(args)
    try:
        # Only segments are prefetched (fetch_prefetching fetches anything else directly): a
        # history file, most often a "not found", need not import the prefetching code.
        if ctx.settings.restore_prefetch > 0 and wal.classify_or_none(args.name) is wal.WalFileKind.SEGMENT:
            from pgvault.operations.archive.background import fetch_prefetching

            _remember_spool(args, ctx.settings, Path(args.pgdata) if args.pgdata else Path.cwd(), "fetch")
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


def register_find(wsub: Any, common: argparse.ArgumentParser) -> None:
    from pgvault.policy.wal_find_ops import DEFAULT_OPS, OPS

    f = wsub.add_parser("find", parents=[common],
                        help="find the committed transactions that deleted/updated/truncated/dropped a table's rows")
    f.add_argument("--table", required=True, metavar="SCHEMA.NAME")
    f.add_argument("--database", metavar="NAME", help="default: the database of the connection settings")
    f.add_argument("--op", default=",".join(DEFAULT_OPS), metavar="OPS",
                   help=f"comma-separated, from {','.join(OPS)} (default {','.join(DEFAULT_OPS)})")
    f.add_argument("--from", dest="since", metavar="TIME", help="only transactions committed at or after (UTC if no zone)")
    f.add_argument("--to", dest="until", metavar="TIME", help="only transactions committed at or before; reading stops there")
    f.add_argument("--backup", metavar="ID", help="start from this base backup's table map (default: the newest "
                   "that started before --from)")
    f.add_argument("--batch-segments", type=int, default=8, metavar="N",
                   help="segments per pg_waldump run (disk use: about 2 x N segments at a time; default 8)")
    f.add_argument("--no-live-check", action="store_true",
                   help="do not compare the table's file with the live server at the end")
    f.set_defaults(func=run_find)


def _when(text: str | None, flag: str) -> Any:
    import datetime as dt

    from pgvault.errors import UsageError

    if text is None:
        return None
    try:
        t = dt.datetime.fromisoformat(text.strip().replace(" UTC", "+00:00").replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a timestamp like '2026-12-04 13:00:00+00'") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def run_find(args: argparse.Namespace) -> int:
    from pgvault.errors import UsageError
    from pgvault.operations.archive.wal_find import FindRequest, find
    from pgvault.policy import wal_find as policy

    try:
        schema, name = policy.split_table(args.table)
        ops = policy.parse_ops(args.op)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.batch_segments < 1:
        raise UsageError("--batch-segments must be at least 1")
    req = FindRequest(schema=schema, name=name, database=args.database, ops=ops, since=_when(args.since, "--from"),
                      until=_when(args.until, "--to"), backup_id=args.backup, live_check=not args.no_live_check,
                      batch_segments=args.batch_segments)
    ctx = context_from(args)
    r = find(ctx, req)
    cluster = ctx.cluster if ctx.cluster != "main" else None
    rows = []
    for ev in r.events:
        cmds = policy.recovery_commands(ev, schema=schema, name=name, database=r.database, cluster=cluster,
                                        repository=args.repository, config=args.config)
        rows.append(ev.to_json() | {"summary": policy.describe_rows(ev)} | cmds)
    doc = r.to_json() | {"events": rows}

    def human() -> str:
        head = (f"{r.table} in database {r.database} (OID {r.table_oid}): read {r.segments_read} WAL segments "
                f"{r.first_segment}..{r.last_segment or '-'} (timeline {r.timeline}) from base backup "
                f"{r.anchor_backup}{'' if r.complete else ', stopped after --to'} in {r.seconds:.1f}s")
        lines = [head]
        if not rows:
            lines.append(f"no committed transaction with {','.join(ops)} on the table in that range")
        else:
            lines.append(f"{len(rows)} committed transaction{'s' if len(rows) != 1 else ''}:")
        for d in rows:
            lines.append(f"  xid {d['xid']}  committed {d['commit_time']}  at {d['commit_lsn']}: {d['summary']}")
            lines.append(f"    just before it: {' '.join(d['target'])}   (or {' '.join(d['target_lsn'])})")
            lines.append(f"      {d['restore_cluster']}")
            lines.append(f"      {d['recover_table']}")
        if r.aborted:
            lines.append(f"({len(r.aborted)} rolled-back transaction(s) touched it too; not listed)")
        if r.dropped:
            lines.append("the table was dropped; nothing after the DROP is followed")
        lines += [f"warning: {w}" for w in r.warnings]
        return "\n".join(lines)

    emit(args, "wal_find", doc, human)
    return 0
