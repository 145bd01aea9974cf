"""The local file system, the few ways pgvault writes to it: one home for fsync and atomic writes.

Not part of :mod:`pgvault.storage` (the repository backends): the WAL spool, restored data
directories, recovery settings and the metrics textfile are local files whatever the repository
is.  Imports only the standard library, so the per-segment ``wal push`` foreground can use it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, never a part.

    A temporary file in the same directory is written, (``durable``) fsynced, given ``mode``, and
    renamed over ``path``; then (``durable``) the directory is fsynced so the rename survives a
    crash.  On any failure the temporary file is removed: a full disk must not also fill up with
    half-written files."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_path(path.parent)


def file_sha256(path: Path) -> tuple[str, int]:
    """(sha256 hex digest, size) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


__all__ = ["fsync_path", "write_atomic", "file_sha256"]
