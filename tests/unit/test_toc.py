"""Choosing archive entries for selected tables, from Pagila's real TOC and schema script
(``pg_restore -l`` / ``pg_restore -s`` of a PostgreSQL 15 dump, kept under tests/unit/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgvault.operations import toc

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def entries() -> list[toc.TocEntry]:
    return toc.parse_toc((DATA / "pagila.toc").read_text())


@pytest.fixture(scope="module")
def bodies() -> dict[tuple[str, str, str], str]:
    return toc.parse_schema_script((DATA / "pagila.schema.sql").read_text())


def _kinds(chosen: list[toc.TocEntry]) -> list[tuple[str, str]]:
    return [(e.type, e.tag) for e in chosen]


def test_parse_toc_reads_types_with_spaces(entries: list[toc.TocEntry]) -> None:
    kinds = {e.type for e in entries}
    assert {"TABLE", "TABLE DATA", "FK CONSTRAINT", "SEQUENCE SET", "INDEX ATTACH", "MATERIALIZED VIEW"} <= kinds
    fk = next(e for e in entries if e.type == "FK CONSTRAINT" and e.tag.startswith("rental "))
    assert fk.schema == "public" and fk.tag.split(" ")[0] == "rental"
    assert sum(1 for e in entries if e.type == "TABLE DATA") == 21


def test_full_entries_recreate_a_table_with_everything_it_owns(entries, bodies) -> None:  # type: ignore[no-untyped-def]
    chosen = toc.full_entries(entries, bodies, {("public", "rental")})
    assert _kinds(chosen) == [
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
    ]
    # Archive order is kept: pg_restore -L restores in the order of the list.
    positions = [entries.index(e) for e in chosen]
    assert positions == sorted(positions)


def test_full_entries_of_a_partition_attach_it_and_its_indexes(entries, bodies) -> None:  # type: ignore[no-untyped-def]
    kinds = _kinds(toc.full_entries(entries, bodies, {("public", "payment_p2022_01")}))
    assert ("TABLE ATTACH", "payment_p2022_01") in kinds
    assert ("INDEX ATTACH", "payment_p2022_01_pkey") in kinds
    assert ("INDEX", "payment_p2022_01_customer_id_idx") in kinds
    assert not any(tag.startswith("payment_p2022_02") for _, tag in kinds)


def test_existing_sequences_and_missing_schemas(entries, bodies) -> None:  # type: ignore[no-untyped-def]
    kinds = _kinds(toc.full_entries(entries, bodies, {("public", "actor")}, existing_sequences={("public", "actor_actor_id_seq")}))
    assert not any(t.startswith("SEQUENCE") for t, _ in kinds)
    kinds = _kinds(toc.full_entries(entries, bodies, {("public", "actor")}, missing_schemas={"public"}))
    assert ("SCHEMA", "public") in kinds


def test_data_entries_and_new_database_selection(entries, bodies) -> None:  # type: ignore[no-untyped-def]
    assert _kinds(toc.data_entries(entries, {("public", "film")})) == [("TABLE DATA", "film")]
    chosen = toc.schema_with_data_of(entries, bodies, {("public", "film"), ("public", "language")})
    data = [tag for typ, tag in _kinds(chosen) if typ == "TABLE DATA"]
    assert sorted(data) == ["film", "language"]
    fks = [tag for typ, tag in _kinds(chosen) if typ == "FK CONSTRAINT"]
    # Only foreign keys that point at a table whose rows are restored (others would not validate).
    assert "film film_language_id_fkey" in fks and "film_actor film_actor_film_id_fkey" in fks
    assert "film_actor film_actor_actor_id_fkey" not in fks and "rental rental_customer_id_fkey" not in fks
    assert len([e for e in chosen if e.type == "TABLE"]) == 22  # the whole schema


def test_list_file_is_pg_restore_syntax(entries) -> None:  # type: ignore[no-untyped-def]
    text = toc.list_file(toc.data_entries(entries, {("public", "actor")}))
    assert text == "3682; 0 16423 TABLE DATA public actor postgres\n"
