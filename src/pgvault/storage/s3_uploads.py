"""Incomplete S3 multipart uploads under a repository: listed and aborted (``S3Storage.unfinished_writes``
and ``remove_unfinished``).

An upload that was never completed nor aborted (its writer was killed, or its abort could not reach
the store) is invisible to listings and reads, but its parts are stored and billed until someone
aborts it. ``ListMultipartUploads`` gives each one's key and ``Initiated`` time; the parts
(``ListParts``) give the bytes it holds and when its newest part arrived. The newest part is its
last sign of activity: ``Initiated`` alone would make a long upload still sending parts look old.

Permissions beyond the ones writing needs: ``s3:ListBucketMultipartUploads``,
``s3:ListMultipartUploadParts`` and ``s3:AbortMultipartUpload``. A store without them answers 403,
which is reported like any other refused call (a :class:`StorageError`).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import botocore.exceptions as bce

from pgvault.storage.base import UnfinishedWrite, validate_key, validate_prefix

if TYPE_CHECKING:
    from pgvault.storage.s3 import S3Storage

__all__ = ["abort_if_idle", "list_uploads"]


def _gone(exc: bce.ClientError) -> bool:
    """NoSuchUpload: the upload was completed or aborted since it was listed."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return error.get("Code") == "NoSuchUpload" or status == 404


def _parts(s: S3Storage, full: str, upload_id: str) -> tuple[int, dt.datetime | None] | None:
    """Bytes the upload's parts hold and when the newest arrived; None when the upload is gone."""
    size, newest = 0, None
    try:
        for page in s._client.get_paginator("list_parts").paginate(Bucket=s.bucket, Key=full, UploadId=upload_id):
            for part in page.get("Parts", []):
                size += part.get("Size", 0)
                t = part.get("LastModified")
                if t is not None and (newest is None or t > newest):
                    newest = t
    except bce.ClientError as exc:
        if _gone(exc):
            return None
        raise
    return size, newest


def list_uploads(s: S3Storage, prefix: str) -> list[UnfinishedWrite]:
    """The incomplete multipart uploads whose key is under the repository's ``prefix``, in key order."""
    validate_prefix(prefix)
    base = f"{s.prefix}/" if s.prefix else ""
    found: list[UnfinishedWrite] = []
    with s._errors("list the unfinished uploads under", prefix or None):
        pages = s._client.get_paginator("list_multipart_uploads").paginate(Bucket=s.bucket, Prefix=base + prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                full, upload_id = upload.get("Key", ""), upload.get("UploadId", "")
                if not full.startswith(base + prefix) or not upload_id:
                    continue  # a store that ignores Prefix: not this repository's
                key = full[len(base):]
                try:
                    validate_key(key)
                except ValueError:
                    continue
                parts = _parts(s, full, upload_id)
                if parts is None:
                    continue  # completed or aborted since the listing
                size, newest = parts
                started = upload["Initiated"]
                modified = max(started, newest) if newest is not None else started
                found.append(UnfinishedWrite(key, size, modified.astimezone(dt.UTC), upload_id))
    found.sort(key=lambda u: (u.key, u.token))
    return found


def abort_if_idle(s: S3Storage, write: UnfinishedWrite, idle_since: dt.datetime) -> bool:
    """Abort the upload unless a part arrived at or after ``idle_since`` (asked again, not taken
    from the listing); False when it is active or gone."""
    full = s._full(write.key)
    with s._errors("remove the unfinished upload of", write.key):
        parts = _parts(s, full, write.token)
        if parts is None:
            return False
        newest = parts[1]
        if write.modified >= idle_since or (newest is not None and newest >= idle_since):
            return False
        # A part its writer sends after this check is refused (NoSuchUpload) and that writer fails:
        # nothing partial is ever published.
        try:
            s._client.abort_multipart_upload(Bucket=s.bucket, Key=full, UploadId=write.token)
        except bce.ClientError as exc:
            if _gone(exc):
                return False
            raise
    return True
