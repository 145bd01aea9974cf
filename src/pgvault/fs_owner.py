"""Who owns what a root process creates in a directory it does not own (the WAL spool).

``wal push`` and ``wal fetch`` are PostgreSQL's commands and run as the data directory's owner;
an operator may also run them by hand, often as root (containers).  What such a run creates in the
spool below the data directory (``PGDATA/pg_wal/pgvault``, or ``archive.spool_dir``: directories,
the pusher's lock and records, the fast paths' index, the prefetched segments) would be root's, and
the next ``archive_command`` (postgres) could no longer take the lock or write a record: archiving
stalls.  So, as the local repository does (storage/local.py): as root, a new file or directory
takes the owner of the nearest existing directory above it, unless that one is root's.

Imports only ``os``: the fast paths of ``wal push`` / ``wal fetch`` (operations/archive/confirm.py,
prefetched.py) use it before anything else is imported.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not ``from typing``: the fast paths must not import it
if TYPE_CHECKING:
    StrPath = str | os.PathLike[str]


def owner_for_new(path: StrPath) -> tuple[int, int] | None:
    """As root: the (uid, gid) something created at ``path`` is given, that of the nearest existing
    directory above it; None when we are not root or that directory is root's (nothing to change)."""
    if os.geteuid() != 0:
        return None
    d = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            st = os.stat(d)
            break
        except FileNotFoundError:
            parent = os.path.dirname(d)
            if parent == d:
                return None
            d = parent
    return None if (st.st_uid, st.st_gid) == (0, 0) else (st.st_uid, st.st_gid)


def adopt(path: StrPath, fd: int | None = None) -> None:
    """As root, give the file or directory just created at ``path`` (open as ``fd``) to the owner of
    the directory holding it (see :func:`owner_for_new`).  Raises :class:`OSError`."""
    owner = owner_for_new(path)
    if owner is None:
        return
    if fd is not None:
        os.fchown(fd, *owner)
    else:
        os.chown(path, *owner, follow_symlinks=False)


def makedirs(path: StrPath, mode: int = 0o700) -> None:
    """``mkdir -p path``; as root, the directories it creates take the nearest existing parent's
    owner.  ``mode`` 0700: the spool is private to the cluster.  Raises :class:`OSError`."""
    missing: list[str] = []
    d = os.path.abspath(path)
    while not os.path.isdir(d):
        missing.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    owner = owner_for_new(missing[-1]) if missing else None
    for d in reversed(missing):  # not os.makedirs: it gives the parents it creates mode 0777
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            continue  # another process made it (and gave it its owner)
        if owner is not None:
            os.chown(d, *owner, follow_symlinks=False)
