"""An incremental's reading of relation files (operations/physical/reading.py), on files made here:
which pages it stores, the INCREMENTAL member it writes, and the hash it records."""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import threading
from pathlib import Path

from pgvault.operations.physical import datadir_tar
from pgvault.operations.physical.reading import INCREMENTAL_MAGIC, Delta, Reading
from pgvault.pg.pages import BLCKSZ
from pgvault.repository.file_list import FileEntry

R = 0x5_0000_0000


def pages_with_lsns(lsns: list[int]) -> bytes:
    out = bytearray()
    for i, lsn in enumerate(lsns):
        page = bytearray(BLCKSZ)
        struct.pack_into("<IIHHHH", page, 0, lsn >> 32, lsn & 0xFFFFFFFF, 0, 0, 24, 4000 if lsn else 0)
        page[100:110] = f"page{i:06d}".encode()
        out += page
    return bytes(out)


def run(root: Path, files: dict[str, bytes], ref: dict[str, FileEntry]) -> tuple[Reading, dict[str, bytes]]:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    reading = Reading(delta=Delta("ref", R, ref, frozenset()))
    out = io.BytesIO()
    datadir_tar.write_tar(out, root, [root / n for n in files], base=True, extra=dict,  # type: ignore[arg-type]
                          cancel=threading.Event(), reading=reading, tar_key="base.tar")
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r|") as t:
        members = {m.name: t.extractfile(m).read() for m in t if m.isfile()}  # type: ignore[union-attr]
    return reading, members


def test_an_incremental_stores_changed_new_and_appended_pages_and_hashes_what_it_read(tmp_path: Path) -> None:
    old, new = R - 10, R + 10
    changed = pages_with_lsns([old, new, old, 0, old, old])  # page 1 changed, page 3 new (zeros), 5 appended
    unchanged = pages_with_lsns([old, old, old])
    ref = {"base/5/16384": FileEntry("base/5/16384", 5 * BLCKSZ, "a" * 64, None, "base.tar"),
           "base/5/16385": FileEntry("base/5/16385", 3 * BLCKSZ, "b" * 64, None, "base.tar")}
    reading, members = run(tmp_path, {"base/5/16384": changed, "base/5/16385": unchanged}, ref)
    entries = {e.path: e for e in reading.entries}
    # The changed file: pages 1, 3 (LSN 0) and 5 (past the reference's length), hashed whole.
    data = members["base/5/INCREMENTAL.16384"]
    magic, n, truncation = struct.unpack_from("<III", data)
    assert (magic, n, truncation) == (INCREMENTAL_MAGIC, 3, 6)
    assert struct.unpack_from("<3I", data, 12) == (1, 3, 5)
    assert data[BLCKSZ:] == changed[BLCKSZ:2 * BLCKSZ] + changed[3 * BLCKSZ:4 * BLCKSZ] + changed[5 * BLCKSZ:]
    assert entries["base/5/16384"].sha256 == hashlib.sha256(changed).hexdigest() and entries["base/5/16384"].blocks == 3
    # The unchanged file: an empty INCREMENTAL member (header only), and the reference's hash.
    assert members["base/5/INCREMENTAL.16385"] == struct.pack("<III", INCREMENTAL_MAGIC, 0, 3)
    assert entries["base/5/16385"].sha256 == "b" * 64 and entries["base/5/16385"].blocks == 0


def test_files_the_reference_lacks_and_other_forks_are_stored_whole(tmp_path: Path) -> None:
    old = R - 10
    files = {"base/5/16400": pages_with_lsns([old, old]), "base/5/16384_vm": pages_with_lsns([old]),
             "base/5/PG_VERSION": b"18\n"}
    ref = {"base/5/16384_vm": FileEntry("base/5/16384_vm", BLCKSZ, "c" * 64, None, "base.tar")}
    reading, members = run(tmp_path, files, ref)
    assert set(members) == set(files)
    entries = {e.path: e for e in reading.entries}
    assert entries["base/5/16400"].sha256 == hashlib.sha256(files["base/5/16400"]).hexdigest()
    assert entries["base/5/16384_vm"].blocks is None and entries["base/5/PG_VERSION"].sha256 is None
