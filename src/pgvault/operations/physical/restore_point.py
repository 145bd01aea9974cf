"""``pgvault restore-point NAME``: a named point recovery can stop at (``--target-name``).

PostgreSQL's ``pg_create_restore_point`` writes a WAL record; recovery finds it only by reading
WAL, so the position is unknown to a planner that has not.  We record name, LSN, time and
timeline in ``<cluster>/restore-points/<name>.json`` so ``restore-cluster --target-name`` can pick
the base backup that precedes it, and by default switch to a new WAL segment and wait until the
record is archived, so that the point is restorable when the command returns.
"""

from __future__ import annotations

import json

from pgvault.errors import TargetExistsError, UsageError
from pgvault.operations.context import Context
from pgvault.pg import wal
from pgvault.pg.conn import connect, server_facts
from pgvault.repository.archive_index import RestorePoint
from pgvault.repository.archive_scan import load_restore_points, restore_point_key, wait_until_archived
from pgvault.repository.cluster import ensure_cluster
from pgvault.storage import ObjectExists

MAX_NAME = 63  # MAXFNAMELEN - 1: PostgreSQL refuses longer restore point names


def create_restore_point(ctx: Context, name: str, *, switch_wal: bool = True, archive_timeout: float = 120.0) -> RestorePoint:
    """Create restore point ``name`` on the server and record it in the repository."""
    if not name or len(name.encode()) > MAX_NAME:
        raise UsageError(f"a restore point name must be 1 to {MAX_NAME} bytes long")
    existing = load_restore_points(ctx.storage, ctx.cluster).get(name)
    if existing is not None:
        raise TargetExistsError(f"restore point {name!r} already exists at {existing.lsn} ({existing.time}); "
                                "recovery would stop at the first one", hint="choose a new name")
    conn = connect(ctx.conn, autocommit=True)
    try:
        facts = server_facts(conn)
        if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
            raise UsageError("restore points can only be created on a primary, not during recovery")
        row = conn.execute(
            "SELECT lsn::text, clock_timestamp(), pg_walfile_name(lsn), s.setting::int"
            " FROM pg_create_restore_point(%s) AS lsn, pg_settings s WHERE s.name = 'wal_segment_size'", (name,)
        ).fetchone()
        assert row is not None
        lsn, created, walfile, seg_size = wal.LSN.parse(str(row[0])), row[1], str(row[2]), int(row[3])
        ensure_cluster(ctx.storage, ctx.cluster, system_identifier=facts.system_identifier, server_major=facts.major,
                       wal_segment_size=seg_size)
        point = RestorePoint(name=name, lsn=lsn, time=created.isoformat(), timeline=int(walfile[:8], 16))
        try:
            ctx.storage.put_if_absent(restore_point_key(ctx.cluster, name),
                                      (json.dumps({"format": 1, **point.to_json()}, indent=2) + "\n").encode())
        except ObjectExists:
            raise TargetExistsError(f"restore point {name!r} was recorded concurrently") from None
        if switch_wal:
            conn.execute("SELECT pg_switch_wal()")
    finally:
        conn.close()
    if switch_wal:
        wait_until_archived(ctx.storage, ctx.cluster, [walfile], archive_timeout, what=f"restore point {name!r}")
    return point
