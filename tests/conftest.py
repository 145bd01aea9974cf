"""Shared pytest configuration: the real-server fixture plugins (PostgreSQL clusters, SeaweedFS S3,
pgvault's container image)."""

pytest_plugins = ["support.pg_fixtures", "support.s3_fixtures", "support.launcher", "support.image"]
