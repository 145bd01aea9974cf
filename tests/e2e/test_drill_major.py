"""``pgvault drill --major N``: an upgrade rehearsal.  A backup of a PostgreSQL 15 server is restored
into a throwaway PostgreSQL 18 server with 18's pg_restore, checked as any drill, and what 18
refuses (here adminpack, removed in PostgreSQL 17) is named per object; a major older than the
backup or not installed is refused before any drill starts."""

from __future__ import annotations

import pytest

from pgvault import sample
from support.cli import clean_env, pgvault
from support.pg_fixtures import pg_majors

pytestmark = pytest.mark.skipif(not {15, 18} <= set(pg_majors()), reason="needs PostgreSQL 15 and 18 installed")


@pytest.fixture
def env15(pg15, tmp_path, age_key):  # type: ignore[no-untyped-def]
    if not pg15.database_exists(sample.DATABASE):
        pg15.load_sample(sample.DATABASE)
    return clean_env(**pg15.env(), PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"), PGVAULT_CLUSTER="pg15",
                     PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
                     PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file))


def _check(report: dict, name: str) -> dict:  # type: ignore[type-arg]
    [c] = [c for c in report["checks"] if c["name"] == name]
    return dict(c)


def test_a_15_backup_rehearses_the_upgrade_to_18(pg15, env15) -> None:  # type: ignore[no-untyped-def]
    db = sample.DATABASE
    pgvault(["backup", "-d", db], env15)
    r = pgvault(["drill", "--major", "18", "--json"], env15, check=False)
    assert r.returncode == 0, str(r)
    report = r.json()["drill"]
    target = report["target"]
    assert target["backup_major"] == 15 and target["server_major"] == 18 and target["upgrade"] is True
    assert target["server_version"].startswith("18.") and "18." in target["pg_restore_version"]
    assert _check(report, f"{db}: restore on PostgreSQL 18")["ok"]
    assert _check(report, f"{db}: row counts")["ok"] and _check(report, f"{db}: constraints")["ok"]
    human = pgvault(["drill", "--major", "18"], env15).stdout
    assert "(PostgreSQL 15 → 18): PASSED" in human, human


def test_what_18_cannot_restore_is_named_per_object(pg15, env15) -> None:  # type: ignore[no-untyped-def]
    legacy = "pgvault_t_legacy"
    pg15.drop_database(legacy)
    pg15.create_database(legacy)
    try:
        # adminpack was removed in PostgreSQL 17: the rehearsal must say so, and still check the rest.
        pg15.psql("CREATE EXTENSION adminpack; CREATE TABLE kept (id int PRIMARY KEY);"
                  " INSERT INTO kept SELECT generate_series(1, 25)", dbname=legacy)
        pgvault(["backup", "-d", legacy], env15)
    finally:
        pg15.drop_database(legacy)
    r = pgvault(["drill", "--major", "18", "--json"], env15, check=False)
    assert r.returncode == 9, str(r)
    report = r.json()["drill"]
    refused = _check(report, f"{legacy}: restore on PostgreSQL 18")
    assert not refused["ok"] and "CREATE EXTENSION IF NOT EXISTS adminpack" in refused["detail"], refused
    assert 'extension "adminpack" is not available' in refused["detail"], refused
    assert _check(report, f"{legacy}: row counts")["ok"]  # the table came through: 25 rows checked


def test_a_major_older_than_the_backup_or_not_installed_is_refused(pg15, env15) -> None:  # type: ignore[no-untyped-def]
    pgvault(["backup", "-d", sample.DATABASE], env15)
    r = pgvault(["drill", "--major", "14"], env15, check=False)
    assert r.returncode == 2 and "older than the backup's PostgreSQL 15" in r.stderr, str(r)
    if 17 not in pg_majors():
        r = pgvault(["drill", "--major", "17"], env15, check=False)
        assert r.returncode == 10, str(r)
        assert "no PostgreSQL 17 server programs" in r.stderr and "postgres.bin_dirs" in r.stderr, str(r)
    r = pgvault(["drill", "--major", "18", "--kind", "physical"], env15, check=False)
    assert r.returncode == 2 and "--major is for logical drills" in r.stderr, str(r)
    # None of these ran a drill: the history is empty.
    assert pgvault(["drill", "list", "--json"], env15).json()["drills"] == []
