"""What the PostgreSQL server says about archiving, for ``status`` and ``metrics``.

:func:`probe_archiving` asks the server (one short connection, 5 s connect timeout unless the
DSN sets one) for ``pg_stat_archiver`` and the facts needed to interpret it, and counts the
``.ready`` backlog of the data directory when it is readable here (``--pgdata``, or the server's
``data_directory``); without it the backlog is estimated from the WAL file being written.  A
server that cannot be reached, or that belongs to another cluster, and an unreadable data
directory are notes in the returned :class:`ArchivingFacts`, not errors: the repository must
still be judged when the database host is gone.  :mod:`pgvault.operations.maintenance.status` puts the facts
into its snapshot.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgvault import log
from pgvault.errors import DatabaseError, PgvaultError
from pgvault.pg import wal
from pgvault.pg.conn import ConnInfo


@dataclass(frozen=True)
class ArchivingFacts:
    """The server side of archiving.  ``connection`` is ``ok``, ``failed``, ``skipped`` or
    ``other_cluster`` (the server's system identifier is not the repository's cluster)."""

    connection: str = "skipped"
    server: str | None = None
    error: str | None = None
    archive_mode: str | None = None
    in_recovery: bool | None = None
    archived_count: int | None = None
    last_archived_wal: str | None = None
    last_archived_time: str | None = None
    failed_count: int | None = None
    last_failed_wal: str | None = None
    last_failed_time: str | None = None
    current_wal: str | None = None
    data_directory: str | None = None
    backlog_segments: int | None = None  # WAL files waiting to be archived
    backlog_source: str | None = None  # archive_status (the .ready files) | pg_stat_archiver (estimate)
    lag_seconds: float | None = None  # age of the oldest waiting file; 0 when nothing waits
    notes: tuple[str, ...] = ()

    @property
    def failing(self) -> bool:
        """archive_command failed more recently than it succeeded (PostgreSQL keeps retrying)."""
        if not self.last_failed_time:
            return False
        return not self.last_archived_time or _parse(self.last_failed_time) > _parse(self.last_archived_time)

    def to_json(self) -> dict[str, Any]:
        return {
            "connection": self.connection, "server": self.server, "error": self.error,
            "archive_mode": self.archive_mode, "in_recovery": self.in_recovery, "failing": self.failing,
            "archived_count": self.archived_count, "last_archived_wal": self.last_archived_wal,
            "last_archived_time": self.last_archived_time, "failed_count": self.failed_count,
            "last_failed_wal": self.last_failed_wal, "last_failed_time": self.last_failed_time,
            "current_wal": self.current_wal, "data_directory": self.data_directory,
            "backlog_segments": self.backlog_segments, "backlog_source": self.backlog_source,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "notes": list(self.notes),
        }


def probe_archiving(
    conn: ConnInfo, *, pgdata: str | None, connect: bool, now: dt.datetime, system_identifier: str | None,
) -> ArchivingFacts:
    """``pg_stat_archiver`` (when the server can be reached) plus the ``.ready`` backlog (when the
    data directory is readable here: ``pgdata`` or the server's ``data_directory``)."""
    notes: list[str] = []
    server: dict[str, Any] = {}
    state, error = "skipped", None
    if connect:
        try:
            server = _query_server(conn)
            state = "ok"
        except PgvaultError as e:
            state, error = "failed", log.redact(e.message)
            notes.append(f"PostgreSQL not reachable ({conn.describe()}): archiving lag from pg_stat_archiver unknown")
        if state == "ok" and system_identifier and server.get("system_identifier") \
                and server["system_identifier"] != system_identifier:
            state = "other_cluster"
            notes.append(f"the server at {conn.describe()} has system identifier {server['system_identifier']}, "
                         f"not this cluster's {system_identifier}: its archiver is not reported")
            server = {}
    facts: dict[str, Any] = {k: server.get(k) for k in (
        "archive_mode", "in_recovery", "archived_count", "last_archived_wal", "last_archived_time", "failed_count",
        "last_failed_wal", "last_failed_time", "current_wal")}
    data_directory = pgdata or server.get("data_directory")
    backlog: int | None = None
    source: str | None = None
    lag: float | None = None
    if data_directory:
        try:
            backlog, oldest = ready_backlog(Path(data_directory))
            source = "archive_status"
            lag = 0.0 if oldest is None else max(0.0, now.timestamp() - oldest)
        except OSError as e:
            notes.append(f"cannot read {Path(data_directory) / 'pg_wal' / 'archive_status'}: {e.strerror or e}")
    if source is None and state == "ok":
        backlog, lag = _estimate_backlog(server)
        source = "pg_stat_archiver" if backlog is not None else None
    if state == "ok" and server.get("archive_mode") == "off":
        backlog = lag = None
        source = None
        notes.append("archive_mode is off on the server: no WAL is being archived")
    return ArchivingFacts(
        connection=state, server=conn.describe() if connect else None, error=error, data_directory=data_directory,
        backlog_segments=backlog, backlog_source=source, lag_seconds=lag, notes=tuple(notes), **facts,
    )


def ready_backlog(pgdata: Path) -> tuple[int, float | None]:
    """(number of files PostgreSQL marked ``.ready`` for archiving, mtime of the oldest one)."""
    count, oldest = 0, None
    with os.scandir(pgdata / "pg_wal" / "archive_status") as it:
        for entry in it:
            if not entry.name.endswith(".ready"):
                continue
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:  # archived (renamed to .done) while we looked
                continue
            count += 1
            oldest = mtime if oldest is None else min(oldest, mtime)
    return count, oldest


def _estimate_backlog(server: dict[str, Any]) -> tuple[int | None, float | None]:
    """Without the data directory: segments between the last archived one and the one being
    written are waiting; the lag is then the time since the last successful archive."""
    current, last, seg_size = server.get("current_wal"), server.get("last_archived_wal"), server.get("wal_segment_size")
    if not current or not seg_size or server.get("in_recovery"):
        return None, None
    try:
        tli, cur = wal.parse_segment_name(current, int(seg_size))
        if not last:
            return None, None
        last_tli, done = wal.parse_segment_name(str(last)[:24], int(seg_size))
    except wal.WalError:
        return None, None
    if last_tli != tli:  # a new timeline since: its first segments' state is not visible here
        return None, None
    waiting = max(0, cur - done - 1)
    since = server.get("seconds_since_last_archived")
    return waiting, (float(since) if waiting and since is not None else 0.0)


def _query_server(info: ConnInfo) -> dict[str, Any]:
    """Archiver statistics and the facts needed to interpret them (one short connection)."""
    import psycopg

    from pgvault.pg.conn import connection

    params = dict(info.params)
    params.setdefault("connect_timeout", "5")  # status must not hang on a dead host
    params.setdefault("dbname", "postgres")  # libpq would default to the user's name, rarely a database
    with connection(ConnInfo(params)) as conn:
        try:
            row = conn.execute(
                "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,"
                " last_failed_time, extract(epoch FROM now() - last_archived_time), pg_is_in_recovery(),"
                " current_setting('archive_mode'),"
                " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
                " FROM pg_stat_archiver"
            ).fetchone()
            assert row is not None
            out: dict[str, Any] = {
                "archived_count": int(row[0]), "last_archived_wal": row[1], "last_archived_time": _iso(row[2]),
                "failed_count": int(row[3]), "last_failed_wal": row[4], "last_failed_time": _iso(row[5]),
                "seconds_since_last_archived": None if row[6] is None else float(row[6]),
                "in_recovery": bool(row[7]), "archive_mode": str(row[8]), "wal_segment_size": row[9],
                "current_wal": None,
            }
            if not out["in_recovery"]:
                cur = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
                out["current_wal"] = str(cur[0]) if cur else None
        except psycopg.Error as e:
            raise DatabaseError(f"reading pg_stat_archiver on {info.describe()} failed: {str(e).strip()}") from None
        # Both need privileges a monitoring role may lack (pg_read_all_settings / pg_control_*).
        out["data_directory"] = _optional(conn, "SELECT current_setting('data_directory')")
        out["system_identifier"] = _optional(conn, "SELECT system_identifier::text FROM pg_control_system()")
    return out


def _optional(conn: Any, sql: str) -> str | None:
    import psycopg

    try:
        row = conn.execute(sql).fetchone()
    except psycopg.Error:
        return None
    return None if not row or row[0] is None else str(row[0])


# --- small helpers --------------------------------------------------------------------------------


def _parse(text: str) -> dt.datetime:
    # As status's helper: the server's timestamps carry a zone; one without is taken as UTC.
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return str(value)
