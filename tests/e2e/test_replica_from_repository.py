"""``restore-cluster --standby``: a replica seeded from the repository, then streaming from a live primary.

The primary archives with ``pgvault wal push``; after the base backup more rows are committed and
archived, and a checkpoint removes those segments from the primary's pg_wal: the replica can only
get them from the repository.  It must then stream (WAL receiver, slot), follow new commits, and
the password (with a quote, a colon and a space) must come from the environment only: the restore
runs with no ``PG*`` variables at all, so the server's WAL receiver cannot borrow ``PGPASSWORD``.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from support.archiving import ArchivingCluster, Restored
from support.pg_fixtures import pg_majors

SLOT = "replica_1"


def _insert(a: ArchivingCluster, first: int, last: int) -> None:
    a.cluster.psql(f"INSERT INTO ticks SELECT generate_series({first}, {last})")


def _wait_rows(r: Restored, want: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (got := int(r.query("SELECT count(*) FROM ticks"))) != want:
        assert time.monotonic() < deadline, f"the replica has {got} rows, not {want}, after {timeout:.0f}s"
        time.sleep(0.2)


def _restore_env(a: ArchivingCluster, password: str) -> dict[str, str]:
    env = {k: v for k, v in a.env().items() if not k.startswith("PG") or k.startswith("PGVAULT_")}
    return {**env, "PGVAULT_PRIMARY_PASSWORD": password}


def _archive_only_history(a: ArchivingCluster, first_wal: str) -> None:
    """Archive the rows committed since the backup and make the primary drop those segments."""
    for _ in range(5):
        a.switch_and_wait()
        a.cluster.psql("CHECKPOINT")
        if a.cluster.psql(f"SELECT count(*) FROM pg_ls_waldir() WHERE name = '{first_wal}'") == "0":
            return
    pytest.fail(f"the primary still holds {first_wal} in pg_wal")


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_replica_seeded_from_the_repository_streams_and_follows(major, archiving, repo_kind) -> None:  # type: ignore[no-untyped-def]
    if repo_kind is not None and major != (pg_majors() or [None])[-1]:
        pytest.skip("on S3 the newest major is enough: the repository part is what differs")
    a = archiving(major, s3=repo_kind, cluster_name="replica")
    password = a.cluster.password
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY)")
    _insert(a, 1, 50)
    backup = a.basebackup()
    _insert(a, 51, 100)
    _archive_only_history(a, backup["first_wal"])
    a.cluster.psql(f"SELECT pg_create_physical_replication_slot('{SLOT}', true)")

    conninfo = f"host=127.0.0.1 port={a.cluster.port} user=postgres application_name=replica1"
    r, replica = a.restore("--standby", "--primary-conninfo", conninfo, "--primary-slot-name", SLOT,
                           env=_restore_env(a, password))
    assert password not in r.stdout + r.stderr
    out = r.json()
    assert out["standby"]["primary"] == {"host": "127.0.0.1", "port": str(a.cluster.port), "user": "postgres"}
    assert out["standby"]["slot"] == SLOT and "PGVAULT_PRIMARY_PASSWORD" in out["standby"]["password"]
    assert "********" in out["settings"]["primary_conninfo"]
    rec = out["recovery"]
    assert rec["state"] == "standby" and rec["streaming_from"], rec
    assert rec["segments_restored"] >= 2, rec  # the history the primary no longer has came from the repository
    assert "recovery_target_time" not in out["settings"] and out["settings"]["recovery_target_timeline"] == "latest"

    data = replica.data_dir
    assert (data / "standby.signal").exists() and not (data / "recovery.signal").exists()
    auto = data / "postgresql.auto.conf"
    assert stat.S_IMODE(auto.stat().st_mode) == 0o600
    if os.geteuid() == 0:
        assert auto.stat().st_uid == (data / "PG_VERSION").stat().st_uid
    postmaster = (data / "postmaster.pid").read_text().split("\n")[0]
    assert b"PGVAULT_PRIMARY_PASSWORD" not in Path(f"/proc/{postmaster}/environ").read_bytes()  # the server never needs it
    assert replica.query("SELECT pg_is_in_recovery()") == "t"
    assert replica.query("SELECT status, sender_port, slot_name FROM pg_stat_wal_receiver") == \
        f"streaming|{a.cluster.port}|{SLOT}"
    _wait_rows(replica, 100)

    _insert(a, 101, 150)  # committed after the replica started: only streaming brings them
    _wait_rows(replica, 150)
    assert a.cluster.psql("SELECT state FROM pg_stat_replication WHERE application_name = 'replica1'") == "streaming"
    assert a.cluster.psql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}'") == "t"

    if repo_kind is not None:
        return  # on S3 the repository part is what differs; the failure below is the same
    # A wrong password: the replica replays the archive, its WAL receiver is refused; the command
    # says why (exit 12) and never shows the password.
    bad = "wrong:pass'word"
    r, failed = a.restore("--standby", "--primary-conninfo", conninfo.replace("replica1", "replica2"),
                          "--option", "wal_retrieve_retry_interval=500ms", check=False, env=_restore_env(a, bad),
                          name="bad-password")
    assert r.returncode == 12, r
    assert "cannot stream from the primary" in r.stderr and "password authentication failed" in r.stderr, r.stderr
    assert bad not in r.stdout + r.stderr
    assert failed.query("SELECT pg_is_in_recovery()") == "t"  # left running, retrying


def test_a_password_on_the_command_line_is_refused_before_anything_is_written(archiving, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = archiving(None, cluster_name="replica")
    r, _ = a.restore("--standby", "--primary-conninfo", "host=127.0.0.1 user=postgres password=hunter2", start=False,
                     check=False, name="refused")
    assert r.returncode == 2 and "PGVAULT_PRIMARY_PASSWORD" in r.stderr
    assert "hunter2" not in r.stderr and not (a.work / "refused").exists()
