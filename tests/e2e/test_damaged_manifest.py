"""One unreadable manifest does not hide the repository: ``list`` shows it as damaged, ``restore
latest`` takes the newest usable backup and says which one it passed over, ``status`` reports it
as a finding, and only asking for that backup by its id fails (exit 6)."""

from __future__ import annotations

from pathlib import Path

from support.cli import clean_env, pgvault
from support.pgcluster import PgCluster

from .conftest import AgeKey


def test_a_damaged_manifest_is_shown_skipped_by_latest_and_refused_by_id(pg_latest: PgCluster, orders_db: str, tmp_path: Path,
                                                                          age_key: AgeKey) -> None:
    repo = tmp_path / "repo"
    env = clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(repo), PGVAULT_CLUSTER="dmg",
                    PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
                    PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file))
    older = pgvault(["backup", "-d", orders_db, "--no-globals", "--json"], env).json()["backup"]["backup_id"]
    pg_latest.psql("INSERT INTO orders SELECT generate_series(101, 150)", dbname=orders_db)
    newer = pgvault(["backup", "-d", orders_db, "--no-globals", "--json"], env).json()["backup"]["backup_id"]
    [manifest] = repo.glob(f"dmg/logical/*/*/{newer}/manifest.json")
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) // 2])  # truncated, as by a disk that filled up during a copy

    listed = pgvault(["list"], env)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(newer))
    assert "damaged" in row and "unreadable" in row, listed.stdout
    assert any(line.startswith(older) and " ok " in line for line in listed.stdout.splitlines()), listed.stdout
    doc = pgvault(["list", "--json"], env).json()
    assert [b["backup_id"] for b in doc["backups"]] == [older]
    assert [(d["backup_id"], d["state"]) for d in doc["damaged"]] == [(newer, "damaged")]

    restored = pgvault(["restore", "latest", "-d", orders_db, "-t", f"{orders_db}_r", "--json"], env)
    assert restored.json()["restore"]["backup_id"] == older
    assert newer in restored.stderr and "skipping" in restored.stderr, restored.stderr
    assert pg_latest.psql("SELECT count(*) FROM orders", dbname=f"{orders_db}_r") == "100"

    by_id = pgvault(["restore", newer, "-d", orders_db, "-t", f"{orders_db}_x"], env, check=False)
    assert by_id.returncode == 6, by_id
    assert f"logical backup {newer} is damaged" in by_id.stderr and "pgvault list" in by_id.stderr
    assert not pg_latest.database_exists(f"{orders_db}_x")

    status = pgvault(["status", "--json", "--no-connect"], env, check=False)
    assert status.returncode in (1, 2), status
    reasons = {r["code"]: r for r in status.json()["reasons"]}
    assert reasons["manifest_damaged"]["level"] == "WARNING" and newer in reasons["manifest_damaged"]["message"]
    assert status.json()["last_logical"]["backup_id"] == older
