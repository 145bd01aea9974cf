"""A repository in a local (or NFS/mounted) directory: one file per object.

Atomicity comes from the POSIX rename/link rules: an object is written to a ``.tmp-*`` file in its
destination directory (same file system, so the final step is a rename, never a copy), fsynced,
then renamed (``open_write``) or hard-linked (``open_write(if_absent=True)``, ``put_if_absent``: they
must fail if the key exists;
``rename`` would silently replace it). The directory is fsynced afterwards because a rename is
only durable once its directory entry is. A killed writer leaves only a ``.tmp-*`` file, which
listings skip; ``unfinished_writes`` lists them and ``remove_unfinished`` (``expire``) removes
them with the directories they leave empty. Because such a directory may be one a writer has just
created, a writer whose directory vanishes before its temp file is in it creates it again.

A signal (``cli.interrupts`` raises on SIGTERM/SIGINT at the next bytecode boundary) can arrive
after a temp file is created but before the ``with`` statement owning its writer has entered, so
no ``abort`` ever runs for it. Every temp file this process created and has neither published nor
discarded is therefore remembered, and removed when the process exits (not by a forked child, which
inherits the list but not the writers).

Ownership: a repository is shared by processes running as different OS users (the archiver as
the database's user, a base backup or restore started as root). Running as root, everything
pgvault creates (directories, temporary files and so the objects they become) takes the owner
and group of the repository root directory, like pgBackRest's repository ownership; a root that
root creates itself takes the owner of the nearest existing parent. Not running as root, a
permission error names the user owning the path, i.e. the one to run pgvault as.
"""

from __future__ import annotations

import atexit
import datetime as dt
import errno
import os
import pwd
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pgvault.errors import StorageError
from pgvault.fs import fsync_path, start_writeback
from pgvault.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectWriter,
    UnfinishedWrite,
    WriterContextMixin,
    validate_key,
    validate_prefix,
)

__all__ = ["LocalStorage", "TEMP_PREFIX"]

TEMP_PREFIX = ".tmp-"

# Backups hold a copy of the whole database: readable by the owner and its group only.
_FILE_MODE = 0o640
_DIR_MODE = 0o750

# Temp files this process created and has not yet renamed, linked or removed, with the pid that
# created them (see the module docstring): removed at exit. Plain dict operations, atomic under
# the GIL, so that registering a new file cannot itself be cut short by a signal handler.
_open_temps: dict[Path, int] = {}
# Creating-and-registering and the removal at exit exclude each other, and after the removal no
# temp file is created: a daemon thread (a base backup's part) still running while the interpreter
# exits could otherwise create one just after the sweep and leave it behind.
_temps_lock = threading.Lock()
_exiting = False


def _reset_temps_lock() -> None:  # a forked child must not inherit a lock some thread held
    global _temps_lock
    _temps_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_temps_lock)


@atexit.register
def _remove_open_temps() -> None:
    global _exiting
    with _temps_lock:
        _exiting = True
        _sweep_open_temps()


def _sweep_open_temps() -> None:
    pid = os.getpid()
    for path, owner in list(_open_temps.items()):
        _open_temps.pop(path, None)
        if owner == pid:
            try:
                os.unlink(path)
            except OSError:
                pass  # published meanwhile by a thread still running, or already gone


_READS = frozenset({"read", "stat", "list", "access"})
_HINTS = {
    errno.EROFS: "repository path is not writable (read-only file system)",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded on the repository file system",
    errno.ENOTDIR: "a component of the repository path is a file, not a directory",
    errno.EXDEV: "temporary and final files must be on the same file system",
}


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _permission_hint(action: str, path: Path) -> str:
    """Whose path it is and whom to run as: "not writable" only where a write was refused."""
    me = os.geteuid()
    what = "readable" if action in _READS else "writable"
    for candidate in (path, *path.parents):
        try:
            owner = candidate.stat().st_uid
        except OSError:
            continue
        if owner != me:
            return (f"{candidate} belongs to {_user(owner)} and is not {what} by {_user(me)}: run pgvault as "
                    f"{_user(owner)} (e.g. runuser -u {_user(owner)} -- pgvault ...), or fix the permissions")
        break
    return f"the repository is not {what} by {_user(me)}: check the permissions of {path}"


def _error(action: str, path: Path, exc: OSError) -> StorageError:
    """Turn an OSError into a one-line StorageError naming the path, plus a hint when we know one."""
    reason = exc.strerror or exc.__class__.__name__
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"cannot {action} {path}: {reason}", hint=_permission_hint(action, path))
    return StorageError(f"cannot {action} {path}: {reason}", hint=_HINTS.get(exc.errno or 0))


def _mtime(st: os.stat_result) -> dt.datetime:
    return dt.datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=dt.UTC)


#: A writer starts the write-out of every this many bytes as it goes, so commit's fsync finds little
#: left to write (a 180 MiB backup object: that fsync took 0.10 s after the dump, 0.0x s with it).
_WRITEBACK_EVERY = 8 << 20


class _LocalWriter(WriterContextMixin):
    """Writes ``.tmp-*`` in the destination directory; ``commit`` fsyncs and renames it into place."""

    def __init__(self, storage: LocalStorage, key: str, if_absent: bool = False) -> None:
        self._key = key
        self._url = storage.url
        self._if_absent = if_absent
        self._dest = storage._path(key)
        self._tmp, fd = storage._create_temp(self._dest.parent)
        self._file = os.fdopen(fd, "wb")
        self._state = "open"  # open → committed | aborted
        self._written = 0
        self._flushed_to = 0  # write-out was started for the bytes before this offset

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Append ``data``; return the number of bytes accepted."""
        if self._state != "open":
            raise ValueError(f"write to a {self._state} writer for {self._key!r}")
        try:
            n = self._file.write(data)
            self._written += n
            if self._written - self._flushed_to >= _WRITEBACK_EVERY:
                self._file.flush()
                start_writeback(self._file.fileno(), self._flushed_to, self._written - self._flushed_to)
                self._flushed_to = self._written
            return n
        except OSError as exc:
            raise _error("write", self._dest, exc) from exc

    def commit(self) -> None:
        """fsync, rename (or, if_absent, hard-link) into place, fsync the directory; a second
        ``commit`` is a no-op."""
        if self._state == "committed":
            return
        if self._state == "aborted":
            raise ValueError(f"commit of an aborted writer for {self._key!r}")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self._if_absent:
                self._link()
            else:
                os.replace(self._tmp, self._dest)
                _open_temps.pop(self._tmp, None)
            self._state = "committed"
            fsync_path(self._dest.parent)
        except OSError as exc:
            if self._state != "committed":
                self.abort()
            raise _error("write", self._dest, exc) from exc

    def _link(self) -> None:
        """Publish the temp file only if the key is free: link(2) fails with EEXIST instead of
        replacing (rename would silently replace), so of concurrent writers exactly one wins."""
        try:
            os.link(self._tmp, self._dest)
        except FileExistsError:
            self.abort()
            raise ObjectExists(f"object {self._key!r} already exists in {self._url}") from None
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                self.abort()
                raise StorageError(
                    f"cannot create {self._dest}: {exc.strerror}",
                    hint="the repository file system must support hard links (used for atomic create)",
                ) from exc
            raise
        try:
            os.unlink(self._tmp)
            _open_temps.pop(self._tmp, None)
        except OSError:
            pass  # the object is in place; a leftover .tmp-* link is invisible and swept later

    def abort(self) -> None:
        """Discard the temporary file; a no-op after ``commit`` or a previous ``abort``."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._file.close()
        except OSError:
            pass  # e.g. ENOSPC while flushing the buffer: the bytes are being discarded anyway
        try:
            os.unlink(self._tmp)
            _open_temps.pop(self._tmp, None)
        except OSError:
            pass  # a leftover .tmp-* file is invisible to readers and swept later



class LocalStorage:
    """Objects are files under ``root``; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()
        self._owner: tuple[int, int] | None = None  # (uid, gid) to give what we create; None: keep ours

    def _owner_for_new(self) -> tuple[int, int] | None:
        """As root, the root directory's owner and group (see the module docstring); else None."""
        if os.geteuid() != 0:
            return None
        if self._owner is None:
            try:
                st = os.stat(self.root)
            except OSError as exc:
                raise _error("access", self.root, exc) from exc
            self._owner = (st.st_uid, st.st_gid)
        return None if self._owner == (0, 0) else self._owner

    def _give(self, path: Path, fd: int | None = None) -> None:
        """Hand a file or directory we just created to the repository's owner (when root)."""
        owner = self._owner_for_new()
        if owner is None:
            return
        try:
            if fd is not None:
                os.fchown(fd, *owner)
            else:
                os.chown(path, *owner)
        except OSError as exc:
            raise _error("change the owner of", path, exc) from exc

    # -- helpers -------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
            # Such a file would be indistinguishable from write debris and never listed.
            raise ValueError(f"invalid storage key {key!r}: names starting with {TEMP_PREFIX!r} are reserved")
        return self.root.joinpath(*key.split("/"))

    def _require_root(self) -> None:
        """Raise unless the repository directory exists.

        A missing root must never look like a missing object: restore_command would exit 1
        ("file not found") for an unmounted backup volume and PostgreSQL would end recovery early.
        Writes do not create the root either, so an unmounted mount point is not silently filled.
        """
        try:
            if self.root.is_dir():
                return
        except OSError as exc:
            raise _error("access", self.root, exc) from exc
        raise StorageError(
            f"repository directory {self.root} does not exist or is not a directory",
            hint="check the path and that the backup volume is mounted (only the write check creates it)",
        )

    def _makedirs(self, directory: Path) -> None:
        """Create missing directories below the root, fsyncing each parent so they survive a crash."""
        self._require_root()
        missing: list[Path] = []
        d = directory
        while d != self.root and not d.is_dir():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, _DIR_MODE)
                self._give(d)
                fsync_path(d.parent)
            except FileExistsError:
                if not d.is_dir():
                    raise _error("create directory", d, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))) from None
                continue  # a concurrent writer created it
            except FileNotFoundError:
                raise  # a sweep removed the parent meanwhile: _create_temp starts over
            except OSError as exc:
                raise _error("create directory", d, exc) from exc

    def _create_temp(self, directory: Path) -> tuple[Path, int]:
        """Create a fresh ``.tmp-*`` file in ``directory`` and return its path and fd."""
        tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        for attempt in range(3):
            try:
                self._makedirs(directory)
                with _temps_lock:
                    if _exiting:
                        raise StorageError(f"cannot write {tmp}: pgvault is exiting")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
                    _open_temps[tmp] = os.getpid()
                break
            except FileNotFoundError as exc:
                # A sweep (remove_unfinished) removed an empty directory between our mkdir and
                # this open: make it again. Once the temp file is in it, rmdir cannot remove it.
                if attempt == 2:
                    raise _error("write", tmp, exc) from exc
            except OSError as exc:
                raise _error("write", tmp, exc) from exc
        try:
            self._give(tmp, fd)
        except StorageError:
            os.close(fd)
            os.unlink(tmp)
            _open_temps.pop(tmp, None)
            raise
        return tmp, fd

    def _create_root(self) -> None:
        """``mkdir -p`` the root; as root, new directories take the nearest existing parent's owner,
        so a repository that root creates in the database user's directory stays that user's."""
        missing = [d for d in (self.root, *self.root.parents) if not d.exists()]
        self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        if os.geteuid() == 0 and missing:
            parent = missing[-1].parent.stat()
            if (parent.st_uid, parent.st_gid) != (0, 0):
                for d in missing:
                    os.chown(d, parent.st_uid, parent.st_gid)
        self._owner = None  # read again from the root

    def _missing(self, key: str) -> ObjectNotFound:
        self._require_root()
        return ObjectNotFound(f"object {key!r} does not exist in {self.url}")

    # -- the Storage contract ------------------------------------------------------------------

    def open_write(self, key: str, *, if_absent: bool = False) -> ObjectWriter:
        """Start writing ``key``; the object appears only on ``commit`` (see ``Storage.open_write``)."""
        return _LocalWriter(self, key, if_absent)

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Atomically create ``key`` with ``data``; raise :class:`ObjectExists` if it already exists."""
        with self.open_write(key, if_absent=True) as w:
            w.write(data)

    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` as a buffered binary file; raise :class:`ObjectNotFound` if it does not exist."""
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(key) from None
        except OSError as exc:
            raise _error("read", path, exc) from exc

    def read_bytes(self, key: str) -> bytes:
        """Return the whole object; raise :class:`ObjectNotFound` if it does not exist."""
        with self.open_read(key) as f:
            try:
                return f.read()
            except OSError as exc:
                raise _error("read", self._path(key), exc) from exc

    def stat(self, key: str) -> ObjectInfo:
        """Return size and mtime of ``key``; raise :class:`ObjectNotFound` if it does not exist."""
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        except OSError as exc:
            raise _error("stat", path, exc) from exc
        if not stat.S_ISREG(st.st_mode):
            raise self._missing(key)  # a directory is a key prefix, not an object
        return ObjectInfo(key=key, size=st.st_size, modified=_mtime(st))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix`` (recursively), in key order."""
        return (ObjectInfo(key=key, size=st.st_size, modified=_mtime(st)) for key, st in self._files(prefix, temp=False))

    def _files(self, prefix: str, *, temp: bool) -> Iterator[tuple[str, os.stat_result]]:
        """``(key, stat)`` of the objects (or, ``temp``, the ``.tmp-*`` files) under ``prefix``, in key order."""
        validate_prefix(prefix)
        self._require_root()
        # Start at the deepest directory the prefix names completely; filter the rest by string.
        base, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*base.split("/")) if base else self.root
        return self._walk(start, f"{base}/" if base else "", prefix, temp)

    def _walk(self, directory: Path, key_prefix: str, prefix: str, temp: bool) -> Iterator[tuple[str, os.stat_result]]:
        try:
            with os.scandir(directory) as it:
                entries = [(e, e.is_dir()) for e in it]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _error("list", directory, exc) from exc
        # Sorting a directory as "name/" yields exact key order: every key below it starts with
        # "name/", and no sibling file name contains "/" (so "a-c" < "a/x" < "a0", as in S3).
        entries.sort(key=lambda e: e[0].name + "/" if e[1] else e[0].name)
        for entry, is_dir in entries:
            key = key_prefix + entry.name
            if is_dir:
                sub = key + "/"
                if sub.startswith(prefix) or prefix.startswith(sub):
                    yield from self._walk(Path(entry.path), sub, prefix, temp)
            elif key.startswith(prefix) and entry.name.startswith(TEMP_PREFIX) == temp:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # deleted (or committed) while we were listing
                except OSError as exc:
                    raise _error("stat", Path(entry.path), exc) from exc
                yield key, st

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting an absent key is not an error.

        Empty directories are left in place: removing them would race with a concurrent writer
        that has just created the directory and is about to create its temporary file there.
        """
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._require_root()
        except OSError as exc:
            raise _error("delete", path, exc) from exc

    def unfinished_writes(self, prefix: str = "") -> Iterator[UnfinishedWrite]:
        """Yield the ``.tmp-*`` files under ``prefix``, keyed by their path under the root, in key order."""
        for key, st in self._files(prefix, temp=True):
            # A second link (a conditional writer killed between link and unlink) is a committed
            # object's other name: removing it frees nothing.
            yield UnfinishedWrite(key=key, size=st.st_size if st.st_nlink == 1 else 0, modified=_mtime(st))

    def remove_unfinished(self, write: UnfinishedWrite, *, idle_since: dt.datetime) -> bool:
        """Unlink the temp file if its mtime is still before ``idle_since``, then the directories
        this leaves empty up to the root; see ``Storage.remove_unfinished``."""
        parts = write.key.split("/")
        if not parts[-1].startswith(TEMP_PREFIX) or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not an unfinished write of a local repository: {write.key!r}")
        path = self.root.joinpath(*parts)
        try:
            st = os.stat(path, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or _mtime(st) >= idle_since:
                return False
            # A writer that writes in the instant between this stat and the unlink loses its temp
            # file and fails to commit: it never publishes anything partial.
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return False  # committed, aborted or removed meanwhile
        except OSError as exc:
            raise _error("delete", path, exc) from exc
        d = path.parent
        while d != self.root:
            try:
                os.rmdir(d)  # only ever removes an empty directory (a writer's retry recreates it)
            except OSError:
                break  # not empty (ENOTEMPTY/EEXIST), already gone, or not ours to remove
            d = d.parent
        return True

    def check_writable(self) -> None:
        """Create the root if missing, then create, fsync and remove a probe file in it."""
        try:
            self._create_root()
        except FileExistsError:
            raise StorageError(
                f"repository path {self.root} exists and is not a directory", hint="choose another repository path"
            ) from None
        except OSError as exc:
            raise _error("create directory", self.root, exc) from exc
        tmp, fd = self._create_temp(self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"pgvault write probe\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise _error("write", tmp, exc) from exc
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
