"""Reading an S3 object as a stream that survives dropped connections.

A restore reads objects of up to hundreds of GB over one HTTP response; a connection reset, a
truncated body or a read timeout in the middle must not throw away what was already read. On such
an error the reader re-opens the object with a ranged GET from the next byte it needs
(``Range: bytes=<next>-``) and carries on. The re-open carries ``If-Match`` with the ETag of the
first response, so if the object was replaced in between, S3 answers 412 and the read fails
instead of stitching two different objects together. A response that ignores the range (a plain
200 from a store without range support) is refused for the same reason.

Re-opens are bounded: at most ``read_resumes`` in a row without a single byte of progress in
between, with a growing pause, so a store that keeps failing ends the read while a long download
that sometimes loses its connection finishes.
"""

from __future__ import annotations

import io
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bce

from pgvault.errors import StorageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from pgvault.storage.s3 import S3Storage

__all__ = ["ResumingBody"]

log = logging.getLogger(__name__)

# What a body read raises when the connection breaks: botocore wraps urllib3's protocol errors
# (reset, closed) and read timeouts; IncompleteReadError is a body shorter than Content-Length.
_BROKEN = (bce.ResponseStreamingError, bce.IncompleteReadError, bce.ReadTimeoutError, bce.ConnectionClosedError, OSError)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-")


def _code_status(exc: bce.ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code, int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class ResumingBody(io.RawIOBase):
    """A raw stream over a GetObject response that resumes with ranged GETs after a break."""

    def __init__(self, storage: S3Storage, key: str, full: str, response: Any) -> None:
        super().__init__()
        self._s = storage
        self._key = key
        self._full = full
        self._body = response["Body"]
        self._etag: str | None = response.get("ETag")
        self._size: int = response["ContentLength"]
        self._pos = 0
        self._failures = 0  # breaks since the last byte of progress
        self.resumes = 0  # how often the read was resumed (for logs and tests)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        while True:
            try:
                data: bytes = self._body.read(len(view))
            except _BROKEN as exc:
                if self._pos >= self._size:
                    return 0  # everything arrived; only the connection's goodbye failed
                self._resume(exc)
                continue
            if not data and self._pos < self._size:
                # botocore normally raises IncompleteReadError here; never report a short body as EOF.
                self._resume(bce.IncompleteReadError(actual_bytes=self._pos, expected_bytes=self._size))
                continue
            view[: len(data)] = data
            self._pos += len(data)
            if data:
                self._failures = 0
            return len(data)

    def _resume(self, exc: Exception) -> None:
        s = self._s
        self._failures += 1
        if self._failures > s.settings.read_resumes or self._etag is None:
            raise s._translate(exc, "read", self._key) from exc
        self._close_body()
        time.sleep(min(0.2 * 2 ** (self._failures - 1), 5.0))
        log.info(
            "resuming read of %s at byte %d of %d after %s", s._where(self._key), self._pos, self._size,
            exc.__class__.__name__,
        )  # fmt: skip
        try:
            resp = s._client.get_object(Bucket=s.bucket, Key=self._full, Range=f"bytes={self._pos}-", IfMatch=self._etag)
        except bce.ClientError as err:
            code, status = _code_status(err)
            # 412: the ETag no longer matches. 404: deleted meanwhile; that must not read as "not
            # found" (restore_command would end recovery), it is an object that vanished mid-read.
            if status in (404, 412) or code in ("PreconditionFailed", "NoSuchKey"):
                raise StorageError(
                    f"object {s._where(self._key)} was replaced or deleted while it was being read",
                    hint="run the command again if the object was rewritten on purpose; nothing was mixed",
                ) from None
            raise s._translate(err, "read", self._key) from err
        except bce.BotoCoreError as err:
            raise s._translate(err, "read", self._key) from err
        match = _CONTENT_RANGE.match(str(resp.get("ContentRange") or ""))
        if match is None or int(match.group(1)) != self._pos:
            resp["Body"].close()
            raise StorageError(
                f"S3 endpoint {s.endpoint} ignored a ranged read of {s._where(self._key)}; cannot resume it",
                hint="the object store must support Range requests",
            )
        self._body = resp["Body"]
        self.resumes += 1

    def _close_body(self) -> None:
        try:
            self._body.close()
        except Exception:  # noqa: BLE001 - the connection is already broken
            pass

    def close(self) -> None:
        if not self.closed:
            self._close_body()
        super().close()
