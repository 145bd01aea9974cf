"""Issue 8 item 6 through the CLI: a base backup started as root into a fresh local repository,
while the server archives as postgres; afterwards postgres uses the repository normally."""

from __future__ import annotations

import os
import shutil

import pytest

from support.cli import pgvault

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as root and as postgres")


def test_basebackup_as_root_leaves_a_repository_postgres_can_use(archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(None)
    repo = a.work / "repo"
    shutil.rmtree(repo)  # fresh: the first writer creates it (root, or the archiver as postgres)
    # As root, as an operator would: it must not leave root-owned files behind, and the archiver
    # (postgres) must be able to write the WAL the backup waits for.
    backup = pgvault(["basebackup", "--json", "--archive-timeout", "60"], a.env()).json()["backup"]
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [repo, *repo.rglob("*")]}
    assert owners == {(repo.stat().st_uid, repo.stat().st_gid)} and repo.stat().st_uid != 0, owners
    # Now the postgres OS user: list, verify and archiving all work on what root wrote.
    listed = a.run_as_postgres(["list", "--json"])
    assert backup["backup_id"] in listed.stdout
    verified = a.run_as_postgres(["verify", "--all"], check=False)
    assert verified.returncode == 0, verified.stderr
    a.switch_and_wait()
    a.run_as_postgres(["basebackup", "--json", "--archive-timeout", "60"])
