"""Point-in-time recovery through ``pgvault restore-cluster`` against real servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.archiving import ArchivingCluster, make_archiving_cluster
from support.pg_fixtures import pg_majors

from .conftest import AgeKey


@pytest.fixture
def archiving(make_pg_cluster, pgvault_launcher: Path, age_key: AgeKey, request):  # type: ignore[no-untyped-def]
    made: list[ArchivingCluster] = []

    def make(major: int | None, **kw: object) -> ArchivingCluster:
        a = make_archiving_cluster(make_pg_cluster, pgvault_launcher, age_key, major=major, **kw)  # type: ignore[arg-type]
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_restore_to_end_of_archive(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major)
    a.cluster.psql("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 1000)")
    a.basebackup()
    a.cluster.psql("INSERT INTO t SELECT generate_series(1001, 2000)")
    a.switch_and_wait()
    r, restored = a.restore()
    doc = r.json()
    assert doc["recovery"]["state"] == "promoted", doc
    restored.wait_primary()
    assert restored.query("SELECT count(*) FROM t") == "2000"
    # The restored copy does not archive into the production repository.
    assert restored.query("SHOW archive_mode") == "off"
