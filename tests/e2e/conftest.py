"""Fixtures for end-to-end tests through the real CLI."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.archiving import ArchivingCluster, make_archiving_cluster
from support.cli import clean_env


@dataclass(frozen=True)
class AgeKey:
    identity_file: Path
    recipient: str
    secret: str


def make_age_key(directory: Path) -> AgeKey:
    """A fresh age key pair made by the stock ``age-keygen``."""
    path = directory / f"key-{uuid.uuid4().hex[:6]}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    text = path.read_text()
    recipient = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("# public key:"))
    secret = next(ln.strip() for ln in text.splitlines() if ln.startswith("AGE-SECRET-KEY-"))
    return AgeKey(path, recipient, secret)


@pytest.fixture(scope="session")
def age_key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    return make_age_key(tmp_path_factory.mktemp("age"))


@pytest.fixture
def scratch_db(pg_cluster) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A unique database name, dropped after the test if it was created."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    pg_cluster.drop_database(name)


@pytest.fixture
def orders_db(pg_latest) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A small database on the newest major: ``orders(id int PRIMARY KEY)`` with ids 1..100.
    Dropped afterwards, with ``<name>_r`` (where tests restore it)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(name)
    pg_latest.psql("CREATE TABLE orders(id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 100)", dbname=name)
    yield name
    pg_latest.drop_database(name)
    pg_latest.drop_database(f"{name}_r")


@pytest.fixture
def local_env(pg_cluster, tmp_path: Path, age_key: AgeKey) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Environment for the CLI: this test's cluster, a fresh local repository, age encryption."""
    return clean_env(
        **pg_cluster.env(),
        PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"),
        PGVAULT_CLUSTER=f"pg{pg_cluster.major}",
        PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
        PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file),
    )


def table_counts(cluster, dbname: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Exact row counts of every ordinary table, straight from the server."""
    out = cluster.psql(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog','information_schema') ORDER BY 1",
        dbname=dbname,
    )
    counts = {}
    for name in out.splitlines():
        counts[name.replace('"', "")] = int(cluster.psql(f"SELECT count(*) FROM ONLY {name}", dbname=dbname))
    return counts


@pytest.fixture(params=["local", "s3"])
def repo_kind(request: pytest.FixtureRequest) -> dict[str, str] | None:
    """A repository for :func:`archiving`'s ``s3=``: None (local), or a bucket on SeaweedFS."""
    if request.param == "local":
        return None
    bucket = request.getfixturevalue("s3_bucket")
    seaweed = request.getfixturevalue("seaweed")
    return {"url": f"s3://{bucket}/prod", "endpoint": seaweed.endpoint_url, "AWS_ACCESS_KEY_ID": seaweed.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": seaweed.region}


@pytest.fixture
def archiving(make_pg_cluster, pgvault_launcher: Path, age_key: AgeKey) -> Iterator[Callable[..., ArchivingCluster]]:  # type: ignore[no-untyped-def]
    """Factory for servers archiving into a pgvault repository (support/archiving.py):
    ``archiving(major, s3=None, cluster_name="pitr", settings=None)``; restored copies are stopped
    and everything removed after the test."""
    made: list[ArchivingCluster] = []

    def make(major: int | None, **kw: Any) -> ArchivingCluster:
        a = make_archiving_cluster(make_pg_cluster, pgvault_launcher, age_key, major=major, **kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()
