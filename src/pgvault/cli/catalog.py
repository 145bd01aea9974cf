"""``pgvault list`` and ``pgvault show``: what the repository holds."""

from __future__ import annotations

import argparse
from typing import Any

from pgvault import log
from pgvault.cli import context_from, emit
from pgvault.errors import NotFoundError
from pgvault.operations.context import Context
from pgvault.operations.maintenance.status import archive_summary
from pgvault.output import human_bytes, human_duration, table
from pgvault.policy import chain
from pgvault.policy.verdict import ArchiveSummary, StatusSnapshot
from pgvault.repository import layout
from pgvault.repository.catalog import load_physical, resolve_logical, scan_logical, scan_physical
from pgvault.repository.physical import PhysicalManifest


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("list", parents=[common], help="list backups in the repository")
    p.set_defaults(func=run_list)
    st = sub.add_parser("status", parents=[common], help="one screen for the on-call: backups, WAL archive, drills, verdict",
                        description="Exit status: 0 OK, 1 WARNING, 2 CRITICAL (the Nagios plugin convention). A "
                                    "repository that cannot be read within --timeout is CRITICAL, with what the "
                                    "server says about archiving.")
    st.add_argument("--pgdata", metavar="DIR", help="data directory whose .ready backlog to count "
                    "(default: the server's data_directory when readable here)")
    st.add_argument("--no-connect", action="store_true", help="do not connect to PostgreSQL (no pg_stat_archiver)")
    st.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                    help="answer CRITICAL with what is known if the repository has not been read by then (default 15)")
    st.set_defaults(func=run_status)
    s = sub.add_parser("show", parents=[common], help="show one backup's manifest")
    s.add_argument("backup_id", metavar="ID", help="backup id or 'latest'")
    s.set_defaults(func=run_show)


def run_list(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    # A damaged manifest is a row of its own, not a reason to show nothing (one bad file must
    # not hide every good backup from the person about to restore).
    backups, damaged = scan_logical(ctx.storage, ctx.cluster)
    physical, damaged_physical = scan_physical(ctx.storage, ctx.cluster)
    damaged += damaged_physical
    broken = chain.broken({p.backup_id: p for p in physical}, {d.backup_id: d.reason for d in damaged_physical})
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
            "page_checksums": None if p.page_checksums is None else {
                "checked": p.page_checksums.checked, "pages": p.page_checksums.pages, "failed": p.page_checksums.failed,
                "bad_pages": [b.to_json() for b in p.page_checksums.bad_pages[:10]]},
            "backup_type": p.backup_type,
            "reference": p.reference,
            "chain_broken": broken.get(p.backup_id),
            "from_standby": p.from_standby,
        }
        for p in physical
    ]
    summary.sort(key=lambda d: (d["started_at"], d["kind"]))
    for d in damaged:
        log.get().warning("%s backup %s is damaged: %s", d.kind, d.backup_id, d.reason)
    for backup_id, why in sorted(broken.items()):
        log.get().warning("base backup %s cannot be restored, its chain is broken: %s", backup_id, why)

    def human() -> str:
        if not summary and not damaged:
            return f"no backups of cluster {ctx.cluster!r} in {ctx.storage.url}"
        rows = [
            (d["backup_id"], d["kind"], "BROKEN CHAIN" if d.get("chain_broken") else "ok",
             d["started_at"][:19].replace("T", " "), human_duration(d["duration_seconds"]),
             ",".join(d["databases"]) if "databases" in d else _chain_text(d)
             + f"{d['start_lsn']}..{d['stop_lsn']} tl {d['timeline']}" + (" (standby)" if d["from_standby"] else "")
             + (f", {d['page_checksums']['failed']} BAD PAGE(S)" if (d.get("page_checksums") or {}).get("failed") else ""),
             human_bytes(d["stored_size"]), d["server_version"])
            for d in summary
        ]
        # The id is the start time: damaged rows sort in among the others, the reason in "contents".
        rows += [(d.backup_id, d.kind, "damaged", "", "", d.reason, "", "") for d in damaged]
        rows.sort(key=lambda r: (r[0], r[1]))
        return table(["id", "kind", "state", "started (UTC)", "took", "contents", "stored", "server"], rows, right=(4, 6))

    archive = archive_summary(ctx, physical)

    def human_all() -> str:
        text = human()
        if archive is not None:
            text += "\n\n" + describe_archive(archive)
        return text

    emit(args, "backup_list", {"cluster": ctx.cluster, "repository": ctx.storage.url, "backups": summary,
                               "damaged": [d.to_json() for d in damaged],
                               "archive": archive.to_json() if archive else None}, human_all)
    return 0


def _chain_text(row: dict[str, Any]) -> str:
    """"incr of 20261205T010203Z, " for an incremental's row (its state says when the chain is broken)."""
    return "" if row.get("backup_type", "full") == "full" else f"{row['backup_type']} of {row['reference']}, "


def describe_archive(a: ArchiveSummary) -> str:
    """The WAL archive and recoverable window, for people."""
    lines = [f"WAL archive: {a.segments} segments on timeline(s) {', '.join(map(str, a.timelines))}, newest "
             f"{a.newest_wal or '-'} (archived {(a.newest_wal_archived_at or '-')[:19].replace('T', ' ')})"]
    start, end = a.recoverable_from(), a.recoverable_to()
    if start and end:
        lines.append(f"recoverable: from {start['time'][:19].replace('T', ' ')} ({start['lsn']}, backup "
                     f"{start['backup_id']}) to {end['wal']} (archived {(end['archived_at'] or '-')[:19].replace('T', ' ')})")
        if len({w.timeline for w in a.windows}) > 1:  # a branch in this repository: each timeline's reach
            for w in a.windows:
                lines.append(f"  backup {w.backup_id}: timeline {w.timeline}, to {w.to_wal}")
    else:
        lines.append("recoverable: nothing (no base backup whose WAL is complete)")
    for a_, b_ in a.gaps:
        lines.append(f"GAP in the archive: {a_} .. {b_} missing")
    for n in a.unfinished:
        lines.append(f"HOLE: {n} has a checksum record but no object")
    if a.in_flight:
        lines.append(f"in flight (uploading now): {', '.join(a.in_flight)}")
    for p in a.restore_points:
        lines.append(f"restore point {p['name']!r} at {p['lsn']} ({p['time'][:19]})")
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    ctx = context_from(args)
    try:
        m = resolve_logical(ctx.storage, ctx.cluster, args.backup_id)
    except NotFoundError:
        if args.backup_id == "latest" or not layout.is_backup_id(args.backup_id):
            raise
        try:
            base = load_physical(ctx.storage, ctx.cluster, args.backup_id)
        except NotFoundError:
            raise NotFoundError(f"no backup {args.backup_id} of cluster {ctx.cluster!r} in {ctx.storage.url}",
                                hint="see 'pgvault list'") from None
        return _show_physical(args, ctx, base)

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
            for p in d.parts:
                lines.append(f"  part {p.object.key}: {human_bytes(p.object.result.stored_size)} stored, "
                             f"rows of {', '.join(f'{s}.{t}' for s, t in p.tables)}")
            lines.append(table(["table", "rows"], [(t.qualified, t.rows) for t in d.tables], right=(1,)))
        return "\n".join(lines)

    emit(args, "backup", {"backup": m.to_json()}, human)
    return 0


def _show_physical(args: argparse.Namespace, ctx: Context, m: PhysicalManifest) -> int:
    """A base backup: where its WAL starts and stops, and the chain a restore of it applies."""
    from pgvault.operations.maintenance.verify_chain import Chains

    ids, broken = Chains(ctx.storage, ctx.cluster, lambda _finding: None).chain(m)

    def human() -> str:
        if broken is not None:
            chain_line = f"BROKEN: {broken}; restore refuses it (take a full backup)"
        elif len(ids) == 1:
            chain_line = "full backup: restored on its own"
        else:
            chain_line = f"{len(ids)} backups, restored in this order: {', '.join(ids)} ({m.backup_type} of {m.reference})"
        return "\n".join([
            f"backup      {m.backup_id} ({m.kind}, {m.backup_type})",
            f"cluster     {m.cluster} (system identifier {m.system_identifier})",
            f"server      PostgreSQL {m.server_version}",
            f"time        {m.started_at} .. {m.finished_at} ({human_duration(m.duration_seconds)})",
            f"WAL         timeline {m.timeline}, {m.start_lsn}..{m.stop_lsn} ({m.first_wal}..{m.last_wal})",
            f"pipeline    compression {m.pipeline.compression}, encryption {m.pipeline.encryption}",
            f"size        {human_bytes(m.raw_size)} read, {human_bytes(m.stored_size)} stored",
            f"chain       {chain_line}",
        ])

    emit(args, "backup", {"backup": m.to_json(), "chain": ids or None, "chain_broken": broken}, human)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from pgvault.operations.maintenance.status import gather_status
    from pgvault.policy.verdict import VERDICT_EXIT, evaluate, snapshot_json, verdict

    ctx = context_from(args)
    snap = gather_status(ctx, pgdata=args.pgdata, connect=not args.no_connect, repository_timeout=args.timeout)
    reasons = evaluate(snap)
    payload = snapshot_json(snap, reasons)
    if len(ctx.settings.all_repositories()) > 1:  # each configured repository and its lag behind the first
        from pgvault.operations.maintenance.repositories import survey, survey_json

        payload["repositories"] = survey_json(survey(ctx.settings, timeout=args.timeout))
    emit(args, "status", payload, lambda: describe_status(snap, payload))
    return VERDICT_EXIT[verdict(reasons)]


def describe_status(snap: StatusSnapshot, doc: dict[str, Any]) -> str:
    """The on-call's screen."""
    from pgvault.policy.verdict import describe_age

    def newest(d: dict[str, Any] | None, contents: str) -> str:
        if not d:
            return "none"
        return (f"{d['backup_id']}, {describe_age(d['age_seconds'])} ago (took {human_duration(d['duration_seconds'])}, "
                f"{human_bytes(d['stored_size'])}, {contents})")

    logical, physical = doc["last_logical"], doc["last_physical"]
    lines = [f"{doc['verdict']}: cluster {snap.cluster} in {snap.repository}"]
    lines += [f"  {r['level']}: {r['message']}" for r in doc["reasons"]]
    lines.append("")
    lines.append("last logical backup:  " + newest(logical, ", ".join(logical["databases"]) if logical else ""))
    lines.append("last base backup:     " + newest(physical, f"stop {physical['stop_lsn']}" if physical else ""))
    if snap.repository_error:
        lines.append(f"repository: NOT READ ({snap.repository_error})")
    else:
        lines.append(describe_archive(snap.archive) if snap.archive else "WAL archive: empty")
    w = doc["recoverable_window"]
    if w:
        lines.append(f"recoverable window:   {describe_age(w['seconds'])} ({w['from'][:19].replace('T', ' ')} .. "
                     f"{w['to'][:19].replace('T', ' ')})")
    ar = snap.archiving
    if ar.connection == "ok":
        state = "FAILING" if ar.failing else "ok"
        lines.append(f"archiver ({ar.server}): {state}, archive_mode {ar.archive_mode}, last archived "
                     f"{ar.last_archived_wal or '-'} at {(ar.last_archived_time or '-')[:19].replace('T', ' ')}, "
                     f"{ar.failed_count} failures")
    elif ar.connection == "skipped":
        lines.append("archiver: not checked (--no-connect)")
    if ar.backlog_segments is not None:
        lines.append(f"archiving backlog:    {ar.backlog_segments} file(s) waiting, lag "
                     f"{describe_age(ar.lag_seconds or 0.0)} (from {ar.backlog_source})")
    lines += [f"note: {n}" for n in ar.notes]
    last, good = doc["last_drill"], doc["last_successful_drill"]
    if last is None:
        lines.append("last drill:           none")
    else:
        lines.append(f"last drill:           {last['drill_id']} {'passed' if last['ok'] else 'FAILED'}, "
                     f"{describe_age(last['age_seconds'])} ago ({last['backup_kind']} backup {last['backup_id']}, restore "
                     f"{human_duration(last['restore_seconds'])})")
        if good is not None and good["drill_id"] != last["drill_id"]:
            lines.append(f"last passed drill:    {good['drill_id']}, {describe_age(good['age_seconds'])} ago")
    if snap.jobs:
        rows = [(name, "ok" if j.ok else f"FAILED (exit {j.last_exit_code})", (j.last_finished_at or "-")[:19].replace("T", " "),
                 human_duration(j.last_duration_seconds), (j.last_success_at or "never")[:19].replace("T", " "))
                for name, j in sorted(snap.jobs.items())]
        lines.append("")
        lines.append(table(["job", "last run", "finished (UTC)", "took", "last success"], rows, right=(3,)))
        lines.append("")
    size = snap.size
    areas = ", ".join(f"{k} {human_bytes(v)}" for k, v in sorted(size.by_area.items()))
    lines.append(f"repository size:      {human_bytes(size.bytes)} in {size.objects} objects" + (f" ({areas})" if areas else ""))
    if snap.unfinished is not None:
        lines.append(f"unfinished writes:    {snap.unfinished.describe()}")
    if snap.object_lock is not None:
        lines.append(f"object lock:          {describe_object_lock(snap.object_lock)}")
    if doc.get("repositories"):
        lines += ["", describe_repositories(doc["repositories"])]
    return "\n".join(lines)


def describe_object_lock(lock: dict[str, Any]) -> str:
    """``status``'s one line about S3 Object Lock: the bucket's side, then pgvault's."""
    bucket = lock.get("bucket")
    if bucket is None:
        enforced = f"unknown ({lock.get('error')})"
    elif bucket.get("enabled"):
        default = bucket.get("default_mode")
        span = f"{bucket.get('default_days')} day(s)" if bucket.get("default_days") else f"{bucket.get('default_years')} year(s)"
        enforced = "the bucket enforces Object Lock" + (f" (default retention {default.lower()} {span})" if default else
                                                        " (no default retention)")
    else:
        enforced = "the bucket has no Object Lock"
    applied = (f"pgvault locks every object {lock['configured']} for {lock['retention']}" if lock["configured"] != "off"
               else "pgvault sets no retention (repository.s3.object_lock: off)")
    return f"{enforced}; {applied}; versioning {lock.get('versioning') or '?'}"


def describe_repositories(repos: list[dict[str, Any]]) -> str:
    """Each configured repository: newest backup and WAL, lag behind the first, last sync."""
    from pgvault.policy.verdict import describe_age

    rows = []
    for r in repos:
        if not r["reachable"]:
            rows.append((r["name"], "UNREACHABLE", "", "", "", r["error"] or ""))
            continue
        lag = r["lag"]
        if r["first"]:
            behind = "(reference)"
        elif lag is None:
            behind = "unknown"
        elif not (lag["wal_segments"] or lag["logical_behind"] or lag["physical_behind"]):
            behind = "in step"
        else:
            parts = [f"{lag['wal_segments']} WAL segment(s)" if lag["wal_segments"] else "",
                     describe_age(lag["wal_seconds"]) if lag["wal_seconds"] else "",
                     "newest logical backup missing" if lag["logical_behind"] else "",
                     "newest base backup missing" if lag["physical_behind"] else ""]
            behind = "BEHIND: " + ", ".join(p for p in parts if p)
        sync = r["last_sync"]
        last = "" if not sync else (f"last sync {sync.get('finished_at', '')[:19].replace('T', ' ')} "
                                    f"{'ok' if sync.get('ok') else 'FAILED'}")
        rows.append((r["name"], behind, r["newest_wal"] or "-", r["newest_physical"] or "-", r["newest_logical"] or "-",
                     last))
    return "repositories:\n" + table(["repository", "lag", "newest WAL", "newest base", "newest logical", "sync"], rows)
