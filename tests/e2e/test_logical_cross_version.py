"""Region loss, in small: a PostgreSQL 15 backup restored onto a PostgreSQL 18 server elsewhere,
roles included, with client programs picked to fit each side."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from support.cli import clean_env, pgvault

from .conftest import AgeKey, table_counts


def test_pg15_backup_restores_with_globals_onto_pg18(pg15, pg_latest, tmp_path: Path, age_key: AgeKey) -> None:
    if pg_latest.major == pg15.major:
        pytest.skip("needs two PostgreSQL majors")
    role = f"app_{uuid.uuid4().hex[:6]}"
    db = f"x_{uuid.uuid4().hex[:8]}"
    pg15.psql(f"CREATE ROLE {role} LOGIN PASSWORD 'app-pw-1'")
    pg15.create_database(db)
    pg15.psql(
        f"CREATE TABLE items(id int PRIMARY KEY, v text); INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 5000) g;"
        f" ALTER TABLE items OWNER TO {role}",
        dbname=db,
    )
    common = dict(
        PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"),
        PGVAULT_CLUSTER="cross",
        PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
        PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file),
    )
    manifest = pgvault(["backup", "-d", db, "--json"], clean_env(**pg15.env(), **common)).json()["backup"]
    assert manifest["pg_dump_version"].startswith(f"pg_dump (PostgreSQL) {pg15.bindir.version}")

    res = pgvault(["restore", "latest", "-d", db, "--globals", "--json"], clean_env(**pg_latest.env(), **common)).json()
    assert res["restore"]["verified"] is True
    assert res["restore"]["pg_restore_version"].startswith(f"pg_restore (PostgreSQL) {pg_latest.major}")
    assert table_counts(pg_latest, db) == {"public.items": 5000}
    assert pg_latest.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'items'", dbname=db) == role
    # The role came with its password: it can log in on the new server.
    env = {**pg_latest.client_env(), "PGUSER": role, "PGPASSWORD": "app-pw-1"}
    import subprocess

    out = subprocess.run([str(pg_latest.bindir.program("psql")), "-X", "-At", "-d", db, "-c", "SELECT count(*) FROM items"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "5000"
    pg_latest.drop_database(db)
    pg15.drop_database(db)
