"""``restore-cluster --delta``: restore over an existing, stopped data directory, rewriting only the
files that differ from the backup (pgBackRest's ``--delta``).

Exactly as safe as a restore into an empty directory, because nothing old is trusted unless it is
byte for byte what the backup holds:

- the directory must hold a data directory (``PG_VERSION``) with no server running in it, and a
  tablespace location is only touched when that data directory's ``pg_tblspc/<oid>`` link points
  at it (never a live cluster's tablespace that happens to sit at the recorded path);
- ``global/pg_control``, ``backup_label`` and ``tablespace_map`` go first: an interrupted delta
  restore can never be started as the old cluster, nor as a half-restored one (the unpack writes
  pg_control again; a rerun of ``--delta`` finishes the job);
- a relation file is kept only when its size and SHA-256 equal the backup's file list (the bytes
  the backup read; a file written by an incremental chain records the bytes read for the last
  link); every other file is removed and written from the backup; files the backup does not hold
  are removed.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pgvault import log
from pgvault.errors import TargetBusyError, TargetExistsError, UsageError
from pgvault.operations.physical import recovery
from pgvault.operations.physical.unpack import restored_files
from pgvault.repository.file_list import FileEntry

_HASH_BUF = 1 << 20


@dataclass(frozen=True)
class DeltaResult:
    kept: frozenset[str]  # paths (as in the data directory) already right: not written
    kept_bytes: int
    removed: int


def check_target(data_dir: Path, homes: dict[str, Path]) -> None:
    """Refuse what a delta restore must never touch."""
    if not (data_dir / "PG_VERSION").is_file():
        raise TargetExistsError(f"--delta: {data_dir} holds no PG_VERSION, so it is not a data directory",
                                hint="restore into an empty directory, or use --force to empty it")
    if recovery.server_running(data_dir):
        raise TargetBusyError(f"a PostgreSQL server is running in {data_dir}; stop it first")
    for oid, home in homes.items():
        if home.exists() and any(home.iterdir()):
            link = data_dir / "pg_tblspc" / oid
            if not (link.is_symlink() and Path(os.path.realpath(link)) == Path(os.path.realpath(home))):
                raise TargetExistsError(
                    f"--delta: tablespace location {home} is not empty and {data_dir} does not link to it "
                    f"(pg_tblspc/{oid}): it may belong to another cluster",
                    hint="move it with --tablespace NAME=PATH (an empty or new directory)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_BUF):
            h.update(chunk)
    return h.hexdigest()


def prepare(data_dir: Path, homes: dict[str, Path], files: dict[str, FileEntry], *, workers: int = 2) -> DeltaResult:
    """Make ``data_dir`` (and the tablespace locations) hold only files that are already right;
    return which.  The unpack then writes every other file."""
    logger = log.get()
    for name in ("global/pg_control", "backup_label", "tablespace_map"):
        (data_dir / name).unlink(missing_ok=True)
    kept: set[str] = set()
    kept_bytes = 0
    removed = 0
    candidates: list[tuple[Path, str, FileEntry]] = []
    for path, name in list(restored_files(data_dir, homes, skip=())):
        entry = files.get(name)
        if name.startswith("pg_wal/"):
            path.unlink()  # the old cluster's WAL: recovery must not mix it with the backup's
            removed += 1
        elif entry is not None and entry.sha256 is not None and not path.is_symlink() \
                and path.stat().st_size == entry.size:
            candidates.append((path, name, entry))
        else:
            path.unlink()
            removed += 1
    # hashlib releases the GIL: the files are hashed on every core.
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="delta-hash") as pool:
        for (path, name, entry), digest in zip(candidates, pool.map(lambda c: _sha256(c[0]), candidates)):
            if digest == entry.sha256:
                kept.add(name)
                kept_bytes += entry.size
            else:
                path.unlink()
                removed += 1
    logger.info("--delta: %d file(s) (%d bytes) already as in the backup are kept, %d removed", len(kept), kept_bytes,
                removed)
    return DeltaResult(frozenset(kept), kept_bytes, removed)


def refuse_without_file_list(backup_id: str) -> UsageError:
    return UsageError(f"--delta needs the backup's file list, and base backup {backup_id} has none "
                      "(taken by an older pgvault)", hint="restore with --force instead (empties the directory)")
