"""How one base backup reads its regular files into the tars, shared by its parallel parts: each
file's pages checked (page_check), its entry in the file list (repository/file_list), and, in an
incremental or differential backup, only the pages changed since the reference stored.

**Incremental files** (docs/design.md, "Physical backups at production scale"): a relation's main
fork that the reference also had, in a database that was not re-created since, is read once whole
(pages checked, hashed, each page's LSN looked at), then stored as PostgreSQL 17's
``INCREMENTAL.<name>`` member: the pages whose LSN is at or after the reference's start LSN, or 0
(new pages), or beyond the reference's length, read again with ``pread``.  A page that changes
between the two reads is as safe as any page a hot backup reads: the WAL from this backup's start
holds a full-page image of its first change.  Visibility-map and free-space-map forks, init forks
and every other file are stored whole (the VM's bit clears and the FSM are not WAL-logged with a
page LSN); so is a file where more than 90 % of the pages changed (PostgreSQL's own threshold).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tarfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from pgvault.errors import PgvaultError
from pgvault.operations.physical.page_check import FileCheck, PageCheck
from pgvault.pg import pages
from pgvault.pg.pages import BLCKSZ, RelationFile
from pgvault.repository.file_list import FileEntry

INCREMENTAL_MAGIC = 0xD3AE1F0D  # PostgreSQL's INCREMENTAL_MAGIC (src/include/backup/basebackup_incremental.h)
INCREMENTAL_PREFIX = "INCREMENTAL."  # the member of a file stored incrementally: INCREMENTAL.<name>, beside it
# A file whose pages are checked is read in batches of this size (whole pages): numpy's checksum
# over 1 MiB runs at ~2 GiB/s here; over tarfile's 128 KiB reads its per-call cost took 4x that.
_BATCH = 1 << 20
_WHOLE_ABOVE = 0.9  # more changed pages than this: the whole file (basebackup_incremental.c does the same)


class Cancelled(PgvaultError):
    """Another part failed or the run was interrupted: this part stops (its object is aborted)."""


class Padded:
    """Reads exactly ``size`` bytes from a file that may shrink while we copy it (PostgreSQL may
    truncate a relation during a hot backup; WAL replay restores the truth), padding with zeros.

    ``cancel`` is checked per chunk: a 1 GiB relation segment must not keep a part's thread
    writing for seconds after the run was given up.  ``check`` (a relation file's page checker)
    sees every byte once, in 1 MiB batches of whole pages, before the tar does."""

    def __init__(self, f: IO[bytes], size: int, cancel: threading.Event, check: FileCheck | None = None,
                 digest: Any = None) -> None:
        self.f = f
        self.digest = digest
        self.left = size
        self.cancel = cancel
        self.check = check
        self._batch = memoryview(b"")
        self._offset = 0  # file offset of the next batch
        if check is not None and size % BLCKSZ:
            check.unaligned()  # being extended right now, or not PostgreSQL's: basebackup.c skips it too
            self.check = None

    def _read(self, want: int) -> bytes:
        data = self.f.read(want)
        if len(data) < want:
            data += b"\0" * (want - len(data))
        return data

    def read(self, n: int = -1) -> bytes:
        if self.cancel.is_set():
            raise Cancelled("base backup cancelled")
        want = self.left if n < 0 else min(n, self.left)
        if self.check is None:
            data = self._read(want)
        else:
            if not self._batch:
                batch = self._read(min(_BATCH, self.left))
                self.check(self.f, batch, self._offset)
                self._offset += len(batch)
                self._batch = memoryview(batch)
            data, self._batch = bytes(self._batch[:want]), self._batch[want:]
        self.left -= len(data)
        if self.digest is not None:
            self.digest.update(data)
        return data


@dataclass(frozen=True)
class Delta:
    """What an incremental takes from its reference: pages before ``start_lsn`` of files it has."""

    reference: str
    start_lsn: int
    files: Mapping[str, FileEntry]  # the reference's file list, by path in the data directory
    whole_databases: frozenset[int]  # database oids re-created since the reference: every file whole


def database_of(path: str) -> int | None:
    """The database oid a relation file's path names (``base/<db>/...``, ``pg_tblspc/<spc>/PG_*/<db>/...``);
    None for shared relations in ``global/``."""
    parts = path.split("/")
    if parts[0] == "base" and len(parts) == 3:
        return int(parts[1])
    if parts[0] == "pg_tblspc" and len(parts) == 5:
        return int(parts[3])
    return None


def incremental_name(arcname: str) -> str:
    head, _, name = arcname.rpartition("/")
    return f"{head}/{INCREMENTAL_PREFIX}{name}" if head else f"{INCREMENTAL_PREFIX}{name}"


def incremental_header(blocks: list[int], truncation_blocks: int) -> bytes:
    """PostgreSQL's INCREMENTAL file header: magic, block count, truncation length (blocks), the
    segment-relative block numbers, then zero padding to a whole page when any block follows."""
    head = struct.pack(f"<III{len(blocks)}I", INCREMENTAL_MAGIC, len(blocks), truncation_blocks, *blocks)
    if blocks and len(head) % BLCKSZ:
        head += bytes(BLCKSZ - len(head) % BLCKSZ)
    return head


@dataclass
class Reading:
    """Everything the parts of one base backup share about reading files."""

    check: PageCheck | None = None
    delta: Delta | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    entries: list[FileEntry] = field(default_factory=list)
    stored_blocks: int = 0  # incremental: pages stored in INCREMENTAL members
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _entry(self, e: FileEntry) -> None:
        with self._lock:
            self.entries.append(e)
            self.stored_blocks += e.blocks or 0

    def add_file(self, tar: tarfile.TarFile, info: tarfile.TarInfo, f: IO[bytes], *, name: str, relpath: str,
                 tar_key: str) -> None:
        """Store the regular file ``f`` (``info`` filled but for the data) in ``tar``; ``name`` is
        its path in the restored data directory, ``relpath`` below its tar's root."""
        rel = pages.relation_file(relpath)
        check = None if self.check is None else self.check.for_file(name, relpath)
        size = info.size
        if self._incremental(name, rel, size):
            assert rel is not None and self.delta is not None
            ref = self.delta.files[name]
            changed, sha = self._scan(f, size, rel, ref.size // BLCKSZ, check, ref.sha256)
            if len(changed) <= _WHOLE_ABOVE * (size // BLCKSZ):
                header = incremental_header(changed, size // BLCKSZ)
                member = tarfile.TarInfo(incremental_name(info.name))
                member.mode, member.mtime, member.uid, member.gid = info.mode, info.mtime, info.uid, info.gid
                member.size = len(header) + len(changed) * BLCKSZ
                tar.addfile(member, _IncrementalData(f, header, changed, self.cancel))
                self._entry(FileEntry(name, size, sha, len(changed), tar_key))
                return
            f.seek(0)
            tar.addfile(info, Padded(f, size, self.cancel))  # checked and hashed by the scan already
            self._entry(FileEntry(name, size, sha, None, tar_key))
            return
        digest = hashlib.sha256() if rel is not None else None
        tar.addfile(info, Padded(f, size, self.cancel, check, digest))
        self._entry(FileEntry(name, size, None if digest is None else digest.hexdigest(), None, tar_key))

    def _incremental(self, name: str, rel: RelationFile | None, size: int) -> bool:
        d = self.delta
        if d is None or rel is None or rel.fork != "main" or size % BLCKSZ or name not in d.files:
            return False
        db = database_of(name)
        return db is None or db not in d.whole_databases

    def _scan(self, f: IO[bytes], size: int, rel: RelationFile, ref_blocks: int, check: FileCheck | None,
              ref_sha256: str | None) -> tuple[list[int], str]:
        """Read ``f`` whole once: check its pages, list those to store (segment-relative), and its
        SHA-256 for the file list.

        The hash is only computed once a page to store is seen (the part before it read again):
        a file without one is, page for page, the reference's (the rule above, up to hint bits), so
        the reference's hash describes it as well -- a copy of the file matching it is as good for
        this backup's recovery as for the reference's.  In a typical incremental most files are
        unchanged, and hashing them was half of the backup's CPU."""
        assert self.delta is not None
        start = np.uint64(self.delta.start_lsn)
        out: list[int] = []
        digest: Any = None
        offset = 0
        while offset < size:
            if self.cancel.is_set():
                raise Cancelled("base backup cancelled")
            want = min(_BATCH, size - offset)
            data = f.read(want)
            if len(data) < want:
                data += bytes(want - len(data))  # shrank: zero pages, stored (WAL replay truncates)
            if check is not None:
                check(f, data, offset)
            lsn, _, _ = pages.headers(data)
            first = offset // BLCKSZ
            index = np.arange(first, first + len(lsn))
            keep = (lsn >= start) | (lsn == 0) | (index >= ref_blocks)
            out.extend(int(i) for i in index[keep])
            if digest is None and (out or ref_sha256 is None):
                digest = self._hash_before(f, offset)
            if digest is not None:
                digest.update(data)
            offset += want
        if digest is None:
            assert ref_sha256 is not None
            return out, ref_sha256
        return out, str(digest.hexdigest())

    def _hash_before(self, f: IO[bytes], end: int) -> Any:
        """A SHA-256 fed with the first ``end`` bytes of ``f``, read again (zeros past its end)."""
        digest = hashlib.sha256()
        pos = 0
        while pos < end:
            want = min(_BATCH, end - pos)
            chunk = os.pread(f.fileno(), want, pos)
            digest.update(chunk + bytes(want - len(chunk)))
            pos += want
        return digest


class _IncrementalData:
    """The data of an ``INCREMENTAL.`` member: the header, then each listed page read again
    (runs of consecutive pages in one ``pread`` of up to 1 MiB)."""

    def __init__(self, f: IO[bytes], header: bytes, blocks: list[int], cancel: threading.Event) -> None:
        self.f = f
        self.buf = memoryview(header)
        self.blocks = blocks
        self.next = 0
        self.cancel = cancel

    def _fill(self) -> bytes:
        if self.cancel.is_set():
            raise Cancelled("base backup cancelled")
        first = self.blocks[self.next]
        run = 1
        while (self.next + run < len(self.blocks) and self.blocks[self.next + run] == first + run
               and run < _BATCH // BLCKSZ):
            run += 1
        data = os.pread(self.f.fileno(), run * BLCKSZ, first * BLCKSZ)
        if len(data) < run * BLCKSZ:
            data += bytes(run * BLCKSZ - len(data))  # truncated since the scan: WAL replay truncates too
        self.next += run
        return data

    def read(self, n: int = -1) -> bytes:
        pieces: list[bytes] = []
        have = 0
        while n < 0 or have < n:
            if not self.buf:
                if self.next >= len(self.blocks):
                    break
                self.buf = memoryview(self._fill())
            take = len(self.buf) if n < 0 else min(n - have, len(self.buf))
            pieces.append(bytes(self.buf[:take]))
            self.buf = self.buf[take:]
            have += take
        return b"".join(pieces)
