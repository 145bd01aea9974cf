"""Reading an S3 object as a stream: ranged parallel GETs for large objects, resumed after breaks.

A restore reads objects of up to hundreds of GB. One GET stream is limited by one connection's
throughput (on real S3 often well under what the host can take); a connection reset, a truncated
body or a read timeout in the middle must not throw away what was already read.

**Pinning.** Every read starts with one plain GET. Its ETag (and VersionId, on a versioned bucket)
pins the object: every later ranged GET of the same read carries ``If-Match: <ETag>`` (and the
VersionId), so if the object was replaced in between, S3 answers 412 and the read fails instead of
stitching two different objects together. Each ranged answer is checked as well: it must start at
the byte asked for, belong to an object of the same size and carry the same ETag (a store that
ignored If-Match is caught there); a response that ignores the range (a plain 200 from a store
without range support) is refused.

**Parallel parts** (:class:`RangedBody`): an object larger than one part (``read_part_size``) is
read as consecutive parts, ``read_concurrency`` of them in flight at a time, each by a worker thread
into its own buffer; the reader takes them in order. Memory is bounded by
``(read_concurrency + 1) × read_part_size`` whatever the object's size. The first GET's own body
serves the first part (its connection is closed after it), so a small object (WAL segments, lock
and job records) costs exactly one request, as before.

**Resumes**: a part (or the single stream of :class:`ResumingBody`) that breaks is re-opened with
``Range: bytes=<next byte>-<end>`` under the same pin. Re-opens are bounded: at most
``read_resumes`` in a row without a single byte of progress in between, with a growing pause, so a
store that keeps failing ends the read while a long download that sometimes loses its connection
finishes. Every request is also bounded by botocore's connect and read timeouts and retries.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import io
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bce

from pgvault.errors import StorageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from pgvault.storage.s3 import S3Storage

__all__ = ["RangedBody", "ResumingBody", "open_body"]

log = logging.getLogger(__name__)

# What a body read raises when the connection breaks: botocore wraps urllib3's protocol errors
# (reset, closed) and read timeouts; IncompleteReadError is a body shorter than Content-Length.
_BROKEN = (bce.ResponseStreamingError, bce.IncompleteReadError, bce.ReadTimeoutError, bce.ConnectionClosedError, OSError)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_CHUNK = 1 << 20  # one socket read into a part's buffer


def _code_status(exc: bce.ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code, int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class _Closed(Exception):
    """The reader was closed while a worker was still fetching its part."""


class _Pin:
    """One object as the first GET saw it; opens ranges of exactly that object."""

    def __init__(self, storage: S3Storage, key: str, full: str, response: Any) -> None:
        self.s = storage
        self.key = key
        self.full = full
        self.etag: str | None = response.get("ETag")
        version = response.get("VersionId")
        # "null" is the version of an object written while versioning was off: not a pin of its own.
        self.version: str | None = version if version and version != "null" else None
        self.size: int = response["ContentLength"]
        self._lock = threading.Lock()
        self.resumes = 0  # ranged re-opens after a break (for logs and tests)

    @property
    def pinned(self) -> bool:
        return self.etag is not None

    def replaced(self) -> StorageError:
        return StorageError(
            f"object {self.s._where(self.key)} was replaced or deleted while it was being read",
            hint="run the command again if the object was rewritten on purpose; nothing was mixed",
        )

    def open(self, start: int, end: int) -> Any:
        """The body of ``Range: bytes=start-end`` (inclusive) of the pinned object."""
        s = self.s
        args: dict[str, Any] = {"Bucket": s.bucket, "Key": self.full, "Range": f"bytes={start}-{end}"}
        if self.etag is not None:
            args["IfMatch"] = self.etag
        if self.version is not None:
            args["VersionId"] = self.version
        try:
            resp = s._client.get_object(**args)
        except bce.ClientError as err:
            code, status = _code_status(err)
            # 412: the ETag no longer matches. 404: deleted meanwhile; that must not read as "not
            # found" (restore_command would end recovery), it is an object that vanished mid-read.
            if status in (404, 412) or code in ("PreconditionFailed", "NoSuchKey", "NoSuchVersion"):
                raise self.replaced() from None
            raise s._translate(err, "read", self.key) from err
        except bce.BotoCoreError as err:
            raise s._translate(err, "read", self.key) from err
        match = _CONTENT_RANGE.match(str(resp.get("ContentRange") or ""))
        if match is None or int(match.group(1)) != start:
            resp["Body"].close()
            raise StorageError(
                f"S3 endpoint {s.endpoint} ignored a ranged read of {s._where(self.key)}; cannot resume it",
                hint="the object store must support Range requests (repository.s3.read_concurrency: 1 reads "
                "a large object with one GET, but cannot resume it either)",
            )
        etag = resp.get("ETag")
        if match.group(3) not in ("*", str(self.size)) or (etag is not None and etag != self.etag):
            resp["Body"].close()  # a store that ignored If-Match: the answer is of another object
            raise self.replaced()
        return resp["Body"]

    def broke(self, exc: Exception, failures: int, pos: int) -> None:
        """Account for a break at byte ``pos``: raise once resuming is hopeless, else pause."""
        s = self.s
        if failures > s.settings.read_resumes or not self.pinned:
            raise s._translate(exc, "read", self.key) from exc
        time.sleep(min(0.2 * 2 ** (failures - 1), 5.0))
        log.info("resuming read of %s at byte %d of %d after %s", s._where(self.key), pos, self.size,
                 exc.__class__.__name__)  # fmt: skip
        with self._lock:
            self.resumes += 1


def _close(body: Any) -> None:
    try:
        body.close()
    except Exception:  # noqa: BLE001 - the connection is already broken or no longer wanted
        pass


class ResumingBody(io.RawIOBase):
    """A raw stream over one GetObject response that resumes with ranged GETs after a break."""

    def __init__(self, pin: _Pin, response: Any) -> None:
        super().__init__()
        self._pin = pin
        self._body = response["Body"]
        self._size = pin.size
        self._pos = 0
        self._failures = 0  # breaks since the last byte of progress

    @property
    def resumes(self) -> int:
        return self._pin.resumes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        while True:
            try:
                n: int = self._body.readinto(view)
            except _BROKEN as exc:
                if self._pos >= self._size:
                    return 0  # everything arrived; only the connection's goodbye failed
                self._resume(exc)
                continue
            if not n and self._pos < self._size:
                # botocore normally raises IncompleteReadError here; never report a short body as EOF.
                self._resume(bce.IncompleteReadError(actual_bytes=self._pos, expected_bytes=self._size))
                continue
            self._pos += n
            if n:
                self._failures = 0
            return n

    def _resume(self, exc: Exception) -> None:
        self._failures += 1
        self._pin.broke(exc, self._failures, self._pos)
        _close(self._body)
        self._body = self._pin.open(self._pos, self._size - 1)

    def close(self) -> None:
        if not self.closed:
            _close(self._body)
        super().close()


class RangedBody(io.RawIOBase):
    """A raw stream over consecutive parts of one pinned object, fetched by parallel ranged GETs."""

    def __init__(self, pin: _Pin, response: Any, part_size: int, concurrency: int) -> None:
        super().__init__()
        self._pin = pin
        self._part = part_size
        self._nparts = -(-pin.size // part_size)
        self._stop = threading.Event()
        self._pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3-read")
        self._window: collections.deque[cf.Future[bytearray]] = collections.deque()
        self._concurrency = concurrency
        self._submitted = 0
        self._current = memoryview(b"")
        self._held: bytearray | None = None  # the buffer self._current reads from
        # Buffers of consumed parts, reused: a fresh 8 MiB buffer per part would be page-faulted in
        # anew each time; at most read_concurrency + 1 buffers ever exist.
        self._spare: collections.deque[bytearray] = collections.deque()
        self._first = response["Body"]
        self._fill()

    @property
    def resumes(self) -> int:
        return self._pin.resumes

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while self._submitted < self._nparts and len(self._window) < self._concurrency:
            index = self._submitted
            first, self._first = (self._first, None) if index == 0 else (None, None)
            self._window.append(self._pool.submit(self._fetch, index, first))
            self._submitted += 1

    def _fetch(self, index: int, body: Any) -> bytearray:
        """Part ``index`` in full: from ``body`` (the first GET's) or a ranged GET, resumed after
        breaks. Returns a part-sized buffer; its first ``end - start`` bytes are the part."""
        start = index * self._part
        end = min(start + self._part, self._pin.size)
        try:
            buf = self._spare.pop()
        except IndexError:
            buf = bytearray(self._part)
        view = memoryview(buf)[: end - start]
        got, failures = 0, 0
        whole = body is not None  # the first GET's body: the whole object, dropped after this part
        try:
            while got < len(view):
                if self._stop.is_set():
                    raise _Closed()
                if body is None:
                    body = self._pin.open(start + got, end - 1)
                try:
                    n = body.readinto(view[got : got + _CHUNK])
                    if not n:
                        raise bce.IncompleteReadError(actual_bytes=start + got, expected_bytes=end)
                except _BROKEN as exc:
                    failures += 1
                    _close(body)
                    body, whole = None, False
                    self._pin.broke(exc, failures, start + got)
                    continue
                got += n
                failures = 0
            if body is not None and not whole:
                # Reading the (empty) end of a ranged answer hands its connection back to the pool;
                # closing it instead would cost a new connection (a TLS handshake) per part.
                with contextlib.suppress(*_BROKEN):
                    body.read()
                    body = None
        finally:
            if body is not None:
                _close(body)  # the first GET's body still holds the rest of the object: drop it
        return buf

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        while not self._current:
            if not self._window:
                return 0
            self._current = memoryview(b"")  # let the consumed part go before waiting for the next
            if self._held is not None:
                self._spare.append(self._held)
                self._held = None
            index = self._submitted - len(self._window)
            future = self._window.popleft()
            self._fill()
            try:
                self._held = future.result()
            except BaseException:
                self.close()
                raise
            length = min(self._part, self._pin.size - index * self._part)
            self._current = memoryview(self._held)[:length]
        n = min(len(view), len(self._current))
        view[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            for future in self._window:
                future.cancel()
            self._window.clear()
            self._current = memoryview(b"")
            self._held = None
            self._spare.clear()
            if self._first is not None:
                _close(self._first)
            # Workers stop at their next read (each read is bounded by the read timeout).
            self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()


def open_body(storage: S3Storage, key: str, full: str, response: Any) -> io.RawIOBase:
    """The raw stream for a GetObject ``response``: parallel parts when the object spans several
    and its identity can be pinned, else the one response's body, resumed after breaks."""
    pin = _Pin(storage, key, full, response)
    st = storage.settings
    if st.read_concurrency > 1 and pin.pinned and pin.size > st.read_part_size:
        return RangedBody(pin, response, st.read_part_size, st.read_concurrency)
    return ResumingBody(pin, response)
