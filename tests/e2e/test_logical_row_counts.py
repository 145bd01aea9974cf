"""Row counts of a logical backup come from the dump stream itself: on real pg_dump output they
equal count(*) in every awkward case (partitions, inheritance, empty and unlogged tables, text with
newlines, tabs, backslashes and "\\." lines, empty-string rows, bytea, generated columns, large
objects, odd names), and a restore verifies against them."""

from __future__ import annotations

import io
import subprocess

import psycopg
import pytest

from pgvault.operations.logical.backup import _row_counts, _RowCountingReader
from pgvault.pg.dump_archive import RowCounter
from support.cli import pgvault

from .conftest import table_counts

_AWKWARD = r"""
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Mixed Case é" (id int, note text);
INSERT INTO "Odd Schema"."Mixed Case é" SELECT i, 'n' || i FROM generate_series(1, 37) i;
CREATE TABLE texts (id serial, body text, raw bytea, doubled int GENERATED ALWAYS AS (id * 2) STORED);
INSERT INTO texts (body, raw) VALUES
  (E'line one\nline two\r\nthree', '\x000a0d5c2e'::bytea),
  (E'\\.', E'\\x0a'::bytea),
  (E'tab\there\\and back\\', NULL),
  ('', ''::bytea),
  (NULL, NULL),
  (E'\n\n\n', E'\\x5c2e0a0a0a'::bytea);
CREATE TABLE one_col (t text);
INSERT INTO one_col VALUES (E'\\.'), (''), (''), ('.'), (E'\\'), ('');
CREATE TABLE ten_bytes (t text);  -- every row 10 bytes with its newline: chunk length 0x0A
INSERT INTO ten_bytes SELECT lpad(i::text, 9, '0') FROM generate_series(1, 300) i;
CREATE TABLE wide (t text);  -- rows longer than a pipe buffer and the pipeline's chunk
INSERT INTO wide SELECT repeat(md5(i::text), 40000) FROM generate_series(1, 3) i;
CREATE TABLE empty_table (i int);
CREATE UNLOGGED TABLE unlogged_t (i int);
INSERT INTO unlogged_t SELECT generate_series(1, 55);
CREATE TABLE measures (at date, v int) PARTITION BY RANGE (at);
CREATE TABLE measures_2024 PARTITION OF measures FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measures_empty PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measures SELECT date '2024-01-01' + i, i FROM generate_series(0, 600) i;
CREATE TABLE parent (i int);
CREATE TABLE child (j int) INHERITS (parent);
INSERT INTO parent SELECT generate_series(1, 11);
INSERT INTO child SELECT i, i FROM generate_series(1, 13) i;
CREATE MATERIALIZED VIEW mv AS SELECT * FROM parent;
SELECT lo_from_bytea(0, E'\\x0a0a0a000a'::bytea);
SELECT lo_from_bytea(0, repeat('x', 100000)::bytea);
"""


@pytest.fixture
def awkward_db(pg_cluster, scratch_db):  # type: ignore[no-untyped-def]
    pg_cluster.create_database(scratch_db)
    pg_cluster.psql(_AWKWARD, dbname=scratch_db)
    return scratch_db


def test_stream_counts_of_real_pg_dump_output_equal_count_star(pg_cluster, awkward_db) -> None:
    dump = subprocess.run(
        [str(pg_cluster.bindir.program("pg_dump")), "-Fc", "-Z0", "-d", awkward_db],
        env=pg_cluster.client_env(), capture_output=True, check=True,
    ).stdout
    expected = table_counts(pg_cluster, awkward_db)
    for piece in (len(dump), 65536, 4093, 1):  # the same answer however the pipe cuts the stream
        counter = RowCounter()
        for pos in range(0, len(dump), piece):
            counter.feed(dump[pos : pos + piece])
        counted = {f"{t.schema}.{t.name}": t.rows for t in counter.finish()}
        assert counted == expected, piece
    assert expected["public.texts"] == 6 and expected["public.one_col"] == 6 and expected["public.measures_2024"] == 366


def test_backup_records_the_stream_counts_and_restore_verifies_them(pg_cluster, awkward_db, local_env) -> None:
    manifest = pgvault(["backup", "-d", awkward_db, "--json"], local_env).json()["backup"]
    entry = manifest["databases"][0]
    assert entry["row_counts_exact"] is True
    assert {f"{t['schema']}.{t['name']}": t["rows"] for t in entry["tables"]} == table_counts(pg_cluster, awkward_db)
    target = awkward_db + "_r"
    try:
        res = pgvault(["restore", "latest", "-d", awkward_db, "-t", target, "--json"], local_env).json()["restore"]
        assert res["verified"] is True
        assert table_counts(pg_cluster, target) == table_counts(pg_cluster, awkward_db)
    finally:
        pg_cluster.drop_database(target)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_row_counts_from_snapshot_are_the_same_exact_counts(pg_cluster, awkward_db, local_env, jobs) -> None:
    # backup.row_counts_from: snapshot counts with count(*) in the exporting transaction beside
    # pg_dump instead of reading the stream: the same numbers, still exact, still verified.
    env = {**local_env, "PGVAULT_BACKUP_ROW_COUNTS_FROM": "snapshot", "PGVAULT_BACKUP_JOBS": jobs}
    manifest = pgvault(["backup", "-d", awkward_db, "--json"], env).json()["backup"]
    entry = manifest["databases"][0]
    assert entry["row_counts_exact"] is True
    assert {f"{t['schema']}.{t['name']}": t["rows"] for t in entry["tables"]} == table_counts(pg_cluster, awkward_db)
    assert pgvault(["verify", manifest["backup_id"]], env).returncode == 0
    bad = pgvault(["backup", "-d", awkward_db], {**local_env, "PGVAULT_BACKUP_ROW_COUNTS_FROM": "guess"}, check=False)
    assert bad.returncode != 0 and "backup.row_counts_from" in bad.stderr and "dump, snapshot" in bad.stderr


def test_unreadable_stream_falls_back_to_count_star_in_the_snapshot(pg_cluster, awkward_db) -> None:
    # Should pg_dump ever write something the counter does not follow, the backup still records
    # exact counts (and says so in its log): count(*) in the dump's snapshot, after the dump.
    stream = _RowCountingReader(io.BytesIO(b"PGDMP\x01\x63\x00\x04\x08\x01" + b"\x00" * 64))
    while stream.read(7):
        pass
    assert stream.error is not None
    with psycopg.connect(pg_cluster.dsn(awkward_db), password=pg_cluster.password) as conn:
        tables = [(s, n, -1) for s, n in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()]
        counts = _row_counts(conn, awkward_db, tables, [stream])
    assert {t.qualified: t.rows for t in counts} == table_counts(pg_cluster, awkward_db)
