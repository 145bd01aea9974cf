"""``pgvault repo sync``: keep a second (third...) repository complete, e.g. in another region."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault.cli import emit, settings_from
from pgvault.errors import ConfigError, PgvaultError
from pgvault.output import human_bytes, human_duration


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("repo", parents=[common], help="configured repositories: copy one into another")
    verbs = p.add_subparsers(dest="what", metavar="VERB")
    s = verbs.add_parser("sync", parents=[common], help="copy every finished backup and archived WAL file into another "
                         "configured repository (verified by checksum; idempotent; resumable)",
                         description="Copies from the selected repository (--repository NAME; default the primary) "
                                     "into --to NAME (default: every other configured repository). WAL first, then "
                                     "backups, each backup's manifest last; stored bytes are copied as they are and "
                                     "checked against their sha256, so no key is needed. Never overwrites: an object "
                                     "already on the target that differs is an integrity error (exit 6).")
    s.add_argument("--to", metavar="NAME", action="append", help="target repository (repeatable)")
    s.add_argument("--parallel", type=int, default=4, metavar="N", help="objects copied at a time (default 4)")
    s.set_defaults(func=run_sync)
    p.set_defaults(func=lambda args: p.error("give a verb: sync"))


def run_sync(args: argparse.Namespace) -> int:
    from pgvault.operations.context import build_context
    from pgvault.operations.maintenance.repo_sync import sync_repository

    settings = settings_from(args)
    targets = args.to or [r.name for r in settings.all_repositories() if r.name != settings.repository_name]
    if not targets:
        raise ConfigError(["repo sync: no other repository is configured"],
                          hint="add one under repositories.<name> (url, s3.*) in the config file")
    if args.parallel < 1:
        raise ConfigError(["repo sync: --parallel must be at least 1"])
    ctx = build_context(settings)
    results: list[dict[str, Any]] = []
    failed: PgvaultError | None = None
    for name in targets:
        try:
            results.append(sync_repository(ctx, name, parallel=args.parallel).to_json())
        except PgvaultError as e:
            results.append({"target": name, "ok": False, "error": e.message})
            failed = failed or e
    payload = {"cluster": settings.cluster, "source": settings.repository_name, "runs": results}

    def human() -> str:
        lines = []
        for r in results:
            if "error" in r:
                lines.append(f"{settings.repository_name} -> {r['target']}: FAILED: {r['error']}")
                continue
            lines.append(f"{r['source']} -> {r['target']} ({r['target_url']}): {r['wal_copied']} WAL file(s), "
                         f"{r['backups_copied']} backup(s) ({r['objects_copied']} object(s)), "
                         f"{r['restore_points_copied']} restore point(s) copied, {human_bytes(r['bytes_copied'])} in "
                         f"{human_duration(r['seconds'])} ({r['mb_per_second']} MB/s); already there: "
                         f"{r['wal_already']} WAL file(s), {r['backups_already']} backup(s)"
                         + (f"; {r['objects_verified']} object(s) of an earlier cut-short run verified"
                            if r["objects_verified"] else "")
                         + (f"; {r['wal_unfinished_on_source']} WAL file(s) still being archived on the source, "
                            "left for the next run" if r["wal_unfinished_on_source"] else "")
                         + (f"; {r['expired_on_source']} WAL file(s)/backup(s) expired on the source during the run, "
                            "not copied" if r["expired_on_source"] else ""))
        return "\n".join(lines)

    if failed is not None:
        raise failed.with_report("repo_sync", payload, human)
    emit(args, "repo_sync", payload, human)
    return 0
