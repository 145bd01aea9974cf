"""pgvault.pg.dump_archive: exact row counts of a pg_dump custom-format archive, read as it streams.

The archives here are written by a small model of pg_dump's own writer (WriteHead, WriteToc,
_StartData/_EndData, _StartLOs/_EndLOs in pg_backup_archiver.c / pg_backup_custom.c) for each
archive version pg_dump 12..18 produce (1.14..1.16); tests/e2e/test_logical_row_counts.py checks the counter on
real pg_dump output against count(*).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from pgvault.pg.dump_archive import (
    BLK_BLOBS,
    BLK_DATA,
    ArchiveFormatError,
    RowCounter,
    TableRows,
    UnsupportedArchive,
)

TERM = b"\\.\n\n\n"


@dataclass
class Entry:
    dump_id: int
    desc: str
    tag: str
    namespace: str = "public"
    chunks: list[bytes] | None = None  # BLK_DATA payload pieces (None: no data block)
    blobs: list[tuple[int, list[bytes]]] | None = None  # BLK_BLOBS: (oid, chunks) per large object
    deps: list[int] = field(default_factory=list)


def w_int(value: int, size: int = 4) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(size, "little")


def w_str(text: str | None, size: int = 4) -> bytes:
    if text is None:
        return w_int(-1, size)
    raw = text.encode()
    return w_int(len(raw), size) + raw


def archive(entries: list[Entry], *, version: tuple[int, int] = (1, 14), int_size: int = 4, off_size: int = 8,
            compression: int = 0, fmt: int = 1) -> bytes:
    """An archive as pg_dump -Fc writes it to a pipe."""
    i, s = (lambda v: w_int(v, int_size)), (lambda t: w_str(t, int_size))
    out = bytearray(b"PGDMP" + bytes([version[0], version[1], 0, int_size, off_size, fmt]))
    out += bytes([compression]) if version >= (1, 15) else i(compression)
    for v in (1, 2, 3, 4, 5, 124, 0):
        out += i(v)
    out += s("db") + s("15.4") + s("15.4")
    out += i(len(entries))
    for e in entries:
        out += i(e.dump_id) + i(1 if (e.chunks is not None or e.blobs is not None) else 0)
        out += s("1259") + s(str(16000 + e.dump_id)) + s(e.tag) + s(e.desc) + i(4 if e.desc == "TABLE DATA" else 2)
        out += s("") + s("") + s(f"COPY {e.tag} FROM stdin;\n" if e.desc == "TABLE DATA" else "")
        out += s(e.namespace) + s("") + s("heap")
        if version >= (1, 16):
            out += i(ord("r"))
        out += s("postgres") + s("false")
        for d in e.deps:
            out += s(str(d))
        out += s(None)
        out += bytes([1]) + bytes(off_size)  # K_OFFSET_POS_NOT_SET, offset 0
    for e in entries:
        if e.chunks is not None:
            out += bytes([BLK_DATA]) + i(e.dump_id)
            for c in e.chunks:
                out += i(len(c)) + c
            out += i(0)
        if e.blobs is not None:
            out += bytes([BLK_BLOBS]) + i(e.dump_id)
            for oid, chunks in e.blobs:
                out += i(oid)
                for c in chunks:
                    out += i(len(c)) + c
                out += i(0)
            out += i(0)
    return bytes(out)


def rows_of(*lines: bytes, terminator: bool = True) -> list[bytes]:
    """COPY text as pg_dump writes it: one chunk per row, then (pg_dump 12..17) the terminator."""
    return [*lines, *([TERM] if terminator else [])]


def count(data: bytes, pieces: list[int] | None = None) -> list[TableRows]:
    counter = RowCounter()
    pos = 0
    for size in pieces or [len(data)]:
        counter.feed(data[pos : pos + size])
        pos += size
    counter.feed(data[pos:])
    return counter.finish()


def simple(**kw: object) -> list[TableRows]:
    return count(archive(SCHEMA, **kw))  # type: ignore[arg-type]


SCHEMA = [
    Entry(1, "SCHEMA", "app", namespace=""),
    Entry(2, "TABLE", "t", namespace="app"),
    Entry(3, "TABLE DATA", "t", namespace="app", chunks=rows_of(b"1\ta\n", b"2\tb\\nc\n", b"3\t\\\\.\n")),
    Entry(4, "TABLE DATA", "empty", chunks=rows_of()),
    Entry(5, "SEQUENCE SET", "s"),
    Entry(6, "TABLE DATA", "Mixed Case \u00e9", namespace="S p", chunks=rows_of(b"x\n")),
]


@pytest.mark.parametrize("version", [(1, 14), (1, 15), (1, 16)])
@pytest.mark.parametrize("int_size", [4, 8])
def test_counts_rows_of_every_table_data_block_in_archive_order(version: tuple[int, int], int_size: int) -> None:
    assert simple(version=version, int_size=int_size) == [
        TableRows(3, "app", "t", 3),
        TableRows(4, "public", "empty", 0),
        TableRows(6, "S p", "Mixed Case \u00e9", 1),
    ]


def test_without_the_terminator_every_newline_is_a_row() -> None:
    # pg_dump 18 may stop writing "\.": then the text is rows only.
    entries = [Entry(1, "TABLE DATA", "t", chunks=rows_of(b"a\n", b"b\n", terminator=False)),
               Entry(2, "TABLE DATA", "e", chunks=[])]
    assert [t.rows for t in count(archive(entries))] == [2, 0]


def test_escaped_newlines_backslashes_and_dot_lines_are_not_row_ends() -> None:
    # In COPY text a newline inside a value is "\n" (two bytes); "\\." is a value ending in a
    # backslash and a dot; empty lines are rows (one empty text column).  Only raw 0x0A ends a row.
    lines = [b"a\\nb\\r\\n\n", b"\\\\.\n", b"\n", b"\n", b"\\.x\n", b"\\x00ff\n"]
    entries = [Entry(1, "TABLE DATA", "t", chunks=rows_of(*lines))]
    assert count(archive(entries))[0].rows == 6


def test_rows_whose_chunk_length_contains_a_newline_byte() -> None:
    # A 10-byte row (length 0x0A) or a 266-byte row (0x010A): header bytes are never counted.
    lines = [b"123456789\n", b"x" * 265 + b"\n", b"y" * (0x0A0A - 1) + b"\n"]
    entries = [Entry(1, "TABLE DATA", "t", chunks=rows_of(*lines))]
    assert count(archive(entries))[0].rows == 3


@pytest.mark.parametrize("int_size", [4, 8])
def test_long_rows_whose_length_has_a_newline_byte_above_64_kib(int_size: int) -> None:
    # Lengths past the 64 KiB lookup table: 0x01000A, 0x0A0000 and 0x0A0A0A, whole and cut anywhere
    # near their headers; each is one row, among short ones.
    lines = [b"a\n", b"q" * (0x01000A - 1) + b"\n", b"b\n", b"r" * (0x0A0000 - 1) + b"\n",
             b"s" * (0x0A0A0A - 1) + b"\n", b"c\\nd\n"]
    data = archive([Entry(1, "TABLE DATA", "t", chunks=rows_of(*lines))], int_size=int_size)
    assert count(data)[0].rows == 6
    for cut in (len(data) // 3, len(data) // 2, len(data) - 40):
        assert count(data, [cut])[0].rows == 6, cut
    assert count(data, [65536] * (len(data) // 65536 + 1))[0].rows == 6


def test_large_objects_and_other_data_blocks_are_walked_not_counted() -> None:
    blob = bytes(range(256)) * 3 + b"\n\n\x00\n"
    entries = [
        Entry(1, "BLOBS", "BLOBS", blobs=[(16500, [blob, b"\n" * 7]), (16501, []), (16502, [b"\n"])]),
        Entry(2, "TABLE DATA", "t", chunks=rows_of(b"a\n")),
        Entry(3, "SOMETHING ELSE", "x", chunks=[b"q\n\n"]),
        Entry(4, "BLOBS", "BLOBS", blobs=[]),
        Entry(5, "TABLE DATA", "u", chunks=rows_of(b"a\n", b"b\n")),
    ]
    assert [(t.name, t.rows) for t in count(archive(entries))] == [("t", 1), ("u", 2)]


def test_every_split_of_the_stream_gives_the_same_counts() -> None:
    entries = [
        Entry(1, "BLOBS", "BLOBS", blobs=[(7, [b"\x00\n\x01"])]),
        Entry(2, "TABLE DATA", "t", deps=[1], chunks=rows_of(b"123456789\n", b"\\\\.\n", b"\n", b"ab\\ncd\n")),
        Entry(3, "TABLE DATA", "e", chunks=rows_of()),
        Entry(4, "TABLE DATA", "n", chunks=rows_of(b"x\n", terminator=False)),
    ]
    data = archive(entries, version=(1, 16))
    expected = [TableRows(2, "public", "t", 4), TableRows(3, "public", "e", 0), TableRows(4, "public", "n", 1)]
    assert count(data) == expected
    for cut in range(len(data) + 1):  # one cut anywhere
        assert count(data, [cut]) == expected, cut
    assert count(data, [1] * len(data)) == expected  # a byte at a time
    for a, b in itertools.combinations(range(len(data) - 60, len(data) + 1, 3), 2):  # two cuts near the data
        assert count(data, [a, b - a]) == expected, (a, b)


@pytest.mark.parametrize("cut", [0, 3, 11, 40, -40, -12, -6, -5, -1])
def test_a_truncated_archive_is_refused_at_finish(cut: int) -> None:
    data = archive(SCHEMA)
    counter = RowCounter()
    counter.feed(data[:cut] if cut else b"")
    with pytest.raises(ArchiveFormatError, match="truncated"):
        counter.finish()
    with pytest.raises(ArchiveFormatError):  # and stays refused
        counter.finish()


def test_an_archive_ending_between_blocks_is_complete() -> None:
    # Data blocks are written in TOC order and the archive simply ends after the last one.
    assert count(archive([Entry(1, "TABLE", "t")])) == []


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"version": (1, 13)}, UnsupportedArchive, "version 1.13"),
        ({"version": (1, 17)}, UnsupportedArchive, "version 1.17"),
        ({"compression": 1}, UnsupportedArchive, "compressed"),
        ({"compression": 6, "version": (1, 14)}, UnsupportedArchive, "compressed"),
        ({"fmt": 3}, ArchiveFormatError, "not the custom format"),
        ({"int_size": 0}, ArchiveFormatError, "implausible"),
    ],
)
def test_archives_it_does_not_read_are_refused(kw: dict, error: type, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(error, match=match):
        count(archive(SCHEMA, **kw) if kw.get("int_size") != 0 else archive(SCHEMA)[:8] + b"\x00" + archive(SCHEMA)[9:])


def test_not_an_archive() -> None:
    with pytest.raises(ArchiveFormatError, match="PGDMP"):
        count(b"-- PostgreSQL database dump\n\nSET statement_timeout = 0;\n")


def test_a_damaged_toc_string_length_is_refused_before_anything_is_buffered() -> None:
    data = archive(SCHEMA)
    bad = data.replace(w_str("15.4") + w_str("15.4"), w_int(1 << 31) + b"15.4" + w_str("15.4"), 1)
    with pytest.raises(ArchiveFormatError, match="implausible TOC string length"):
        count(bad)
    with pytest.raises(ArchiveFormatError, match="implausible TOC string length"):
        count(data.replace(w_str("db"), w_int(-2) + b"db", 1))


def test_a_data_block_for_an_unknown_dump_id_is_refused() -> None:
    data = archive([Entry(1, "TABLE DATA", "t", chunks=rows_of(b"a\n"))])
    block = bytes([BLK_DATA]) + w_int(1)
    bad = data.replace(block, bytes([BLK_DATA]) + w_int(9))
    with pytest.raises(ArchiveFormatError, match="dump id 9"):
        count(bad)
    with pytest.raises(ArchiveFormatError, match="block type 2"):
        count(data.replace(block, bytes([2]) + w_int(1)))


def test_negative_chunk_length_is_refused_and_the_error_sticks() -> None:
    data = archive([Entry(1, "TABLE DATA", "t", chunks=[b"a\n"])])
    bad = data.replace(w_int(2) + b"a\n", w_int(-2) + b"a\n")
    counter = RowCounter()
    with pytest.raises(ArchiveFormatError, match="negative"):
        counter.feed(bad)
    with pytest.raises(ArchiveFormatError, match="negative"):
        counter.feed(b"more")


def test_a_terminator_merged_into_a_longer_chunk_is_refused_not_guessed() -> None:
    # If pg_dump ever cut COPY text differently, "\.\n\n\n" could no longer be told from rows.
    entries = [Entry(1, "TABLE DATA", "t", chunks=[b"a\n", b"b\n" + TERM])]
    with pytest.raises(UnsupportedArchive, match="terminator"):
        count(archive(entries))
    split = archive(entries)
    with pytest.raises(UnsupportedArchive, match="terminator"):
        count(split, [len(split) - 9])  # the chunk cut by a feed boundary: same verdict


def test_bytes_like_input_is_accepted() -> None:
    data = archive(SCHEMA)
    counter = RowCounter()
    counter.feed(bytearray(data[:100]))
    counter.feed(memoryview(data)[100:])
    assert [t.rows for t in counter.finish()] == [3, 0, 1]


def test_the_backup_reader_passes_bytes_unchanged_and_counts_them() -> None:
    import io

    from pgvault.operations.logical.backup import _RowCountingReader

    data = archive(SCHEMA)
    reader = _RowCountingReader(io.BytesIO(data))
    out = b"".join(iter(lambda: reader.read(13), b""))
    assert out == data
    assert reader.rows() == {("app", "t"): 3, ("public", "empty"): 0, ("S p", "Mixed Case \u00e9"): 1}
    assert reader.error is None
    cut = _RowCountingReader(io.BytesIO(data[:-3]))  # what pg_dump wrote, cut short: no counts, an error
    assert cut.read(1 << 20) == data[:-3]
    assert cut.rows() == {} and isinstance(cut.error, ArchiveFormatError)


def test_pg_dump_pipe_is_widened_where_linux_allows_and_left_alone_elsewhere() -> None:
    import fcntl
    import os
    from pathlib import Path

    from pgvault.operations.logical.backup import _PIPE_SIZE, _widen_pipe

    limit = Path("/proc/sys/fs/pipe-max-size")
    r, w = os.pipe()
    try:
        with open(r, "rb", buffering=0) as pipe:
            _widen_pipe(pipe)
            if hasattr(fcntl, "F_GETPIPE_SZ") and limit.exists() and int(limit.read_text()) >= _PIPE_SIZE:
                assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == _PIPE_SIZE
    finally:
        os.close(w)
    with open(os.devnull, "rb") as not_a_pipe:
        _widen_pipe(not_a_pipe)  # refused by the kernel: ignored, the stream works as before
