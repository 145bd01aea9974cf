"""``pgvault backup --jobs N``: one database dumped by several pg_dump processes sharing one snapshot.

Read like the runbook: the operator backs up a database whose three largest tables are split out
over the workers; a restore (whole, or one table whose rows live in a part) gives back exactly the
rows the manifest recorded, ``verify`` checks every object, stock tools alone can restore it in
the documented order, and SIGTERM mid-backup leaves no backup, no temporary object and no pg_dump.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import pgvault, start
from support.pgcluster import PgCluster, quote_ident

from .conftest import AgeKey, table_counts

# Three tables of ~20 MiB (over the 16 MiB below which a table stays in the main dump), one with an
# awkward name and newlines and backslashes in its text, one referenced by a foreign key.
_BIG = """
CREATE TABLE big_a (id bigint PRIMARY KEY, body text NOT NULL, at timestamptz NOT NULL DEFAULT now());
INSERT INTO big_a SELECT g, repeat(md5(g::text), 6), now() - g * interval '1 s' FROM generate_series(1, 90000) g;
CREATE TABLE big_b (id bigint PRIMARY KEY, a_id bigint REFERENCES big_a(id), doc jsonb);
INSERT INTO big_b SELECT g, g, jsonb_build_object('n', g, 'pad', repeat('y', 180)) FROM generate_series(1, 90000) g;
CREATE TABLE "Big.Odd x" (id serial PRIMARY KEY, t text);
INSERT INTO "Big.Odd x" (t) SELECT E'line\\nbreak \\\\ ' || repeat(md5(g::text), 6) FROM generate_series(1, 90000) g;
CREATE INDEX big_b_doc ON big_b ((doc->>'n'));
ANALYZE;
"""
_DIGEST = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {} t"
_BIG_TABLES = ("public.big_a", "public.big_b", 'public.Big.Odd x')


@pytest.fixture(scope="module")
def jobs_db(pg_cluster: PgCluster, sample_db: str) -> Iterator[str]:
    """The sample database plus three big tables; don't modify it."""
    name = f"jobs_{uuid.uuid4().hex[:8]}"
    pg_cluster.psql(f"CREATE DATABASE {name} TEMPLATE {quote_ident(sample_db)}")
    pg_cluster.psql(_BIG, dbname=name)
    yield name
    pg_cluster.drop_database(name)


def _digests(cluster: PgCluster, db: str) -> dict[str, str]:
    return {t: cluster.psql(_DIGEST.format(t), dbname=db) for t in ("big_a", "big_b", '"Big.Odd x"')}


def _objects(repo: Path, backup_id: str) -> dict[str, Path]:
    folder = next(p for p in repo.rglob(backup_id) if p.is_dir())
    return {p.name: p for p in folder.iterdir()}


def test_backup_in_parts_restores_whole_and_verifies(pg_cluster: PgCluster, jobs_db: str, scratch_db: str,
                                                      local_env: dict[str, str]) -> None:
    source = table_counts(pg_cluster, jobs_db)
    out = pgvault(["backup", "-d", jobs_db, "--jobs", "3", "--no-globals", "--json"], local_env).json()["backup"]
    assert out["format"] == 2
    entry = out["databases"][0]
    parts = entry["parts"]
    assert len(parts) == 2
    # Each big table's rows are in exactly one object: a part, or the main dump.
    in_parts = [f"{s}.{t}" for p in parts for s, t in p["tables"]]
    assert len(in_parts) == len(set(in_parts)) == 2 and set(in_parts) < set(_BIG_TABLES)
    assert {p["object"]["key"] for p in parts} == {f"{jobs_db}.part1.dump.zst.age", f"{jobs_db}.part2.dump.zst.age"}
    assert {f"{t['schema']}.{t['name']}": t["rows"] for t in entry["tables"]} == source
    objects = _objects(Path(local_env["PGVAULT_REPOSITORY_URL"]), out["backup_id"])
    assert {p["object"]["key"] for p in parts} | {entry["object"]["key"]} <= set(objects)

    shown = pgvault(["show", out["backup_id"]], local_env).stdout
    assert shown.count(" part ") == 2, shown
    assert pgvault(["verify", out["backup_id"]], local_env).returncode == 0

    res = pgvault(["restore", "latest", "-d", jobs_db, "-t", scratch_db, "--jobs", "2", "--json"], local_env).json()
    assert res["restore"]["verified"] is True
    assert table_counts(pg_cluster, scratch_db) == source
    assert _digests(pg_cluster, scratch_db) == _digests(pg_cluster, jobs_db)
    # Indexes and the foreign key came back after the parts' rows.
    q = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'big_b'::regclass AND contype = 'f'"
    assert pg_cluster.psql(q, dbname=scratch_db) == "1"
    assert pg_cluster.psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'big_b_doc'", dbname=scratch_db) == "1"
    # One job restores a backup in parts too.
    pg_cluster.drop_database(scratch_db)
    pgvault(["restore", "latest", "-d", jobs_db, "-t", scratch_db], local_env)
    assert table_counts(pg_cluster, scratch_db) == source


def test_restore_of_a_table_whose_rows_are_in_a_part(pg_cluster: PgCluster, jobs_db: str, scratch_db: str,
                                                      local_env: dict[str, str]) -> None:
    out = pgvault(["backup", "-d", jobs_db, "--jobs", "3", "--no-globals", "--json"], local_env).json()["backup"]
    # The odd name (a dot and a space) if a part holds it: --table resolves dots against the backup.
    held = [(s, t) for p in out["databases"][0]["parts"] for s, t in p["tables"]]
    schema, table = max(held, key=lambda st: "." in st[1])
    name = f"{schema}.{table}"
    expected = {f"{t['schema']}.{t['name']}": t["rows"] for t in out["databases"][0]["tables"]}[name]
    # Into a new database: the schema, and that table's rows only.
    pgvault(["restore", "latest", "-d", jobs_db, "-t", scratch_db, "--table", name], local_env)
    counts = table_counts(pg_cluster, scratch_db)
    assert counts[name] == expected > 0
    assert sum(counts.values()) == expected
    # Over an existing database whose table lost rows: they come back, in one transaction.
    ident = f"{quote_ident(schema)}.{quote_ident(table)}"
    pg_cluster.psql(f"DELETE FROM {ident} WHERE id % 2 = 0", dbname=scratch_db)
    res = pgvault(["restore", "latest", "-d", jobs_db, "-t", scratch_db, "--clean", "--table", name, "--json"], local_env).json()
    assert res["restore"]["verified"] is True
    assert table_counts(pg_cluster, scratch_db)[name] == expected
    src = pg_cluster.psql(_DIGEST.format(ident), dbname=jobs_db)
    assert pg_cluster.psql(_DIGEST.format(ident), dbname=scratch_db) == src


def test_break_glass_of_a_backup_in_parts_with_stock_tools(pg_cluster: PgCluster, jobs_db: str, scratch_db: str,
                                                           local_env: dict[str, str], age_key: AgeKey, tmp_path: Path) -> None:
    """The README's order: main pre-data, main data, every part's data, main post-data."""
    out = pgvault(["backup", "-d", jobs_db, "--jobs", "2", "--no-globals", "--json"], local_env).json()["backup"]
    entry = out["databases"][0]
    assert len(entry["parts"]) == 1
    objects = _objects(Path(local_env["PGVAULT_REPOSITORY_URL"]), out["backup_id"])
    pg_restore = pg_cluster.bindir.program("pg_restore")

    def decrypt(key: str) -> Path:
        dest = tmp_path / key.removesuffix(".zst.age")
        cmd = f"age -d -i {age_key.identity_file} {objects[key]} | zstd -d -q -o {dest}"
        subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, capture_output=True)
        return dest

    main = decrypt(entry["object"]["key"])
    parts = [decrypt(p["object"]["key"]) for p in entry["parts"]]
    pg_cluster.create_database(scratch_db)
    steps = [["--section=pre-data", main], ["--section=data", main], *[["--data-only", p] for p in parts],
             ["--section=post-data", main]]
    for args in steps:
        subprocess.run([str(pg_restore), "--no-owner", "--exit-on-error", "-d", scratch_db, *map(str, args)],
                       env=local_env, check=True, capture_output=True)
    expected = {f"{t['schema']}.{t['name']}": t["rows"] for t in entry["tables"]}
    assert table_counts(pg_cluster, scratch_db) == expected
    assert _digests(pg_cluster, scratch_db) == _digests(pg_cluster, jobs_db)


def test_sigterm_during_backup_in_parts_leaves_no_backup_and_no_pg_dump(pg_cluster: PgCluster, jobs_db: str,
                                                                         local_env: dict[str, str]) -> None:
    """The main dump waits for a lock another session holds while the parts stream; SIGTERM then."""
    holder = subprocess.Popen(
        [str(pg_cluster.bindir.program("psql")), "-X", "-q", "-d", jobs_db, "-f", "-"], stdin=subprocess.PIPE,
        env={**local_env}, text=True,
    )
    repo = Path(local_env["PGVAULT_REPOSITORY_URL"])
    proc = None
    try:
        assert holder.stdin is not None
        # A small table (in the main dump, which locks every table it dumps; the parts lock theirs only).
        holder.stdin.write("BEGIN; LOCK TABLE organizations IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);\n")
        holder.stdin.flush()
        deadline = time.monotonic() + 30
        while pg_cluster.psql("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = "
                              "'organizations'::regclass", dbname=jobs_db) != "1":
            assert time.monotonic() < deadline, "the lock was not taken"
            time.sleep(0.2)
        proc = start(["backup", "-d", jobs_db, "--jobs", "3", "--no-globals"], local_env)
        q = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LOCK TABLE%'"
             " AND wait_event_type = 'Lock'")
        deadline = time.monotonic() + 60
        while pg_cluster.psql(q, dbname=jobs_db) != "1":
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the main pg_dump never waited for the lock"
            time.sleep(0.2)
        dumps = subprocess.run(["pgrep", "-P", str(proc.pid), "pg_dump"], capture_output=True, text=True).stdout.split()
        assert len(dumps) >= 1
        # The parts do not wait for that lock: they stream (or are already stored) meanwhile.
        deadline = time.monotonic() + 60
        while not list(repo.rglob(f"*{jobs_db}.part*")):
            assert time.monotonic() < deadline, "no part was written while the main dump waited"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        holder.kill()
        holder.wait()
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    assert not [p for p in dumps if Path(f"/proc/{p}").exists()], "a pg_dump outlived the backup"
    assert not list(repo.rglob(".tmp-*"))
    assert not list(repo.rglob("manifest.json"))
    listing = pgvault(["list", "--json"], local_env).json()
    assert listing["backups"] == [], json.dumps(listing)
