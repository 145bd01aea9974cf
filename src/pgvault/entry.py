"""The ``pgvault`` program (console script and ``python -m pgvault``).

``wal push`` runs once per WAL segment and PostgreSQL waits for each: when the background pusher
has already stored the segment, :mod:`pgvault.operations.archive.confirm` confirms it from the
pusher's record with the standard library only, before the CLI (argparse, the config loader,
YAML) is imported.  ``wal fetch`` likewise: a segment the prefetcher already downloaded and
verified is moved to %p by :mod:`pgvault.operations.archive.prefetched`.  Anything they cannot
decide goes to the full command, :func:`pgvault.cli.main`, which behaves exactly as it always did.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not ``from typing``: it is not imported at start-up, and costs the fast path
if TYPE_CHECKING:
    from collections.abc import Sequence

# The options the fast paths understand (the common ones that may decide the spool, and push's and
# fetch's --pgdata); any other option (--json, --log-level, an abbreviation ...) means the full command.
_COMMON = {"--config": "config", "-c": "config", "--cluster": "cluster", "--repository": "repository",
           "-r": "repository"}
_WAL_ONLY = {"--pgdata": "pgdata"}
TIMELINE_1_HISTORY = "00000001.history"
FETCH_NOT_FOUND = 1  # restore_command's "no such file" (pgvault.cli.wal.FETCH_NOT_FOUND)


def parse_push(argv: Sequence[str]) -> dict[str, str | None] | None:
    """``wal push PATH`` with only the options above (each at most once), as argparse would read
    it; None for any other command line."""
    parsed = _parse(argv, "push", 1)
    if parsed is None:
        return None
    opts, args = parsed
    opts["path"] = args[0]
    return opts


def parse_fetch(argv: Sequence[str]) -> dict[str, str | None] | None:
    """``wal fetch NAME DEST`` (restore_command's ``%f %p``) with the same options; None otherwise."""
    parsed = _parse(argv, "fetch", 2)
    if parsed is None:
        return None
    opts, args = parsed
    opts["name"], opts["destination"] = args
    return opts


def _parse(argv: Sequence[str], verb: str, nargs: int) -> tuple[dict[str, str | None], list[str]] | None:
    opts: dict[str, str | None] = {"config": None, "cluster": None, "repository": None, "pgdata": None}
    positional: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("-"):
            flag, eq, value = token.partition("=")
            allowed = _COMMON if len(positional) < 2 else {**_COMMON, **_WAL_ONLY}
            if flag not in allowed or (eq and not flag.startswith("--")):
                return None
            if not eq:
                i += 1
                if i == len(argv):
                    return None
                value = argv[i]
            dest = allowed[flag]
            if dest in seen or not value or value.startswith("-"):
                return None
            seen.add(dest)
            opts[dest] = value
        else:
            positional.append(token)
        i += 1
    if len(positional) != 2 + nargs or positional[:2] != ["wal", verb]:
        return None
    return opts, positional[2:]


def fast_push(argv: Sequence[str]) -> int | None:
    """0 once the pusher's record confirmed the segment; None: run the full command."""
    opts = parse_push(argv)
    if opts is None:
        return None
    from pgvault.operations.archive import confirm

    try:
        cwd = os.getcwd()
        data_dir = os.path.join(cwd, opts["pgdata"]) if opts["pgdata"] else cwd
        fp = confirm.fingerprint(config=opts["config"], cluster=opts["cluster"], repository=opts["repository"],
                                 pgdata=opts["pgdata"], cwd=cwd, environ=os.environ)
        record = confirm.fast_confirm(str(opts["path"]), data_dir=data_dir, fp=fp) if fp else None
    except Exception:  # noqa: BLE001 - anything unexpected: the full command decides (and reports)
        return None
    if record is None:
        return None
    name = os.path.basename(str(opts["path"]))
    print(f"{name}: {'already archived' if record.already_archived else 'archived'} as {record.key}")
    return 0


def fast_fetch(argv: Sequence[str]) -> int | None:
    """0 once the prefetched, verified segment is at %p; 1 for timeline 1's history file, which
    cannot exist; None: run the full command (which answers every other "not found" and every
    error)."""
    opts = parse_fetch(argv)
    if opts is None:
        return None
    if opts["name"] == TIMELINE_1_HISTORY:
        # Timeline 1 never has a history file (one lists a timeline's parents; timeline 1 has none):
        # PostgreSQL's timeline.c says "Timeline 1 does not have a history file, so no need to
        # check" in readTimeLineHistory/existsTimeLineHistory, and restoreTimeLineHistoryFiles
        # skips it; it is asked for only when promotion copies the parent's history
        # (writeTimeLineHistory, "if a history file exists for the parent"), and absence is
        # expected there.  So "not found" without the CLI or the repository; no hole is possible.
        print(f"pgvault: info: {TIMELINE_1_HISTORY} is never archived: timeline 1 has no history", file=sys.stderr)
        return FETCH_NOT_FOUND
    from pgvault.operations.archive import confirm, prefetched

    if not prefetched.is_segment_name(str(opts["name"])):
        return None  # history files and the like: never prefetched; a miss should pay nothing here

    try:
        cwd = os.getcwd()
        data_dir = os.path.join(cwd, opts["pgdata"]) if opts["pgdata"] else cwd
        fp = confirm.fingerprint(config=opts["config"], cluster=opts["cluster"], repository=opts["repository"],
                                 pgdata=opts["pgdata"], cwd=cwd, environ=os.environ, verb="fetch")
        served = bool(fp) and prefetched.serve(str(opts["name"]), str(opts["destination"]), data_dir=data_dir,
                                               fp=str(fp))
    except Exception:  # noqa: BLE001 - anything unexpected: the full command decides (and reports)
        return None
    return 0 if served else None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "push" in args:
        code = fast_push(args)
        if code is not None:
            return code
    elif "fetch" in args:
        code = fast_fetch(args)
        if code is not None:
            return code
    from pgvault.cli import main as cli_main

    return cli_main(args)
