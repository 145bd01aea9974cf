"""The page check inside the base backup's tar stream (operations/physical/page_check.py and
datadir_tar.Padded), on files made here: which pages are reported, with which block numbers, that
a torn first read is read again, and that the tar still holds every byte as read."""

from __future__ import annotations

import io
import os
import random
import struct
import tarfile
import threading
from pathlib import Path

import pytest

from pgvault.operations.physical import datadir_tar
from pgvault.operations.physical.page_check import PageCheck
from pgvault.operations.physical.reading import Reading
from pgvault.pg import pages
from pgvault.pg.pages import BLCKSZ, RELSEG_BLOCKS
from pgvault.pipeline import PipelineSpec
from pgvault.storage.memory import MemoryStorage

START = 0x9_0000_0000


def good_pages(n: int, first_blkno: int, seed: int = 0, lsn: int = START - 100) -> bytearray:
    rng = random.Random(seed)
    buf = bytearray(rng.randbytes(n * BLCKSZ))
    for i in range(n):
        struct.pack_into("<IIHHHH", buf, i * BLCKSZ, lsn >> 32, lsn & 0xFFFFFFFF, 0, 0, 24, 4000)
    sums = pages.checksums(bytes(buf), first_blkno)
    for i in range(n):
        struct.pack_into("<H", buf, i * BLCKSZ + 8, int(sums[i]))
    return buf


def tar_with_check(root: Path, names: list[str]) -> tuple[PageCheck, dict[str, bytes]]:
    check = PageCheck(START)
    out = io.BytesIO()

    class Sink:
        def write(self, b: bytes) -> int:
            return out.write(b)

    datadir_tar.write_tar(Sink(), root, [root / n for n in names], base=True, extra=dict,  # type: ignore[arg-type]
                          cancel=threading.Event(), reading=Reading(check=check), name_prefix="")
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r|") as t:
        got = {m.name: t.extractfile(m).read() for m in t if m.isfile()}  # type: ignore[union-attr]
    return check, got


def test_a_bad_page_in_a_later_segment_is_named_by_its_relation_block(tmp_path: Path) -> None:
    data = good_pages(300, 2 * RELSEG_BLOCKS)  # segment .2 of the relation: its blocks start at 262144
    data[150 * BLCKSZ + 3000] ^= 0x01
    (tmp_path / "base/5").mkdir(parents=True)
    (tmp_path / "base/5/16384.2").write_bytes(data)
    (tmp_path / "base/5/PG_VERSION").write_bytes(b"18\n")  # not a relation file: never checked
    check, got = tar_with_check(tmp_path, ["base/5/16384.2", "base/5/PG_VERSION"])
    r = check.report()
    assert r.pages == 300 and r.failed == 1
    bad = r.bad_pages[0]
    assert (bad.file, bad.relfilenode, bad.fork, bad.block) == ("base/5/16384.2", 16384, "main", 2 * RELSEG_BLOCKS + 150)
    assert got["base/5/16384.2"] == bytes(data)  # the tar holds the file as read, bad page included


def test_a_page_torn_by_a_concurrent_write_is_read_again_and_not_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = good_pages(4, 0)
    torn = bytearray(good)
    torn[2 * BLCKSZ + 100] ^= 0xFF
    (tmp_path / "global").mkdir()
    path = tmp_path / "global/1262"
    path.write_bytes(torn)
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        path.write_bytes(good)  # the writer finished meanwhile: the second read sees the whole page
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    check, _ = tar_with_check(tmp_path, ["global/1262"])
    assert check.report().failed == 0 and check.report().pages == 4


def test_new_pages_pages_after_the_start_and_odd_sized_files_are_not_checked(tmp_path: Path) -> None:
    newer = good_pages(2, 0, lsn=START + 10)
    newer[BLCKSZ + 500] ^= 0xFF  # bad, but written after the backup started: WAL replay rewrites it
    (tmp_path / "base/5").mkdir(parents=True)
    (tmp_path / "base/5/16400").write_bytes(bytes(newer) + bytes(3 * BLCKSZ))  # plus 3 new (zero) pages
    (tmp_path / "base/5/16401_fsm").write_bytes(bytes(good_pages(1, 0)) + b"x")  # not whole pages
    check, got = tar_with_check(tmp_path, ["base/5/16400", "base/5/16401_fsm"])
    r = check.report()
    assert (r.pages, r.failed, r.unaligned) == (0, 0, ("base/5/16401_fsm",))
    assert len(got["base/5/16401_fsm"]) == BLCKSZ + 1


def test_a_file_that_shrinks_while_read_is_padded_and_its_missing_pages_count_as_new(tmp_path: Path) -> None:
    data = good_pages(200, 0)  # 1.6 MiB: two batches
    (tmp_path / "base/5").mkdir(parents=True)
    path = tmp_path / "base/5/16500"
    path.write_bytes(data)
    st = os.stat(path)
    with open(path, "rb") as f:
        os.truncate(path, 10 * BLCKSZ)  # truncated by VACUUM after the size was taken
        check = PageCheck(START)
        fc = check.for_file("base/5/16500", "base/5/16500")
        reader = datadir_tar.Padded(f, st.st_size, threading.Event(), fc)
        out = b"".join(iter(lambda: reader.read(128 << 10), b""))
    assert len(out) == 200 * BLCKSZ and out[10 * BLCKSZ:] == bytes(190 * BLCKSZ)
    assert (check.report().pages, check.report().failed) == (10, 0)


def test_stream_tar_checks_the_pages_of_every_part(tmp_path: Path) -> None:
    (tmp_path / "base/5").mkdir(parents=True)
    for i in range(3):
        data = good_pages(20, 0, seed=i)
        if i == 1:
            data[5 * BLCKSZ + 10] ^= 0x10
        (tmp_path / f"base/5/{17000 + i}").write_bytes(data)
    storage = MemoryStorage("page-check")
    from types import SimpleNamespace
    ctx = SimpleNamespace(storage=storage, settings=SimpleNamespace(compression_threads=1))
    check = PageCheck(START)
    spec = PipelineSpec("none", None, "none", ())
    _, files = datadir_tar.stream_tar(ctx, "c/base/x/base.tar", "base", tmp_path, spec, base=True,  # type: ignore[arg-type]
                                      reading=Reading(check=check), name_prefix="pg_tblspc/16390/")
    assert files == 3
    r = check.report()
    assert r.pages == 60 and [(b.file, b.block) for b in r.bad_pages] == [("pg_tblspc/16390/base/5/17001", 5)]
