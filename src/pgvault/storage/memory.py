"""In-memory storage: the reference backend of the contract suite and the test double for unit tests.

It implements the contract in the most literal way (a dict guarded by one lock), so when a real
backend and this one disagree in ``tests/contract``, the real backend is the one to fix. Its
unfinished writes are its own writers neither committed nor aborted: a test drops one to play a
killed writer.
"""

from __future__ import annotations

import datetime as dt
import io
import secrets
import threading
from collections.abc import Iterator
from typing import BinaryIO

from pgvault.errors import StorageError
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

__all__ = ["MemoryStorage"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _MemoryWriter(WriterContextMixin):
    """Buffers the whole object and publishes it under the storage lock on ``commit``."""

    def __init__(self, storage: MemoryStorage, key: str, if_absent: bool) -> None:
        self._storage = storage
        self._key = key
        self._if_absent = if_absent
        self._buf = bytearray()
        self._state = "open"  # open → committed | aborted
        self.token = secrets.token_hex(8)
        self.modified = _now()
        storage._begin(self)

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Append ``data``; return the number of bytes accepted."""
        if self._state != "open":
            raise ValueError(f"write to a {self._state} writer for {self._key!r}")
        self._storage._touch(self)
        self._buf += data
        return memoryview(data).nbytes

    def commit(self) -> None:
        """Publish the object; a second ``commit`` is a no-op."""
        if self._state == "committed":
            return
        if self._state == "aborted":
            raise ValueError(f"commit of an aborted writer for {self._key!r}")
        try:
            self._storage._publish(self._key, bytes(self._buf), if_absent=self._if_absent, writer=self)
        except StorageError:  # ObjectExists, or removed by remove_unfinished
            self.abort()
            raise
        self._buf = bytearray()
        self._state = "committed"

    def abort(self) -> None:
        """Discard everything written; a no-op after ``commit`` or a previous ``abort``."""
        if self._state == "open":
            self._buf = bytearray()
            self._state = "aborted"
            self._storage._end(self)



class MemoryStorage:
    """A thread-safe in-memory repository: ``key → (bytes, mtime)``."""

    def __init__(self, name: str = "") -> None:
        self.url = f"memory://{name}"
        self._objects: dict[str, tuple[bytes, dt.datetime]] = {}
        self._pending: dict[str, _MemoryWriter] = {}  # token → writer neither committed nor aborted
        self._lock = threading.Lock()
        # Tests model a write-once (Object Lock) repository with it: pgvault then writes new keys
        # instead of rewriting (repository/jobs.py, cluster.py), and ``overwritten`` shows any rewrite.
        self.write_once = False
        self.overwritten: list[str] = []

    def _begin(self, writer: _MemoryWriter) -> None:
        with self._lock:
            self._pending[writer.token] = writer

    def _touch(self, writer: _MemoryWriter) -> None:
        with self._lock:
            if writer.token not in self._pending:
                raise StorageError(f"the write of {writer._key!r} to {self.url} was removed as unfinished")
            writer.modified = _now()

    def _end(self, writer: _MemoryWriter) -> None:
        with self._lock:
            self._pending.pop(writer.token, None)

    def _publish(self, key: str, data: bytes, *, if_absent: bool = False, writer: _MemoryWriter | None = None) -> None:
        with self._lock:
            if writer is not None and self._pending.pop(writer.token, None) is None:
                raise StorageError(f"the write of {key!r} to {self.url} was removed as unfinished")
            if if_absent and key in self._objects:
                raise ObjectExists(f"object {key!r} already exists in {self.url}")
            if key in self._objects:
                self.overwritten.append(key)
            self._objects[key] = (data, _now())

    def _get(self, key: str) -> tuple[bytes, dt.datetime]:
        validate_key(key)
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise ObjectNotFound(f"object {key!r} does not exist in {self.url}") from None

    def open_write(self, key: str, *, if_absent: bool = False) -> ObjectWriter:
        """Start writing ``key``; the object appears only on ``commit`` (see ``Storage.open_write``)."""
        return _MemoryWriter(self, validate_key(key), if_absent)

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Atomically create ``key`` with ``data``; raise :class:`ObjectExists` if it already exists."""
        self._publish(validate_key(key), bytes(data), if_absent=True)

    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` for reading; raise :class:`ObjectNotFound` if it does not exist."""
        return io.BytesIO(self._get(key)[0])

    def read_bytes(self, key: str) -> bytes:
        """Return the whole object; raise :class:`ObjectNotFound` if it does not exist."""
        return self._get(key)[0]

    def stat(self, key: str) -> ObjectInfo:
        """Return size and mtime of ``key``; raise :class:`ObjectNotFound` if it does not exist."""
        data, modified = self._get(key)
        return ObjectInfo(key=key, size=len(data), modified=modified)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order (a snapshot)."""
        validate_prefix(prefix)
        with self._lock:
            snapshot = [(k, v) for k, v in self._objects.items() if k.startswith(prefix)]
        snapshot.sort(key=lambda kv: kv[0])
        return iter([ObjectInfo(key=k, size=len(data), modified=mtime) for k, (data, mtime) in snapshot])

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting an absent key is not an error."""
        validate_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def check_writable(self) -> None:
        """Memory is always writable."""

    def unfinished_writes(self, prefix: str = "") -> Iterator[UnfinishedWrite]:
        """Yield this storage's writers under ``prefix`` neither committed nor aborted, in key order."""
        validate_prefix(prefix)
        with self._lock:
            found = [UnfinishedWrite(w._key, len(w._buf), w.modified, w.token)
                     for w in self._pending.values() if w._key.startswith(prefix)]
        return iter(sorted(found, key=lambda u: (u.key, u.token)))

    def remove_unfinished(self, write: UnfinishedWrite, *, idle_since: dt.datetime) -> bool:
        """Forget the writer if it has not written since ``idle_since``; its commit then fails."""
        with self._lock:
            w = self._pending.get(write.token)
            if w is None or w.modified >= idle_since:
                return False
            del self._pending[write.token]
            w._buf = bytearray()
            return True
