"""Checking the page checksum of every page a base backup reads (clusters with data checksums).

The rules are PostgreSQL's own base backup's (src/backend/backup/basebackup.c, verify_page_checksum
and read_file_data_into_buffer), so pgvault reports exactly what ``pg_basebackup`` would:

- only relation files are checked (every fork; not pg_control, SLRUs or config: they have no
  page checksum), one 1 MiB batch at a time as the tar reads them;
- a new page (pd_upper 0) is not checked, nor a page whose LSN is at or after the backup's start:
  it is being written now and the WAL from the start replaces it on restore;
- a page that fails is read again once, alone: a concurrent write may have torn the first read
  (there is no lock to take).  If it still fails, it is corrupt.

A backup of a damaged cluster still completes (it is the best copy there is); what was found goes
into its manifest, and the command then fails or warns as ``backup.page_checksums`` says.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from pgvault import log
from pgvault.errors import IntegrityError
from pgvault.pg import pages
from pgvault.pg.conn import connection
from pgvault.pg.pages import BLCKSZ, RelationFile
from pgvault.repository.physical import BadPageEntry, PageChecksums, PhysicalManifest

if TYPE_CHECKING:
    from pgvault.operations.context import Context

# Corrupt pages listed by block in the manifest; beyond that only counted (a cluster whose whole
# relation is garbage must not make a manifest of a hundred megabytes).
MAX_LISTED = 1000


@dataclass
class PageCheck:
    """What every part of one base backup found (the parts run in threads: counts under a lock)."""

    start_lsn: int
    pages: int = 0  # pages whose checksum was computed and compared
    failures: list[BadPageEntry] = field(default_factory=list)
    failed: int = 0
    unaligned: list[str] = field(default_factory=list)  # files whose size is not whole pages: not checked
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def for_file(self, name: str, relpath: str) -> FileCheck | None:
        """The checker of one file (``name`` as the backup stores it, ``relpath`` below its data
        directory or tablespace location), or None when it holds no checksummed pages."""
        rf = pages.relation_file(relpath)
        return None if rf is None else FileCheck(self, name, rf)

    def report(self) -> PageChecksums:
        with self._lock:
            return PageChecksums(checked=True, pages=self.pages, failed=self.failed,
                                 bad_pages=tuple(self.failures), unaligned=tuple(self.unaligned))

    def _add(self, checked: int, bad: list[BadPageEntry]) -> None:
        with self._lock:
            self.pages += checked
            self.failed += len(bad)
            self.failures.extend(bad[: max(0, MAX_LISTED - len(self.failures))])


@dataclass
class FileCheck:
    """Checks the pages of one relation file, batch by batch, as they are read."""

    owner: PageCheck
    name: str
    rel: RelationFile

    def unaligned(self) -> None:
        with self.owner._lock:
            self.owner.unaligned.append(self.name)

    def __call__(self, f: IO[bytes], data: bytes, offset: int) -> None:
        """``data`` (whole pages) was read from ``f`` at ``offset``."""
        first = self.rel.first_block + offset // BLCKSZ
        checked, failed = pages.verify(data, first, self.owner.start_lsn)
        bad = []
        for page in failed:
            at = offset + page.index * BLCKSZ
            again = os.pread(f.fileno(), BLCKSZ, at)
            if len(again) < BLCKSZ:
                continue  # truncated meanwhile: WAL replay truncates it too
            still = pages.bad_pages(again, first + page.index, self.owner.start_lsn)
            if not still:
                continue  # the first read was torn by a write, or the page is newer than the start now
            retry = still[0]
            bad.append(BadPageEntry(self.name, self.rel.relfilenode, self.rel.fork, first + page.index,
                                    retry.stored, retry.computed))
        self.owner._add(checked, bad)


class PageChecksumError(IntegrityError):
    """The backup is stored and complete, but pages of the cluster failed their checksum (exit 6)."""

    kind = "page_checksums"


def _identity(entry: BadPageEntry) -> tuple[int | None, int]:
    """(database oid or None for a shared relation, tablespace oid as pg_filenode_relation takes it)."""
    parts = entry.file.split("/")
    if parts[0] == "global":
        return None, _GLOBAL_TABLESPACE
    if parts[0] == "base":
        return int(parts[1]), 0  # 0: the database's default tablespace
    return int(parts[-2]), int(parts[1])  # pg_tblspc/<spc>/PG_<ver>/<db>/<file>


_GLOBAL_TABLESPACE = 1664  # pg_global
_NAME_SQL = ("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
             " WHERE c.oid = pg_filenode_relation(%s, %s)")


def name_bad_pages(ctx: Context, conn: Any, report: PageChecksums) -> PageChecksums:
    """``report`` with each bad page's relation and database named (``pg_filenode_relation`` in its
    database).  Best effort: a database that cannot be read leaves its pages named by file only."""
    if not report.bad_pages:
        return report
    logger = log.get()
    names: dict[tuple[int | None, int, int], tuple[str, str]] = {}
    try:
        databases = {int(r[0]): str(r[1]) for r in conn.execute("SELECT oid::int8, datname FROM pg_database").fetchall()}
        current = str(conn.execute("SELECT current_database()").fetchone()[0])
    except Exception as e:  # noqa: BLE001 - naming is a courtesy; the pages are reported either way
        logger.warning("could not name the relations of the bad pages: %s", e)
        return report
    for key in sorted({(*_identity(b), b.relfilenode) for b in report.bad_pages}, key=str):
        db_oid, spc, relfilenode = key
        dbname = current if db_oid is None else databases.get(db_oid)
        if dbname is None:
            continue
        try:
            with connection(ctx.conn, dbname=dbname) as c:
                c.execute("SET statement_timeout = '60s'")
                row = c.execute(_NAME_SQL, (spc, relfilenode)).fetchone()
        except Exception as e:  # noqa: BLE001 - one unreadable database (pg_hba) leaves only its pages unnamed
            logger.warning("could not name relfilenode %s in database %s: %s", relfilenode, dbname, e)
            continue
        if row is not None and row[0] is not None:
            names[key] = (str(row[0]), "" if db_oid is None else dbname)
    named = tuple(dataclasses.replace(b, relation=names[k][0], database=names[k][1]) if (k := (*_identity(b), b.relfilenode)) in names
                  else b for b in report.bad_pages)
    return dataclasses.replace(report, bad_pages=named)


def report_bad_pages(manifest: PhysicalManifest, *, fail: bool) -> None:
    """Warn about what the page check found; raise :class:`PageChecksumError` when ``fail``."""
    found = manifest.page_checksums
    if found is None:
        return
    logger = log.get()
    for name in found.unaligned:
        logger.warning("%s is not made of whole %d-byte pages: its checksums were not checked", name, BLCKSZ)
    if not found.failed:
        return
    shown = found.bad_pages[:10]
    for b in shown:
        logger.warning("page checksum failed: %s", b.describe())
    more = found.failed - len(shown)
    if more:
        logger.warning("... and %d more bad page(s) ('pgvault list --json %s' lists up to %d)", more,
                       manifest.backup_id, MAX_LISTED)
    if fail:
        first = found.bad_pages[0].describe() if found.bad_pages else ""
        raise PageChecksumError(
            f"base backup {manifest.backup_id} is stored and complete, but {found.failed} page(s) of the cluster "
            f"failed their checksum, e.g. {first}",
            hint="the cluster's data is damaged (disk, memory or filesystem): keep this backup and the older ones, "
                 "check the named relations (pg_amcheck) and restore them from a backup older than the damage; "
                 "backup.page_checksums: warn makes this a warning")
