"""The generated sample database (pgvault.sample) on real servers: both loaders give the same data,
it has the documented shape (README "Sample database"), its audit trigger works, and the disaster
later issues rehearse -- ``DELETE FROM organizations`` -- really empties every table."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from pgvault import sample
from pgvault.sample import Sample
from support.pgcluster import PgCluster

pytestmark = pytest.mark.pg


@pytest.fixture
def db_name(pg_cluster: PgCluster) -> Iterator[Callable[[], str]]:
    """Unique database names (not created), dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(f"t_sample_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for name in made:
        pg_cluster.drop_database(name)


def _digest(cluster: PgCluster, db: str, table: str) -> str:
    return cluster.psql(f"SELECT count(*) || ' ' || md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM {table} t", dbname=db)


def test_psql_and_psycopg_load_the_documented_rows(pg_cluster: PgCluster, db_name: Callable[[], str]) -> None:
    s = Sample(scale=2, seed=5)
    by_psql = pg_cluster.load_sample(db_name(), scale=2, seed=5)
    by_psycopg = pg_cluster.create_database(db_name())
    with psycopg.connect(pg_cluster.dsn(by_psycopg), password=pg_cluster.password) as conn:
        s.load(conn)
    for name, rows in s.counts().items():
        assert pg_cluster.psql(f"SELECT count(*) FROM {name}", dbname=by_psql) == str(rows), name
    for table in sample.TABLES:
        assert _digest(pg_cluster, by_psql, table) == _digest(pg_cluster, by_psycopg, table)
    # Non-ASCII text arrived as UTF-8, whatever the client's locale.
    assert pg_cluster.psql("SELECT count(*) FROM organizations WHERE name ~ '[^[:ascii:]]'", dbname=by_psql) != "0"
    assert pg_cluster.psql("SELECT count(*) FROM configs WHERE value->>0 = E'Line one\\nLine two'"
                           " OR value #>> '{}' = E'Line one\\nLine two'", dbname=by_psql) != "0"


def test_shape_keys_cascades_indexes_views(pg_cluster: PgCluster, db_name: Callable[[], str]) -> None:
    db = pg_cluster.load_sample(db_name())
    fks = pg_cluster.psql(
        "SELECT conname || ' ' || confrelid::regclass || ' ' || confdeltype::text FROM pg_constraint"
        " WHERE contype = 'f' AND conparentid = 0 ORDER BY 1", dbname=db).splitlines()
    assert fks == ["config_history_config_id_fkey configs c", "configs_project_id_fkey projects c",
                   "projects_organization_id_fkey organizations c"]
    indexes = set(pg_cluster.psql("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'", dbname=db).split())
    assert {"organizations_pkey", "organizations_slug_key", "projects_organization_id_name_key",
            "configs_project_id_key_key", "configs_value_idx", "config_history_pkey",
            "config_history_2024_pkey", "config_history_config_id_changed_at_idx"} <= indexes
    partitions = pg_cluster.psql("SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'config_history'::regclass"
                                 " ORDER BY 1", dbname=db).split()
    assert sorted(partitions) == sorted(sample.PARTITIONS)
    counts = Sample().counts()
    assert pg_cluster.psql("SELECT count(*), sum(configs) FROM reporting.organization_summary", dbname=db) == \
        f"{counts['organizations']}|{counts['configs']}"
    assert pg_cluster.psql("SELECT count(*) FROM config_changes", dbname=db) == str(counts["config_history"])
    # Identities and the history sequence continue after the generated ids.
    new_id = pg_cluster.psql("INSERT INTO organizations (slug, name) VALUES ('new', 'New') RETURNING id", dbname=db)
    assert new_id == str(counts["organizations"] + 1)


def test_audit_trigger_records_who_changed_what(pg_cluster: PgCluster, db_name: Callable[[], str]) -> None:
    db = pg_cluster.load_sample(db_name())
    before = pg_cluster.psql("SELECT version || ' ' || value FROM configs WHERE id = 1", dbname=db)
    version, old_value = before.split(" ", 1)
    pg_cluster.psql("SET app.actor = 'oncall@example.com'; UPDATE configs SET value = '\"changed\"' WHERE id = 1", dbname=db)
    assert pg_cluster.psql("SELECT version, updated_by FROM configs WHERE id = 1", dbname=db) == \
        f"{int(version) + 1}|oncall@example.com"
    last = pg_cluster.psql("SELECT changed_by, old_value, new_value FROM config_history WHERE config_id = 1"
                           " ORDER BY id DESC LIMIT 1", dbname=db)
    assert last == f'oncall@example.com|{old_value}|"changed"'
    pg_cluster.psql("INSERT INTO configs (project_id, key, value) VALUES (1, 'new.key', '42')", dbname=db)
    assert pg_cluster.psql("SELECT old_value IS NULL, new_value FROM config_changes WHERE key = 'new.key'",
                           dbname=db) == "t|42"


def test_delete_from_organizations_empties_every_table(pg_cluster: PgCluster, db_name: Callable[[], str]) -> None:
    """The disaster later issues restore from: one statement, and nothing is left."""
    db = pg_cluster.load_sample(db_name())
    assert pg_cluster.psql("DELETE FROM organizations", dbname=db) == ""
    for table in sample.TABLES:
        assert pg_cluster.psql(f"SELECT count(*) FROM {table}", dbname=db) == "0", table
