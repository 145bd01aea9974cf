"""Choosing archive entries for selected tables, from real archives made at test time: ``pg_dump
-Fc`` of the generated sample database (and of Pagila when ../shared/testdata is there), read back
with ``pg_restore -l`` / ``pg_restore -s`` of each major.

The selection code itself is pure (pgvault.policy.toc); the archives are not committed because
they would be pg_dump output of whatever schema they hold, and for Pagila that is a third party's.
Between them the two schemas cover identity columns and serial sequences, partitions with their
index and constraint attachments, triggers, comments, materialized views, foreign keys in and out.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pgvault.policy import toc
from support.pgcluster import PgCluster

pytestmark = pytest.mark.pg

Archive = tuple[list[toc.TocEntry], dict[tuple[str, str, str], str]]


def _archive(cluster: PgCluster, db: str, directory: Path) -> Archive:
    dump = directory / f"{db}-pg{cluster.major}.dump"
    env = cluster.client_env()

    def run(program: str, *args: str) -> str:
        return subprocess.run([str(cluster.bindir.program(program)), *args], env=env, check=True,
                              capture_output=True, text=True, timeout=300).stdout

    run("pg_dump", "-Fc", "-d", db, "-f", str(dump))
    return toc.parse_toc(run("pg_restore", "-l", str(dump))), toc.parse_schema_script(run("pg_restore", "-s", "-f", "-", str(dump)))


@pytest.fixture(scope="module")
def sample_archive(pg_cluster: PgCluster, sample_db: str, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return _archive(pg_cluster, sample_db, tmp_path_factory.mktemp("toc"))


@pytest.fixture(scope="module")
def pagila_archive(pg_cluster: PgCluster, pagila: str, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return _archive(pg_cluster, pagila, tmp_path_factory.mktemp("toc"))


def _kinds(chosen: list[toc.TocEntry]) -> list[tuple[str, str]]:
    return [(e.type, e.tag) for e in chosen]


def _in_archive_order(entries: list[toc.TocEntry], chosen: list[toc.TocEntry]) -> bool:
    # pg_restore -L restores in the order of the list, and the archive's order is pg_dump's
    # dependency order: the selection must keep it.
    positions = [entries.index(e) for e in chosen]
    return positions == sorted(positions)


# --- the generated sample database ----------------------------------------------------------------


def test_parse_toc_reads_types_with_spaces(sample_archive: Archive) -> None:
    entries, _ = sample_archive
    kinds = {e.type for e in entries}
    assert {"TABLE", "TABLE DATA", "FK CONSTRAINT", "SEQUENCE SET", "SEQUENCE OWNED BY", "INDEX ATTACH",
            "TABLE ATTACH", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA"} <= kinds
    fk = next(e for e in entries if e.type == "FK CONSTRAINT" and e.tag.startswith("configs "))
    assert fk.schema == "public" and fk.tag == "configs configs_project_id_fkey"
    # Three tables and config_history's four partitions hold rows; the partitioned parent does not.
    assert sorted(e.tag for e in entries if e.type == "TABLE DATA") == sorted(
        ["organizations", "projects", "configs", "config_history_2023", "config_history_2024",
         "config_history_2025", "config_history_default"])


def test_full_entries_recreate_a_table_with_everything_it_owns(sample_archive: Archive) -> None:
    entries, bodies = sample_archive
    chosen = toc.full_entries(entries, bodies, {("public", "configs")})
    assert sorted(_kinds(chosen)) == sorted([
        ("TABLE", "configs"),
        ("SEQUENCE", "configs_id_seq"),  # the identity column's
        ("TABLE DATA", "configs"),
        ("SEQUENCE SET", "configs_id_seq"),
        ("CONSTRAINT", "configs configs_pkey"),
        ("CONSTRAINT", "configs configs_project_id_key_key"),
        ("INDEX", "configs_key_idx"),
        ("INDEX", "configs_value_idx"),
        ("TRIGGER", "configs configs_audit"),
        ("TRIGGER", "configs configs_touch"),
        ("FK CONSTRAINT", "configs configs_project_id_fkey"),
        ("COMMENT", "TABLE configs"),
    ])
    assert _in_archive_order(entries, chosen)


def test_full_entries_of_a_serial_column_take_its_sequence_and_default(sample_archive: Archive) -> None:
    entries, bodies = sample_archive
    kinds = _kinds(toc.full_entries(entries, bodies, {("public", "config_history")}))
    assert {("TABLE", "config_history"), ("SEQUENCE", "config_history_id_seq"),
            ("SEQUENCE OWNED BY", "config_history_id_seq"), ("DEFAULT", "config_history id"),
            ("SEQUENCE SET", "config_history_id_seq"), ("CONSTRAINT", "config_history config_history_pkey"),
            ("INDEX", "config_history_config_id_changed_at_idx"),
            ("FK CONSTRAINT", "config_history config_history_config_id_fkey")} <= set(kinds)
    assert not any(t == "TABLE DATA" for t, _ in kinds)  # the rows are in the partitions


def test_full_entries_of_a_partition_attach_it_and_its_indexes(sample_archive: Archive) -> None:
    entries, bodies = sample_archive
    kinds = _kinds(toc.full_entries(entries, bodies, {("public", "config_history_2024")}))
    assert ("TABLE ATTACH", "config_history_2024") in kinds
    assert ("INDEX ATTACH", "config_history_2024_pkey") in kinds
    assert ("INDEX", "config_history_2024_config_id_changed_at_idx") in kinds
    assert ("INDEX ATTACH", "config_history_2024_config_id_changed_at_idx") in kinds
    assert not any(tag.startswith("config_history_2025") for _, tag in kinds)


def test_existing_sequences_and_missing_schemas(sample_archive: Archive) -> None:
    entries, bodies = sample_archive
    organizations = {("public", "organizations")}
    kinds = _kinds(toc.full_entries(entries, bodies, organizations))
    assert ("SEQUENCE", "organizations_id_seq") in kinds and not any(t == "SCHEMA" for t, _ in kinds)
    kinds = _kinds(toc.full_entries(entries, bodies, organizations, existing_sequences={("public", "organizations_id_seq")}))
    assert not any(t.startswith("SEQUENCE") for t, _ in kinds)
    kinds = _kinds(toc.full_entries(entries, bodies, organizations, missing_schemas={"reporting"}))
    assert ("SCHEMA", "reporting") in kinds


def test_data_entries_and_new_database_selection(sample_archive: Archive) -> None:
    entries, bodies = sample_archive
    assert _kinds(toc.data_entries(entries, {("public", "organizations")})) == [("TABLE DATA", "organizations")]
    chosen = toc.schema_with_data_of(entries, bodies, {("public", "projects"), ("public", "configs")})
    data = [tag for typ, tag in _kinds(chosen) if typ == "TABLE DATA"]
    assert sorted(data) == ["configs", "projects"]
    fks = [tag for typ, tag in _kinds(chosen) if typ == "FK CONSTRAINT"]
    # Only foreign keys that point at a table whose rows are restored (others would not validate).
    assert sorted(fks) == ["config_history config_history_config_id_fkey", "configs configs_project_id_fkey"]
    assert len([e for e in chosen if e.type == "TABLE"]) == 8  # the whole schema: 4 tables, 4 partitions
    assert ("MATERIALIZED VIEW", "organization_summary") in _kinds(chosen)


def test_list_file_is_pg_restore_syntax(sample_archive: Archive) -> None:
    entries, _ = sample_archive
    text = toc.list_file(toc.data_entries(entries, {("public", "organizations")}))
    assert re.fullmatch(r"\d+; 0 \d+ TABLE DATA public organizations postgres\n", text), text


# --- Pagila (../shared/testdata): a schema written by someone else --------------------------------


def test_pagila_types_with_spaces(pagila_archive: Archive) -> None:
    entries, _ = pagila_archive
    kinds = {e.type for e in entries}
    assert {"TABLE", "TABLE DATA", "FK CONSTRAINT", "SEQUENCE SET", "INDEX ATTACH", "MATERIALIZED VIEW"} <= kinds
    fk = next(e for e in entries if e.type == "FK CONSTRAINT" and e.tag.startswith("rental "))
    assert fk.schema == "public" and fk.tag.split(" ")[0] == "rental"
    assert sum(1 for e in entries if e.type == "TABLE DATA") == 21


def test_pagila_full_entries_of_a_table_and_a_partition(pagila_archive: Archive) -> None:
    entries, bodies = pagila_archive
    chosen = toc.full_entries(entries, bodies, {("public", "rental")})
    assert sorted(_kinds(chosen)) == sorted([
        ("SEQUENCE", "rental_rental_id_seq"),
        ("TABLE", "rental"),
        ("TABLE DATA", "rental"),
        ("SEQUENCE SET", "rental_rental_id_seq"),
        ("CONSTRAINT", "rental rental_pkey"),
        ("INDEX", "idx_fk_inventory_id"),
        ("INDEX", "idx_unq_rental_rental_date_inventory_id_customer_id"),
        ("TRIGGER", "rental last_updated"),
        ("FK CONSTRAINT", "rental rental_customer_id_fkey"),
        ("FK CONSTRAINT", "rental rental_inventory_id_fkey"),
        ("FK CONSTRAINT", "rental rental_staff_id_fkey"),
    ])
    assert _in_archive_order(entries, chosen)
    kinds = _kinds(toc.full_entries(entries, bodies, {("public", "payment_p2022_01")}))
    assert ("TABLE ATTACH", "payment_p2022_01") in kinds
    assert ("INDEX ATTACH", "payment_p2022_01_pkey") in kinds
    assert ("INDEX", "payment_p2022_01_customer_id_idx") in kinds
    assert not any(tag.startswith("payment_p2022_02") for _, tag in kinds)


def test_pagila_sequences_schemas_and_new_database_selection(pagila_archive: Archive) -> None:
    entries, bodies = pagila_archive
    kinds = _kinds(toc.full_entries(entries, bodies, {("public", "actor")}, existing_sequences={("public", "actor_actor_id_seq")}))
    assert not any(t.startswith("SEQUENCE") for t, _ in kinds)
    kinds = _kinds(toc.full_entries(entries, bodies, {("public", "actor")}, missing_schemas={"public"}))
    assert ("SCHEMA", "public") in kinds
    assert _kinds(toc.data_entries(entries, {("public", "film")})) == [("TABLE DATA", "film")]
    chosen = toc.schema_with_data_of(entries, bodies, {("public", "film"), ("public", "language")})
    assert sorted(tag for typ, tag in _kinds(chosen) if typ == "TABLE DATA") == ["film", "language"]
    fks = [tag for typ, tag in _kinds(chosen) if typ == "FK CONSTRAINT"]
    assert "film film_language_id_fkey" in fks and "film_actor film_actor_film_id_fkey" in fks
    assert "film_actor film_actor_actor_id_fkey" not in fks and "rental rental_customer_id_fkey" not in fks
    assert len([e for e in chosen if e.type == "TABLE"]) == 22  # the whole schema
