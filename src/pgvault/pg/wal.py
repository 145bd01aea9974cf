"""Pure WAL math: LSNs, segment file names, timelines and timeline history files.

No I/O (DESIGN rule 5): callers read files and listings and pass text and names in.  Everything
takes the cluster's ``wal_segment_size`` (fixed at initdb: a power of two, 1 MiB..1 GiB) because
with another size the same LSN lives in a differently named file, and a 16 MiB guess would make
restore_command fetch the wrong one.  The rules mirror PostgreSQL's ``access/xlog_internal.h``
(``XLogFileName`` etc.) and ``transam/timeline.c``, named where they apply.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

MIN_SEGMENT_SIZE = 1 << 20  # WalSegMinSize
MAX_SEGMENT_SIZE = 1 << 30  # WalSegMaxSize
SEGMENT_SIZES = tuple(1 << n for n in range(20, 31))  # every valid wal_segment_size (IsValidWalSegSize)
DEFAULT_SEGMENT_SIZE = 16 << 20  # initdb's default: for configuration defaults only, never assumed here
MAX_TIMELINE = 0xFFFFFFFF  # TimeLineID is a uint32; 0 is never a valid timeline
_LSN_LIMIT = 1 << 64  # XLogRecPtr is a uint64

_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
# PostgreSQL writes these names with "%08X" and its IsXLogFileName() & co. accept upper case only.
_SEGMENT_RE = re.compile(r"[0-9A-F]{24}")
_HISTORY_LINE_RE = re.compile(r"\s*(\d+)\s+([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})(?:\s+(.*?))?\s*")


class WalError(ValueError):
    """A position, file name, segment size or history file that PostgreSQL would not produce."""


def _int_in(value: object, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WalError(f"invalid {what} {value!r}: must be an integer from {lo} to {hi}")
    return value


def check_segment_size(seg_size: int) -> int:
    """Return ``seg_size`` if it is a valid ``wal_segment_size``, else raise :class:`WalError`."""
    # IsValidWalSegSize(): a power of two between 1 MiB and 1 GiB.  Checked on every call because
    # a size in the wrong unit (MiB instead of bytes, from SHOW wal_segment_size) is an easy slip.
    if _int_in(seg_size, MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE, "WAL segment size (bytes)") & (seg_size - 1):
        raise WalError(f"invalid WAL segment size {seg_size} bytes: must be a power of two from 1 MiB to 1 GiB")
    return seg_size


def segments_per_xlogid(seg_size: int) -> int:
    """Segments per 4 GiB "log id" (``XLogSegmentsPerXLogId``): 4096 for 1 MiB, 256 for 16 MiB, 4 for 1 GiB."""
    return 0x100000000 // check_segment_size(seg_size)


@dataclass(frozen=True, order=True, slots=True)
class LSN:
    """A WAL position (``XLogRecPtr``, a 64-bit byte offset); text form as ``pg_lsn``: ``16/B374D848``.

    ``LSN + n`` / ``LSN - n`` move by bytes; ``LSN - LSN`` is the distance in bytes.
    """

    value: int

    def __post_init__(self) -> None:
        _int_in(self.value, 0, _LSN_LIMIT - 1, "LSN")

    @classmethod
    def parse(cls, text: str) -> LSN:
        """Parse ``"16/B374D848"`` (either case, as ``pg_lsn_in`` accepts; no spaces, no sign)."""
        m = _LSN_RE.fullmatch(text)
        if m is None:
            raise WalError(f"invalid LSN {text!r}: expected two hex numbers of 1-8 digits like 16/B374D848")
        return cls(int(m.group(1), 16) << 32 | int(m.group(2), 16))

    def __str__(self) -> str:
        # LSN_FORMAT_ARGS / "%X/%X": upper case, no zero padding, exactly what the server prints.
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"LSN('{self}')"

    def __add__(self, nbytes: int) -> LSN:
        if not isinstance(nbytes, int):
            return NotImplemented
        return LSN(self.value + nbytes)

    @overload
    def __sub__(self, other: LSN) -> int: ...
    @overload
    def __sub__(self, other: int) -> LSN: ...

    def __sub__(self, other: LSN | int) -> LSN | int:
        if isinstance(other, LSN):
            return self.value - other.value
        if not isinstance(other, int):
            return NotImplemented
        return LSN(self.value - other)


# --- segments -------------------------------------------------------------------------------------


def segment_of(lsn: LSN, seg_size: int) -> int:
    """Number of the segment holding the byte at ``lsn`` (``XLByteToSeg``).

    A position exactly on a boundary belongs to the *new* segment; for an end position (first
    byte not written) use ``segment_of(lsn - 1, ...)`` (``XLByteToPrevSeg``), as
    ``pg_walfile_name()`` does.
    """
    return lsn.value // check_segment_size(seg_size)


def segment_offset(lsn: LSN, seg_size: int) -> int:
    """Byte offset of ``lsn`` inside its segment (``XLogSegmentOffset``)."""
    return lsn.value & (check_segment_size(seg_size) - 1)


def _check_segno(segno: int, seg_size: int) -> int:
    return _int_in(segno, 0, _LSN_LIMIT // check_segment_size(seg_size) - 1, f"segment number ({seg_size}-byte segments)")


def segment_start_lsn(segno: int, seg_size: int) -> LSN:
    """First position of segment ``segno`` (``XLogSegNoOffsetToRecPtr`` with offset 0)."""
    return LSN(_check_segno(segno, seg_size) * seg_size)


def segment_name(tli: int, segno: int, seg_size: int) -> str:
    """File name of segment ``segno`` on timeline ``tli``, e.g. ``000000010000000000000003``.

    ``XLogFileName``: ``%08X%08X%08X`` of tli, ``segno // per_id``, ``segno % per_id``.  Names are
    not a 64-bit counter: with 16 MiB segments ``...00000000000000FF`` is followed by ``...0000000100000000``.
    """
    per_id = segments_per_xlogid(seg_size)
    _int_in(tli, 1, MAX_TIMELINE, "timeline")
    _check_segno(segno, seg_size)
    return f"{tli:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_segment_name(name: str, seg_size: int) -> tuple[int, int]:
    """``(timeline, segno)`` of a segment file name; the inverse of :func:`segment_name`."""
    if not _SEGMENT_RE.fullmatch(name):
        raise WalError(f"not a WAL segment file name: {name!r} (expected 24 upper-case hex digits)")
    per_id = segments_per_xlogid(seg_size)
    tli, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    if tli == 0:
        raise WalError(f"not a WAL segment file name: {name!r} (timeline 0 does not exist)")
    if seg >= per_id:
        # XLogFromFileName() would silently alias this onto another segment; refuse instead, it
        # means the name comes from a cluster with a different wal_segment_size.
        raise WalError(
            f"{name!r} cannot be a segment of a cluster with {seg_size}-byte WAL segments: "
            f"its last 8 digits must be below {per_id:08X}"
        )
    return tli, log * per_id + seg


class WalFileKind(enum.Enum):
    """The kinds of file PostgreSQL hands to archive_command (and asks restore_command for)."""

    SEGMENT = "segment"  # 000000010000000000000001
    PARTIAL = "partial"  # 000000010000000000000001.partial: the old timeline's last segment at promotion
    # Recovery probes restore_command for history files of timelines that may never have existed
    # (to find the newest one), so "absent" is a normal answer for these.
    HISTORY = "history"  # 00000002.history
    BACKUP_HISTORY = "backup_history"  # 000000010000000000000002.00000028.backup


_KINDS = (
    (_SEGMENT_RE, WalFileKind.SEGMENT),
    (re.compile(r"[0-9A-F]{24}\.partial"), WalFileKind.PARTIAL),
    (re.compile(r"[0-9A-F]{8}\.history"), WalFileKind.HISTORY),
    (re.compile(r"[0-9A-F]{24}\.[0-9A-F]{8}\.backup"), WalFileKind.BACKUP_HISTORY),
)


def classify_or_none(name: str) -> WalFileKind | None:
    """Like :func:`classify` but ``None`` for names that are not archived WAL files."""
    return next((kind for pattern, kind in _KINDS if pattern.fullmatch(name)), None)


def classify(name: str) -> WalFileKind:
    """Kind of an archived WAL file name (``%f``), by shape only (``IsXLogFileName`` & co.).

    Raises :class:`WalError` for anything else.  restore_command's ``%p`` names
    (``RECOVERYXLOG``, ``RECOVERYHISTORY``) are destinations, never ``%f``.
    """
    kind = classify_or_none(name)
    if kind is not None:
        return kind
    upper_hex = re.sub(r"[0-9A-Fa-f]{8,}", lambda m: m.group().upper(), name)
    hint = " (hex digits must be upper case)" if classify_or_none(upper_hex) else ""
    raise WalError(
        f"not a WAL file name PostgreSQL archives: {name!r}{hint}; expected a segment "
        "(000000010000000000000001), a partial segment (<segment>.partial), a timeline history file "
        "(00000002.history) or a backup history file (<segment>.<8 hex digits>.backup)"
    )


def history_file_name(tli: int) -> str:
    """``TLHistoryFileName``: ``00000002.history``.  Timeline 1 never has one."""
    return f"{_int_in(tli, 1, MAX_TIMELINE, 'timeline'):08X}.history"


def backup_history_file_name(tli: int, start_lsn: LSN, seg_size: int) -> str:
    """``BackupHistoryFileName``: start segment plus the start's offset *within* that segment."""
    return f"{segment_name(tli, segment_of(start_lsn, seg_size), seg_size)}.{segment_offset(start_lsn, seg_size):08X}.backup"


# --- timelines ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of a timeline history file: ``parent_tli`` ended at ``switch_lsn``, the next began."""

    parent_tli: int
    switch_lsn: LSN
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TimelineSpan:
    """Timeline ``tli`` holds the WAL from ``begin`` (inclusive) to ``end`` (exclusive; None = open)."""

    tli: int
    begin: LSN
    end: LSN | None


def parse_history(text: str) -> list[HistoryEntry]:
    """Entries of a timeline history file (``NNNNNNNN.history``), oldest first.

    Format (``writeTimeLineHistory``): one ``parent_tli<TAB>switch_lsn<TAB>reason`` line per
    ancestor, the timeline in decimal; the file of timeline N repeats its parent's lines, so it
    alone describes N's whole ancestry.  Blank lines and ``#`` comments are skipped like
    ``readTimeLineHistory`` does, and timelines must increase strictly (its FATAL check).
    """
    entries: list[HistoryEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _HISTORY_LINE_RE.fullmatch(line)
        if m is None:
            raise WalError(f"syntax error in timeline history line {lineno}: {line!r} (expected 'TLI<TAB>LSN<TAB>reason')")
        tli = int(m.group(1))
        lsn = LSN(int(m.group(2), 16) << 32 | int(m.group(3), 16))
        if not 1 <= tli <= MAX_TIMELINE:
            raise WalError(f"invalid timeline {tli} in timeline history line {lineno}")
        if entries and tli <= entries[-1].parent_tli:
            raise WalError(f"timeline IDs must increase in a history file, line {lineno}: {line!r}")
        if entries and lsn < entries[-1].switch_lsn:
            # A child timeline starts where its parent switched, so it cannot switch earlier.
            raise WalError(f"switch points must not go backwards in a history file, line {lineno}: {line!r}")
        entries.append(HistoryEntry(tli, lsn, m.group(4) or ""))
    return entries


def timeline_spans(history: Sequence[HistoryEntry], target_tli: int) -> list[TimelineSpan]:
    """The timelines recovery walks to reach ``target_tli``, oldest first, each with its LSN range.

    ``history`` is the parsed history file *of* ``target_tli`` (empty for timeline 1 or a missing
    file), mirroring the list ``readTimeLineHistory`` builds.
    """
    _int_in(target_tli, 1, MAX_TIMELINE, "timeline")
    if history and history[-1].parent_tli >= target_tli:
        raise WalError(f"history of timeline {target_tli} names timeline {history[-1].parent_tli}: parents must be older")
    spans: list[TimelineSpan] = []
    begin = LSN(0)
    for entry in history:
        spans.append(TimelineSpan(entry.parent_tli, begin, entry.switch_lsn))
        begin = entry.switch_lsn
    spans.append(TimelineSpan(target_tli, begin, None))
    return spans


def timeline_of_lsn(history: Sequence[HistoryEntry], target_tli: int, lsn: LSN) -> int:
    """Timeline whose WAL holds ``lsn`` when following ``target_tli`` (``tliOfPointInHistory``).

    The switch point itself belongs to the child: the parent's WAL is valid only *before* it.
    """
    spans = reversed(timeline_spans(history, target_tli))
    return next(s.tli for s in spans if s.begin <= lsn and (s.end is None or lsn < s.end))


def timeline_of_segment(history: Sequence[HistoryEntry], target_tli: int, segno: int, seg_size: int) -> int:
    """Timeline whose *file* recovery reads for ``segno`` when following ``target_tli``.

    ``XLogFileReadAnyTLI`` takes the newest timeline that began in or before the segment.  So the
    segment holding a switch point comes from the child (promotion copies the parent's part into
    it and archives the parent's copy as ``.partial``), and the parent is needed only up to the
    segment before.  This differs from ``timeline_of_lsn(segment start)`` exactly there.
    """
    _check_segno(segno, seg_size)
    return _owner(history, target_tli, seg_size)[0](segno)


# --- ranges and continuity ------------------------------------------------------------------------


def segments_between(
    tli: int, start_lsn: LSN, end_lsn: LSN, seg_size: int, history: Sequence[HistoryEntry] = ()
) -> Iterator[str]:
    """Names of the segments needed to replay WAL from ``start_lsn`` up to ``end_lsn``, in order.

    ``start_lsn`` is where reading begins (a base backup's START WAL LOCATION).  ``end_lsn`` is an
    *end* position, the first byte not needed, as PostgreSQL reports ends (STOP WAL LOCATION,
    ``pg_current_wal_lsn()``): the last segment is ``segment_of(end_lsn - 1)`` (``XLByteToPrevSeg``,
    what ``pg_backup_stop`` waits for), so an end on a segment boundary does not ask for the next,
    maybe unwritten, segment.  To include a record *starting* at X pass ``X + 1``; ``end_lsn ==
    start_lsn`` yields the start segment alone.  With ``history`` (of ``tli``) each segment is named
    with the timeline recovery reads it from (:func:`timeline_of_segment`), else all are on ``tli``.
    """
    _int_in(tli, 1, MAX_TIMELINE, "timeline")
    if end_lsn < start_lsn:
        raise WalError(f"WAL range ends before it starts: {start_lsn} .. {end_lsn}")
    first = segment_of(start_lsn, seg_size)
    last = segment_of(end_lsn - 1, seg_size) if end_lsn > start_lsn else first
    owner = _owner(history, tli, seg_size)[0]
    return (segment_name(owner(segno), segno, seg_size) for segno in range(first, last + 1))


def segment_owner(history: Sequence[HistoryEntry], tli: int, seg_size: int) -> Callable[[int], int]:
    """Segment number → the timeline recovery along ``tli`` reads it from (see timeline_of_segment)."""
    return _owner(history, tli, seg_size)[0]


def _owner(history: Sequence[HistoryEntry], tli: int, seg_size: int) -> tuple[Callable[[int], int], list[int]]:
    """Segment → timeline that provides it, and the segment numbers where that can change."""
    starts = [(segment_of(span.begin, seg_size), span.tli) for span in timeline_spans(history, tli)]

    def owner(segno: int) -> int:
        return next(t for first, t in reversed(starts) if first <= segno)

    return owner, sorted({first for first, _ in starts})


def find_gaps(
    names: Iterable[str], seg_size: int, *, timeline: int | None = None, history: Sequence[HistoryEntry] = ()
) -> list[tuple[str, str]]:
    """Runs of missing segments as sorted ``(first_missing, last_missing)`` name pairs.

    ``names``: archived file names in any order; only full segments count (partial, history and
    backup history files are skipped, anything else raises :class:`WalError`).  Each timeline must
    be continuous between its first and last archived segment.  With ``timeline`` and its
    ``history``, the timelines it descends from are instead checked as the one chain recovery
    reads (:func:`timeline_of_segment`): a parent stopping short of its switch segment or a child
    starting after it is a gap; parent segments past the switch are not needed.  A run of
    missing segments never spans two timelines.
    """
    if history and timeline is None:
        raise WalError("a timeline history is only meaningful with the timeline it belongs to")
    by_tli: dict[int, set[int]] = {}
    for name in names:
        if classify(name) is WalFileKind.SEGMENT:
            tli, segno = parse_segment_name(name, seg_size)
            by_tli.setdefault(tli, set()).add(segno)

    gaps: list[tuple[str, str]] = []
    chained: set[int] = set()
    if timeline is not None:
        owner, cuts = _owner(history, timeline, seg_size)
        chained = {span.tli for span in timeline_spans(history, timeline)}
        present = sorted(s for t in chained for s in by_tli.get(t, ()) if owner(s) == t)
        gaps += _holes(present, owner, cuts, seg_size)
    for tli in sorted(by_tli.keys() - chained):
        gaps += _holes(sorted(by_tli[tli]), lambda _segno: tli, [], seg_size)  # noqa: B023 (used at once)
    return sorted(gaps)


def _holes(present: list[int], owner: Callable[[int], int], cuts: list[int], seg_size: int) -> list[tuple[str, str]]:
    # Walks the present segments, not the whole range: a corrupt name can imply a gap of 2**40.
    holes: list[tuple[str, str]] = []
    for before, after in zip(present, present[1:]):
        lo = before + 1
        while lo < after:
            hi = min([c - 1 for c in cuts if lo < c < after] + [after - 1])
            holes.append((segment_name(owner(lo), lo, seg_size), segment_name(owner(hi), hi, seg_size)))
            lo = hi + 1
    return holes
