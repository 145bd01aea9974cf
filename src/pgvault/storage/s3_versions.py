"""Versioned buckets and S3 Object Lock (``S3Storage.versions``, ``retain_until``, ``delete`` ...).

On a versioned bucket (every Object Lock bucket is one) a DeleteObject without a VersionId only
writes a *delete marker*: the key reads as absent and listings hide it, but every byte stays.
pgvault's "delete" means the bytes are gone, so on such a bucket :func:`purge` removes every version
of the key by VersionId. A version whose retain-until date lies ahead cannot go (the store answers
403 AccessDenied, indistinguishable from a missing permission): purge asks each version's date
first, leaves retained versions alone and keeps the key hidden behind a delete marker; ``expire``
removes them after their date (operations/maintenance/object_lock.py).

SeaweedFS answers ``ObjectLockConfigurationNotFoundError`` where AWS answers
``NoSuchObjectLockConfiguration``: both mean "not locked".
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bce

from pgvault.errors import StorageError
from pgvault.storage.base import ObjectVersion, validate_key, validate_prefix

if TYPE_CHECKING:
    from pgvault.storage.s3 import S3Storage

__all__ = ["LOCK_HINT", "LOCK_PERMISSIONS", "NO_LOCK_CODES", "check_lock", "lock_configuration", "purge", "retain_until", "versioning", "versions"]

LOCK_HINT = ("create the bucket with Object Lock (create-bucket --object-lock-enabled-for-bucket), or enable "
             "versioning and put-object-lock-configuration on it, or set repository.s3.object_lock: off")
log = logging.getLogger(__name__)
LOCK_PERMISSIONS = ("; with repository.s3.object_lock also s3:PutObjectRetention, s3:GetObjectRetention, "
                    "s3:GetBucketObjectLockConfiguration, s3:GetBucketVersioning, s3:ListBucketVersions and "
                    "s3:DeleteObjectVersion (a locked version itself also answers 403 until its date)")
NO_LOCK_CODES = frozenset({"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"})


def _code(exc: bce.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def versioning(s: S3Storage) -> str:
    """``""`` (never enabled), ``"Enabled"`` or ``"Suspended"``.

    Without ``s3:GetBucketVersioning`` (keys made before pgvault asked for it) and without Object
    Lock configured, deletes behave as before (one DeleteObject) instead of failing: warned once."""
    with s._errors("read the versioning state of"):
        try:
            return str(s._client.get_bucket_versioning(Bucket=s.bucket).get("Status", ""))
        except bce.ClientError as exc:
            if s.settings.object_lock is not None or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 403:
                raise
            log.warning("cannot read the versioning state of bucket %r (no s3:GetBucketVersioning): deletes on a "
                        "versioned bucket would leave old versions behind", s.bucket)
            return ""


def lock_configuration(s: S3Storage) -> dict[str, Any]:
    """``{"enabled": bool, "default_mode": "GOVERNANCE"|"COMPLIANCE"|None, "default_days": int|None,
    "default_years": int|None}`` from GetObjectLockConfiguration."""
    out: dict[str, Any] = {"enabled": False, "default_mode": None, "default_days": None, "default_years": None}
    with s._errors("read the Object Lock configuration of"):
        try:
            conf = s._client.get_object_lock_configuration(Bucket=s.bucket).get("ObjectLockConfiguration", {})
        except bce.ClientError as exc:
            if _code(exc) in NO_LOCK_CODES:
                return out
            raise
    out["enabled"] = conf.get("ObjectLockEnabled") == "Enabled"
    default = conf.get("Rule", {}).get("DefaultRetention", {})
    out["default_mode"] = default.get("Mode")
    out["default_days"] = default.get("Days")
    out["default_years"] = default.get("Years")
    return out


def versions(s: S3Storage, prefix: str = "") -> list[ObjectVersion]:
    """Every version and delete marker under ``prefix`` (relative to the repository), in key order,
    newest first within a key."""
    validate_prefix(prefix)
    base = f"{s.prefix}/" if s.prefix else ""
    found: list[ObjectVersion] = []
    with s._errors("list the object versions under", prefix or None):
        for page in s._client.get_paginator("list_object_versions").paginate(Bucket=s.bucket, Prefix=base + prefix):
            items: list[tuple[bool, Any]] = [(False, v) for v in page.get("Versions", [])]
            items += [(True, m) for m in page.get("DeleteMarkers", [])]
            for marker, v in items:
                key = v["Key"][len(base):]
                try:
                    validate_key(key)
                except ValueError:
                    continue
                found.append(ObjectVersion(key=key, version_id=str(v.get("VersionId") or "null"),
                                           latest=bool(v.get("IsLatest")), delete_marker=marker,
                                           size=int(v.get("Size") or 0), modified=v["LastModified"].astimezone(dt.UTC)))
    found.sort(key=lambda v: (v.key, not v.latest, -v.modified.timestamp()))
    return found


def retain_until(s: S3Storage, key: str, version_id: str) -> dt.datetime | None:
    """The retain-until date of one version (HEAD): None when it carries no retention."""
    full = s._full(key)
    with s._errors("read the retention of", key):
        head = s._client.head_object(Bucket=s.bucket, Key=full, VersionId=version_id)
    until = head.get("ObjectLockRetainUntilDate")
    return until.astimezone(dt.UTC) if until is not None else None


def delete_version(s: S3Storage, key: str, version_id: str) -> None:
    """Delete one version or delete marker by VersionId."""
    full = s._full(key)
    with s._errors("delete a version of", key):
        s._client.delete_object(Bucket=s.bucket, Key=full, VersionId=version_id)


def purge(s: S3Storage, key: str, now: dt.datetime | None = None) -> list[dt.datetime]:
    """Remove every version of ``key`` not under retention; return the retain-until dates of those
    that must stay (then the key is hidden behind a delete marker: it reads as absent).

    Older versions go first and the current one last, so no older version ever becomes current
    while others are still there (a released lock must not reappear with an old heartbeat)."""
    now = now or dt.datetime.now(dt.UTC)
    mine = [v for v in versions(s, key) if v.key == key]
    held = []
    for v in sorted(mine, key=lambda v: (v.latest, v.modified)):
        if not v.delete_marker:
            until = retain_until(s, key, v.version_id)
            if until is not None and until > now:
                held.append(until)
                continue
        if held and v.latest and v.delete_marker:
            continue  # the marker that hides what must stay
        delete_version(s, key, v.version_id)
    if held and not any(v.latest and v.delete_marker for v in mine):
        with s._errors("delete", key):
            s._client.delete_object(Bucket=s.bucket, Key=s._full(key))  # a delete marker
    return held


def check_lock(s: S3Storage) -> bool:
    """Refuse a bucket without Object Lock when pgvault is to lock what it writes (a locked put on
    it fails later with a bare 400 InvalidRequest); return whether a write probe is harmless (no
    bucket default retention, which would lock the probe object too)."""
    conf = lock_configuration(s)
    if not conf["enabled"]:
        mode = s.settings.object_lock.mode.lower() if s.settings.object_lock else "on"
        raise StorageError(
            f"repository.s3.object_lock is {mode}, but bucket {s.bucket!r} at {s.endpoint} has no Object Lock "
            "configuration: pgvault cannot lock what it writes there",
            hint=LOCK_HINT,
        )
    return conf["default_mode"] is None
