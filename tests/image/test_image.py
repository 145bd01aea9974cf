"""pgvault's container image (deploy/image), run for real: what it holds, and a backup, restore and
logical drill done inside it against a test server and SeaweedFS on the host (``--network host``);
the server variant archives WAL with pgvault and fetches it back."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pgvault.sample import Sample
from support.image import podman_run
from support.pgcluster import free_port

from ..e2e.conftest import make_age_key, table_counts

pytestmark = pytest.mark.s3

ORGANIZATIONS = Sample().counts()["organizations"]


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_image_holds_pgvault_postgresql_14_to_18_age_and_zstd_and_runs_as_non_root(tool_image: str) -> None:
    script = ("id -u; pgvault --version; for m in 14 15 16 17 18; do /opt/postgresql/$m/bin/pg_dump --version;"
              " /opt/postgresql/$m/bin/initdb --version; done; age --version; zstd --version;"
              " echo \"bin_dirs=$PGVAULT_POSTGRES_BIN_DIRS\"")
    out = _ok(podman_run(tool_image, ["-c", script], entrypoint="sh")).stdout
    lines = out.splitlines()
    assert lines[0] != "0", "the image must not run as root"
    assert re.fullmatch(r"pgvault \d+\.\d+\.\d+\S*", lines[1]), lines[1]
    for major in (14, 15, 16, 17, 18):
        assert re.search(rf"^pg_dump \(PostgreSQL\) {major}\.\d+$", out, re.M), out
        assert re.search(rf"^initdb \(PostgreSQL\) {major}\.\d+$", out, re.M), out  # logical drills start a server
        assert f"/opt/postgresql/{major}/bin" in lines[-1]
    assert re.search(r"^v?1\.\d+\.\d+$", out, re.M), "age --version"
    assert "Zstandard CLI" in out
    # The entrypoint is pgvault itself.
    assert _ok(podman_run(tool_image, ["--version"])).stdout.startswith("pgvault ")


@pytest.fixture
def readable_age_key(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An age key in a directory the image's non-root user can read (a Kubernetes secret volume)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    key = make_age_key(keys)
    keys.chmod(0o755)
    key.identity_file.chmod(0o644)
    return key


def test_backup_restore_and_drill_inside_the_image(tool_image, pg_cluster, sample_db, seaweed, s3_bucket,  # type: ignore[no-untyped-def]
                                                   readable_age_key) -> None:
    key = readable_age_key
    env = {
        **pg_cluster.env(),  # 127.0.0.1 + password: reached through --network host
        "AWS_ACCESS_KEY_ID": seaweed.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
        "AWS_DEFAULT_REGION": seaweed.region,
        "PGVAULT_REPOSITORY_URL": f"s3://{s3_bucket}/image",
        "PGVAULT_REPOSITORY_S3_ENDPOINT_URL": seaweed.endpoint_url,
        "PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE": "true",
        "PGVAULT_CLUSTER": f"pg{pg_cluster.major}",
        "PGVAULT_ENCRYPTION_AGE_RECIPIENTS": key.recipient,
        "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": "/keys/" + key.identity_file.name,
    }
    volumes = [(key.identity_file.parent, "/keys:ro")]

    backup = _ok(podman_run(tool_image, ["backup", "-d", sample_db, "--json"], env=env, volumes=volumes))
    manifest = json.loads(backup.stdout)["backup"]
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.endswith(f"{manifest['backup_id']}/manifest.json") for k in keys), keys
    assert not any(k.endswith(".dump.zst") for k in keys) and any(".age" in k for k in keys), keys  # encrypted

    target = f"t_{uuid.uuid4().hex[:10]}"
    try:
        restore = _ok(podman_run(tool_image, ["restore", manifest["backup_id"], "-d", sample_db, "-t", target,
                                              "--json"], env=env, volumes=volumes))
        assert json.loads(restore.stdout)["restore"]["verified"] is True
        assert table_counts(pg_cluster, target) == table_counts(pg_cluster, sample_db)
    finally:
        pg_cluster.drop_database(target)

    smoke = [{"name": "organizations", "sql": "SELECT count(*) FROM organizations", "min": ORGANIZATIONS,
              "database": sample_db}]
    drill = _ok(podman_run(tool_image, ["drill", "--json"], env={**env, "PGVAULT_DRILL_SMOKE_QUERIES": json.dumps(smoke)},
                           volumes=volumes))
    report = json.loads(drill.stdout)["drill"]
    assert report["ok"] and report["backup_id"] == manifest["backup_id"], report
    assert report["target"]["kind"] == "scratch server"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks[f"{sample_db}: row counts"]["ok"] and checks["smoke: organizations"]["ok"], checks
    # Secrets travel in podman's environment, never in its argv (which `ps` shows).
    assert seaweed.secret_key not in " ".join(map(str, drill.args)) and pg_cluster.password not in " ".join(
        map(str, drill.args))


def test_server_variant_archives_wal_with_pgvault_and_fetches_it_back(server_image, seaweed, s3_bucket) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        "PGPORT": str(port),
        "AWS_ACCESS_KEY_ID": seaweed.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
        "AWS_DEFAULT_REGION": seaweed.region,
        "PGVAULT_REPOSITORY_URL": f"s3://{s3_bucket}/wal",
        "PGVAULT_REPOSITORY_S3_ENDPOINT_URL": seaweed.endpoint_url,
        "PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE": "true",
        "PGVAULT_CLUSTER": "server-image",
    }
    started = _ok(podman_run(server_image, ["-c", "archive_timeout=0"], env=env, options=["--detach"]))
    container = started.stdout.strip()

    def psql(sql: str) -> str:
        return _ok(subprocess.run(["podman", "exec", container, "/opt/postgresql/18/bin/psql", "-h", "/tmp",
                                   "-p", str(port), "-Atc", sql], capture_output=True, text=True, timeout=60)).stdout

    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["podman", "exec", container, "/opt/postgresql/18/bin/pg_isready", "-h", "/tmp",
                              "-p", str(port)], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, subprocess.run(["podman", "logs", container], capture_output=True,
                                                               text=True).stderr
            time.sleep(0.5)
        assert _ok(subprocess.run(["podman", "exec", container, "id", "-un"], capture_output=True, text=True)
                   ).stdout.strip() == "postgres"
        segment = psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i; "
                       "SELECT pg_walfile_name(pg_switch_wal())").splitlines()[-1]
        deadline = time.monotonic() + 60
        while psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment:
            assert time.monotonic() < deadline, psql("SELECT * FROM pg_stat_archiver")
            time.sleep(0.5)
        keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
        assert any(segment in k for k in keys), keys
        # What a restore_command = 'pgvault wal fetch %f %p' does, in the same container.
        fetched = _ok(subprocess.run(["podman", "exec", container, "sh", "-c",
                                      f"pgvault wal fetch {segment} /tmp/{segment} && stat -c %s /tmp/{segment}"],
                                     capture_output=True, text=True, timeout=120))
        assert fetched.stdout.strip().splitlines()[-1] == str(16 * 1024 * 1024)
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "5", container], capture_output=True, timeout=120)

