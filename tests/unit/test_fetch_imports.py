"""What a "not found" from ``wal fetch`` imports (issue 12): restore_command runs one process per
file and PostgreSQL waits for each; most of a short replay's calls are answers of "not found",
which need the settings, the storage and two small reads of the repository, not the stream
pipeline (zstandard, pyrage), the YAML loader, the object-lock policy, the prefetcher or another
command's module.  Guarded without timing: a child process makes the call and lists what it
imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgvault.repository.cluster import ensure_cluster
from pgvault.storage.local import LocalStorage

SRC = Path(__file__).resolve().parents[2] / "src"
SYSID = "7300000000000000042"

# Never imported for a "not found" from a local repository configured like a restored server's
# restore_command (environment only, no recipients; restore-cluster's fetch_environment).
NOT_FOR_A_MISS = (
    "zstandard", "pyrage", "yaml", "psycopg", "boto3", "botocore", "ctypes",
    "pgvault.pipeline.files", "pgvault.pipeline.encrypt",
    "pgvault.policy.object_lock", "pgvault.policy.retention",
    "pgvault.pg.runner",
    "pgvault.cli.backup", "pgvault.cli.catalog", "pgvault.cli.restore_cluster", "pgvault.cli.metrics",
)


@pytest.fixture
def restoring(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    ensure_cluster(LocalStorage(repo), "main", system_identifier=SYSID, server_major=15, wal_segment_size=16 << 20)
    data = tmp_path / "pgdata"
    (data / "global").mkdir(parents=True)
    (data / "pg_wal").mkdir()
    (data / "global" / "pg_control").write_bytes(int(SYSID).to_bytes(8, sys.byteorder) + bytes(8184))
    identity = tmp_path / "key.txt"
    identity.write_text("# an identity file: a miss never reads it\n")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SRC), "PGVAULT_REPOSITORY_URL": str(repo),
           "PGVAULT_CLUSTER": "main", "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(identity)}
    return data, env


def _imported(data: Path, env: dict[str, str], name: str, *watch: str) -> tuple[int, list[str]]:
    code = ("import sys; from pgvault.entry import main; rc = main(); "
            f"print(rc, sorted(m for m in {watch!r} if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, "wal", "fetch", name, "pg_wal/RECOVERYXLOG"], cwd=data,
                         env=env, capture_output=True, text=True, check=False)
    rc, _, mods = out.stderr.strip().splitlines()[-1].partition(" ")
    assert "is not in the archive" in out.stderr, out
    return int(rc), eval(mods)  # noqa: S307 - our own child's repr of a list of module names


def test_a_missing_history_file_imports_only_what_the_answer_needs(restoring: tuple[Path, dict[str, str]]) -> None:
    data, env = restoring
    rc, heavy = _imported(data, env, "00000002.history", *NOT_FOR_A_MISS, "pgvault.operations.archive.background")
    assert (rc, heavy) == (1, [])


def test_a_missing_segment_imports_only_what_the_answer_needs(restoring: tuple[Path, dict[str, str]]) -> None:
    data, env = restoring
    # With prefetching off: on, the prefetcher's own module is needed (it is started) and is light too.
    rc, heavy = _imported(data, env | {"PGVAULT_RESTORE_PREFETCH": "0"}, "000000010000000000000003", *NOT_FOR_A_MISS)
    assert (rc, heavy) == (1, [])


def test_a_full_fetch_still_has_the_pipeline(restoring: tuple[Path, dict[str, str]]) -> None:
    # The other side of the guard: the lazy names resolve, and decoding imports what it needs.
    code = ("import pgvault.pipeline as p, sys; assert 'pgvault.pipeline.files' not in sys.modules; "
            "p.read_stream, p.open_writer, p.load_identities; "
            "print(sorted(m for m in ('zstandard', 'pyrage', 'pgvault.pipeline.files') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=restoring[1], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['pgvault.pipeline.files', 'pyrage']"  # zstandard: when a zstd stage is made
