"""Writing an S3 object: a multipart upload, parts sent in parallel, published only by ``commit``.

Split from :mod:`pgvault.storage.s3` (the mirror of :mod:`pgvault.storage.s3_read`); it calls back
into its :class:`~pgvault.storage.s3.S3Storage` for the client, error translation and lock headers.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import botocore.exceptions as bce

from pgvault.errors import StorageError
from pgvault.storage.base import WriterContextMixin

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from pgvault.storage.s3 import S3Storage

__all__ = ["MAX_PART", "MIN_PART", "S3Writer", "code_status"]

log = logging.getLogger("pgvault.storage.s3")

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3: every part but the last must be at least 5 MiB
MAX_PART = 5 * 1024 * MiB  # S3: at most 5 GiB per part
MAX_PARTS = 10_000  # S3: at most 10,000 parts per upload


def code_status(exc: bce.ClientError) -> tuple[str, int]:
    """An S3 error's code and HTTP status."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


class S3Writer(WriterContextMixin):
    """Buffers one part; uploads full parts in a thread pool; completes or aborts the upload."""

    def __init__(self, storage: S3Storage, key: str, if_absent: bool = False) -> None:
        self._s = storage
        self._key = key
        # S3 conditional writes: PutObject and CompleteMultipartUpload both take If-None-Match: *
        # and answer 412 when the key exists, so the check and the write are one atomic step.
        self._condition: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        self._full = storage._full(key)
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._next_part = 1
        self._futures: list[cf.Future[CompletedPartTypeDef]] = []
        self._pool: cf.ThreadPoolExecutor | None = None
        # Acquired before a part is queued, released when its upload ends: bounds memory.
        self._slots = threading.BoundedSemaphore(storage.settings.max_concurrency)
        self._state = "open"  # open → committed | aborted

    def _part_size(self) -> int:
        # 10,000 parts of 16 MiB cap an object at 156 GiB; doubling the part size every 1,000
        # parts lifts that cap to terabytes while small and medium objects keep the set size.
        return min(self._s.settings.part_size << ((self._next_part - 1) // 1000), MAX_PART)

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Append ``data``, uploading each part as it fills; return the number of bytes accepted."""
        if self._state != "open":
            raise ValueError(f"write to a {self._state} writer for {self._key!r}")
        view = memoryview(data).cast("B")
        size = len(view)
        try:
            while view:
                room = self._part_size() - len(self._buf)
                self._buf += view[:room]
                view = view[room:]
                if len(self._buf) >= self._part_size():
                    self._send_part()
        except BaseException:
            self.abort()  # never leave a half-sent multipart upload behind a failed write
            raise
        return size

    def _send_part(self) -> None:
        s = self._s
        for future in self._futures:  # surface a failed part before queuing more
            exc = future.exception() if future.done() else None
            if exc is not None:
                raise exc
        if self._next_part > MAX_PARTS:
            raise StorageError(f"object {s._where(self._key)} exceeds {MAX_PARTS} parts", hint="raise s3 part_size")
        if self._upload_id is None:
            with s._errors("write", self._key):
                resp = s._client.create_multipart_upload(Bucket=s.bucket, Key=self._full, **s._checksum_args,
                                                        **s._lock_args(self._key))
            self._upload_id = resp["UploadId"]
            self._pool = cf.ThreadPoolExecutor(s.settings.max_concurrency, thread_name_prefix="pgvault-s3")
        assert self._pool is not None
        part, self._buf = self._buf, bytearray()
        number, self._next_part = self._next_part, self._next_part + 1
        self._slots.acquire()
        try:
            future = self._pool.submit(self._upload_part, number, part)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        self._futures.append(future)

    def _upload_part(self, number: int, body: bytearray) -> CompletedPartTypeDef:
        s = self._s
        assert self._upload_id is not None
        with s._errors("write", self._key):
            resp = s._client.upload_part(
                Bucket=s.bucket,
                Key=self._full,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=cast(bytes, body),  # botocore accepts bytearray (its stubs say no); saves a copy
                **s._checksum_args,
            )
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": resp["ETag"]}
        # An upload created with a checksum algorithm must list every part's checksum on completion.
        if "ChecksumCRC32" in resp and s._checksum_args:
            part["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return part

    def commit(self) -> None:
        """Upload what is buffered and complete the upload; a second ``commit`` is a no-op."""
        if self._state == "committed":
            return
        if self._state == "aborted":
            raise ValueError(f"commit of an aborted writer for {self._key!r}")
        s = self._s
        try:
            if self._upload_id is None:
                body = bytes(self._buf)
                self._publish(lambda: s._client.put_object(Bucket=s.bucket, Key=self._full, Body=body, **self._condition,
                                                                **s._lock_args(self._key)))
            else:
                if self._buf:
                    self._send_part()
                parts = [f.result() for f in self._futures]  # re-raises the first failed part
                upload_id = self._upload_id
                self._publish(lambda: s._client.complete_multipart_upload(
                    Bucket=s.bucket, Key=self._full, UploadId=upload_id, MultipartUpload={"Parts": parts},
                    **self._condition,
                ))  # fmt: skip
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self._buf = bytearray()
        self._shutdown()

    def _publish(self, call: Callable[[], object]) -> None:
        """Run the call that makes the object visible; 412 on a conditional write → ObjectExists.

        AWS answers 409 while another conditional write to the key is in flight; a retry then
        resolves to success or 412. If a retried conditional PUT follows one whose response was
        lost, the retry sees our own object and reports ObjectExists: callers that care compare
        what is stored (archive push does).
        """
        for attempt in range(3):
            try:
                call()
                return
            except bce.ClientError as exc:
                if self._condition and code_status(exc)[1] == 409 and attempt < 2:
                    continue
                raise self._s._translate(exc, "write", self._key) from exc
            except bce.BotoCoreError as exc:
                raise self._s._translate(exc, "write", self._key) from exc

    def abort(self) -> None:
        """Abort the multipart upload (best effort); a no-op after ``commit`` or ``abort``."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._buf = bytearray()
        # Parts still uploading would outlive an early AbortMultipartUpload and leave storage behind.
        self._shutdown()
        if self._upload_id is not None:
            try:
                self._s._client.abort_multipart_upload(Bucket=self._s.bucket, Key=self._full, UploadId=self._upload_id)
            except (bce.ClientError, bce.BotoCoreError) as exc:
                # Nothing became visible; the orphaned parts only cost space until a lifecycle rule
                # (AbortIncompleteMultipartUpload) removes them. Raising here would hide the real error.
                log.warning("could not abort multipart upload of %s: %s", self._s._where(self._key), exc)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
