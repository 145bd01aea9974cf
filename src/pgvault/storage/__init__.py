"""Repository backends behind one contract, chosen by URL.

``open_storage`` is the only place that maps a URL to a backend, so callers never branch on the
kind of repository. Backends with heavy dependencies (boto3) are imported only when used.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from pgvault.errors import ConfigError
from pgvault.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectWriter,
    Storage,
    StorageError,
    UnfinishedWrite,
)

if TYPE_CHECKING:
    from pgvault.config import Settings
    from pgvault.storage.memory import MemoryStorage
    from pgvault.storage.s3 import S3Settings

__all__ = [
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectWriter",
    "Storage",
    "StorageError",
    "UnfinishedWrite",
    "open_storage",
    "s3_settings",
]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# memory://name gives every caller in the process the same repository, like a real URL would.
_memory: dict[str, MemoryStorage] = {}
_memory_lock = threading.Lock()


def s3_settings(s: Settings) -> S3Settings:
    """Storage-layer S3 settings from the config (credentials stay with boto3's usual chain)."""
    from pgvault.storage.s3 import S3Settings  # boto3 costs ~70 ms and 12 MB: only for s3://

    return S3Settings(
        endpoint_url=s.s3.endpoint_url,
        region=s.s3.region,
        force_path_style=s.s3.force_path_style,
        profile=s.s3.profile,
        part_size=s.s3.part_size_mb << 20,
        max_concurrency=s.s3.max_concurrency,
        read_concurrency=s.s3.read_concurrency,
        connect_timeout=s.s3.connect_timeout,
        read_timeout=s.s3.read_timeout,
        max_attempts=s.s3.retries,
        object_lock=s.object_lock_rule(),
    )


def open_storage(url: str, *, s3: S3Settings | None = None) -> Storage:
    """Return the backend for a repository URL.

    ``file:///abs/path`` or a plain path (relative paths are resolved against the working
    directory) → local directory; ``s3://bucket/optional/prefix`` → S3 with ``s3`` settings (or
    boto3's defaults); ``memory://name`` → a process-wide in-memory repository (tests). Anything
    else raises :class:`ConfigError`. Nothing is contacted here: call ``check_writable`` for that.
    """
    match = _SCHEME.match(url)
    if match is None:
        if not url:
            raise ConfigError(["repository URL is empty"], hint="use a directory path, file:///path or s3://bucket/prefix")
        from pgvault.storage.local import LocalStorage

        return LocalStorage(Path(url))
    scheme = match.group(1).lower()
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Never echo the URL: the part before "@" is likely a secret.
        raise ConfigError(
            [f"{scheme}:// repository URL must not contain credentials"],
            hint="use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an AWS profile or the s3 settings of the config file",
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError([f"invalid file URL {url!r}: use file:///absolute/path"])
        from pgvault.storage.local import LocalStorage

        return LocalStorage(Path(unquote(parts.path)))
    if scheme == "s3":
        if not parts.netloc:
            raise ConfigError([f"invalid s3 URL {url!r}: use s3://bucket/optional/prefix"])
        from pgvault.storage.s3 import S3Settings as _S3Settings
        from pgvault.storage.s3 import S3Storage

        return S3Storage(parts.netloc, unquote(parts.path), s3 if s3 is not None else _S3Settings())
    if scheme == "memory":
        from pgvault.storage.memory import MemoryStorage

        name = url[len("memory://") :]
        with _memory_lock:
            if name not in _memory:
                _memory[name] = MemoryStorage(name)
            return _memory[name]
    raise ConfigError(
        [f"unsupported repository URL scheme {scheme!r}"],
        hint="use a directory path, file:///path, s3://bucket/prefix or memory://name",
    )
