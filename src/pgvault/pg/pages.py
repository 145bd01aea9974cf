"""PostgreSQL data pages: which files hold them, their header, and the page checksum.

The checksum is PostgreSQL's own (src/include/storage/checksum_impl.h): the 8 KiB page seen as
64 rows of 32 little-endian uint32 words, 32 FNV-1a-like lanes (``s = (s ^ w) * prime ^ (s ^ w) >> 17``)
started from fixed offsets, two extra rounds of zeros, the lanes XORed together, XORed with the
block number *within the relation fork* (segment number × blocks per segment + block), reduced
to 16 bits as ``% 65535 + 1`` so it is never 0.  The ``pd_checksum`` field itself (bytes 8-9)
counts as zero.  Verified against pages written by PostgreSQL 15 and 18 in the tests.

It is computed with numpy over many pages at once, lane by lane (a pure Python loop is about
24 MiB/s; numpy over 1 MiB batches several GiB/s, which is what lets a backup check every page
it reads for a few percent of its time: docs/performance.md).  Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BLCKSZ = 8192
RELSEG_BLOCKS = 131072  # blocks per 1 GiB segment file (PostgreSQL's default RELSEG_SIZE at 8 KiB pages)

_BASE = np.array([
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
], dtype=np.uint32)
_PRIME = np.uint32(16777619)
_SHIFT = np.uint32(17)

# A relation file: <relfilenode>[_fsm|_vm|_init][.<segno>] directly in global/, base/<dboid>/ or a
# tablespace's PG_<major>_<catversion>/<dboid>/ (temporary relations, t<backend>_<n>, are not backed up).
_REL_NAME = re.compile(r"^(\d+)(?:_(fsm|vm|init))?(?:\.(\d+))?$")
_REL_DIR = re.compile(r"^(?:global|base/\d+|PG_[^/]+/\d+)$")


@dataclass(frozen=True)
class RelationFile:
    """Where a relation file sits: its relfilenode, fork and segment."""

    relfilenode: int
    fork: str  # main | fsm | vm | init
    segno: int

    @property
    def first_block(self) -> int:
        return self.segno * RELSEG_BLOCKS


def relation_file(relpath: str) -> RelationFile | None:
    """The relation file at ``relpath`` (relative to the data directory or a tablespace's
    location), or None for every other file (pg_control, SLRUs, config, PG_VERSION, pg_filenode.map...)."""
    directory, _, name = relpath.rpartition("/")
    m = _REL_NAME.match(name)
    if m is None or not _REL_DIR.match(directory):
        return None
    return RelationFile(int(m.group(1)), m.group(2) or "main", int(m.group(3) or 0))


def checksums(pages: bytes | bytearray | memoryview, first_blkno: int) -> npt.NDArray[np.uint32]:
    """The checksum PostgreSQL would store in each page of ``pages`` (whole pages, the first
    being block ``first_blkno`` of its relation fork), whatever the page holds now."""
    k = len(pages) // BLCKSZ
    words = np.frombuffer(pages, dtype="<u4", count=k * BLCKSZ // 4).reshape(k, 64, 32)
    s = np.broadcast_to(_BASE, (k, 32)).copy()
    t = np.empty_like(s)
    # Each step works on row i of every page, a strided view (k rows of 128 contiguous bytes, the
    # whole batch in cache): gathering the rows into a transposed copy first cost 3x the time.
    for i in range(66):
        if i < 64:
            np.bitwise_xor(s, words[:, i, :], out=t)
            if i == 0:  # pd_checksum (bytes 8-9: the low half of word 2) counts as 0: xor it out again
                t[:, 2] ^= words[:, 0, 2] & np.uint32(0xFFFF)
        else:
            t[...] = s
        np.multiply(t, _PRIME, out=s)  # wraps mod 2^32, as in C
        np.right_shift(t, _SHIFT, out=t)
        np.bitwise_xor(s, t, out=s)
    folded = np.bitwise_xor.reduce(s, axis=1) ^ (np.arange(k, dtype=np.uint32) + np.uint32(first_blkno & 0xFFFFFFFF))
    out: npt.NDArray[np.uint32] = (folded % np.uint32(65535)) + np.uint32(1)
    return out


@dataclass(frozen=True)
class BadPage:
    """A page whose stored checksum is not the one its bytes give."""

    index: int  # page index within the checked buffer
    stored: int
    computed: int
    lsn: int


def headers(pages: bytes | bytearray | memoryview) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:
    """Each page's LSN, stored checksum and pd_upper (0 on a new page that was never written)."""
    k = len(pages) // BLCKSZ
    words = np.frombuffer(pages, dtype="<u2", count=k * BLCKSZ // 2).reshape(k, BLCKSZ // 2)
    halves = np.frombuffer(pages, dtype="<u4", count=k * BLCKSZ // 4).reshape(k, BLCKSZ // 4)
    lsn = (halves[:, 0].astype(np.uint64) << np.uint64(32)) | halves[:, 1].astype(np.uint64)  # pd_lsn = {xlogid, xrecoff}
    return lsn, words[:, 4].copy(), words[:, 7].copy()  # pd_checksum at byte 8, pd_upper at byte 14


def verify(pages: bytes | bytearray | memoryview, first_blkno: int, start_lsn: int) -> tuple[int, list[BadPage]]:
    """How many pages of ``pages`` were checked, and those that fail their checksum, checked the
    way PostgreSQL's base backup checks them (basebackup.c verify_page_checksum): a new page
    (pd_upper 0) is not checked, and neither is a page whose LSN is at or after the backup's start
    (it is being written now; the WAL from the start replaces it on restore)."""
    lsn, stored, upper = headers(pages)
    candidates = (upper != 0) & (lsn < np.uint64(start_lsn))
    checked = int(candidates.sum())
    if not checked:
        return 0, []
    computed = checksums(pages, first_blkno)
    bad = np.nonzero(candidates & (computed != stored))[0]
    return checked, [BadPage(int(i), int(stored[i]), int(computed[i]), int(lsn[i])) for i in bad]


def bad_pages(pages: bytes | bytearray | memoryview, first_blkno: int, start_lsn: int) -> list[BadPage]:
    """The pages of ``pages`` that fail their checksum (:func:`verify`'s rules)."""
    return verify(pages, first_blkno, start_lsn)[1]
