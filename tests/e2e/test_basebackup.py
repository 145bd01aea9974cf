"""Base backups: taken under write load with a tablespace, only complete once their WAL is
archived, and restorable with stock tools (tar, age, zstd) plus ``pgvault wal fetch`` as
restore_command — proof that the objects are a consistent cluster."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from support.cli import clean_env, pgvault
from support.launcher import postgres_writable_dir, server_config
from support.pg_fixtures import pg_majors
from support.pgcluster import PG_OS_USER, free_port

from .conftest import AgeKey


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_basebackup_under_load_restores_with_stock_tools(major, make_pg_cluster, pgvault_launcher: Path, age_key: AgeKey) -> None:
    work = postgres_writable_dir("pgvault-bb-")
    key = work / "age-key.txt"
    shutil.copy(age_key.identity_file, key)
    shutil.chown(key, PG_OS_USER, PG_OS_USER) if os.geteuid() == 0 else None
    repo = work / "repo"
    repo.mkdir()
    shutil.chown(repo, PG_OS_USER, PG_OS_USER) if os.geteuid() == 0 else None
    conf = server_config(work, {
        "cluster": "bb", "repository.url": str(repo),
        "encryption.age_recipients": [age_key.recipient], "encryption.age_identity_file": str(key),
    })
    cluster = make_pg_cluster(major, settings={
        "archive_mode": "on", "archive_command": f"PGVAULT_CONFIG={conf} {pgvault_launcher} wal push %p",
    })
    space = work / "space1"
    space.mkdir()
    shutil.chown(space, PG_OS_USER, PG_OS_USER) if os.geteuid() == 0 else None
    cluster.psql(f"CREATE TABLESPACE space1 LOCATION '{space}'")
    cluster.psql("CREATE TABLE base_rows(i int, t text); INSERT INTO base_rows SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    cluster.psql("CREATE TABLE spaced(i int) TABLESPACE space1; INSERT INTO spaced SELECT generate_series(1, 5000)")
    cluster.psql("CREATE TABLE during(i int)")

    stop = threading.Event()

    def load() -> None:  # committed rows keep arriving while the backup runs
        n = 0
        while not stop.is_set():
            n += 1
            cluster.psql(f"INSERT INTO during VALUES ({n})")

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    env = clean_env(**cluster.env(), PGVAULT_CONFIG=str(conf))
    try:
        # As on a real host, the backup runs as the database's OS user, like the archiver.
        r = subprocess.run(_as_postgres([str(pgvault_launcher), "basebackup", "--json", "--archive-timeout", "60"]),
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout)["backup"]
    finally:
        stop.set()
        writer.join()
    assert m["kind"] == "physical" and m["timeline"] == 1
    assert m["first_wal"] <= m["last_wal"] and "START WAL LOCATION" in m["backup_label"]
    assert [t["name"] for t in m["tablespaces"]] == ["space1"] and m["tablespace_map"]
    # Every WAL segment the backup needs is in the repository: checked before the manifest.
    for n in range(int(m["first_wal"][16:], 16), int(m["last_wal"][16:], 16) + 1):
        assert list(repo.glob(f"bb/wal/*/{m['first_wal'][:16]}{n:08X}.zst.age"))
    listed = pgvault(["list", "--json"], {**env, "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(age_key.identity_file)}).json()["backups"]
    assert [b["kind"] for b in listed] == ["physical"]
    expected_during = int(cluster.psql("SELECT count(*) FROM during"))

    # Break-glass restore: age | zstd | tar, by hand, then recovery through wal fetch.
    prefix = repo / "bb" / "base" / m["backup_id"]
    target = work / "restored"
    target.mkdir(mode=0o700)
    new_space = work / "space1-restored"
    new_space.mkdir()
    for d in (target, new_space):
        shutil.chown(d, PG_OS_USER, PG_OS_USER) if os.geteuid() == 0 else None
    oid = m["tablespaces"][0]["oid"]

    def unpack(obj: Path, into: Path) -> None:
        cmd = f"age -d -i {key} {obj} | zstd -d | tar -x -f - -C {into}"
        subprocess.run(_as_postgres(["bash", "-o", "pipefail", "-c", cmd]), check=True, capture_output=True)

    # The data directory comes in parts (backup.parallel): each is a complete tar, in any order.
    parts = sorted(prefix.glob("base*.tar.zst.age"))
    assert [p.name for p in parts] == ["base-1.tar.zst.age", "base.tar.zst.age"]
    for part in parts:
        unpack(part, target)
    unpack(prefix / f"tablespace-{oid}.tar.zst.age", new_space)
    assert (target / "backup_label").read_text() == m["backup_label"]
    # Point the tablespace at its new home (tablespace_map is read at recovery start).
    (target / "tablespace_map").write_text(f"{oid} {new_space}\n")
    with open(target / "postgresql.auto.conf", "a") as f:
        f.write(f"restore_command = 'PGVAULT_CONFIG={conf} {pgvault_launcher} wal fetch %f %p'\n"
                "archive_mode = off\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\n")
    (target / "recovery.signal").touch()
    subprocess.run(_as_postgres(["chown", "-R", f"{PG_OS_USER}:{PG_OS_USER}", str(target)]) if os.geteuid() != 0
                   else ["chown", "-R", f"{PG_OS_USER}:{PG_OS_USER}", str(target)], check=True)
    port = free_port()
    pg_ctl = str(cluster.bindir.program("pg_ctl"))
    log = work / "restored.log"
    subprocess.run(_as_postgres([pg_ctl, "-D", str(target), "-l", str(log), "-w", "-t", "120", "-o",
                                 f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={work}", "start"]),
                   check=True, capture_output=True)
    try:
        psql = [str(cluster.bindir.program("psql")), "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres"]
        penv = {**cluster.client_env(), "PGPASSWORD": cluster.password}
        for _ in range(100):
            r = subprocess.run([*psql, "-c", "SELECT pg_is_in_recovery()"], env=penv, capture_output=True, text=True)
            if r.stdout.strip() == "f":
                break
            import time

            time.sleep(0.2)
        q = lambda sql: subprocess.run([*psql, "-c", sql], env=penv, capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
        assert q("SELECT count(*) FROM base_rows") == "20000"
        assert q("SELECT count(*) FROM spaced") == "5000"
        assert q("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'space1'") == str(new_space)
        # Consistent: the rows committed during the backup form a gap-free prefix 1..n.
        n, mx = q("SELECT count(*), coalesce(max(i), 0) FROM during").split("|")
        assert n == mx and 0 < int(n) <= expected_during
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(target), "-m", "immediate", "stop"]), capture_output=True)
        print(log.read_text() if log.exists() else "")
    assert json.loads((prefix / "manifest.json").read_text())["server_backup_manifest"] is None


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_a_base_backup_never_writes_into_a_folder_that_holds_objects(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """Ids have one-second resolution: a second base backup in the same second (two quick runs)
    used to get the same id and overwrite the first one's folder.  Here every id of the next two
    minutes already holds an object (a finished or failed run's), so the backup must take ``-1``."""
    a = archiving(major)
    base = Path(a.repo_url) / "pitr" / "base"
    now = dt.datetime.now(dt.UTC)
    taken = [(now + dt.timedelta(seconds=s)).strftime("%Y%m%dT%H%M%SZ") for s in range(120)]
    for bid in taken:
        (base / bid).mkdir(parents=True)
        (base / bid / "manifest.json").write_text("left by another run\n")
    for d in [base.parent, base, *(base / bid for bid in taken)]:
        shutil.chown(d, PG_OS_USER, PG_OS_USER) if os.geteuid() == 0 else None
    b = a.basebackup()
    assert b["backup_id"].endswith("-1") and b["backup_id"].removesuffix("-1") in taken
    assert all((base / bid / "manifest.json").read_text() == "left by another run\n" for bid in taken)
    names = sorted(p.name for p in (base / b["backup_id"]).iterdir())
    assert "manifest.json" in names and any(n.startswith("base") and ".tar" in n for n in names), names
    v = pgvault(["verify", b["backup_id"], "--json"], a.env(), check=False)
    assert v.returncode == 0, v.stderr
