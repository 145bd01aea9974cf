"""What the repository holds for one archived WAL file: its checksum record, read in one place.

Each archived file is an object plus a JSON record (``<name>.json``, see
:func:`pgvault.repository.layout.wal_meta`): format, name, kind, object key, system identifier,
pipeline, raw/stored sizes and sha256, ``archived_at``, the pushing host/pid/push id, and for
timeline history files a copy of their text.  ``wal push`` writes it; fetch, verify, planning
and status read it through :func:`load_record` / :func:`archived_at` here, never through each
other.

Light on purpose (no pipeline, no storage client): the per-segment ``wal push`` foreground
imports :class:`PushResult` from here.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgvault.errors import IntegrityError
from pgvault.repository import layout

if TYPE_CHECKING:
    from pgvault.storage import Storage

RECORD_FORMAT = 1


@dataclass(frozen=True)
class PushResult:
    """What ``wal push`` did with one file: stored it now, or found it already stored."""

    name: str
    key: str
    already_archived: bool
    raw_size: int
    stored_size: int
    raw_sha256: str = ""


def load_record(storage: Storage, cluster: str, name: str) -> dict[str, Any]:
    """The checksum record of archived ``name``; :class:`IntegrityError` if absent or malformed."""
    from pgvault.storage import ObjectNotFound

    key = layout.wal_meta(cluster, name)
    try:
        doc = json.loads(storage.read_bytes(key))
    except ObjectNotFound:
        raise IntegrityError(f"archived {name} has no checksum record {key}; the archive is damaged") from None
    except ValueError:
        raise IntegrityError(f"checksum record {key} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
        raise IntegrityError(f"checksum record {key} has an unsupported format")
    return doc


def archived_at(storage: Storage, cluster: str, name: str) -> dt.datetime | None:
    """When the push of ``name`` wrote its record (timezone-aware), or None if absent or unreadable."""
    from pgvault.storage import ObjectNotFound

    try:
        doc = json.loads(storage.read_bytes(layout.wal_meta(cluster, name)))
        t = dt.datetime.fromisoformat(str(doc["archived_at"]))
    except (ObjectNotFound, ValueError, KeyError, TypeError):
        return None
    return t if t.tzinfo else None


def archived_at_iso(storage: Storage, cluster: str, name: str) -> str | None:
    """:func:`archived_at` as ISO 8601 text (what planning and ``status`` carry around)."""
    t = archived_at(storage, cluster, name)
    return t.isoformat() if t else None


__all__ = ["PushResult", "RECORD_FORMAT", "load_record", "archived_at", "archived_at_iso"]
