"""Logical backup and restore, end to end through the CLI, against real PostgreSQL servers.

Read like the runbook: when the operator backs up the application's database (the generated
sample, ``pgvault.sample``) and restores it elsewhere, then every table has exactly the rows the
manifest recorded, and the repository holds only encrypted objects under the documented keys.
Pagila (a schema written by someone else, from ../shared/testdata) gets one round trip of its own.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from pgvault.sample import Sample
from support.cli import pgvault

from .conftest import AgeKey, table_counts


def _only_backup(env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    listing = pgvault(["list", "--json"], env).json()
    assert listing["format"] == 1
    assert len(listing["backups"]) == 1
    return listing["backups"][0]  # type: ignore[no-any-return]


def test_backup_then_restore_into_new_database_matches_source(pg_cluster, sample_db, scratch_db, local_env, age_key: AgeKey, tmp_path: Path) -> None:
    source_counts = table_counts(pg_cluster, sample_db)

    out = pgvault(["backup", "--database", sample_db, "--json"], local_env).json()
    manifest = out["backup"]
    assert out["format"] == 1 and manifest["kind"] == "logical"
    backup_id = manifest["backup_id"]

    # The manifest records the server, the tools, the pipeline and exact per-table counts.
    assert manifest["server_version_num"] // 10000 == pg_cluster.major
    assert re.match(r"pg_dump \(PostgreSQL\) \d+", manifest["pg_dump_version"])
    assert manifest["system_identifier"].isdigit()
    assert manifest["pipeline"] == {"compression": "zstd", "level": None, "encryption": "age", "recipients": [age_key.recipient]}
    [db] = manifest["databases"]
    assert db["row_counts_exact"] is True
    recorded = {f"{t['schema']}.{t['name']}": t["rows"] for t in db["tables"]}
    assert recorded == source_counts
    assert db["object"]["raw_size"] > db["object"]["stored_size"] > 0
    assert len(db["object"]["raw_sha256"]) == 64 and len(db["object"]["stored_sha256"]) == 64
    assert manifest["globals"]["key"] == "globals.sql.zst.age"

    # list/show agree with the manifest, in JSON and for people.
    assert _only_backup(local_env)["backup_id"] == backup_id
    shown = pgvault(["show", "latest", "--json"], local_env).json()["backup"]
    assert shown["backup_id"] == backup_id and shown["databases"][0]["tables"] == db["tables"]
    human = pgvault(["list"], local_env).stdout
    assert backup_id in human and sample_db in human

    # Keys follow <cluster>/logical/<YYYY>/<MM>/<id>/ and every data object is age-encrypted.
    repo = Path(local_env["PGVAULT_REPOSITORY_URL"])
    prefix = repo / local_env["PGVAULT_CLUSTER"] / "logical" / backup_id[:4] / backup_id[4:6] / backup_id
    names = sorted(p.name for p in prefix.iterdir())
    assert names == [f"{sample_db}.dump.zst.age", "globals.sql.zst.age", "manifest.json"]
    for name in ("globals.sql.zst.age", f"{sample_db}.dump.zst.age"):
        assert (prefix / name).read_bytes().startswith(b"age-encryption.org/v1\n")
    manifest_text = (prefix / "manifest.json").read_text()
    assert age_key.secret not in manifest_text and pg_cluster.password not in manifest_text

    res = pgvault(["restore", backup_id, "--database", sample_db, "--target-database", scratch_db, "--json"], local_env).json()
    assert res["restore"]["verified"] is True
    assert {c["table"]: c["actual"] for c in res["restore"]["checks"]} == source_counts
    assert table_counts(pg_cluster, scratch_db) == source_counts
    # Not just counts: the restored data is the same data (jsonb, non-ASCII names, the audit trail).
    for table in ("organizations", "configs", "config_history"):
        q = f"SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"
        assert pg_cluster.psql(q, dbname=scratch_db) == pg_cluster.psql(q, dbname=sample_db)


# Post-data (indexes, constraints, triggers) and what it builds on (views, materialized views).
_OBJECTS = ("SELECT (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'), (SELECT count(*) FROM pg_constraint),"
            " (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal), (SELECT count(*) FROM pg_views WHERE schemaname = 'public'),"
            " (SELECT count(*) FROM pg_matviews WHERE ispopulated)")


def test_parallel_restore_and_human_output(pg_cluster, sample_db, scratch_db, local_env) -> None:
    pgvault(["backup", "-d", sample_db, "--no-globals", "--compression", "gzip"], local_env)
    out = pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db, "--jobs", "2"], local_env).stdout
    assert "row counts verified" in out
    configs = Sample().counts()["configs"]
    assert re.search(rf"public\.configs\s+{configs}\s+{configs}\s+ok", out), out
    assert table_counts(pg_cluster, scratch_db) == table_counts(pg_cluster, sample_db)
    # Post-data, restored in parallel from the spool, is all there.
    assert pg_cluster.psql(_OBJECTS, dbname=scratch_db) == pg_cluster.psql(_OBJECTS, dbname=sample_db)


def test_parallel_restore_restores_every_row_exactly(pg_cluster, sample_db_large, scratch_db, local_env) -> None:
    """--jobs 2: every table's rows are the source's, byte for byte (row order aside)."""
    pgvault(["backup", "-d", sample_db_large, "--no-globals"], local_env)
    out = pgvault(["restore", "latest", "-d", sample_db_large, "-t", scratch_db, "--jobs", "2", "--json"], local_env).json()
    assert out["restore"]["verified"] is True
    tables = pg_cluster.psql("SELECT string_agg(format('%I.%I', schemaname, tablename), ' ') FROM pg_tables"
                             " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')", dbname=sample_db_large).split()
    assert len(tables) >= 3
    for t in tables:
        q = f"SELECT count(*) || ' ' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM {t} x"
        assert pg_cluster.psql(q, dbname=scratch_db) == pg_cluster.psql(q, dbname=sample_db_large), t
    assert pg_cluster.psql(_OBJECTS, dbname=scratch_db) == pg_cluster.psql(_OBJECTS, dbname=sample_db_large)


def test_pagila_round_trip(pg_cluster, pagila, scratch_db, local_env) -> None:
    """A schema written by someone else (domains, a non-ASCII identifier, an aggregate, functions,
    partitions), whole database and parallel post-data; skipped without ../shared/testdata."""
    pgvault(["backup", "-d", pagila, "--no-globals"], local_env)
    out = pgvault(["restore", "latest", "-d", pagila, "-t", scratch_db, "--jobs", "2"], local_env).stdout
    assert re.search(r"public\.rental\s+16044\s+16044\s+ok", out), out
    assert table_counts(pg_cluster, scratch_db) == table_counts(pg_cluster, pagila)
    assert pg_cluster.psql(_OBJECTS, dbname=scratch_db) == pg_cluster.psql(_OBJECTS, dbname=pagila)
    q = "SELECT md5(string_agg(f::text, ',' ORDER BY film_id)) FROM film f"
    assert pg_cluster.psql(q, dbname=scratch_db) == pg_cluster.psql(q, dbname=pagila)


def test_break_glass_restore_with_stock_tools_only(pg_cluster, sample_db, scratch_db, local_env, age_key: AgeKey) -> None:
    """The README's manual path: age -d | zstd -d | pg_restore, no pgvault involved."""
    manifest = pgvault(["backup", "-d", sample_db, "--json"], local_env).json()["backup"]
    repo = Path(local_env["PGVAULT_REPOSITORY_URL"])
    obj = next(repo.glob(f"*/logical/*/*/{manifest['backup_id']}/{sample_db}.dump.zst.age"))
    pg_cluster.create_database(scratch_db)
    pg_restore = pg_cluster.bindir.program("pg_restore")
    cmd = f"age -d -i {age_key.identity_file} {obj} | zstd -d | {pg_restore} --no-owner -d {scratch_db}"
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=local_env, check=True, capture_output=True)
    expected = {f"{t['schema']}.{t['name']}": t["rows"] for t in manifest["databases"][0]["tables"]}
    assert table_counts(pg_cluster, scratch_db) == expected
    # The manifest's checksum is the sha256 of the stored object, checkable with sha256sum.
    digest = subprocess.run(["sha256sum", str(obj)], check=True, capture_output=True, text=True).stdout.split()[0]
    assert digest == manifest["databases"][0]["object"]["stored_sha256"]


def _indexes(cluster, db: str, table: str) -> list[str]:  # type: ignore[no-untyped-def]
    return cluster.psql(f"SELECT indexname FROM pg_indexes WHERE tablename = '{table}' ORDER BY 1", dbname=db).splitlines()


def test_restore_selected_tables_over_existing_database(pg_cluster, sample_db, scratch_db, local_env) -> None:
    """The 3 a.m. cases: DELETE without WHERE (on a partition), an UPDATE without WHERE on a
    table others reference, and a DROP TABLE of the table with the audit triggers."""
    pgvault(["backup", "-d", sample_db], local_env)
    pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db], local_env)
    source = table_counts(pg_cluster, sample_db)
    project_indexes = _indexes(pg_cluster, scratch_db, "projects")
    assert len(project_indexes) >= 2
    pg_cluster.psql(
        "DELETE FROM config_history_2024; UPDATE projects SET environment = 'development'; DROP TABLE configs CASCADE;"
        " INSERT INTO organizations (slug, name) VALUES ('klingon', 'Klingon Empire')",
        dbname=scratch_db,
    )
    # Without --clean an existing database is never touched.
    refused = pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db, "--table", "public.projects"], local_env, check=False)
    assert refused.returncode == 11 and "already exists" in refused.stderr
    res = pgvault(
        ["restore", "latest", "-d", sample_db, "-t", scratch_db, "--clean", "--json",
         "--table", "public.projects", "--table", "public.config_history_2024", "--table", "public.configs"],
        local_env,
    ).json()["restore"]
    assert res["verified"] is True and len(res["checks"]) == 3
    restored = table_counts(pg_cluster, scratch_db)
    for t in ("public.projects", "public.config_history_2024", "public.configs"):
        assert restored[t] == source[t] > 0
    assert restored["public.organizations"] == source["public.organizations"] + 1  # other tables untouched
    q = "SELECT count(*) FROM projects WHERE environment <> 'development'"
    assert pg_cluster.psql(q, dbname=scratch_db) == pg_cluster.psql(q, dbname=sample_db) != "0"
    # Rows replaced in place: the table's indexes were never dropped.
    assert _indexes(pg_cluster, scratch_db, "projects") == project_indexes
    # The dropped table came back whole: primary key, unique key, indexes, both triggers.
    assert _indexes(pg_cluster, scratch_db, "configs") == _indexes(pg_cluster, sample_db, "configs")
    assert pg_cluster.psql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'configs'::regclass AND NOT tgisinternal", dbname=scratch_db) == "2"


def test_restore_selected_tables_into_new_database(pg_cluster, sample_db, scratch_db, local_env) -> None:
    pgvault(["backup", "-d", sample_db], local_env)
    res = pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db, "--table", "public.organizations", "--json"], local_env).json()
    assert [c["table"] for c in res["restore"]["checks"]] == ["public.organizations"] and res["restore"]["verified"]
    restored = table_counts(pg_cluster, scratch_db)
    assert restored["public.organizations"] == Sample().counts()["organizations"]
    assert restored["public.projects"] == 0  # the schema is all there, the data only where asked
    assert _indexes(pg_cluster, scratch_db, "organizations") == _indexes(pg_cluster, sample_db, "organizations")


def test_clean_restore_replaces_database_only_after_verification(pg_cluster, sample_db, scratch_db, local_env) -> None:
    pgvault(["backup", "-d", sample_db], local_env)
    pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db], local_env)
    pg_cluster.psql("TRUNCATE projects CASCADE", dbname=scratch_db)
    # A session on the target: the restore reports it and refuses without --force.
    holder = subprocess.Popen(
        [str(pg_cluster.bindir.program("psql")), "-X", "-d", scratch_db, "-c", "SELECT pg_sleep(60)"],
        env={**pg_cluster.client_env(), "PGAPPNAME": "test-holder"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        pg_cluster.psql(
            f"DO $$BEGIN FOR i IN 1..100 LOOP PERFORM pg_sleep(0.1); EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity"
            f" WHERE datname = '{scratch_db}' AND query LIKE '%pg_sleep(60)%'); END LOOP; END$$"
        )
        busy = pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db, "--clean"], local_env, check=False)
        assert busy.returncode == 8, busy
        assert "connected session" in busy.stderr and "pid" in busy.stderr
        assert pg_cluster.psql("SELECT count(*) FROM projects", dbname=scratch_db) == "0"  # untouched
        pgvault(["restore", "latest", "-d", sample_db, "-t", scratch_db, "--clean", "--force", "--disable-triggers"], local_env)
    finally:
        pg_cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-holder'")
        holder.kill()
        holder.wait()
    assert table_counts(pg_cluster, scratch_db) == table_counts(pg_cluster, sample_db)
    leftovers = pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%\\_pgvault\\_%'")
    assert leftovers == "0"


def test_all_databases_and_exact_counts_switch(pg_cluster, local_env, scratch_db) -> None:
    pg_cluster.create_database(scratch_db)
    pg_cluster.psql("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 1234); ANALYZE t", dbname=scratch_db)
    manifest = pgvault(["backup", "--all", "--no-exact-counts", "--json"], local_env).json()["backup"]
    names = [d["name"] for d in manifest["databases"]]
    assert "postgres" in names and scratch_db in names and "template1" not in names
    entry = next(d for d in manifest["databases"] if d["name"] == scratch_db)
    assert entry["row_counts_exact"] is False
    assert entry["tables"] == [{"schema": "public", "name": "t", "rows": 1234}]  # from ANALYZE's estimate
    assert json.dumps(manifest).count(pg_cluster.password) == 0
