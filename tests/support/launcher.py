"""Running pgvault as the ``postgres`` OS user, the way archive_command / restore_command do.

The server runs those commands as its own OS user, which may not be able to enter this checkout
(CI clones under /root). scripts/setup.sh builds a runtime venv under /var/cache/pgvault that it
can execute; here we copy the *current* src/ next to a launcher script and put it first on
PYTHONPATH, so the server runs exactly the code under test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml

from support.pgcluster import PG_OS_USER, postgres_tmpdir

ROOT = Path(__file__).resolve().parents[2]


def _runtime_python() -> Path:
    cache = Path(os.environ.get("PGVAULT_CACHE", "/var/cache/pgvault"))
    python = cache / "runtime-venv" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run scripts/setup.sh")
    return python


@pytest.fixture(scope="session")
def pgvault_launcher() -> Iterator[Path]:
    """An executable ``pgvault`` that the postgres OS user can run."""
    base = postgres_tmpdir("pgvault-launcher-")
    shutil.copytree(ROOT / "src" / "pgvault", base / "src" / "pgvault", ignore=shutil.ignore_patterns("__pycache__"))
    launcher = base / "pgvault"
    launcher.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={base / 'src'} PYTHONDONTWRITEBYTECODE=1 exec {_runtime_python()} -m pgvault \"$@\"\n"
    )
    launcher.chmod(0o755)
    for p in base.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    launcher.chmod(0o755)
    yield launcher
    shutil.rmtree(base, ignore_errors=True)


def server_config(directory: Path, settings: Mapping[str, object]) -> Path:
    """A pgvault YAML config readable by the postgres OS user (no secrets in it)."""
    path = directory / "pgvault.yaml"
    nested: dict[str, object] = {}
    for dotted, value in settings.items():
        node = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(nested))
    path.chmod(0o644)
    return path


def postgres_writable_dir(prefix: str) -> Path:
    """A directory the postgres OS user owns (a local repository the archiver writes to)."""
    path = postgres_tmpdir(prefix)
    if os.geteuid() == 0:
        shutil.chown(path, PG_OS_USER, PG_OS_USER)
    return path


__all__ = ["pgvault_launcher", "server_config", "postgres_writable_dir"]
