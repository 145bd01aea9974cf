"""What the repository holds for one archived WAL file: its checksum record, typed, in one place.

Each archived file is an object plus a JSON record (``<name>.json``, see
:func:`pgvault.repository.layout.wal_meta`), a :class:`WalRecord`: format, name, kind, object key,
system identifier, pipeline, raw/stored sizes and sha256, ``archived_at``, the pushing
host/pid/push id, and for timeline history files a copy of their text.  ``wal push`` writes it
(:func:`save_record`); fetch, verify, planning and status read it through :func:`load_record` /
:func:`archived_at` here, never through each other.

Light on purpose (no pipeline, no storage client): the per-segment ``wal push`` foreground imports
:class:`PushResult` from here.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgvault.errors import IntegrityError
from pgvault.pg import wal
from pgvault.repository import layout
from pgvault.repository.stored_json import Fields

if TYPE_CHECKING:
    from pgvault.pipeline import PipelineSpec, StreamResult
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


@dataclass(frozen=True)
class WalRecord:
    """The checksum record of one archived WAL file.

    ``push`` writes it *before* committing the object (so an object is never visible without the
    record that lets push compare and fetch verify it): a record whose object is missing is a push
    under way or one that died, told apart by ``push_id``/``host``/``pid`` and ``archived_at``.
    """

    name: str
    kind: wal.WalFileKind
    key: str  # the object holding the file, written through ``pipeline``
    system_identifier: str
    pipeline: PipelineSpec
    checksums: StreamResult  # raw and stored size and sha256: top-level keys in the JSON
    archived_at: dt.datetime  # timezone-aware: when the push wrote this record
    # Who pushed; absent in records written before pushes claimed their record (issue 8).
    push_id: str | None = None
    host: str | None = None
    pid: int | None = None
    history: str | None = None  # timeline history files: their text, readable without the private key

    def to_json(self) -> dict[str, Any]:
        """The stored form; keys in the order ``wal push`` has always written them."""
        doc: dict[str, Any] = {
            "format": RECORD_FORMAT, "name": self.name, "kind": self.kind.value, "key": self.key,
            "system_identifier": self.system_identifier, "pipeline": self.pipeline.to_json(),
            "archived_at": self.archived_at.isoformat(),
        }  # fmt: skip
        for field in ("push_id", "host", "pid"):
            if getattr(self, field) is not None:
                doc[field] = getattr(self, field)
        doc.update(self.checksums.to_json())
        if self.history is not None:
            doc["history"] = self.history
        return doc

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode()

    @classmethod
    def from_json(cls, doc: object, *, where: str) -> WalRecord:
        """Validate and type a record; :class:`IntegrityError` naming every bad or missing key.
        Unknown keys are ignored, so records of a newer pgvault stay readable."""
        from pgvault.pipeline import PipelineSpec, StreamResult

        f = Fields(doc, f"checksum record {where}")
        if f.doc.get("format") != RECORD_FORMAT:
            raise IntegrityError(f"checksum record {where} has an unsupported format ({f.doc.get('format')!r})")
        kind_text = f.text("kind")
        kind = next((k for k in wal.WalFileKind if k.value == kind_text), None)
        if kind_text is not None and kind is None:
            f.problems.append(f"'kind' must be one of {', '.join(k.value for k in wal.WalFileKind)} (got {kind_text!r})")
        rec = dict(
            name=f.text("name"), kind=kind, key=f.text("key"), system_identifier=f.identifier("system_identifier"),
            pipeline=f.nested("pipeline", PipelineSpec.from_json),
            checksums=f.parsed("checksums", lambda: StreamResult.from_json(f.doc)),
            archived_at=f.time("archived_at"),
            push_id=f.text("push_id", required=False), host=f.text("host", required=False),
            pid=f.integer("pid", required=False, minimum=1), history=f.text("history", required=False),
        )  # fmt: skip
        f.check()
        return cls(**rec)  # type: ignore[arg-type]

    @classmethod
    def loads(cls, data: bytes, *, where: str) -> WalRecord:
        try:
            doc = json.loads(data)
        except ValueError:
            raise IntegrityError(f"checksum record {where} is not valid JSON") from None
        return cls.from_json(doc, where=where)


def read_record(storage: Storage, cluster: str, name: str) -> WalRecord | None:
    """The checksum record of ``name``, or None when there is none; :class:`IntegrityError` if malformed."""
    from pgvault.storage import ObjectNotFound

    key = layout.wal_meta(cluster, name)
    try:
        data = storage.read_bytes(key)
    except ObjectNotFound:
        return None
    return WalRecord.loads(data, where=key)


def load_record(storage: Storage, cluster: str, name: str) -> WalRecord:
    """The checksum record of archived ``name``; :class:`IntegrityError` if absent or malformed."""
    rec = read_record(storage, cluster, name)
    if rec is None:
        raise IntegrityError(f"archived {name} has no checksum record {layout.wal_meta(cluster, name)}; "
                             "the archive is damaged")
    return rec


def save_record(storage: Storage, cluster: str, rec: WalRecord, *, replace: bool) -> None:
    """Store ``rec``: create-only (:class:`ObjectExists` when a record is there), or with
    ``replace`` over whatever is there (a push taking over a dead one's record)."""
    key = layout.wal_meta(cluster, rec.name)
    if replace:
        with storage.open_write(key) as w:
            w.write(rec.dumps())
    else:
        storage.put_if_absent(key, rec.dumps())


def archived_at(storage: Storage, cluster: str, name: str) -> dt.datetime | None:
    """When the push of ``name`` wrote its record (timezone-aware), or None if absent or unreadable."""
    try:
        rec = read_record(storage, cluster, name)
    except IntegrityError:
        return None
    return rec.archived_at if rec else None


def archived_at_iso(storage: Storage, cluster: str, name: str) -> str | None:
    """:func:`archived_at` as ISO 8601 text (what planning and ``status`` carry around)."""
    t = archived_at(storage, cluster, name)
    return t.isoformat() if t else None


__all__ = ["PushResult", "RECORD_FORMAT", "WalRecord", "read_record", "load_record", "save_record", "archived_at",
           "archived_at_iso"]
