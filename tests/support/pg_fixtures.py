"""pytest fixtures for real PostgreSQL servers (see support.pgcluster.PgCluster).

Fixtures:

- ``pg_cluster`` (session): one running cluster per available major, parametrized (ids ``pg15``,
  ``pg18``); a test using it runs once per major.  Shared by the whole session: don't stop it, and
  leave it as you found it (use ``fresh_db`` or your own uniquely named databases).
- ``pg15`` / ``pg_latest`` (session): the same shared cluster of major 15 / of the newest major.
- ``fresh_db`` (function): name of a new empty database in ``pg_cluster`` (dropped afterwards).
- ``make_pg_cluster`` (function): ``make_pg_cluster(major=None, **create_kwargs) -> PgCluster`` makes
  private clusters (default major: the newest), destroyed after the test -- for restores, PITR, and
  anything that stops or reconfigures a server.
- ``sample_db`` (session): name of the database in ``pg_cluster`` holding pgvault's generated sample
  (``pgvault.sample``, scale 1) -- the default "realistic database"; don't modify it.
  ``sample_db_large``: the same at a larger scale, for faults that need a longer restore.
- ``pagila`` (session): name of a database in ``pg_cluster`` holding Pagila from ../shared/testdata;
  skipped when that is missing (failed under ``PGVAULT_REQUIRE_TESTDATA``, see support/testdata.py).

Environment: ``PGVAULT_TEST_PG_MAJORS="15,18"`` restricts the majors; ``PGVAULT_REQUIRE_PG=1`` turns
"no PostgreSQL server programs" into a failure instead of a skip (and then the wanted majors default
to 15 and 18, so a missing one fails too); ``PGVAULT_KEEP_CLUSTERS=1`` stops but does not delete
clusters at the end, for post-mortems.  Tests using these fixtures get the ``pg`` marker.
"""

from __future__ import annotations

import os
import pwd
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgvault import sample
from pgvault.config import environment_value
from pgvault.pg.bindir import available_bindirs
from support.pgcluster import PgCluster, postgres_tmpdir
from support.testdata import PAGILA, require_testdata

DEFAULT_MAJORS = (15, 18)
PG_FIXTURES = {"pg_cluster", "pg15", "pg_latest", "fresh_db", "make_pg_cluster", "sample_db", "sample_db_large",
               "pagila"}


def _add_setup_pg18_bindir() -> None:
    """Let plain ``pytest`` (without scripts/env.sh) find the PostgreSQL 18 that scripts/setup.sh unpacked."""
    marker = Path(os.environ.get("PGVAULT_CACHE") or "/var/cache/pgvault") / "pg18.bindir"
    try:
        bindir = marker.read_text().strip()
    except OSError:
        return
    dirs = list(environment_value("postgres.bin_dirs"))
    if bindir and bindir not in dirs:
        os.environ["PGVAULT_POSTGRES_BIN_DIRS"] = os.pathsep.join([*dirs, bindir])


_add_setup_pg18_bindir()


def _require_pg() -> bool:
    return os.environ.get("PGVAULT_REQUIRE_PG", "") not in ("", "0")


def _wanted_majors() -> list[int] | None:
    raw = os.environ.get("PGVAULT_TEST_PG_MAJORS", "").strip()
    if not raw:
        return None
    return sorted({int(part) for part in raw.replace(" ", "").split(",") if part})


def _server_majors() -> set[int]:
    return {b.major for b in available_bindirs(environment_value("postgres.bin_dirs")) if (b.path / "postgres").exists() and (b.path / "initdb").exists()}


def pg_majors() -> list[int]:
    """Majors whose server programs (initdb, postgres) are installed, ascending, restricted by
    ``PGVAULT_TEST_PG_MAJORS`` when set."""
    wanted = _wanted_majors()
    found = _server_majors()
    return sorted(found if wanted is None else found & set(wanted))


def _check_major(major: int) -> None:
    """Skip/fail unless PostgreSQL ``major`` can be run here."""
    wanted = _wanted_majors()
    if wanted is not None and major not in wanted:
        pytest.skip(f"PostgreSQL {major} excluded by PGVAULT_TEST_PG_MAJORS={os.environ['PGVAULT_TEST_PG_MAJORS']}")
    if major not in _server_majors():
        _unavailable(f"no PostgreSQL {major} server programs found (run scripts/setup.sh, source scripts/env.sh)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root but there is no 'postgres' OS user to run PostgreSQL as")


def _param_majors() -> list[int | None]:
    if _require_pg():  # test exactly what is wanted; a missing major fails in the fixture
        return list(_wanted_majors() or DEFAULT_MAJORS)
    return list(pg_majors()) or [None]


def _unavailable(msg: str) -> None:
    if _require_pg():
        pytest.fail(f"{msg} (PGVAULT_REQUIRE_PG is set)", pytrace=False)
    pytest.skip(msg)


class _ClusterPool:
    """The session's shared clusters, one per major, made on first use."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.clusters: dict[int, PgCluster] = {}
        self.failed: dict[int, str] = {}

    def get(self, major: int) -> PgCluster:
        if major in self.clusters:
            return self.clusters[major]
        if major in self.failed:
            pytest.fail(f"PostgreSQL {major} test cluster could not be made earlier:\n{self.failed[major]}",
                        pytrace=False)
        _check_major(major)
        if self.root is None:
            self.root = postgres_tmpdir("pgvault-pg-")
        try:
            cluster = PgCluster.create(major, self.root / f"pg{major}")
        except Exception as e:
            self.failed[major] = str(e)
            raise
        self.clusters[major] = cluster
        return cluster

    def close(self) -> None:
        keep = os.environ.get("PGVAULT_KEEP_CLUSTERS", "") not in ("", "0")
        errors = []
        for cluster in self.clusters.values():
            try:
                if keep:
                    cluster.stop()
                else:
                    cluster.destroy()
            except Exception as e:  # noqa: BLE001 - stop the others regardless
                errors.append(f"{cluster!r}: {e}")
        self.clusters.clear()
        if self.root is not None and not keep:
            shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise RuntimeError("could not stop test clusters:\n" + "\n".join(errors))


@pytest.fixture(scope="session")
def _pg_pool() -> Iterator[_ClusterPool]:
    pool = _ClusterPool()
    try:
        yield pool
    finally:
        pool.close()


def _major_id(major: int | None) -> str:
    return f"pg{major}" if major is not None else "nopg"


@pytest.fixture(scope="session", params=_param_majors(), ids=_major_id)
def pg_cluster(request: pytest.FixtureRequest, _pg_pool: _ClusterPool) -> PgCluster:
    """A running cluster shared by the session, one per major (parametrized: pg15, pg18)."""
    major = request.param
    if major is None:
        _unavailable("no PostgreSQL server programs found (run scripts/setup.sh, source scripts/env.sh)")
    return _pg_pool.get(major)


@pytest.fixture(scope="session")
def pg15(_pg_pool: _ClusterPool) -> PgCluster:
    """The session's shared PostgreSQL 15 cluster."""
    return _pg_pool.get(15)


@pytest.fixture(scope="session")
def pg_latest(_pg_pool: _ClusterPool) -> PgCluster:
    """The session's shared cluster of the newest available major."""
    majors = pg_majors()
    if not majors:
        _unavailable("no PostgreSQL server programs found (run scripts/setup.sh, source scripts/env.sh)")
    return _pg_pool.get(majors[-1])


@pytest.fixture
def fresh_db(pg_cluster: PgCluster) -> Iterator[str]:
    """Name of a new, empty database in ``pg_cluster``; dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_cluster.create_database(name)
    yield name
    if pg_cluster.is_running():
        pg_cluster.drop_database(name)


@pytest.fixture
def make_pg_cluster() -> Iterator[Callable[..., PgCluster]]:
    """Factory for private clusters: ``make_pg_cluster(major=None, **PgCluster.create kwargs)``.

    Each gets its own base dir; all are destroyed after the test.
    """
    made: list[tuple[PgCluster | None, Path]] = []

    def make(major: int | None = None, **kwargs: object) -> PgCluster:
        majors = pg_majors()
        if major is None:
            if not majors:
                _unavailable("no PostgreSQL server programs found (run scripts/setup.sh, source scripts/env.sh)")
            major = majors[-1]
        _check_major(major)
        base = postgres_tmpdir(f"pgvault-pg{major}-")
        made.append((None, base))
        cluster = PgCluster.create(major, base / "cluster", **kwargs)  # type: ignore[arg-type]
        made[-1] = (cluster, base)
        return cluster

    yield make
    keep = os.environ.get("PGVAULT_KEEP_CLUSTERS", "") not in ("", "0")
    for cluster, base in reversed(made):
        if cluster is not None:
            if keep:
                cluster.stop()
                continue
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_db(pg_cluster: PgCluster) -> str:
    """pgvault's generated sample database (``pgvault.sample``, scale 1), once per cluster: the
    default data of these tests, since it needs nothing outside the repository. Tests must not
    modify it (restore it into ``scratch_db`` and change that)."""
    name = sample.DATABASE
    if not pg_cluster.database_exists(name):
        pg_cluster.load_sample(name)
    return name


#: Scale of ``sample_db_large``: its uncompressed dump (~4 MB) overflows the 2 MiB scratch tmpfs
#: of the disk-full test, and a restore lasts long enough to be interrupted on purpose.
LARGE_SCALE = 8


@pytest.fixture(scope="session")
def sample_db_large(pg_cluster: PgCluster) -> str:
    """The sample at scale ``LARGE_SCALE`` (about 40,000 rows), once per cluster, for tests whose
    fault needs a restore that takes a while or a dump bigger than a small disk. Don't modify it."""
    name = f"{sample.DATABASE}_large"
    if not pg_cluster.database_exists(name):
        pg_cluster.load_sample(name, scale=LARGE_SCALE)
    return name


@pytest.fixture(scope="session")
def pagila(pg_cluster: PgCluster) -> str:
    """A database loaded with Pagila, once per cluster, for the tests that want a schema written by
    someone else; skipped without ../shared/testdata (support/testdata.py). Tests must not modify it."""
    require_testdata(*PAGILA)
    name = "pagila"
    if not pg_cluster.database_exists(name):
        pg_cluster.create_database(name)
        pg_cluster.load_pagila(name)
        pg_cluster.psql("ANALYZE", dbname=name)
    return name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PG_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pg)
