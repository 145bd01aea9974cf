"""S3 and S3-compatible object stores (AWS, SeaweedFS, MinIO, Ceph RGW, ...).

Objects are written with one PutObject when small and a multipart upload otherwise: S3 makes an
object visible only when the PutObject or CompleteMultipartUpload succeeds, which gives the
contract's "all or nothing" without temporary keys. Memory stays bounded: one part being filled
plus at most ``max_concurrency`` parts in flight.

Error messages name the bucket, key and endpoint but never credentials; a 404 is only reported as
"object not found" once the bucket is known to exist (see :meth:`S3Storage._missing`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import logging
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.config
import botocore.exceptions as bce

from pgvault.errors import ConfigError, PgvaultError, StorageError
from pgvault.storage import s3_versions
from pgvault.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectWriter,
    UnfinishedWrite,
    validate_key,
    validate_prefix,
)
from pgvault.storage.s3_read import open_body
from pgvault.storage.s3_write import MAX_PART as _MAX_PART
from pgvault.storage.s3_write import MIN_PART as _MIN_PART
from pgvault.storage.s3_write import S3Writer
from pgvault.storage.s3_write import code_status as _code_status

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from pgvault.policy.object_lock import LockRule

__all__ = ["S3Settings", "S3Storage"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024

_ACCESS_CODES = frozenset(
    {
        "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
        "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidClientTokenId", "Forbidden", "403",
    }
)  # fmt: skip
_STALL_HINT = (
    "check that the object store is up and reachable; the waits are repository.s3.connect_timeout, "
    "repository.s3.read_timeout and repository.s3.retries"
)
_ACCESS_HINT = (
    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile; the key needs s3:GetObject, s3:PutObject, "
    "s3:DeleteObject and s3:ListBucket (without ListBucket, S3 reports a missing object as 403); expire, verify and "
    "status also list and abort incomplete multipart uploads (s3:ListBucketMultipartUploads, "
    "s3:ListMultipartUploadParts, s3:AbortMultipartUpload)"
)


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible store; credentials default to boto3's usual chain
    (AWS_* environment variables, ``~/.aws`` config and credentials, instance roles)."""

    endpoint_url: str | None = None  # None: AWS itself
    region: str | None = None
    force_path_style: bool = False  # most self-hosted stores need http://host/bucket/key
    access_key_id: str | None = dataclasses.field(default=None, repr=False)
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    profile: str | None = None
    part_size: int = 16 * MiB  # first part size; grows for huge objects (see s3_write.S3Writer)
    max_concurrency: int = 4  # parts of one object uploaded in parallel
    max_attempts: int = 3  # botocore's retries.max_attempts (retries after the first try)
    # Without these a stalled store (accepting connections, never answering) blocks a backup for
    # ever. read_timeout bounds each wait for the next byte, not a whole transfer.
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    read_resumes: int = 5  # ranged re-opens of a download in a row without progress (see s3_read)
    # Downloads: an object larger than one read part is fetched as ranged GETs, this many parts in
    # flight (1: one GET stream); memory per open download is at most (read_concurrency + 1) parts.
    read_concurrency: int = 4
    read_part_size: int = 8 * MiB
    object_lock: LockRule | None = None  # Object Lock mode and duration stamped on every put (policy/object_lock)

    @property
    def call_bound(self) -> float:
        """The longest one S3 call can go unanswered: every attempt times out (backoff not counted)."""
        return (self.max_attempts + 1) * (self.connect_timeout + self.read_timeout)

    def __post_init__(self) -> None:
        problems = []
        if not _MIN_PART <= self.part_size <= _MAX_PART:
            problems.append(f"s3 part_size must be between 5 MiB and 5 GiB, got {self.part_size}")
        if self.max_concurrency < 1:
            problems.append(f"s3 max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_attempts < 0:
            problems.append(f"s3 max_attempts must not be negative, got {self.max_attempts}")
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                problems.append(f"s3 {name} must be positive, got {getattr(self, name)}")
        if self.read_resumes < 0:
            problems.append(f"s3 read_resumes must not be negative, got {self.read_resumes}")
        if self.read_concurrency < 1:
            problems.append(f"s3 read_concurrency must be at least 1, got {self.read_concurrency}")
        if not 64 * 1024 <= self.read_part_size <= _MAX_PART:
            problems.append(f"s3 read_part_size must be between 64 KiB and 5 GiB, got {self.read_part_size}")
        if problems:
            raise ConfigError(problems)


class _Unresponsive(bce.BotoCoreError):
    """Raised before sending while the breaker is open (see ``S3Storage._refuse_while_unresponsive``)."""

    fmt = "S3 endpoint did not answer a moment ago"


def _is_timeout(exc: BaseException) -> bool:
    """Did the endpoint fail to answer in time? A send that times out (the server stopped reading
    an upload) arrives as ConnectionClosedError wrapping urllib3's ProtocolError(TimeoutError)."""
    if isinstance(exc, (bce.ConnectTimeoutError, bce.ReadTimeoutError, _Unresponsive, TimeoutError)):
        return True
    inner = getattr(exc, "kwargs", {}).get("error") if isinstance(exc, bce.ConnectionClosedError) else None
    return inner is not None and any(isinstance(a, TimeoutError) for a in getattr(inner, "args", ()))


def _display_endpoint(url: str) -> str:
    """The endpoint without any user:password@ part, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class S3Storage:
    """A repository under ``s3://bucket/prefix``; keys are relative to the prefix."""

    def __init__(self, bucket: str, prefix: str = "", settings: S3Settings | None = None) -> None:
        prefix = prefix.strip("/")
        if not bucket:
            raise ConfigError(["s3 repository URL needs a bucket: s3://bucket/optional/prefix"])
        if prefix:
            try:
                validate_key(prefix)
            except ValueError:
                raise ConfigError([f"invalid s3 prefix {prefix!r}"]) from None
        self.bucket = bucket
        self.prefix = prefix
        self.settings = settings if settings is not None else S3Settings()
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._unresponsive_until = 0.0  # monotonic time until which requests fail at once
        self._versioning: str | None = None  # the bucket's versioning state, asked once (s3_versions)
        self._client = self._make_client()
        self.endpoint = _display_endpoint(self._client.meta.endpoint_url)
        # Mirror s3transfer: with botocore's default "when_supported" checksums, multipart uploads
        # declare CRC32 up front so the parts' checksums are accepted and validated by S3.
        when_supported = getattr(self._client.meta.config, "request_checksum_calculation", None) == "when_supported"
        self._checksum_args: dict[str, Any] = {"ChecksumAlgorithm": "CRC32"} if when_supported else {}

    def _make_client(self) -> S3Client:
        st = self.settings
        try:
            session = boto3.session.Session(
                aws_access_key_id=st.access_key_id,
                aws_secret_access_key=st.secret_access_key,
                aws_session_token=st.session_token,
                profile_name=st.profile,
                region_name=st.region,
            )
        except bce.ProfileNotFound:
            raise ConfigError([f"AWS profile {st.profile!r} not found"], hint="check ~/.aws/config or AWS_PROFILE") from None
        config = botocore.config.Config(
            retries={"max_attempts": st.max_attempts, "mode": "standard"},
            connect_timeout=st.connect_timeout,
            read_timeout=st.read_timeout,
            s3={"addressing_style": "path" if st.force_path_style else "auto"},
            max_pool_connections=max(10, st.max_concurrency + 2, st.read_concurrency + 2),
        )
        try:
            client = session.client("s3", endpoint_url=st.endpoint_url, config=config)
        except ValueError:  # a malformed endpoint URL
            shown = _display_endpoint(st.endpoint_url or "")
            raise ConfigError([f"invalid s3 endpoint_url {shown!r}"], hint="e.g. https://s3.example.com:9000") from None
        client.meta.events.register("before-send.s3", self._refuse_while_unresponsive)
        return client

    def _refuse_while_unresponsive(self, **_: Any) -> None:
        """Fail a request at once while the endpoint is known not to answer (a circuit breaker).

        Once a call has waited out every attempt, the cleanup that follows the failure (aborting
        the multipart upload, releasing the lock, recording the job) would each wait as long
        again: a stalled store would turn one bounded wait into several. For ``call_bound``
        seconds after such a timeout, requests fail immediately instead; later ones try again,
        so a long-running pusher recovers by itself. The exception is not one botocore retries.
        """
        if time.monotonic() < self._unresponsive_until:
            raise _Unresponsive()

    def _timed_out(self, exc: Exception, action: str, where: str) -> StorageError:
        """The StorageError for an endpoint that did not answer; opens the breaker."""
        st = self.settings
        if isinstance(exc, _Unresponsive):
            return StorageError(
                f"S3 endpoint {self.endpoint} did not answer a moment ago; not trying again yet to {action} {where}",
                hint=_STALL_HINT,
            )
        self._unresponsive_until = time.monotonic() + st.call_bound
        connect = isinstance(exc, bce.ConnectTimeoutError)
        what, limit = ("accept a connection", st.connect_timeout) if connect else ("answer", st.read_timeout)
        attempts = st.max_attempts + 1
        tries = f"{attempts} attempts" if attempts > 1 else "1 attempt"
        return StorageError(
            f"S3 endpoint {self.endpoint} did not {what} within {limit:g}s ({tries}) to {action} {where}",
            hint=_STALL_HINT,
        )

    # -- helpers -------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str | None) -> str:
        return f"{self.url}/{key}" if key else self.url

    def _no_bucket(self) -> StorageError:
        return StorageError(
            f"bucket {self.bucket!r} does not exist at {self.endpoint}",
            hint=f"create it (e.g. aws s3 mb s3://{self.bucket}) or fix the repository URL",
        )

    def _translate(self, exc: Exception, action: str, key: str | None = None) -> PgvaultError:
        """Map a botocore exception to a one-line pgvault error without secrets."""
        where = self._where(key)
        if isinstance(exc, bce.ClientError):
            code, status = _code_status(exc)
            if code == "NoSuchBucket":
                return self._no_bucket()
            if code in _ACCESS_CODES or status == 403:
                lock = self.settings.object_lock is not None
                return StorageError(
                    f"access denied to {self.url}: check credentials and permissions ({code or status})",
                    hint=_ACCESS_HINT + (s3_versions.LOCK_PERMISSIONS if lock else ""),
                )
            if (code == "PreconditionFailed" or status == 412) and key is not None:  # only If-None-Match
                return ObjectExists(f"object {key!r} already exists in {self.url}")
            if code == "NoSuchKey" and key is not None:
                return ObjectNotFound(f"object {key!r} does not exist in {self.url}")
            if code == "InvalidRequest" and self.settings.object_lock is not None and action == "write":
                return StorageError(f"cannot write {where}: {self.endpoint} refused a locked put (InvalidRequest); "
                                    f"does bucket {self.bucket!r} have Object Lock?", hint=s3_versions.LOCK_HINT)
            return StorageError(f"cannot {action} {where}: S3 error {code or '?'} (HTTP {status}) from {self.endpoint}")
        if _is_timeout(exc):
            return self._timed_out(exc, action, where)
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)):
            return StorageError(
                f"no usable S3 credentials for {self.url}",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure an AWS profile",
            )
        if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError)):
            return StorageError(
                f"cannot reach S3 endpoint {self.endpoint} to {action} {where}: {exc.__class__.__name__}",
                hint="check the endpoint URL, the network and any proxy settings",
            )
        return StorageError(f"cannot {action} {where}: {exc}")

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None, *, lookup: bool = False) -> Iterator[None]:
        """Translate botocore errors raised in the block.

        ``lookup``: the block reads ``key``, so a bare 404 may mean "no such key". HEAD responses
        have no body, and "no such key" and "no such bucket" both arrive as a bare 404. Reporting a
        missing bucket as a missing object would make restore_command exit 1 ("file not found")
        and PostgreSQL would end recovery early, so the bucket is checked before trusting it.
        """
        try:
            yield
        except bce.ClientError as exc:
            code, status = _code_status(exc)
            if lookup and key is not None and status == 404 and code not in ("NoSuchKey", "NoSuchBucket"):
                self._require_bucket(key)
                raise ObjectNotFound(f"object {key!r} does not exist in {self.url}") from None
            raise self._translate(exc, action, key) from exc
        except bce.BotoCoreError as exc:
            raise self._translate(exc, action, key) from exc

    def _require_bucket(self, key: str | None = None) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except bce.ClientError as exc:
            if _code_status(exc)[1] == 404:
                raise self._no_bucket() from None
            raise self._translate(exc, "access", key) from exc
        except bce.BotoCoreError as exc:
            raise self._translate(exc, "access", key) from exc

    # -- the Storage contract ------------------------------------------------------------------

    def open_write(self, key: str, *, if_absent: bool = False) -> ObjectWriter:
        """Start writing ``key``; the object appears only on ``commit`` (see ``Storage.open_write``)."""
        return S3Writer(self, key, if_absent)

    def put_if_absent(self, key: str, data: bytes) -> None:
        """Create ``key`` unless it exists (``If-None-Match: *``); raise :class:`ObjectExists` if it does."""
        with self.open_write(key, if_absent=True) as w:
            w.write(data)

    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` as a buffered stream; raise :class:`ObjectNotFound` if it does not exist."""
        full = self._full(key)
        with self._errors("read", key, lookup=True):
            resp = self._client.get_object(Bucket=self.bucket, Key=full)
        return io.BufferedReader(open_body(self, key, full, resp), buffer_size=256 * 1024)

    def read_bytes(self, key: str) -> bytes:
        """Return the whole object; raise :class:`ObjectNotFound` if it does not exist."""
        with self.open_read(key) as f:
            return f.read()

    def stat(self, key: str) -> ObjectInfo:
        """Return size and mtime of ``key``; raise :class:`ObjectNotFound` if it does not exist."""
        full = self._full(key)
        with self._errors("stat", key, lookup=True):
            resp = self._client.head_object(Bucket=self.bucket, Key=full)
        return ObjectInfo(key=key, size=resp["ContentLength"], modified=resp["LastModified"].astimezone(dt.UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix`` (recursively), in key order.

        The listing is collected and sorted before the first item is returned: AWS lists in UTF-8
        byte order, but SeaweedFS (and other stores built on a directory tree) list "a/x" before
        "a-b", and the contract promises key order.
        """
        validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        items: list[ObjectInfo] = []
        with self._errors("list", prefix or None):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(base) :]
                    try:
                        validate_key(key)
                    except ValueError:
                        continue  # "dir/" markers made by consoles and sync tools are not objects
                    modified = obj["LastModified"].astimezone(dt.UTC)
                    items.append(ObjectInfo(key=key, size=obj["Size"], modified=modified))
        items.sort(key=lambda o: o.key)
        return iter(items)

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting an absent key is not an error.

        On a versioned bucket every version of the key goes (by VersionId), not just a delete
        marker hiding the bytes; versions under Object Lock retention stay, hidden by a delete
        marker, until ``expire`` removes them after their date (see ``s3_versions.purge``)."""
        full = self._full(key)
        if self.versioning():
            s3_versions.purge(self, key)
            return
        try:
            with self._errors("delete", key, lookup=True):
                self._client.delete_object(Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            pass  # S3 answers 204 for an absent key; some compatible stores answer 404

    def unfinished_writes(self, prefix: str = "") -> Iterator[UnfinishedWrite]:
        """Yield the incomplete multipart uploads under ``prefix``, in key order (see ``s3_uploads``)."""
        from pgvault.storage.s3_uploads import list_uploads

        return iter(list_uploads(self, prefix))

    def remove_unfinished(self, write: UnfinishedWrite, *, idle_since: dt.datetime) -> bool:
        """Abort the upload if no part arrived since ``idle_since`` (see ``Storage.remove_unfinished``)."""
        from pgvault.storage.s3_uploads import abort_if_idle

        return abort_if_idle(self, write, idle_since)

    def check_writable(self) -> None:
        """Check that the bucket exists, then put and delete a probe object under the prefix.

        The explicit bucket check matters: some stores (SeaweedFS with an admin key) create a
        missing bucket on the first PUT instead of failing, which would hide a typo in the URL.
        """
        self._require_bucket()
        if self.settings.object_lock is not None:
            if not s3_versions.check_lock(self):
                return  # a bucket default retention would lock the probe: the configuration check is the check
        probe = f".pgvault-probe-{secrets.token_hex(8)}"
        with self._errors("write", probe):
            self._client.put_object(Bucket=self.bucket, Key=self._full(probe), Body=b"pgvault write probe\n")
        self.delete(probe)  # every version of it, on a versioned bucket

    # -- versions and Object Lock (VersionedStorage; see s3_versions) ---------------------------

    def _lock_args(self, key: str) -> dict[str, Any]:
        """ObjectLockMode + RetainUntilDate for a put of ``key``; none for lock leases
        (``<cluster>/locks/<name>``): they are rewritten by heartbeats and deleted on release, and
        locking them would only pile up retained versions (docs/design.md, "Immutable backups")."""
        rule = self.settings.object_lock
        parts = key.split("/")
        if rule is None or (len(parts) == 3 and parts[1] == "locks"):
            return {}
        return {"ObjectLockMode": rule.mode, "ObjectLockRetainUntilDate": rule.retain_until(dt.datetime.now(dt.UTC))}

    @property
    def write_once(self) -> bool:
        """Everything pgvault writes here is locked: it writes new keys instead of rewriting any."""
        return self.settings.object_lock is not None

    def versioning(self) -> str:
        if self._versioning is None:
            self._versioning = s3_versions.versioning(self)
        return self._versioning

    # The rest of VersionedStorage: functions of s3_versions taking the storage first, as methods.
    versions = s3_versions.versions
    retain_until = s3_versions.retain_until
    delete_version = s3_versions.delete_version
    lock_configuration = s3_versions.lock_configuration
