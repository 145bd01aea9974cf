"""WAL math (pgvault.pg.wal) against facts observed on real PostgreSQL 15 clusters.

The "known values" below were produced by PostgreSQL 15.x itself:

* ``pg_walfile_name_offset()`` / ``pg_walfile_name()`` on clusters made with
  ``initdb --wal-segsize=1|16|64|1024``;
* a 1 MiB-segment cluster with ``archive_mode=on`` taken through a standby promotion (timeline 2)
  and a point-in-time recovery with ``recovery_target_lsn`` (timeline 3): ``ARCHIVE_LISTING`` is
  the archive directory afterwards, ``HISTORY_2``/``HISTORY_3`` the history files byte for byte.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault.pg import wal
from pgvault.pg.wal import LSN, HistoryEntry, TimelineSpan, WalError, WalFileKind

MIB = 1 << 20
SIZES = wal.SEGMENT_SIZES
SIZE_IDS = [f"{s // MIB}MiB" for s in SIZES]

# (segment size in MiB, LSN, pg_walfile_name(LSN), offset from pg_walfile_name_offset(LSN))
PG15_WALFILE_NAMES = [
    (1, "0/1", "000000010000000000000000", 1),
    (1, "0/FFFFF", "000000010000000000000000", 1048575),
    (1, "0/100000", "000000010000000000000000", 0),
    (1, "0/3000028", "000000010000000000000030", 40),
    (1, "0/3000000", "00000001000000000000002F", 0),
    (1, "16/B374D848", "000000010000001600000B37", 317512),
    (1, "1/0", "000000010000000000000FFF", 0),
    (1, "0/FFFFFFFF", "000000010000000000000FFF", 1048575),
    (1, "FFFFFFFF/FFFFFFFF", "00000001FFFFFFFF00000FFF", 1048575),
    (1, "0/40000000", "0000000100000000000003FF", 0),
    (1, "A/C0000001", "000000010000000A00000C00", 1),
    (16, "0/1", "000000010000000000000000", 1),
    (16, "0/100000", "000000010000000000000000", 1048576),
    (16, "0/3000028", "000000010000000000000003", 40),
    (16, "0/3000000", "000000010000000000000002", 0),
    (16, "16/B374D848", "0000000100000016000000B3", 7657544),
    (16, "1/0", "0000000100000000000000FF", 0),
    (16, "0/FFFFFFFF", "0000000100000000000000FF", 16777215),
    (16, "FFFFFFFF/FFFFFFFF", "00000001FFFFFFFF000000FF", 16777215),
    (16, "0/40000000", "00000001000000000000003F", 0),
    (16, "A/C0000001", "000000010000000A000000C0", 1),
    (64, "0/3000028", "000000010000000000000000", 50331688),
    (64, "16/B374D848", "00000001000000160000002C", 57989192),
    (64, "1/0", "00000001000000000000003F", 0),
    (64, "0/40000000", "00000001000000000000000F", 0),
    (64, "A/C0000001", "000000010000000A00000030", 1),
    (1024, "0/3000028", "000000010000000000000000", 50331688),
    (1024, "16/B374D848", "000000010000001600000002", 863295560),
    (1024, "1/0", "000000010000000000000003", 0),
    (1024, "0/40000000", "000000010000000000000000", 0),
    (1024, "FFFFFFFF/FFFFFFFF", "00000001FFFFFFFF00000003", 1073741823),
    (1024, "A/C0000001", "000000010000000A00000003", 1),
]

HISTORY_2 = "1\t0/E000A0\tno recovery target specified\n"
HISTORY_3 = "1\t0/E000A0\tno recovery target specified\n\n2\t0/17100C0\tafter LSN 0/1710080\n"

ARCHIVE_LISTING = """
000000010000000000000006 000000010000000000000007 000000010000000000000008 000000010000000000000009
00000001000000000000000A 00000001000000000000000B 00000001000000000000000B.00000028.backup
00000001000000000000000C 00000001000000000000000D 00000001000000000000000E.partial 00000002.history
00000002000000000000000E 00000002000000000000000F 000000020000000000000010 000000020000000000000011
000000020000000000000012 000000020000000000000013 000000020000000000000013.000000D8.backup
000000020000000000000014 000000020000000000000015 000000020000000000000016 000000020000000000000017
000000020000000000000018 000000020000000000000019 00000002000000000000001A 00000002000000000000001B
00000003.history 000000030000000000000017 000000030000000000000018
""".split()


def _name(tli: int, segno: int, seg_size: int = MIB) -> str:
    return wal.segment_name(tli, segno, seg_size)


# --- segment size ---------------------------------------------------------------------------------


def test_segment_sizes_are_the_powers_of_two_from_1mib_to_1gib() -> None:
    assert SIZES[0] == MIB and SIZES[-1] == 1024 * MIB and len(SIZES) == 11
    assert wal.DEFAULT_SEGMENT_SIZE in SIZES


@pytest.mark.parametrize("seg_size", SIZES, ids=SIZE_IDS)
def test_segments_per_xlogid(seg_size: int) -> None:
    assert wal.segments_per_xlogid(seg_size) * seg_size == 1 << 32


def test_segments_per_xlogid_known_values() -> None:
    assert wal.segments_per_xlogid(MIB) == 4096
    assert wal.segments_per_xlogid(16 * MIB) == 256
    assert wal.segments_per_xlogid(1024 * MIB) == 4


@pytest.mark.parametrize("bad", [0, -16 * MIB, 16, 512 * 1024, 2048 * MIB, 3 * MIB, 24 * MIB, True, 16.0, "16MB"])
def test_invalid_segment_sizes_are_refused(bad: object) -> None:
    with pytest.raises(WalError, match="segment size"):
        wal.check_segment_size(bad)  # type: ignore[arg-type]
    with pytest.raises(WalError):
        wal.segment_name(1, 0, bad)  # type: ignore[arg-type]


# --- LSN ------------------------------------------------------------------------------------------


def test_lsn_parse_and_format() -> None:
    lsn = LSN.parse("16/B374D848")
    assert lsn.value == 0x16_B374_D848
    assert str(lsn) == "16/B374D848"
    assert repr(lsn) == "LSN('16/B374D848')"
    assert str(LSN(0)) == "0/0"
    assert str(LSN(0xFFFFFFFF_FFFFFFFF)) == "FFFFFFFF/FFFFFFFF"
    assert LSN.parse("0/3000028") == LSN(0x3000028)


def test_lsn_parse_accepts_what_pg_lsn_accepts() -> None:
    # pg_lsn_in: 1-8 hex digits on each side, either case, leading zeros allowed.
    assert LSN.parse("16/b374d848") == LSN.parse("00000016/B374D848") == LSN(0x16_B374_D848)
    assert LSN.parse("0/0") == LSN(0)


@pytest.mark.parametrize(
    "text", ["", "0", "0/", "/0", "123456789/0", "0/123456789", " 0/1", "0/1 ", "0/1\n", "-1/0", "0x1/0", "G/0", "1/2/3", "0/١"]
)
def test_lsn_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(WalError, match="invalid LSN"):
        LSN.parse(text)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lsn_text_round_trip(value: int) -> None:
    lsn = LSN(value)
    assert LSN.parse(str(lsn)) == lsn
    text = str(lsn)
    assert text == text.upper() and not text.startswith("0" * 2)


@settings(max_examples=200)
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.integers(1, 8), st.booleans())
def test_lsn_parse_of_padded_or_lower_case_text(hi: int, lo: int, width: int, lower: bool) -> None:
    text = f"{hi:X}/{lo:0{width}X}"
    assert LSN.parse(text.lower() if lower else text) == LSN(hi << 32 | lo)


def test_lsn_arithmetic_and_order() -> None:
    a = LSN.parse("0/FFFFFFFF")
    assert a + 1 == LSN.parse("1/0")
    assert LSN.parse("1/0") - 1 == a
    assert LSN.parse("1/0") - a == 1
    assert a - LSN.parse("1/0") == -1
    assert a < a + 1 and max(a, a + 1, a - 1) == a + 1
    assert sorted([LSN.parse("1/0"), LSN.parse("0/FFFFFFFF"), LSN(0)]) == [LSN(0), a, a + 1]
    assert len({LSN(1), LSN.parse("0/1")}) == 1


def test_lsn_stays_in_range_and_typed() -> None:
    with pytest.raises(WalError):
        LSN(0xFFFFFFFF_FFFFFFFF) + 1
    with pytest.raises(WalError):
        LSN(0) - 1
    with pytest.raises(WalError):
        LSN(-1)
    with pytest.raises(WalError):
        LSN("0/1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        LSN(1) + LSN(2)  # type: ignore[operator]
    with pytest.raises(TypeError):
        LSN(1) + 1.5  # type: ignore[operator]
    with pytest.raises(AttributeError):
        LSN(1).value = 2  # type: ignore[misc]


# --- segments: known values from PostgreSQL -------------------------------------------------------


def test_known_values_from_the_brief() -> None:
    assert _name(1, wal.segment_of(LSN.parse("0/3000028"), 16 * MIB), 16 * MIB) == "000000010000000000000003"
    assert _name(1, 0x100, MIB) == "000000010000000000000100"
    assert _name(1, 4096, MIB) == "000000010000000100000000"
    assert _name(1, 4095, MIB) == "000000010000000000000FFF"
    assert _name(1, 256, 16 * MIB) == "000000010000000100000000"
    assert _name(0xA, 5, 1024 * MIB) == "0000000A0000000100000001"


@pytest.mark.parametrize(("mib", "text", "pg_name", "pg_offset"), PG15_WALFILE_NAMES)
def test_agrees_with_pg_walfile_name(mib: int, text: str, pg_name: str, pg_offset: int) -> None:
    seg_size, lsn = mib * MIB, LSN.parse(text)
    # pg_walfile_name() treats its argument as an *end* position (XLByteToPrevSeg), so a boundary
    # LSN names the previous segment; segments_between's last segment follows the same rule.
    assert _name(1, wal.segment_of(lsn - 1, seg_size), seg_size) == pg_name
    assert list(wal.segments_between(1, lsn - 1, lsn, seg_size)) == [pg_name]
    assert wal.segment_offset(lsn, seg_size) == pg_offset
    if pg_offset != 0:  # off a boundary the byte at lsn is in the same segment (XLByteToSeg)
        assert _name(1, wal.segment_of(lsn, seg_size), seg_size) == pg_name
        assert wal.parse_segment_name(pg_name, seg_size) == (1, wal.segment_of(lsn, seg_size))


def test_boundary_lsn_starts_the_next_segment() -> None:
    lsn = LSN.parse("0/3000000")
    assert wal.segment_of(lsn, 16 * MIB) == 3
    assert wal.segment_offset(lsn, 16 * MIB) == 0
    assert wal.segment_start_lsn(3, 16 * MIB) == lsn
    assert wal.segment_start_lsn(0x30, MIB) == lsn


@pytest.mark.parametrize("seg_size", SIZES, ids=SIZE_IDS)
def test_name_carries_into_the_log_part_at_segments_per_xlogid(seg_size: int) -> None:
    per_id = wal.segments_per_xlogid(seg_size)
    assert _name(1, per_id - 1, seg_size) == f"0000000100000000{per_id - 1:08X}"
    assert _name(1, per_id, seg_size) == "000000010000000100000000"
    # The end of WAL: LSN FFFFFFFF/FFFFFFFF is in the last nameable segment.
    last = wal.segment_of(LSN(0xFFFFFFFF_FFFFFFFF), seg_size)
    assert _name(0xFFFFFFFF, last, seg_size) == f"FFFFFFFFFFFFFFFF{per_id - 1:08X}"
    assert wal.segment_start_lsn(last, seg_size) == LSN((1 << 64) - seg_size)
    with pytest.raises(WalError, match="segment number"):
        _name(1, last + 1, seg_size)
    with pytest.raises(WalError, match="segment number"):
        wal.segment_start_lsn(-1, seg_size)


@settings(max_examples=500)
@given(st.sampled_from(SIZES), st.integers(1, wal.MAX_TIMELINE), st.data())
def test_segment_name_round_trip(seg_size: int, tli: int, data: st.DataObject) -> None:
    segno = data.draw(st.integers(0, (1 << 64) // seg_size - 1))
    name = wal.segment_name(tli, segno, seg_size)
    assert len(name) == 24 and name == name.upper()
    assert wal.classify(name) is WalFileKind.SEGMENT
    assert wal.parse_segment_name(name, seg_size) == (tli, segno)
    assert wal.segment_of(wal.segment_start_lsn(segno, seg_size), seg_size) == segno


@settings(max_examples=300)
@given(st.sampled_from(SIZES), st.integers(1, 0xFFFF), st.integers(0, (1 << 44) - 1), st.integers(0, (1 << 44) - 1))
def test_names_sort_like_segment_numbers(seg_size: int, tli: int, a: int, b: int) -> None:
    # Object listings come back in name order; that must be WAL order within a timeline.
    limit = (1 << 64) // seg_size
    a, b = a % limit, b % limit
    assert (wal.segment_name(tli, a, seg_size) < wal.segment_name(tli, b, seg_size)) == (a < b)


@settings(max_examples=300)
@given(st.sampled_from(SIZES), st.integers(0, (1 << 64) - 1))
def test_lsn_lies_inside_its_segment(seg_size: int, value: int) -> None:
    lsn = LSN(value)
    segno = wal.segment_of(lsn, seg_size)
    start = wal.segment_start_lsn(segno, seg_size)
    assert start <= lsn and lsn - start == wal.segment_offset(lsn, seg_size) < seg_size


@pytest.mark.parametrize(
    ("name", "seg_size", "message"),
    [
        ("00000001000000000000000a", 16 * MIB, "24 upper-case hex"),
        ("00000001000000000000001", 16 * MIB, "24 upper-case hex"),
        ("0000000100000000000000011", 16 * MIB, "24 upper-case hex"),
        ("000000010000000000000001.partial", 16 * MIB, "24 upper-case hex"),
        ("000000000000000000000001", 16 * MIB, "timeline 0"),
        ("000000010000000000000100", 16 * MIB, "must be below 00000100"),
        ("000000010000000000001000", MIB, "must be below 00001000"),
        ("000000010000000000000004", 1024 * MIB, "must be below 00000004"),
    ],
)
def test_parse_segment_name_rejects(name: str, seg_size: int, message: str) -> None:
    with pytest.raises(WalError, match=message):
        wal.parse_segment_name(name, seg_size)


def test_the_same_name_is_a_different_segment_for_another_segment_size() -> None:
    name = "000000010000000100000003"
    assert wal.parse_segment_name(name, 1024 * MIB) == (1, 7)
    assert wal.parse_segment_name(name, 16 * MIB) == (1, 259)
    assert wal.parse_segment_name(name, MIB) == (1, 4099)


@pytest.mark.parametrize("tli", [0, -1, 1 << 32, True])
def test_segment_name_rejects_bad_timelines(tli: int) -> None:
    with pytest.raises(WalError, match="timeline"):
        wal.segment_name(tli, 1, 16 * MIB)


# --- file names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("000000010000000000000001", WalFileKind.SEGMENT),
        ("000000010000000000000001.partial", WalFileKind.PARTIAL),
        ("00000002.history", WalFileKind.HISTORY),
        ("000000010000000000000002.00000028.backup", WalFileKind.BACKUP_HISTORY),
        ("FFFFFFFFFFFFFFFFFFFFFFFF", WalFileKind.SEGMENT),
    ],
)
def test_classify(name: str, kind: WalFileKind) -> None:
    assert wal.classify(name) is kind
    assert wal.classify_or_none(name) is kind


def test_classify_every_file_of_a_real_archive() -> None:
    kinds = [wal.classify(n) for n in ARCHIVE_LISTING]
    assert kinds.count(WalFileKind.PARTIAL) == 1
    assert kinds.count(WalFileKind.HISTORY) == 2
    assert kinds.count(WalFileKind.BACKUP_HISTORY) == 2
    assert kinds.count(WalFileKind.SEGMENT) == len(ARCHIVE_LISTING) - 5


@pytest.mark.parametrize(
    "name",
    [
        "",
        "RECOVERYXLOG",
        "RECOVERYHISTORY",
        "archive_status",
        "00000001000000000000001",
        "0000000100000000000000011",
        "000000010000000000000001.partial.tmp",
        "000000010000000000000001.PARTIAL",
        "00000002.history.tmp",
        "0000002.history",
        "000000002.history",
        "000000010000000000000002.0028.backup",
        "000000010000000000000002.backup",
        "pg_wal/000000010000000000000001",
        "000000010000000000000001.zst",
        " 000000010000000000000001",
        "000000010000000000000001\n",
    ],
)
def test_classify_rejects_other_names(name: str) -> None:
    with pytest.raises(WalError, match="not a WAL file name PostgreSQL archives") as err:
        wal.classify(name)
    assert repr(name) in str(err.value)
    assert wal.classify_or_none(name) is None


@pytest.mark.parametrize("name", ["00000001000000000000000a", "0000000a.history", "000000010000000000000002.0000002a.backup"])
def test_classify_explains_lower_case_hex(name: str) -> None:
    with pytest.raises(WalError, match="upper case"):
        wal.classify(name)


def test_history_and_backup_history_file_names() -> None:
    assert wal.history_file_name(2) == "00000002.history"
    assert wal.history_file_name(0x1A) == "0000001A.history"
    with pytest.raises(WalError):
        wal.history_file_name(0)
    # Both real files from the archive: the offset is within the segment, not the whole LSN.
    assert wal.backup_history_file_name(1, LSN.parse("0/B00028"), MIB) == "00000001000000000000000B.00000028.backup"
    assert wal.backup_history_file_name(2, LSN.parse("0/13000D8"), MIB) == "000000020000000000000013.000000D8.backup"
    assert wal.backup_history_file_name(1, LSN.parse("0/2000028"), 16 * MIB) == "000000010000000000000002.00000028.backup"
    assert wal.backup_history_file_name(1, LSN.parse("0/13000D8"), 64 * MIB) == "000000010000000000000000.013000D8.backup"


# --- history files --------------------------------------------------------------------------------


def test_parse_real_history_files() -> None:
    assert wal.parse_history(HISTORY_2) == [HistoryEntry(1, LSN.parse("0/E000A0"), "no recovery target specified")]
    assert wal.parse_history(HISTORY_3) == [
        HistoryEntry(1, LSN.parse("0/E000A0"), "no recovery target specified"),
        HistoryEntry(2, LSN.parse("0/17100C0"), "after LSN 0/1710080"),
    ]


def test_parse_history_comments_blank_lines_and_variants() -> None:
    text = (
        "# written by hand\n"
        "\n"
        "   # indented comment\n"
        "1\t0/3000000\tno recovery target specified\r\n"
        "  3 0/5000028   before 2026-11-25 13:00:00+00\n"
        "7\t1/a\n"
        "\t\n"
        "10\t16/B374D848\tat restore point \"pre\tupgrade\"   \n"
    )
    assert wal.parse_history(text) == [
        HistoryEntry(1, LSN.parse("0/3000000"), "no recovery target specified"),
        HistoryEntry(3, LSN.parse("0/5000028"), "before 2026-11-25 13:00:00+00"),
        HistoryEntry(7, LSN.parse("1/A"), ""),
        HistoryEntry(10, LSN.parse("16/B374D848"), 'at restore point "pre\tupgrade"'),
    ]
    assert wal.parse_history("") == []
    assert wal.parse_history("# nothing\n\n") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x\t0/1\treason\n", "syntax error .* line 1"),
        ("# c\n1\n", "syntax error .* line 2"),
        ("1\tzzz\n", "syntax error"),
        ("1\t0/123456789\n", "syntax error"),
        ("1\t0/1x\n", "syntax error"),
        ("-1\t0/1\n", "syntax error"),
        ("0\t0/1\n", "invalid timeline 0"),
        ("99999999999\t0/1\n", "invalid timeline"),
        ("2\t0/1\n2\t0/2\n", "must increase.*line 2"),
        ("3\t0/1\n\n2\t0/2\n", "must increase.*line 3"),
        ("1\t0/5000000\n2\t0/4000000\n", "backwards.*line 2"),
    ],
)
def test_parse_history_rejects_corruption(text: str, message: str) -> None:
    with pytest.raises(WalError, match=message):
        wal.parse_history(text)


def test_timeline_spans_follow_readTimeLineHistory() -> None:
    h3 = wal.parse_history(HISTORY_3)
    assert wal.timeline_spans(h3, 3) == [
        TimelineSpan(1, LSN(0), LSN.parse("0/E000A0")),
        TimelineSpan(2, LSN.parse("0/E000A0"), LSN.parse("0/17100C0")),
        TimelineSpan(3, LSN.parse("0/17100C0"), None),
    ]
    assert wal.timeline_spans([], 1) == [TimelineSpan(1, LSN(0), None)]
    # Timelines need not be consecutive: a history may skip abandoned siblings.
    assert [s.tli for s in wal.timeline_spans(wal.parse_history("1\t0/3000000\n4\t0/5000000\n"), 9)] == [1, 4, 9]


@pytest.mark.parametrize("target", [1, 2, 0])
def test_timeline_spans_reject_a_target_not_newer_than_its_parents(target: int) -> None:
    with pytest.raises(WalError):
        wal.timeline_spans(wal.parse_history(HISTORY_3), target)


@pytest.mark.parametrize(
    ("lsn", "tli"),
    [("0/0", 1), ("0/E0009F", 1), ("0/E000A0", 2), ("0/E000A1", 2), ("0/17100BF", 2), ("0/17100C0", 3), ("FFFFFFFF/FFFFFFFF", 3)],
)
def test_timeline_of_lsn_on_a_real_history(lsn: str, tli: int) -> None:
    assert wal.timeline_of_lsn(wal.parse_history(HISTORY_3), 3, LSN.parse(lsn)) == tli


def test_timeline_of_lsn_follows_the_requested_timeline_only() -> None:
    # Timeline 2's own history knows nothing of timeline 3: past 0/17100C0 it is still 2.
    assert wal.timeline_of_lsn(wal.parse_history(HISTORY_2), 2, LSN.parse("0/2000000")) == 2
    assert wal.timeline_of_lsn([], 5, LSN.parse("0/1")) == 5


def test_two_switches_at_the_same_lsn_skip_the_empty_timeline() -> None:
    # Timeline 2 was promoted and immediately branched again (e.g. a failed PITR attempt).
    history = wal.parse_history("1\t0/3000100\tx\n2\t0/3000100\ty\n")
    assert wal.timeline_of_lsn(history, 3, LSN.parse("0/30000FF")) == 1
    assert wal.timeline_of_lsn(history, 3, LSN.parse("0/3000100")) == 3
    assert wal.timeline_of_segment(history, 3, 3, 16 * MIB) == 3
    assert wal.timeline_of_segment(history, 3, 2, 16 * MIB) == 1


@pytest.mark.parametrize(("segno", "tli"), [(0, 1), (0xD, 1), (0xE, 2), (0x16, 2), (0x17, 3), (0x18, 3), (1 << 40, 3)])
def test_timeline_of_segment_on_the_real_archive(segno: int, tli: int) -> None:
    # Recovery read TL1 up to 0D, then TL2 from 0E (TL1's 0E is only a .partial), TL3 from 17.
    assert wal.timeline_of_segment(wal.parse_history(HISTORY_3), 3, segno, MIB) == tli


def test_switch_on_a_segment_boundary_leaves_the_parent_segment_whole() -> None:
    history = wal.parse_history("1\t0/3000000\tno recovery target specified\n")
    assert wal.timeline_of_segment(history, 2, 2, 16 * MIB) == 1
    assert wal.timeline_of_segment(history, 2, 3, 16 * MIB) == 2
    # With 64 MiB segments the same switch point is mid-segment 0, which comes from timeline 2.
    assert wal.timeline_of_segment(history, 2, 0, 64 * MIB) == 2


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[HistoryEntry], int]:
    switches = sorted(draw(st.lists(st.integers(0, 1 << 36), max_size=5)))
    tlis = sorted(draw(st.lists(st.integers(1, 60), min_size=len(switches), max_size=len(switches), unique=True)))
    target = draw(st.integers((tlis[-1] if tlis else 0) + 1, 64))
    return [HistoryEntry(t, LSN(s)) for t, s in zip(tlis, switches)], target


@settings(max_examples=300)
@given(histories(), st.sampled_from(SIZES), st.integers(0, (1 << 36) // MIB + 2))
def test_segment_comes_from_the_timeline_of_its_last_byte(h: tuple[list[HistoryEntry], int], seg_size: int, segno: int) -> None:
    history, target = h
    segno = min(segno, (1 << 64) // seg_size - 1)
    last_byte = wal.segment_start_lsn(segno, seg_size) + (seg_size - 1)
    assert wal.timeline_of_segment(history, target, segno, seg_size) == wal.timeline_of_lsn(history, target, last_byte)


# --- ranges ---------------------------------------------------------------------------------------


def test_segments_between_basic() -> None:
    s16 = 16 * MIB
    start, end = LSN.parse("0/2000028"), LSN.parse("0/5000100")
    assert list(wal.segments_between(1, start, end, s16)) == [_name(1, n, s16) for n in (2, 3, 4, 5)]
    # An end on a boundary does not need the next segment ...
    assert list(wal.segments_between(1, start, LSN.parse("0/5000000"), s16))[-1] == _name(1, 4, s16)
    # ... but one byte further does.
    assert list(wal.segments_between(1, start, LSN.parse("0/5000001"), s16))[-1] == _name(1, 5, s16)
    assert list(wal.segments_between(1, start, start, s16)) == [_name(1, 2, s16)]
    assert list(wal.segments_between(1, LSN.parse("0/2000000"), LSN.parse("0/2000000"), s16)) == [_name(1, 2, s16)]
    with pytest.raises(WalError, match="ends before it starts"):
        wal.segments_between(1, end, start, s16)


def test_segments_between_crosses_log_ids() -> None:
    names = list(wal.segments_between(7, LSN.parse("0/80000000"), LSN.parse("1/40000001"), 1024 * MIB))
    assert names == ["000000070000000000000002", "000000070000000000000003", "000000070000000100000000", "000000070000000100000001"]


def test_segments_between_across_timelines_matches_the_real_archive() -> None:
    # Base backup 1 started at 0/B00028 on TL1; replay to past TL3's last archived record.
    names = list(wal.segments_between(3, LSN.parse("0/B00028"), LSN.parse("0/1800100"), MIB, wal.parse_history(HISTORY_3)))
    expected = [_name(1, n) for n in range(0xB, 0xE)] + [_name(2, n) for n in range(0xE, 0x17)] + [_name(3, 0x17), _name(3, 0x18)]
    assert names == expected
    assert set(names) <= set(ARCHIVE_LISTING)


def test_segments_between_is_what_real_recovery_restored() -> None:
    # The stopped TL1 primary, recovered with recovery_target_timeline='latest' (redo started at the
    # switch point 0/E000A0), logged exactly these "restored log file" lines, in this order, then
    # found no 000000030000000000000019.  TL1's 0E exists only as .partial and was never asked for.
    restored = "00000002000000000000000E 00000002000000000000000F 000000020000000000000010 000000020000000000000011 "
    restored += "000000020000000000000012 000000020000000000000013 000000020000000000000014 000000020000000000000015 "
    restored += "000000020000000000000016 000000030000000000000017 000000030000000000000018"
    h3 = wal.parse_history(HISTORY_3)
    assert list(wal.segments_between(3, LSN.parse("0/E000A0"), LSN.parse("0/1800001"), MIB, h3)) == restored.split()


@settings(max_examples=300)
@given(st.sampled_from(SIZES), st.integers(0, 1 << 40), st.integers(0, 1 << 34))
def test_segments_between_is_contiguous_and_covers_the_range(seg_size: int, start: int, length: int) -> None:
    begin, end = LSN(start), LSN(start + length)
    segnos = [wal.parse_segment_name(n, seg_size)[1] for n in wal.segments_between(1, begin, end, seg_size)]
    assert segnos == list(range(segnos[0], segnos[-1] + 1))
    assert segnos[0] == wal.segment_of(begin, seg_size)
    if length:
        assert wal.segment_start_lsn(segnos[-1], seg_size) < end <= wal.segment_start_lsn(segnos[-1], seg_size) + seg_size


# --- gaps -----------------------------------------------------------------------------------------


def test_real_archive_has_no_gaps() -> None:
    assert wal.find_gaps(ARCHIVE_LISTING, MIB) == []
    assert wal.find_gaps(ARCHIVE_LISTING, MIB, timeline=3, history=wal.parse_history(HISTORY_3)) == []
    assert wal.find_gaps(ARCHIVE_LISTING, MIB, timeline=2, history=wal.parse_history(HISTORY_2)) == []
    assert wal.find_gaps(reversed(ARCHIVE_LISTING), MIB) == []  # order does not matter
    assert wal.find_gaps([], MIB) == [] and wal.find_gaps([], MIB, timeline=3) == []


def _without(*names: str) -> list[str]:
    assert set(names) <= set(ARCHIVE_LISTING)
    return [n for n in ARCHIVE_LISTING if n not in names]


def test_gap_inside_a_timeline() -> None:
    listing = _without(_name(2, 0x10), _name(2, 0x11), _name(2, 0x14))
    expected = [(_name(2, 0x10), _name(2, 0x11)), (_name(2, 0x14), _name(2, 0x14))]
    assert wal.find_gaps(listing, MIB) == expected
    assert wal.find_gaps(listing, MIB, timeline=3, history=wal.parse_history(HISTORY_3)) == expected


def test_chain_mode_sees_gaps_at_the_switch_that_per_timeline_mode_cannot() -> None:
    h3 = wal.parse_history(HISTORY_3)
    # TL1's last segment before the switch, and TL3's first, are each at the end of their timeline.
    listing = _without(_name(1, 0xD), _name(3, 0x17))
    assert wal.find_gaps(listing, MIB) == []
    expected = [(_name(1, 0xD), _name(1, 0xD)), (_name(3, 0x17), _name(3, 0x17))]
    assert wal.find_gaps(listing, MIB, timeline=3, history=h3) == expected


def test_a_missing_run_is_split_at_the_timeline_switch() -> None:
    listing = _without(_name(1, 0xC), _name(1, 0xD), _name(2, 0xE), _name(2, 0xF))
    assert wal.find_gaps(listing, MIB, timeline=3, history=wal.parse_history(HISTORY_3)) == [
        (_name(1, 0xC), _name(1, 0xD)),
        (_name(2, 0xE), _name(2, 0xF)),
    ]


def test_a_whole_missing_middle_timeline_is_one_gap() -> None:
    listing = [n for n in ARCHIVE_LISTING if not n.startswith("00000002")]
    assert wal.find_gaps(listing, MIB, timeline=3, history=wal.parse_history(HISTORY_3)) == [(_name(2, 0xE), _name(2, 0x16))]


def test_parent_segments_after_the_switch_are_not_needed() -> None:
    # TL2 went on to 1B after TL3 branched at 17; a hole there does not matter for TL3 ...
    listing = _without(_name(2, 0x19))
    assert wal.find_gaps(listing, MIB, timeline=3, history=wal.parse_history(HISTORY_3)) == []
    # ... but it is a hole in TL2 itself.
    assert wal.find_gaps(listing, MIB) == [(_name(2, 0x19), _name(2, 0x19))]
    assert wal.find_gaps(listing, MIB, timeline=2, history=wal.parse_history(HISTORY_2)) == [(_name(2, 0x19), _name(2, 0x19))]


def test_timelines_off_the_chain_are_checked_on_their_own() -> None:
    sibling = [_name(4, 0x20), _name(4, 0x22)]
    assert wal.find_gaps(ARCHIVE_LISTING + sibling, MIB, timeline=3, history=wal.parse_history(HISTORY_3)) == [
        (_name(4, 0x21), _name(4, 0x21))
    ]


def test_switch_on_a_segment_boundary_needs_the_whole_parent_segment() -> None:
    s16 = 16 * MIB
    history = wal.parse_history("1\t0/3000000\tno recovery target specified\n")
    complete = [_name(1, 1, s16), _name(1, 2, s16), _name(1, 3, s16), _name(2, 3, s16), _name(2, 4, s16)]
    assert wal.find_gaps(complete, s16, timeline=2, history=history) == []
    assert wal.find_gaps([n for n in complete if n != _name(1, 2, s16)], s16, timeline=2, history=history) == [
        (_name(1, 2, s16), _name(1, 2, s16))
    ]


def test_gaps_across_a_log_id_and_huge_gaps() -> None:
    g1 = 1024 * MIB
    names = ["000000010000000000000002", "000000010000000000000003", "000000010000000100000000"]
    assert wal.find_gaps(names, g1) == []
    assert wal.find_gaps(names[::2], g1) == [("000000010000000000000003", "000000010000000000000003")]
    # A corrupt listing can imply an enormous gap; it is reported, not enumerated.
    far = ["000000010000000000000000", "00000001FFFFFFFF00000003"]
    assert wal.find_gaps(far, g1) == [("000000010000000000000001", "00000001FFFFFFFF00000002")]


def test_find_gaps_rejects_foreign_names() -> None:
    with pytest.raises(WalError, match="not a WAL file name"):
        wal.find_gaps(["000000010000000000000001", "backup_label"], MIB)
    with pytest.raises(WalError, match="must be below"):
        wal.find_gaps(["000000010000000000000100"], 16 * MIB)


@settings(max_examples=200)
@given(histories(), st.sampled_from(SIZES[:6]), st.data())
def test_find_gaps_reports_exactly_the_missing_needed_segments(
    h: tuple[list[HistoryEntry], int], seg_size: int, data: st.DataObject
) -> None:
    history, target = h
    lo = data.draw(st.integers(0, (1 << 36) // seg_size))
    hi = lo + data.draw(st.integers(0, 40))
    start, end = wal.segment_start_lsn(lo, seg_size), wal.segment_start_lsn(hi + 1, seg_size)
    needed = list(wal.segments_between(target, start, end, seg_size, history))
    keep = data.draw(st.lists(st.booleans(), min_size=len(needed), max_size=len(needed)))
    present = [n for n, k in zip(needed, keep) if k]
    # Segments of a parent timeline past its switch point (the old primary kept archiving), with
    # holes of their own, must not count.
    extra = [_name(e.parent_tli, wal.segment_of(e.switch_lsn, seg_size) + 2 * i, seg_size) for e in history for i in range(2)]
    gaps = wal.find_gaps(present + [n for n in extra if n not in needed], seg_size, timeline=target, history=history)
    reported = [n for a, b in gaps for n in needed[needed.index(a) : needed.index(b) + 1]]
    if present:
        first, last = needed.index(present[0]), needed.index(present[-1])
        assert reported == [n for n in needed[first : last + 1] if n not in present]
    else:
        assert gaps == []
    for a, b in gaps:
        assert a[:8] == b[:8]  # a reported run stays on one timeline


# --- purity ---------------------------------------------------------------------------------------


def test_module_does_no_io() -> None:
    source = Path(wal.__file__).read_text()
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= {"__future__", "collections", "dataclasses", "enum", "re", "typing"}
    assert "open(" not in source
