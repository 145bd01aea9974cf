"""The file list of a base backup (``files.json.zst`` beside its manifest): every regular file its
tars hold, so that the next incremental knows what this backup has, and ``restore-cluster
--delta`` knows what a data directory's files must be.

Stored compressed but **not encrypted**: an incremental backup is planned from it with only the
age recipients (backups never need the private key).  So it holds no content of a file that could
carry a secret: SHA-256 is recorded for relation files only (table and index pages), never for
configuration files, whose few bytes a hash could betray.  Its own size and SHA-256 are in the
manifest (``files``), like every object's.

Format: ``{"format": 1, "files": [[path, size, sha256 | null, blocks | null, tar], ...]}`` where
``path`` is the file's path in the restored data directory (``pg_tblspc/<oid>/...`` for a
tablespace's files), ``blocks`` is set for an incremental file (the number of blocks stored in
its ``INCREMENTAL.`` member) and ``tar`` is the key of the tar that holds it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from pgvault.errors import IntegrityError
from pgvault.pipeline import PipelineSpec

FILE_LIST_NAME = "files.json.zst"
FILES_SPEC = PipelineSpec("zstd", None, "none", ())
_FORMAT = 1


@dataclass(frozen=True)
class FileEntry:
    """One regular file of a base backup."""

    path: str
    size: int
    sha256: str | None  # relation files only
    blocks: int | None  # an incremental file: blocks stored; None: the whole file is stored
    tar: str  # key (relative to the backup's folder) of the tar holding it

    def to_json(self) -> list[object]:
        return [self.path, self.size, self.sha256, self.blocks, self.tar]

    @classmethod
    def from_json(cls, row: list[object]) -> FileEntry:
        path, size, sha, blocks, obj = row
        return cls(str(path), int(str(size)), None if sha is None else str(sha), None if blocks is None else int(str(blocks)),
                   str(obj))


def dumps(entries: Iterable[FileEntry]) -> bytes:
    """The list as stored before compression (sorted by path: the same backup gives the same bytes)."""
    rows = [e.to_json() for e in sorted(entries, key=lambda e: e.path)]
    return (json.dumps({"format": _FORMAT, "files": rows}, separators=(",", ":")) + "\n").encode()


def loads(data: bytes, *, where: str) -> dict[str, FileEntry]:
    """The entries by path; :class:`IntegrityError` when ``data`` is not a file list."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise IntegrityError(f"{where} is not a format-{_FORMAT} file list")
        entries = [FileEntry.from_json(r) for r in doc["files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{where} is unreadable: {type(e).__name__}: {e}") from None
    return {e.path: e for e in entries}
