"""Observers of a byte stream: SHA-256 and byte count, as a reader wrapper and a writer wrapper.

These are pgBackRest's "observing filters": they never change the bytes, they only remember what
passed.  The pipeline puts one on each end of a stream: the raw digest sees exactly the bytes
pulled from the source (or pushed to the restore sink), the stored digest exactly the bytes that
reach (or come from) the repository.  Their results are read by name once the stream is done.

The small protocols live here because every pipeline stage is built from them and this is the
module the other stages already depend on: ``SupportsRead`` / ``SupportsWrite`` (the caller's
streams) and the two shapes of a transforming stage, :class:`PushStage` (writing side: bytes are
pushed in, the transformed bytes pushed on into the next stage) and :class:`PullStage` (reading
side: the transformed bytes are pulled out, the stage pulls from the one before it).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from pgvault.errors import IntegrityError

__all__ = [
    "SupportsRead",
    "SupportsWrite",
    "PushStage",
    "PullStage",
    "PassThroughWriter",
    "PassThroughReader",
    "DigestReader",
    "DigestWriter",
]


class SupportsRead(Protocol):
    """Anything with ``read(size)`` returning up to ``size`` bytes, and ``b""`` only at EOF."""

    def read(self, size: int, /) -> bytes: ...


class SupportsWrite(Protocol):
    """Anything with ``write(data)``; the return value is ignored (short writes are not modelled:
    every sink pgvault uses - files, pipes in blocking mode, storage writers - writes all)."""

    def write(self, data: bytes, /) -> object: ...


class PushStage(Protocol):
    """A transform on the writing side: ``write`` pushes what it can of the transformed bytes into
    the next stage at once, ``finish`` pushes the rest (trailers, the last frame or chunk) and ends
    the stream; ``abort`` instead drops the stream, releasing what the stage holds and pushing
    nothing more.  ``abort`` may also come after ``finish`` (when a later stage failed) and then
    only releases what is left."""

    def write(self, data: bytes, /) -> int: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class PullStage(Protocol):
    """A transform on the reading side: ``read(size)`` returns up to ``size`` transformed bytes
    (``b""`` only at the end) and pulls from the stage before it as needed.  It returns ``b""``
    only once that stage returned ``b""`` and the format's own end checks passed (a truncated
    frame raises :class:`IntegrityError` instead).  ``close`` releases what the stage holds
    (called when the reader is done or abandoned; a second call does nothing)."""

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


class PassThroughWriter:
    """The push stage that changes nothing (compression or encryption "none")."""

    __slots__ = ("_sink",)

    def __init__(self, sink: SupportsWrite) -> None:
        self._sink = sink

    def write(self, data: bytes, /) -> int:
        self._sink.write(data)
        return len(data)

    def finish(self) -> None:
        return None

    def abort(self) -> None:
        return None


class PassThroughReader:
    """The pull stage that changes nothing (compression or encryption "none")."""

    __slots__ = ("_source",)

    def __init__(self, source: SupportsRead) -> None:
        self._source = source

    def read(self, size: int = -1, /) -> bytes:
        return self._source.read(size)

    def close(self) -> None:
        return None


class _Observer:
    """Shared state of both wrappers: a running SHA-256 and a byte count."""

    __slots__ = ("_hash", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def hexdigest(self) -> str:
        """The SHA-256 of every byte observed so far, as lowercase hex."""
        return self._hash.hexdigest()


class DigestReader(_Observer):
    """Wrap a reader; every byte returned by :meth:`read` is hashed and counted.

    ``max_size`` turns the observer into a guard as well: when the manifest says how long the
    stored object is, a longer object is reported as soon as the first extra byte arrives instead
    of after streaming an arbitrary amount of garbage into ``pg_restore``.
    """

    __slots__ = ("_source", "_max_size", "eof")

    def __init__(self, source: SupportsRead, *, max_size: int | None = None) -> None:
        super().__init__()
        self._source = source
        self._max_size = max_size
        self.eof = False  # True once the source returned b"": size/hexdigest are then final

    def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes from the source, observe them and return them."""
        data = self._source.read(size)
        if not data:
            if data is None:
                # A non-blocking source with nothing available; the pipeline has no event loop
                # to wait on, so this is a caller bug rather than an end of stream.
                raise ValueError("pipeline sources must be blocking (read() returned None)")
            self.eof = True
            return b""
        if not isinstance(data, (bytes, bytearray)):
            # pyrage accepts bytes/bytearray only; normalise memoryviews and friends once here.
            data = bytes(data)
        self._hash.update(data)
        self.size += len(data)
        if self._max_size is not None and self.size > self._max_size:
            raise IntegrityError(
                f"stored object is longer than the {self._max_size} bytes recorded in the manifest",
                hint="the object was replaced or corrupted in the repository; restore from another backup",
            )
        return data


class DigestWriter(_Observer):
    """Wrap a writer; every byte passed to :meth:`write` is hashed, counted and forwarded."""

    __slots__ = ("_sink",)

    def __init__(self, sink: SupportsWrite) -> None:
        super().__init__()
        self._sink = sink

    def write(self, data: bytes, /) -> int:
        """Observe ``data`` and forward it to the sink; returns ``len(data)``."""
        if data:
            self._hash.update(data)
            self.size += len(data)
            self._sink.write(data)
        return len(data)
