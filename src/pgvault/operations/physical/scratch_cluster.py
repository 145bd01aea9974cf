"""A base backup plus WAL recovered into a disposable, private data directory.

Shared by the physical drill (``drill --kind physical``: recover, promote, check) and
``recover-table`` (recover to a point in time, pause there read-only, dump some tables).  The
directory comes from :func:`pgvault.pg.scratch.scratch_dir` (named after this process, so a run
killed with -9 is swept by the next one), the server listens on a Unix socket in it only (no TCP,
``trust`` for local connections through a private ``hba_file``), and ``restore-cluster`` writes
``archive_mode = off``: a recovered copy never archives into the production repository.

Every step that leaves something behind appends its undo to ``cleanups`` *before* it can fail
half-way, first things last (the server is stopped before its directory is removed); the caller
runs them in ``finally``, on success, failure and SIGTERM alike.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pgvault.errors import PgvaultError, RecoveryError
from pgvault.operations.context import Context
from pgvault.operations.physical.recovery import RecoveryOutcome, stop_server
from pgvault.operations.physical.restore_cluster import RestoreOptions, major_of, restore_cluster, start_and_follow
from pgvault.pg.bindir import bindir_for_major
from pgvault.pg.conn import ConnInfo, connect
from pgvault.pg.runner import owner_of
from pgvault.pg.scratch import free_port, scratch_dir
from pgvault.policy.pitr import Plan


@dataclass(frozen=True)
class ScratchCluster:
    """A recovered server: where it lives, how to reach it, what its recovery did."""

    base: Path  # the private directory: data/, the socket, pg_hba.conf, the server log
    port: int
    plan: Plan
    outcome: RecoveryOutcome
    restore_seconds: float  # laying out the base backup (unpacking)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"


def recover_into_scratch(ctx: Context, plan: Plan, cleanups: list[Callable[[], None]], *,
                         pgvault_command: str | None = None, extra: dict[str, str] | None = None,
                         progress: Callable[[RecoveryOutcome], None] | None = None,
                         timeout: float | None = None) -> ScratchCluster:
    """Lay out ``plan``'s backup in a new scratch directory, start it and follow recovery to
    ``plan.target`` (checked against the plan by :mod:`~pgvault.operations.physical.recovery`)."""
    b = plan.backup
    base = scratch_dir(os_user=ctx.settings.drill_os_user)
    cleanups.append(lambda: shutil.rmtree(base, ignore_errors=True))
    port = free_port()
    hba = base / "pg_hba.conf"
    hba.write_text("local all all trust\n")
    options = {"port": str(port), "listen_addresses": "", "unix_socket_directories": str(base),
               "hba_file": str(hba), "logging_collector": "off", **(extra or {})}
    result = restore_cluster(ctx, RestoreOptions(
        data_dir=base / "data", target=plan.target, backup_id=b.backup_id,
        tablespace_map={t.oid: str(base / f"tablespace-{t.oid}") for t in b.tablespaces},
        options=options, pgvault_command=pgvault_command), plan)
    if os.geteuid() == 0:
        st = (base / "data" / "PG_VERSION").stat()
        os.chown(hba, st.st_uid, st.st_gid)
        os.chown(base, st.st_uid, st.st_gid)
    # Before the start: SIGTERM while pg_ctl starts it must still stop the server.
    cleanups.insert(0, lambda: stop_server(ctx.runner, base / "data", major_of(b), ctx.settings.pg_bin_dirs))
    outcome = start_and_follow(ctx.runner, result, major=major_of(b), bin_dirs=ctx.settings.pg_bin_dirs,
                               environ=ctx.environ, progress=progress, timeout=timeout)
    return ScratchCluster(base, port, plan, outcome, result.restore_seconds)


def connectable(base: Path, port: int, ctx: Context) -> ConnInfo:
    """The restored cluster's roles are the production ones: find a superuser we can connect as."""
    candidates = [ctx.conn.params.get("user") or "", "postgres", pwd.getpwuid((base / "data").stat().st_uid).pw_name]
    last: PgvaultError | None = None
    for user in dict.fromkeys(c for c in candidates if c):
        info = ConnInfo({"host": str(base), "port": str(port), "user": user, "dbname": "postgres"})
        try:
            connect(info).close()
            return info
        except PgvaultError as e:
            last = e
    assert last is not None
    raise last


def promote_where_paused(ctx: Context, scratch: ScratchCluster, info: ConnInfo, timeout: int = 120) -> str:
    """End the paused recovery of a scratch server where it stands, without replaying further.

    A server paused at its target has replayed the locks of the transactions still open there:
    the ACCESS EXCLUSIVE lock of a TRUNCATE, DROP or rewrite is logged before its commit, so just
    before that commit no query can read the table (a dump waits forever).  Promoting ends those
    transactions (they never committed at the target: their rows stay exactly as a paused
    server shows them) and releases their locks.  The scratch server is private and does not
    archive, so its new timeline goes nowhere.  ``pg_ctl promote`` as the data directory's owner,
    not ``pg_promote()``: the role we connect as may be production's, without that privilege.
    Returns the replay position, the same before and after (checked: nothing was replayed past
    the stop the caller confirmed)."""
    query = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"
    with connect(info) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    if not row[0]:
        raise RecoveryError("the scratch server was expected paused in recovery at the target, but it is not")
    before = str(row[1])
    bindir = bindir_for_major(major_of(scratch.plan.backup), ctx.settings.pg_bin_dirs)
    r = ctx.runner.using(bindir).run("pg_ctl", ["-D", str(scratch.data_dir), "-w", "-t", str(timeout), "promote"],
                                     env=ctx.environ, as_user=owner_of(scratch.data_dir), timeout=timeout + 30)
    if not r.ok:
        raise RecoveryError(f"the scratch server could not be promoted at the target: {r.detail()}")
    with connect(info) as conn:
        after = conn.execute(query).fetchone()
    assert after is not None
    if after[0]:
        raise RecoveryError(f"the scratch server was still in recovery after pg_ctl promote ({timeout}s)")
    if after[1] is not None and str(after[1]) != before:
        raise RecoveryError(f"the scratch server replayed past the target while promoting ({before} -> {after[1]})")
    return before


__all__ = ["ScratchCluster", "recover_into_scratch", "connectable", "promote_where_paused"]
