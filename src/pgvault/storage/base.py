"""The storage contract every repository backend implements.

Modelled on WAL-G's ``Folder``: a handful of stream-first methods, each with a one-line contract,
one conformance suite (``tests/contract``) that every backend runs, and an in-memory backend as the
reference.  Keys are ``/``-separated relative paths without a leading ``/``; backends never
interpret them beyond that.

Concurrency (parallel uploads of many objects) lives in ``pgvault.operations``, not here; a backend
may parallelise the parts of one large object internally.
"""

from __future__ import annotations

import datetime as dt
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, Self, runtime_checkable

from pgvault.errors import NotFoundError, StorageError

__all__ = ["is_write_once", "ObjectVersion", "VersionedStorage", "WriterContextMixin", "ObjectInfo", "ObjectNotFound", "ObjectExists", "Storage", "ObjectWriter",
           "UnfinishedWrite", "validate_key", "validate_prefix", "StorageError"]


class ObjectNotFound(NotFoundError):
    """The repository confirms that the object does not exist (not: could not be reached)."""


class ObjectExists(StorageError):
    """``put_if_absent`` or a conditional writer's ``commit``: an object already exists under the key."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or ``stat`` knows about one stored object."""

    key: str
    size: int
    modified: dt.datetime  # timezone-aware UTC


@dataclass(frozen=True)
class UnfinishedWrite:
    """A write that was begun and neither committed nor aborted: what a killed writer leaves (a
    local ``.tmp-*`` file, an S3 multipart upload), or a writer still at work. Only its age tells
    the two apart, so callers judge it by ``modified`` against a grace period."""

    key: str  # local: the temp file's path under the root; S3, memory: the key it was to create
    size: int  # bytes it holds in the store (S3: its uploaded parts; a part still buffered is not there)
    modified: dt.datetime  # its last sign of activity, UTC: the temp file's mtime, an S3 upload's newest part
    token: str = field(default="", repr=False)  # what tells it apart to remove it (S3: the upload id)


@dataclass(frozen=True)
class ObjectVersion:
    """One version (or delete marker) of a key in a versioned bucket (S3 ListObjectVersions)."""

    key: str
    version_id: str
    latest: bool
    delete_marker: bool
    size: int
    modified: dt.datetime  # timezone-aware UTC


@runtime_checkable
class VersionedStorage(Protocol):
    """What a store with object versions and Object Lock adds (S3 only). Callers check
    ``isinstance(storage, VersionedStorage) and storage.versioning()`` before using it.

    On a versioned store ``delete`` removes every version of the key (see ``S3Storage.delete``)."""

    def versioning(self) -> str:
        """The bucket's versioning state: ``""`` (never enabled), ``"Enabled"`` or ``"Suspended"``."""
        ...

    def versions(self, prefix: str = "") -> list[ObjectVersion]:
        """Every version and delete marker under ``prefix``, in key order, newest first per key."""
        ...

    def retain_until(self, key: str, version_id: str) -> dt.datetime | None:
        """The Object Lock retain-until date of one version (None: not locked)."""
        ...

    def delete_version(self, key: str, version_id: str) -> None:
        """Delete one version or delete marker for good (the store refuses a locked version: StorageError)."""
        ...

    def lock_configuration(self) -> dict[str, object]:
        """The bucket's Object Lock configuration: ``{"enabled": bool, "default_mode": str|None, ...}``."""
        ...


@runtime_checkable
class ObjectWriter(Protocol):
    """A binary sink for one object, made visible atomically.

    ``write`` appends bytes. ``commit`` makes the object visible under its key, durable before it
    returns; ``abort`` discards everything written. Used as a context manager it commits on normal
    exit and aborts on an exception. Before ``commit`` the key shows nothing new: readers see
    either the old object or nothing, never a partial one.
    """

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def __enter__(self) -> ObjectWriter: ...

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...


class Storage(Protocol):
    """A repository backend. Every method raises :class:`StorageError` on access problems
    (permissions, credentials, missing bucket, network) with a message naming the key or URL."""

    url: str  # display form, never containing credentials

    def open_write(self, key: str, *, if_absent: bool = False) -> ObjectWriter:
        """Start writing ``key``; the object appears only on ``commit`` (replacing any old one).

        With ``if_absent`` the commit is atomic create-only: if ``key`` exists at that moment,
        ``commit`` raises :class:`ObjectExists`, discards what was written and leaves the existing
        object untouched; of concurrent conditional writers exactly one commits.
        """
        ...

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Atomically create ``key`` with ``data``; raise :class:`ObjectExists` if it already exists."""
        ...

    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` for streaming reads; raise :class:`ObjectNotFound` if it does not exist."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """Return the whole (small) object; raise :class:`ObjectNotFound` if it does not exist."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Return size and mtime of ``key``; raise :class:`ObjectNotFound` if it does not exist."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix`` (recursively), in key order."""
        ...

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting an absent key is not an error."""
        ...

    def check_writable(self) -> None:
        """Fail fast with a clear :class:`StorageError` if the repository cannot be written."""
        ...

    def unfinished_writes(self, prefix: str = "") -> Iterator[UnfinishedWrite]:
        """Yield every write begun under ``prefix`` and neither committed nor aborted, in key order.

        They are invisible to ``list``, ``stat`` and reads, yet hold storage until removed."""
        ...

    def remove_unfinished(self, write: UnfinishedWrite, *, idle_since: dt.datetime) -> bool:
        """Discard ``write`` (from ``unfinished_writes``) if it has shown no activity after
        ``idle_since``; return whether it was removed.

        False: it was written to after ``idle_since`` (checked again here, not taken from the
        listing), or it is gone (committed, aborted, removed by someone else). A writer whose write
        was removed fails to commit with a :class:`StorageError`; nothing partial ever appears.
        Local storage also removes the directories this leaves empty (never the root)."""
        ...


def place(storage: object) -> tuple[str, str]:
    """Where a repository's objects live, however its URL was spelled: a local directory's real
    path (symlinks, '..', file:// resolved), or an S3 URL with its endpoint (the same bucket name
    on two endpoints is two places).  Two configured repositories in one place are no copy."""
    root = getattr(storage, "root", None)
    if root is not None:
        return ("file", os.path.realpath(root))
    endpoint = getattr(getattr(storage, "settings", None), "endpoint_url", None) or ""
    return (str(getattr(storage, "url", "")).rstrip("/"), endpoint.rstrip("/"))


def is_write_once(storage: object) -> bool:
    """Does the repository lock what pgvault writes (S3 Object Lock)? Then pgvault never rewrites a
    key: job records and descriptor amendments go to new keys (docs/design.md, "Immutable backups")."""
    return bool(getattr(storage, "write_once", False))


def validate_key(key: str) -> str:
    """Reject keys that could escape the repository root or confuse object stores."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"invalid storage key {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Reject listing prefixes that could escape the repository root.

    A prefix is a key fragment: ``""`` (everything), ``"a/"`` (a "directory") or ``"a/b"``
    (matching ``a/b``, ``a/bc``, ``a/b/c``). Only its last component may be partial or empty.
    """
    if not prefix:
        return prefix
    if prefix.startswith("/"):
        raise ValueError(f"invalid storage prefix {prefix!r}")
    *dirs, last = prefix.split("/")
    if any(p in ("", ".", "..") for p in dirs) or last in (".", ".."):
        raise ValueError(f"invalid storage prefix {prefix!r}")
    return prefix


class WriterContextMixin(ABC):
    """The context-manager half of :class:`ObjectWriter`, shared by every backend's writer:
    commit on normal exit, abort on an exception."""

    @abstractmethod
    def commit(self) -> None:
        """Make the object visible (see :class:`ObjectWriter`)."""

    @abstractmethod
    def abort(self) -> None:
        """Discard what was written (see :class:`ObjectWriter`)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
