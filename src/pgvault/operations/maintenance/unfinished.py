"""How many unfinished writes a cluster's part of the repository holds: what ``verify --all`` and
``status`` report (``expire`` plans their removal in :mod:`pgvault.policy.retention`).

An unfinished write (:class:`pgvault.storage.UnfinishedWrite`: a local ``.tmp-*`` file, an
incomplete S3 multipart upload) is invisible to every listing, so without this count the space a
killed writer leaves behind (issue 8: 45 files, 135 MiB after a series of kills) is seen nowhere.
One older than ``retention.debris_grace`` is a leftover that ``expire --apply`` would remove; a
younger one may be a backup at work, so it is counted but not judged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pgvault.errors import StorageError
from pgvault.output import human_bytes
from pgvault.policy.retention import fmt_duration
from pgvault.storage import Storage, UnfinishedWrite

__all__ = ["UnfinishedSummary", "scan", "summarize"]

_LEFT_BY = "left by killed writers (local .tmp-* files, incomplete S3 multipart uploads)"


def _age(seconds: float) -> str:
    return fmt_duration(seconds - seconds % 60 if seconds >= 3600 else seconds)  # "2d3m", not "2d3m8s"


@dataclass(frozen=True)
class UnfinishedSummary:
    """Unfinished writes under ``<cluster>/``: all of them, and those older than the grace."""

    count: int = 0
    bytes: int = 0
    oldest_age: float | None = None  # seconds since the oldest one was last written to
    stale: int = 0  # older than the grace: leftovers expire removes
    stale_bytes: int = 0
    grace: float = 24 * 3600.0
    error: str | None = None  # they could not be listed (e.g. a key without s3:ListBucketMultipartUploads)

    def describe(self) -> str:
        """One line for people: what is there and whether it is expire's to remove."""
        if self.error:
            return f"not counted: {self.error}"
        if not self.count:
            return "none"
        return f"{self.count} ({human_bytes(self.bytes)}), {self.judgement()}"

    def judgement(self) -> str:
        """Whether they are leftovers (older than the grace) or may be writes in progress."""
        g = fmt_duration(self.grace)
        if not self.stale:
            return f"all younger than retention.debris_grace ({g}): writes in progress, or left so recently that expire waits"
        which = "all" if self.stale == self.count else f"{self.stale} ({human_bytes(self.stale_bytes)})"
        return (f"{which} older than retention.debris_grace ({g}), the oldest last written "
                f"{_age(self.oldest_age or 0)} ago: {_LEFT_BY}; pgvault expire --apply removes them")

    def warning(self) -> str | None:
        """The status WARNING when any is older than the grace, else None."""
        if not self.stale:
            return None
        return (f"{self.stale} unfinished write(s) older than retention.debris_grace ({fmt_duration(self.grace)}): "
                f"{human_bytes(self.stale_bytes)}, the oldest last written {_age(self.oldest_age or 0)} ago, "
                f"{_LEFT_BY}; pgvault expire --apply removes them")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"count": self.count, "bytes": self.bytes, "oldest_age_seconds": self.oldest_age,
                               "older_than_grace": self.stale, "older_than_grace_bytes": self.stale_bytes,
                               "grace_seconds": self.grace}
        if self.error:
            doc["error"] = self.error
        return doc


def summarize(writes: Iterable[UnfinishedWrite], now: dt.datetime, grace: float) -> UnfinishedSummary:
    """Count ``writes`` as of ``now`` (pure)."""
    ages = [(max(0.0, (now - w.modified).total_seconds()), w.size) for w in writes]
    stale = [(age, size) for age, size in ages if age > grace]
    return UnfinishedSummary(count=len(ages), bytes=sum(size for _, size in ages),
                             oldest_age=max((age for age, _ in ages), default=None), stale=len(stale),
                             stale_bytes=sum(size for _, size in stale), grace=grace)


def scan(storage: Storage, cluster: str, now: dt.datetime, grace: float) -> UnfinishedSummary:
    """List the cluster's unfinished writes and count them; a refused listing is recorded, not
    raised, so that status and verify still judge everything else."""
    try:
        return summarize(storage.unfinished_writes(f"{cluster}/"), now, grace)
    except StorageError as e:
        return UnfinishedSummary(grace=grace, error=e.message)
