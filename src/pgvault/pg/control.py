"""Reading a cluster's identity from its files, without a connection.

archive_command and restore_command run inside the data directory with no database session, yet
they must refuse to mix clusters.  Two sources carry the system identifier:

* every WAL segment starts with an ``XLogLongPageHeaderData`` (``access/xlog_internal.h``):
  ``xlp_magic`` u16, ``xlp_info`` u16, ``xlp_tli`` u32, ``xlp_pageaddr`` u64, ``xlp_rem_len`` u32,
  4 bytes of alignment padding, then ``xlp_sysid`` u64 at offset 24, ``xlp_seg_size`` u32 at 32 and
  ``xlp_xlog_blcksz`` u32 at 36;
* ``global/pg_control`` starts with ``system_identifier`` u64 (``catalog/pg_control.h``).

Both are written in the server's native byte order; we read them as the machine's, which is right
because the archiver runs on the server's own machine.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pgvault.errors import ConfigError, IntegrityError

XLP_LONG_HEADER = 0x0002
_LONG_HEADER = struct.Struct("=HHIQI4xQII")


@dataclass(frozen=True)
class SegmentHeader:
    """The identity fields of a WAL segment's first page."""

    timeline: int
    system_identifier: str
    segment_size: int
    block_size: int


def read_segment_header(path: Path) -> SegmentHeader:
    """Parse the long page header at the start of a WAL segment (or ``.partial``)."""
    with open(path, "rb") as f:
        raw = f.read(_LONG_HEADER.size)
    if len(raw) < _LONG_HEADER.size:
        raise IntegrityError(f"{path} is too short to be a WAL segment ({len(raw)} bytes)")
    _magic, info, tli, _pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack(raw)
    if not info & XLP_LONG_HEADER or seg_size & (seg_size - 1) or not (1 << 20) <= seg_size <= (1 << 30):
        raise IntegrityError(f"{path} does not start with a WAL long page header")
    return SegmentHeader(tli, str(sysid), seg_size, blcksz)


def read_system_identifier(data_dir: Path) -> str:
    """``system_identifier`` from ``<data_dir>/global/pg_control``."""
    control = data_dir / "global" / "pg_control"
    try:
        with open(control, "rb") as f:
            raw = f.read(8)
    except OSError as e:
        raise ConfigError(
            [f"cannot read {control}: {e.strerror or e}"],
            hint="run from the data directory (PostgreSQL does for archive/restore_command) or set PGDATA",
        ) from None
    if len(raw) < 8:
        raise IntegrityError(f"{control} is truncated")
    return str(struct.unpack("=Q", raw)[0])


def read_major_version(data_dir: Path) -> int | None:
    """The major version from ``PG_VERSION``, if present."""
    try:
        return int((data_dir / "PG_VERSION").read_text().strip().split(".")[0])
    except (OSError, ValueError):
        return None
