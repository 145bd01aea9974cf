"""Tests that need the third-party sample databases (Pagila, Chinook) from ``../shared/testdata``.

Those files cannot be copied into the repository, so a fresh clone has none: its tests skip, saying
so.  CI has them, and there a missing directory must not quietly turn into skips:
``PGVAULT_REQUIRE_TESTDATA=1`` (set by scripts/test.sh under ``CI=true``, like
``PGVAULT_REQUIRE_PG``) makes it a failure.  Tests that only need "some realistic database" use the
generated one instead (``sample_db`` fixture, ``PgCluster.load_sample``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.pgcluster import testdata_dir

REQUIRE_ENV = "PGVAULT_REQUIRE_TESTDATA"

PAGILA = ("pagila/pagila-schema.sql", "pagila/pagila-data.sql")
CHINOOK = ("chinook/Chinook_PostgreSql_AutoIncrementPKs.sql",)


def require_testdata(*files: str) -> Path:
    """The testdata directory, if it holds ``files``; else skip the test (fail under
    ``PGVAULT_REQUIRE_TESTDATA``)."""
    root = testdata_dir()
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        msg = ("needs ../shared/testdata next to the repository (or $PGVAULT_TESTDATA), third-party data a fresh "
               f"clone does not have; missing: {', '.join(str(root / f) for f in missing)}")
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"{msg} ({REQUIRE_ENV} is set)", pytrace=False)
        pytest.skip(msg)
    return root
