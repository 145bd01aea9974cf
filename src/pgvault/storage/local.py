"""A repository in a local (or NFS/mounted) directory: one file per object.

Atomicity comes from the POSIX rename/link rules: an object is written to a ``.tmp-*`` file in its
destination directory (same file system, so the final step is a rename, never a copy), fsynced,
then renamed (``open_write``) or hard-linked (``open_write(if_absent=True)``, ``put_if_absent``: they
must fail if the key exists;
``rename`` would silently replace it). The directory is fsynced afterwards because a rename is
only durable once its directory entry is. A killed writer leaves only a ``.tmp-*`` file, which
listings skip and a later sweep may remove.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from pgvault.errors import StorageError
from pgvault.storage.base import WriterContextMixin, ObjectExists, ObjectInfo, ObjectNotFound, ObjectWriter, validate_key, validate_prefix

__all__ = ["LocalStorage", "TEMP_PREFIX"]

TEMP_PREFIX = ".tmp-"

# Backups hold a copy of the whole database: readable by the owner and its group only.
_FILE_MODE = 0o640
_DIR_MODE = 0o750

_HINTS = {
    errno.EACCES: "repository path is not writable",
    errno.EPERM: "repository path is not writable",
    errno.EROFS: "repository path is not writable (read-only file system)",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded on the repository file system",
    errno.ENOTDIR: "a component of the repository path is a file, not a directory",
    errno.EXDEV: "temporary and final files must be on the same file system",
}


def _error(action: str, path: Path, exc: OSError) -> StorageError:
    """Turn an OSError into a one-line StorageError naming the path, plus a hint when we know one."""
    reason = exc.strerror or exc.__class__.__name__
    return StorageError(f"cannot {action} {path}: {reason}", hint=_HINTS.get(exc.errno or 0))


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk (the one fsync helper of the package)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(st: os.stat_result) -> dt.datetime:
    return dt.datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=dt.timezone.utc)


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

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Append ``data``; return the number of bytes accepted."""
        if self._state != "open":
            raise ValueError(f"write to a {self._state} writer for {self._key!r}")
        try:
            return self._file.write(data)
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
        except OSError:
            pass  # a leftover .tmp-* file is invisible to readers and swept later



class LocalStorage:
    """Objects are files under ``root``; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()

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
                fsync_path(d.parent)
            except FileExistsError:
                if not d.is_dir():
                    raise _error("create directory", d, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))) from None
                continue  # a concurrent writer created it
            except OSError as exc:
                raise _error("create directory", d, exc) from exc

    def _create_temp(self, directory: Path) -> tuple[Path, int]:
        """Create a fresh ``.tmp-*`` file in ``directory`` and return its path and fd."""
        self._makedirs(directory)
        tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        except OSError as exc:
            raise _error("write", tmp, exc) from exc
        return tmp, fd

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
        validate_prefix(prefix)
        self._require_root()
        # Start at the deepest directory the prefix names completely; filter the rest by string.
        base, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*base.split("/")) if base else self.root
        return self._walk(start, f"{base}/" if base else "", prefix)

    def _walk(self, directory: Path, key_prefix: str, prefix: str) -> Iterator[ObjectInfo]:
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
                    yield from self._walk(Path(entry.path), sub, prefix)
            elif key.startswith(prefix) and not entry.name.startswith(TEMP_PREFIX):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # deleted while we were listing
                except OSError as exc:
                    raise _error("stat", Path(entry.path), exc) from exc
                yield ObjectInfo(key=key, size=st.st_size, modified=_mtime(st))

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

    def check_writable(self) -> None:
        """Create the root if missing, then create, fsync and remove a probe file in it."""
        try:
            self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
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
