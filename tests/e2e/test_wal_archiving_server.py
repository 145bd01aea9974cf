"""When PostgreSQL itself runs ``archive_command = 'pgvault wal push %p'`` under write load, then
every finished segment lands in the repository, the archiver reports no failure, and what
``wal fetch`` returns is byte for byte what the server wrote."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from support.cli import clean_env, pgvault
from support.launcher import postgres_writable_dir, server_config
from support.pg_fixtures import pg_majors

from .conftest import AgeKey


def _wait_archived(cluster, segment: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = cluster.psql("SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver")
        last, failed = row.split("|")
        assert failed == "0", cluster.psql("SELECT last_failed_wal FROM pg_stat_archiver")
        if last >= segment:
            return
        time.sleep(0.2)
    raise AssertionError(f"{segment} not archived within {timeout}s")


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_server_archives_every_segment(major, make_pg_cluster, pgvault_launcher: Path, age_key: AgeKey, tmp_path: Path) -> None:
    repo = postgres_writable_dir("pgvault-repo-")
    conf = server_config(
        postgres_writable_dir("pgvault-conf-"),
        {"cluster": "srv", "repository.url": str(repo), "encryption.age_recipients": [age_key.recipient]},
    )
    cluster = make_pg_cluster(major, settings={
        "archive_mode": "on",
        "archive_command": f"PGVAULT_CONFIG={conf} {pgvault_launcher} wal push %p",
        "wal_keep_size": "1GB",  # keep the server's own copies so the test can compare bytes
    })
    cluster.psql("CREATE TABLE load(i int, t text)")
    for _ in range(3):
        cluster.psql("INSERT INTO load SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 30000) g")
    last = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    _wait_archived(cluster, last)

    env = clean_env(PGVAULT_REPOSITORY_URL=str(repo), PGVAULT_CLUSTER="srv",
                    PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file))
    archived = sorted(p.name.split(".")[0] for p in repo.glob("srv/wal/*/*.zst.age"))
    first_needed = archived[0]
    expected = [f"{last[:16]}{n:08X}" for n in range(int(first_needed[16:], 16), int(last[16:], 16) + 1)]
    assert archived == expected and len(archived) >= 3  # continuous, nothing missing
    for name in archived[-2:]:
        out = tmp_path / name
        pgvault(["wal", "fetch", name, str(out), "--pgdata", str(cluster.datadir)], env)
        assert out.read_bytes() == (cluster.datadir / "pg_wal" / name).read_bytes()
    # The repository records the cluster's identity and its WAL segment size.
    info = (repo / "srv" / "cluster.json").read_text()
    assert cluster.psql("SELECT system_identifier FROM pg_control_system()") in info
    assert '"wal_segment_size": 16777216' in info
