"""PostgreSQL's page checksum (pg/pages.py) against a line-by-line transcription of
src/include/storage/checksum_impl.h, and the rules that pick which pages a backup checks.
(That the numbers match pages PostgreSQL wrote is proven end to end in
tests/e2e/test_page_checksums.py.)"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault.pg import pages
from pgvault.pg.pages import BLCKSZ, RelationFile, relation_file

_BASE = [int(x) for x in pages._BASE]


def reference_checksum(page: bytes, blkno: int) -> int:
    """pg_checksum_page(), one word at a time, as the C code reads."""
    words = list(struct.unpack("<2048I", page))
    words[2] &= 0xFFFF0000  # the checksum field is zeroed while computing
    sums = list(_BASE)

    def comp(s: int, v: int) -> int:
        tmp = (s ^ v) & 0xFFFFFFFF
        return ((tmp * 16777619) & 0xFFFFFFFF) ^ (tmp >> 17)

    for i in range(64):
        for j in range(32):
            sums[j] = comp(sums[j], words[i * 32 + j])
    for _ in range(2):
        for j in range(32):
            sums[j] = comp(sums[j], 0)
    result = 0
    for j in range(32):
        result ^= sums[j]
    result ^= blkno & 0xFFFFFFFF
    return (result % 65535) + 1


def page(rng: random.Random, *, lsn: int = 0x1_0000_0028, upper: int = 4000, good: bool = True, blkno: int = 0) -> bytes:
    body = bytearray(rng.randbytes(BLCKSZ))
    struct.pack_into("<IIHHHH", body, 0, lsn >> 32, lsn & 0xFFFFFFFF, 0, 0, 24, upper)
    if good:
        struct.pack_into("<H", body, 8, reference_checksum(bytes(body), blkno))
    else:
        struct.pack_into("<H", body, 8, reference_checksum(bytes(body), blkno) ^ 0x5A5A)
    return bytes(body)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 40), first=st.integers(0, 2**32 - 50))
def test_the_vectorised_checksum_is_postgresqls(seed: int, n: int, first: int) -> None:
    rng = random.Random(seed)
    buf = rng.randbytes(n * BLCKSZ)
    got = pages.checksums(buf, first)
    assert [int(x) for x in got] == [reference_checksum(buf[i * BLCKSZ:(i + 1) * BLCKSZ], first + i) for i in range(n)]


def test_block_numbers_past_two_to_the_32_wrap_like_the_c_uint32() -> None:
    buf = random.Random(1).randbytes(2 * BLCKSZ)
    assert [int(x) for x in pages.checksums(buf, 2**32 - 1)] == [
        reference_checksum(buf[:BLCKSZ], 2**32 - 1), reference_checksum(buf[BLCKSZ:], 0)]


def test_headers_read_lsn_checksum_and_upper() -> None:
    rng = random.Random(2)
    p = page(rng, lsn=0x2_0000_1234, upper=512, blkno=7)
    lsn, stored, upper = pages.headers(p + bytes(BLCKSZ))
    assert [int(x) for x in lsn] == [0x2_0000_1234, 0]
    assert int(stored[0]) == reference_checksum(p, 7) and [int(x) for x in upper] == [512, 0]


def test_bad_pages_follows_basebackups_rules() -> None:
    rng = random.Random(3)
    start = 0x5_0000_0000
    blocks = [
        page(rng, blkno=10),                              # good
        page(rng, blkno=11, good=False),                  # corrupt: reported
        bytes(BLCKSZ),                                    # new (all zero): not checked
        page(rng, blkno=13, upper=0, good=False),         # new by pd_upper: not checked (as basebackup.c)
        page(rng, blkno=14, lsn=start, good=False),       # written since the backup started: replay fixes it
        page(rng, blkno=15, lsn=start + 1, good=False),
        page(rng, blkno=16, lsn=start - 1, good=False),   # older than the start: reported
    ]
    bad = pages.bad_pages(b"".join(blocks), 10, start)
    assert [b.index for b in bad] == [1, 6]
    assert bad[0].computed == reference_checksum(blocks[1], 11) and bad[0].stored == reference_checksum(blocks[1], 11) ^ 0x5A5A
    assert bad[1].lsn == start - 1
    # The block number is part of the checksum: the same good page read as another block fails.
    assert [b.index for b in pages.bad_pages(blocks[0], 11, start)] == [0]
    assert pages.bad_pages(b"".join(blocks[2:4]), 12, start) == []


@pytest.mark.parametrize(("path", "expected"), [
    ("base/5/16384", RelationFile(16384, "main", 0)),
    ("base/5/16384.3", RelationFile(16384, "main", 3)),
    ("base/5/16384_vm", RelationFile(16384, "vm", 0)),
    ("base/5/16384_fsm.1", RelationFile(16384, "fsm", 1)),
    ("base/16401/2619_init", RelationFile(2619, "init", 0)),
    ("global/1262", RelationFile(1262, "main", 0)),
    ("PG_18_202506291/16384/16390", RelationFile(16390, "main", 0)),  # inside a tablespace's location
    ("global/pg_control", None),
    ("global/pg_filenode.map", None),
    ("base/5/PG_VERSION", None),
    ("base/5/pg_internal.init", None),
    ("base/5/t3_16399", None),        # a temporary relation
    ("pg_xact/0000", None),           # an SLRU: no page checksums
    ("pg_multixact/offsets/0000", None),
    ("base/16384", None),
    ("pg_wal/000000010000000000000001", None),
    ("base/5/16384_foo", None),
])
def test_which_files_are_relation_files(path: str, expected: RelationFile | None) -> None:
    assert relation_file(path) == expected


def test_the_first_block_of_a_segment_counts_whole_gigabytes() -> None:
    rf = relation_file("base/5/16384.2")
    assert rf is not None and rf.first_block == 2 * 131072
