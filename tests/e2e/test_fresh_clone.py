"""The README's two commands on a fresh clone, where nothing lies next to the repository.

Our own checkout sits beside ``../shared`` (the third-party Pagila and Chinook databases), which
nobody who clones pgvault from its public home has.  So the repository's tracked files are copied
to a directory whose parent has no ``shared``, and there:

* ``scripts/demo.sh`` runs start to finish (on the generated sample database);
* ``scripts/test.sh`` skips the tests that need ``../shared/testdata``, saying why -- and fails them
  under ``CI=true``, where a missing ``../shared`` must not pass quietly.

The copy reuses this machine's installation (``PGVAULT_SKIP_SETUP=1``, the venv linked in, the
copy's own ``src`` first on ``PYTHONPATH``): what is proven is that the *repository* is complete,
not again that scripts/setup.sh installs packages.  The files are those git tracks (``git ls-files``)
as they are in the working tree, so a file someone forgot to add fails here as it would on a clone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support.pg_fixtures import pg_majors

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.pg


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        msg = f"cannot list the repository's files with git ({e}): the fresh-clone check needs a git checkout"
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return [f for f in out.decode().split("\0") if f]


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files copied to ``<tmp>/nothing-beside/pgvault``, with this machine's venv."""
    if not pg_majors():
        pytest.skip("no PostgreSQL server programs found (run scripts/setup.sh, source scripts/env.sh)")
    repo = tmp_path_factory.mktemp("fresh") / "nothing-beside" / "pgvault"
    for name in _tracked_files():
        src = ROOT / name
        if src.is_file():  # deleted in the working tree, not yet in a commit: not on a clone either
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    (repo / ".venv").symlink_to(ROOT / ".venv")
    assert not (repo.parent / "shared").exists()
    return repo


def _env(repo: Path, **extra: str) -> dict[str, str]:
    # Nothing of this session's configuration leaks in (PGVAULT_TESTDATA would point back at
    # ../shared); scripts/env.sh rebuilds PATH and PGVAULT_POSTGRES_BIN_DIRS as on a new shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGVAULT_", "AWS_", "PYTEST", "CI"))}
    # COLUMNS: pytest cuts its summary lines to the terminal's width, and the reasons are long.
    env.update(PGVAULT_SKIP_SETUP="1", PYTHONPATH=str(repo / "src"), PYTHONDONTWRITEBYTECODE="1", COLUMNS="400", **extra)
    return env


def _run(repo: Path, script: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run(["bash", str(repo / "scripts" / script), *args], cwd=repo, env=_env(repo, **extra),
                          capture_output=True, text=True, timeout=900, check=False)
    print(f"{script} {' '.join(args)}: exit {proc.returncode} after {time.monotonic() - started:.1f}s")
    return proc


def test_the_copy_runs_its_own_code(fresh_clone: Path) -> None:
    python = fresh_clone / ".venv" / "bin" / "python"
    out = subprocess.run([str(python), "-c", "import pgvault, sys; print(pgvault.__file__)"], env=_env(fresh_clone),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out).is_relative_to(fresh_clone / "src"), out


def test_demo_runs_without_shared(fresh_clone: Path) -> None:
    proc = _run(fresh_clone, "demo.sh")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "shared/testdata" not in output, output[-3000:]
    assert "row counts verified" in proc.stdout and "==> done" in proc.stdout, proc.stdout[-3000:]
    assert any((fresh_clone / "demo" / "repo").rglob("manifest.json"))


def test_tests_needing_shared_skip_with_the_reason_and_fail_under_ci(fresh_clone: Path) -> None:
    # One major keeps this to one throwaway cluster per run.
    args = ["tests/integration/test_pgcluster.py", "-k", "pagila or chinook", "-rs"]
    major = str(max(pg_majors()))
    skipped = _run(fresh_clone, "test.sh", *args, PGVAULT_TEST_PG_MAJORS=major)
    assert skipped.returncode == 0, skipped.stdout[-4000:] + skipped.stderr[-2000:]
    assert "2 skipped" in skipped.stdout and "../shared/testdata" in skipped.stdout, skipped.stdout[-4000:]
    failed = _run(fresh_clone, "test.sh", *args, PGVAULT_TEST_PG_MAJORS=major, CI="true")
    assert failed.returncode == 1, failed.stdout[-4000:] + failed.stderr[-2000:]
    assert "2 failed" in failed.stdout and "PGVAULT_REQUIRE_TESTDATA is set" in failed.stdout, failed.stdout[-4000:]

