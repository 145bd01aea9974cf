"""The local file system, the few ways pgvault writes to it: one home for fsync, atomic writes
and the advisory file locks (``flock``) that keep two pgvault processes out of each other's way.

Not part of :mod:`pgvault.storage` (the repository backends): the WAL spool, restored data
directories, recovery settings and the metrics textfile are local files whatever the repository
is.  Imports only the standard library, so the per-segment ``wal push`` foreground can use it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs, looked up on first use: ``find_library`` runs ``ldconfig -p`` (a child
    process), which every command importing this module would otherwise pay at start-up."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


class TreeSync:
    """Makes everything written below ``root`` durable with one call at the end, however many files.

    Create it *before* the files are written and call :meth:`sync` after.  On Linux that is one
    ``syncfs(2)`` of ``root``'s file system instead of one fsync, and one journal commit, per file
    (PostgreSQL's ``recovery_init_sync_method = syncfs`` does the same at start-up); since Linux 5.8
    it reports every writeback error on that file system since the descriptor was opened, which is
    why it is opened first: nothing written meanwhile can fail silently.  Elsewhere every file and
    directory below ``root`` is fsynced, then ``root``'s parent.  Raises :class:`OSError`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def sync(self) -> None:
        syncfs = _syncfs()
        if syncfs is not None:
            if syncfs(self._fd) != 0:
                import ctypes

                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(self.root))
            return
        for dirpath, _dirnames, filenames in os.walk(self.root, topdown=False):
            for name in filenames:
                path = Path(dirpath) / name
                if not path.is_symlink():
                    fsync_path(path)
            fsync_path(Path(dirpath))
        fsync_path(self.root.parent)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TreeSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def atomic_file(path: Path, *, mode: int | None = None, durable: bool = True) -> Iterator[BinaryIO]:
    """A file to write that replaces ``path`` when the block ends, so that readers see the old or
    the new content, never a part.

    A temporary file in the same directory is written, (``durable``) fsynced, given ``mode``, and
    renamed over ``path``; then (``durable``) the directory is fsynced so the rename survives a
    crash.  On any failure (an exception out of the block included) the temporary file is removed:
    a full disk must not also fill up with half-written files."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
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


def write_atomic(path: Path, data: bytes, *, mode: int | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (see :func:`atomic_file`)."""
    with atomic_file(path, mode=mode, durable=durable) as f:
        f.write(data)


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


def flock(fd: int, *, wait: float | None = None, waiting: Callable[[], None] | None = None) -> bool:
    """Take an exclusive ``flock`` on ``fd``: block (``wait=None``), try once (``0``) or retry for
    ``wait`` seconds; True if taken.  ``waiting`` is called once when the lock is busy, so a
    caller can say what it waits for.  Released when the last descriptor of the open file is
    closed (never ``LOCK_UN``: a child that inherited it would lose it too)."""
    if wait is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            if waiting is not None and not told:
                waiting()
                told = True
            time.sleep(0.1)


@contextmanager
def try_lock_file(path: Path, mode: int = 0o600) -> Iterator[bool]:
    """Yield True while holding an exclusive lock on ``path`` (created with its parents), False if
    another process holds it; either way the descriptor is closed afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        yield flock(fd, wait=0)
    finally:
        os.close(fd)
