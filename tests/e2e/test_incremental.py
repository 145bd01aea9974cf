"""Incremental and differential base backups (issue 13 §1) on real servers, through the CLI.

The proof the issue asks for: a chain full → incr → incr → diff with writes between each, restored
at the end of each link and to points in time between them, gives exactly the expected rows; a
broken link (a deleted object of the middle backup) is refused by restore with a clear reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import zstandard

from support.archiving import ArchivingCluster, Restored, as_postgres, chown_pg
from support.cli import pgvault
from support.pg_fixtures import pg_majors
from support.pgcluster import free_port


def _state(a: ArchivingCluster) -> str:
    return a.cluster.psql("SELECT count(*), coalesce(sum(i), 0), coalesce(sum(length(t)), 0) FROM items")


def _restored_state(a: ArchivingCluster, *args: str) -> tuple[dict, str]:  # type: ignore[type-arg]
    r, restored = a.restore(*args)
    try:
        return r.json(), restored.query("SELECT count(*), coalesce(sum(i), 0), coalesce(sum(length(t)), 0) FROM items")
    finally:
        restored.stop()


def _file_list(a: ArchivingCluster, b: dict) -> dict[str, list]:  # type: ignore[type-arg]
    raw = (Path(a.repo_url) / "pitr" / "base" / b["backup_id"] / "files.json.zst").read_bytes()
    doc = json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(raw))
    return {f[0]: f for f in doc["files"]}



@pytest.mark.parametrize("major", pg_majors() or [None])
def test_a_chain_full_incr_incr_diff_restores_exactly_at_every_link_and_between(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major, data_checksums=True)
    c = a.cluster
    c.psql("CREATE TABLE items(i int PRIMARY KEY, t text); CREATE TABLE gone(i int);"
           " INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 40000) g;"
           " INSERT INTO gone SELECT generate_series(1, 5000)")
    # Hint bits set now, as on any table read since its rows were written (with data checksums the
    # first hint-bit change after a checkpoint logs the whole page, so every page would count as changed).
    c.psql("VACUUM (FREEZE) items; VACUUM (FREEZE) gone")
    full = a.basebackup("--type", "full")
    assert full["backup_type"] == "full" and full["reference"] is None
    s_full = _state(a)

    # New row versions as wide as the old ones: they do not fit the few bytes left on the full pages
    # (narrow ones would, and would touch hundreds of pages: PostgreSQL's free space map at work).
    c.psql("UPDATE items SET t = repeat('c', 128) WHERE i BETWEEN 1000 AND 1400;"
           " INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(40001, 41000) g")
    a.switch_and_wait()
    incr1 = a.basebackup("--type", "incr")
    assert (incr1["backup_type"], incr1["reference"]) == ("incr", full["backup_id"])
    assert incr1["stored_size"] < full["stored_size"] / 2, (incr1["stored_size"], full["stored_size"])
    files = _file_list(a, incr1)
    items = c.psql("SELECT pg_relation_filepath('items')")
    stored, size = files[items][3], files[items][1]
    assert stored is not None and 0 < stored < size // 8192 / 2, (stored, size)  # only the changed pages
    assert files["global/pg_control"][3] is None  # whole
    assert all(f[3] is None for p, f in files.items() if p.endswith(("_vm", "_fsm")))
    s_incr1 = _state(a)

    c.psql("DELETE FROM items WHERE i BETWEEN 100 AND 300")
    between = c.psql("SELECT now()")  # a point in time between incr1 and incr2
    s_between = _state(a)
    a.switch_and_wait()
    c.psql("DROP TABLE gone; CREATE TABLE later(i int); INSERT INTO later SELECT generate_series(1, 100);"
           " UPDATE items SET t = 'again' WHERE i % 97 = 0")
    a.switch_and_wait()
    incr2 = a.basebackup("--type", "incr")
    assert (incr2["backup_type"], incr2["reference"]) == ("incr", incr1["backup_id"])
    s_incr2 = _state(a)

    c.psql("TRUNCATE items; INSERT INTO items SELECT g, 'after truncate' FROM generate_series(1, 777) g")
    a.switch_and_wait()
    diff = a.basebackup("--type", "diff")
    assert (diff["backup_type"], diff["reference"]) == ("diff", full["backup_id"])
    s_diff = _state(a)
    assert len({s_full, s_incr1, s_between, s_incr2, s_diff}) == 5

    for b, expected in ((full, s_full), (incr1, s_incr1), (incr2, s_incr2), (diff, s_diff)):
        doc, got = _restored_state(a, "--backup", b["backup_id"], "--target-immediate")
        assert got == expected, (b["backup_type"], b["backup_id"])
    doc, got = _restored_state(a, "--target-time", between)
    assert doc["plan"]["backup_id"] == incr1["backup_id"] and got == s_between

    # A broken link: the middle backup loses an object.  Restoring anything that needs it is refused
    # before a byte is written, naming the link; the diff (which does not need it) still restores.
    base = Path(a.repo_url) / "pitr" / "base"
    next((base / incr1["backup_id"]).glob("base*.tar*")).unlink()
    target = a.work / "refused"
    r = pgvault(["restore-cluster", "-D", str(target), "--backup", incr2["backup_id"], "--target-immediate"],
                a.env(), check=False)
    assert r.returncode == 6 and incr1["backup_id"] in r.stderr and "missing" in r.stderr, r.stderr
    assert not target.exists() or not any(target.iterdir())
    doc, got = _restored_state(a, "--backup", diff["backup_id"], "--target-immediate")
    assert got == s_diff


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_an_incr_without_a_usable_reference_is_taken_full_and_says_why(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE items(i int PRIMARY KEY, t text); INSERT INTO items VALUES (1, 'x')")
    first = a.basebackup("--type", "incr")
    assert first["backup_type"] == "full" and "no base backup to take an incr against" in first["type_reason"]
    d = a.basebackup("--type", "diff")
    assert (d["backup_type"], d["reference"]) == ("diff", first["backup_id"])


@pytest.mark.parametrize("major", [m for m in pg_majors() if m >= 17] or [None])
def test_break_glass_a_chain_with_stock_tools_and_pg_combinebackup(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """Without pgvault: age | zstd | tar each backup of the chain into its own directory, then
    PostgreSQL's own pg_combinebackup (17+) makes the data directory; recovery reads the WAL with
    ``pgvault wal fetch`` as for any base backup (or with any copy of the archive)."""
    if major is None:
        pytest.skip("needs PostgreSQL 17 or newer (pg_combinebackup)")
    a = archiving(major, data_checksums=True)
    c = a.cluster
    c.psql("CREATE TABLE items(i int PRIMARY KEY, t text);"
           " INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g; VACUUM (FREEZE) items")
    full = a.basebackup("--type", "full")
    c.psql("INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(20001, 21000) g;"
           " DELETE FROM items WHERE i <= 10")
    a.switch_and_wait()
    incr = a.basebackup("--type", "incr")
    assert incr["backup_type"] == "incr"
    expected = _state(a)

    dirs = []
    for b in (full, incr):
        d = a.work / f"glass-{b['backup_id']}"
        d.mkdir(mode=0o700)
        chown_pg(d)
        for obj in sorted((Path(a.repo_url) / "pitr" / "base" / b["backup_id"]).glob("base*.tar.zst.age")):
            cmd = f"age -d -i {a.identity_file} {obj} | zstd -d | tar -x -f - -C {d}"
            subprocess.run(as_postgres(["bash", "-o", "pipefail", "-c", cmd]), check=True, capture_output=True)
        dirs.append(d)
    out = a.work / "glass-combined"
    r = subprocess.run(as_postgres([str(c.bindir.program("pg_combinebackup")), "--no-manifest", "-o", str(out),
                                    *map(str, dirs)]), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(out / "postgresql.auto.conf", "a") as f:
        f.write(f"restore_command = 'PGVAULT_CONFIG={a.conf} {a.launcher} wal fetch %f %p'\n"
                "archive_mode = off\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\n")
    (out / "recovery.signal").touch()
    chown_pg(out / "recovery.signal")
    restored = Restored(out, free_port(), c, {})
    a.restored.append(restored)
    start = [str(c.bindir.program("pg_ctl")), "-D", str(out), "-l", str(a.work / "glass.log"), "-w", "-t", "120", "-o",
             f"-p {restored.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={a.work}", "start"]
    r = subprocess.run(as_postgres(start), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + (a.work / "glass.log").read_text()
    restored.wait_primary()
    assert restored.query("SELECT count(*), coalesce(sum(i), 0), coalesce(sum(length(t)), 0) FROM items") == expected


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_a_chain_on_s3_restores_exactly_and_delta_restores_over_it(major, archiving, s3_bucket, seaweed) -> None:  # type: ignore[no-untyped-def]
    s3 = {"url": f"s3://{s3_bucket}/prod", "endpoint": seaweed.endpoint_url, "AWS_ACCESS_KEY_ID": seaweed.access_key,
          "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": seaweed.region}
    a = archiving(major, s3=s3, data_checksums=True)
    c = a.cluster
    c.psql("CREATE TABLE items(i int PRIMARY KEY, t text);"
           " INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g; VACUUM (FREEZE) items")
    full = a.basebackup("--type", "full")
    c.psql("INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(20001, 20400) g")
    a.switch_and_wait()
    incr = a.basebackup("--type", "incr")
    c.psql("DELETE FROM items WHERE i < 100")
    a.switch_and_wait()
    diff = a.basebackup("--type", "diff")
    assert (incr["reference"], diff["reference"]) == (full["backup_id"], full["backup_id"])
    expected = _state(a)
    doc, got = _restored_state(a, "--backup", diff["backup_id"], "--target-immediate")
    assert got == expected
    r, again = a.restore("--delta", "--backup", diff["backup_id"], "--target-immediate", name="restored-1")
    try:
        assert again.query("SELECT count(*), coalesce(sum(i), 0), coalesce(sum(length(t)), 0) FROM items") == expected
    finally:
        again.stop()


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_a_physical_drill_of_an_incremental_restores_its_chain(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major, cluster_name="drill")
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 500)")
    a.basebackup("--type", "full")
    a.cluster.psql("INSERT INTO ticks SELECT generate_series(501, 800)")
    a.switch_and_wait()
    incr = a.basebackup("--type", "incr")
    assert incr["backup_type"] == "incr"
    env = {**a.env(), "PGVAULT_DRILL_SMOKE_QUERIES": json.dumps([{"sql": "SELECT count(*) FROM ticks", "expect": 800}])}
    r = pgvault(["drill", "--json", "--kind", "physical", "--pgvault-command", str(a.launcher)], env, check=False)
    assert r.returncode == 0, r.stderr
    report = r.json()["drill"]
    assert report["ok"] and report["backup_id"] == incr["backup_id"], report


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_restore_passes_over_an_incremental_whose_chain_is_broken(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """The newest base backup's chain lost a link (its manifest): choosing a backup by itself,
    restore-cluster takes the newest one whose chain is whole and replays the WAL from there."""
    a = archiving(major)
    c = a.cluster
    c.psql("CREATE TABLE items(i int PRIMARY KEY, t text); INSERT INTO items SELECT g, 'x' FROM generate_series(1, 100) g")
    full = a.basebackup("--type", "full")
    c.psql("INSERT INTO items SELECT g, 'y' FROM generate_series(101, 200) g")
    a.switch_and_wait()
    incr1 = a.basebackup("--type", "incr")
    c.psql("INSERT INTO items SELECT g, 'z' FROM generate_series(201, 300) g")
    a.switch_and_wait()
    incr2 = a.basebackup("--type", "incr")
    c.psql("INSERT INTO items SELECT g, 'w' FROM generate_series(301, 350) g")
    a.switch_and_wait()
    expected = _state(a)
    (Path(a.repo_url) / "pitr" / "base" / incr1["backup_id"] / "manifest.json").unlink()
    r, restored = a.restore()
    try:
        assert r.json()["plan"]["backup_id"] == full["backup_id"]
        assert restored.query("SELECT count(*), coalesce(sum(i), 0), coalesce(sum(length(t)), 0) FROM items") == expected
        assert f"base backup {incr2['backup_id']} is not used: its chain is broken" in r.stderr
    finally:
        restored.stop()
