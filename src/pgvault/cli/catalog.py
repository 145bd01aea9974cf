"""``pgvault list`` and ``pgvault show``: what the repository holds."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault.cli import context_from, emit
from pgvault.repository.catalog import list_logical, list_physical, resolve_logical
from pgvault.operations.status import ArchiveSummary, archive_summary
from pgvault.output import human_bytes, human_duration, table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("list", parents=[common], help="list backups in the repository")
    p.set_defaults(func=run_list)
    st = sub.add_parser("status", parents=[common], help="backups and the recoverable window at a glance")
    st.set_defaults(func=run_status)
    s = sub.add_parser("show", parents=[common], help="show one backup's manifest")
    s.add_argument("backup_id", metavar="ID", help="backup id or 'latest'")
    s.set_defaults(func=run_show)


def run_list(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    backups = list_logical(ctx.storage, ctx.cluster)
    physical = list_physical(ctx.storage, ctx.cluster)
    summary: list[dict[str, Any]] = [
        {
            "backup_id": m.backup_id,
            "kind": m.kind,
            "cluster": m.cluster,
            "started_at": m.started_at,
            "finished_at": m.finished_at,
            "duration_seconds": round(m.duration_seconds, 3),
            "databases": [d.name for d in m.databases],
            "raw_size": m.raw_size,
            "stored_size": m.stored_size,
            "server_version": m.server_version,
            "pipeline": m.pipeline.to_json(),
        }
        for m in backups
    ]
    summary += [
        {
            "backup_id": p.backup_id,
            "kind": p.kind,
            "cluster": p.cluster,
            "started_at": p.started_at,
            "finished_at": p.finished_at,
            "duration_seconds": round(p.duration_seconds, 3),
            "timeline": p.timeline,
            "start_lsn": p.start_lsn,
            "stop_lsn": p.stop_lsn,
            "raw_size": p.raw_size,
            "stored_size": p.stored_size,
            "server_version": p.server_version,
            "pipeline": p.pipeline.to_json(),
        }
        for p in physical
    ]
    summary.sort(key=lambda d: (d["started_at"], d["kind"]))

    def human() -> str:
        if not summary:
            return f"no backups of cluster {ctx.cluster!r} in {ctx.storage.url}"
        rows = [
            (d["backup_id"], d["kind"], d["started_at"][:19].replace("T", " "), human_duration(d["duration_seconds"]),
             ",".join(d["databases"]) if "databases" in d else f"{d['start_lsn']}..{d['stop_lsn']} tl {d['timeline']}",
             human_bytes(d["stored_size"]), d["server_version"])
            for d in summary
        ]
        return table(["id", "kind", "started (UTC)", "took", "contents", "stored", "server"], rows, right=(3, 5))

    archive = archive_summary(ctx, physical)

    def human_all() -> str:
        text = human()
        if archive is not None:
            text += "\n\n" + describe_archive(archive)
        return text

    emit(args, "backup_list", {"cluster": ctx.cluster, "repository": ctx.storage.url, "backups": summary,
                               "archive": archive.to_json() if archive else None}, human_all)
    return 0


def describe_archive(a: ArchiveSummary) -> str:
    """The WAL archive and recoverable window, for people."""
    lines = [f"WAL archive: {a.segments} segments on timeline(s) {', '.join(map(str, a.timelines))}, newest "
             f"{a.newest_wal or '-'} (archived {(a.newest_wal_archived_at or '-')[:19].replace('T', ' ')})"]
    start, end = a.recoverable_from(), a.recoverable_to()
    if start and end:
        lines.append(f"recoverable: from {start['time'][:19].replace('T', ' ')} ({start['lsn']}, backup "
                     f"{start['backup_id']}) to {end['wal']} (archived {(end['archived_at'] or '-')[:19].replace('T', ' ')})")
    else:
        lines.append("recoverable: nothing (no base backup whose WAL is complete)")
    for a_, b_ in a.gaps:
        lines.append(f"GAP in the archive: {a_} .. {b_} missing")
    for p in a.restore_points:
        lines.append(f"restore point {p['name']!r} at {p['lsn']} ({p['time'][:19]})")
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    m = resolve_logical(ctx.storage, ctx.cluster, args.backup_id)

    def human() -> str:
        lines = [
            f"backup      {m.backup_id} ({m.kind})",
            f"cluster     {m.cluster} (system identifier {m.system_identifier})",
            f"server      PostgreSQL {m.server_version}; dumped with {m.pg_dump_version}",
            f"time        {m.started_at} .. {m.finished_at} ({human_duration(m.duration_seconds)})",
            f"pipeline    compression {m.pipeline.compression}, encryption {m.pipeline.encryption}",
            f"size        {human_bytes(m.raw_size)} dumped, {human_bytes(m.stored_size)} stored",
        ]
        if m.globals:
            lines.append(f"globals     {m.globals.key} sha256 {m.globals.result.stored_sha256[:16]}...")
        for d in m.databases:
            lines.append("")
            exact = "exact" if d.row_counts_exact else "estimated"
            lines.append(f"database {d.name}: {d.object.key}, {human_bytes(d.object.result.stored_size)} stored, rows {exact}")
            lines.append(table(["table", "rows"], [(t.qualified, t.rows) for t in d.tables], right=(1,)))
        return "\n".join(lines)

    emit(args, "backup", {"backup": m.to_json()}, human)
    return 0


def run_status(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    logical = list_logical(ctx.storage, ctx.cluster)
    physical = list_physical(ctx.storage, ctx.cluster)
    archive = archive_summary(ctx, physical)
    last_logical = logical[-1] if logical else None
    last_physical = physical[-1] if physical else None
    payload = {
        "cluster": ctx.cluster,
        "repository": ctx.storage.url,
        "last_logical": {"backup_id": last_logical.backup_id, "finished_at": last_logical.finished_at} if last_logical else None,
        "last_physical": {"backup_id": last_physical.backup_id, "finished_at": last_physical.finished_at,
                          "stop_lsn": last_physical.stop_lsn} if last_physical else None,
        "archive": archive.to_json() if archive else None,
    }

    def human() -> str:
        lines = [f"cluster {ctx.cluster} in {ctx.storage.url}",
                 f"last logical backup:  {last_logical.backup_id if last_logical else 'none'}",
                 f"last base backup:     {last_physical.backup_id if last_physical else 'none'}"]
        lines.append(describe_archive(archive) if archive else "WAL archive: empty")
        return "\n".join(lines)

    emit(args, "status", payload, human)
    return 0
