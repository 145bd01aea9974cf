"""What a base backup does differently when the server is a streaming standby (hot standby).

PostgreSQL's low-level API works in recovery, but three things change (PG src xlog.c
``do_pg_backup_start`` / ``do_pg_backup_stop``, xlogrecovery.c ``InitWalRecovery``):

* no end-of-backup WAL record is written and no WAL is switched: ``pg_backup_stop`` returns the
  control file's ``minRecoveryPoint`` as the stop LSN, and a restore takes the *copied*
  ``global/pg_control``'s ``minRecoveryPoint`` as the end of the backup.  So pg_control must be
  copied after every other file (pg_basebackup does the same): every page flushed on a standby
  first moves minRecoveryPoint past its LSN, so a pg_control read last covers every page copied.
* the standby may be promoted while we copy: the copy is then inconsistent and ``pg_backup_stop``
  fails ("the standby was promoted during online backup").  We also watch ``pg_is_in_recovery()``
  during the copy (as basebackup.c does between files) and give up early.
* the segment holding the stop LSN is closed by the *primary* (traffic, ``archive_timeout`` or
  ``pg_switch_wal()`` there); the standby cannot switch it.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

from pgvault import log
from pgvault.errors import DatabaseError, PgvaultError
from pgvault.pg import wal
from pgvault.pg.conn import ConnInfo, connect

PROMOTED = "the standby was promoted during the backup: the copy is discarded, take a new one"
PROMOTED_HINT = ("the server is a primary now; run pgvault basebackup again (on it, or on a standby that follows it). "
                 "Nothing of this run was kept")
# Seconds between two pg_is_in_recovery() polls while the files are copied.
POLL_SECONDS = 1.0
# Test-only: "<point>:<file>" makes the backup create <file> at <point> ("copy": after
# pg_backup_start, before any file is copied; "stop": after the copy, before pg_control and
# pg_backup_stop) and wait until it is removed again (at most 120 s), so a test can promote the
# standby at a known point of the backup.
TEST_HOOK_PAUSE = "PGVAULT_TEST_HOOK_BASEBACKUP_PAUSE"

CONTROL_FILE = Path("global") / "pg_control"
_CONTROL_READS = 20


class StandbyChanged(DatabaseError):
    """The standby stopped being the server the backup started on (promoted, or it followed a new
    primary's timeline): the copy is inconsistent and discarded."""


def promoted_error() -> StandbyChanged:
    return StandbyChanged(PROMOTED, hint=PROMOTED_HINT)


def check_stop(start_tli: int, stop_tli: int, start: wal.LSN, stop: wal.LSN) -> None:
    """A standby backup needs the WAL from start to stop on one timeline: refuse the copy when the
    standby followed a new primary's timeline meanwhile (or the stop is not past the start)."""
    if stop_tli != start_tli:
        raise StandbyChanged(f"the standby moved from timeline {start_tli} to {stop_tli} during the backup (its "
                             "primary was replaced): the copy is discarded, take a new one")
    if stop < start:
        raise StandbyChanged(f"the standby's stop position {stop} is before the backup's start {start}: the copy is "
                             "discarded, take a new one")


def is_promotion_error(e: BaseException) -> bool:
    """pg_backup_stop's own verdict: ERROR "the standby was promoted during online backup"."""
    return "promoted during online backup" in str(e)


class PromotionWatch:
    """Polls ``pg_is_in_recovery()`` on a connection of its own while the files are copied; on a
    promotion it sets ``cancel`` (every part stops and aborts its object) and :attr:`promoted`.

    Stopped (:meth:`stop`) before pg_backup_stop: from then on pg_backup_stop itself is the check,
    and a promotion after a successful stop does not harm the copy."""

    def __init__(self, info: ConnInfo, cancel: threading.Event, *, interval: float = POLL_SECONDS) -> None:
        self.promoted = threading.Event()
        self._cancel = cancel
        self._interval = interval
        self._done = threading.Event()
        self._info = info
        self._thread = threading.Thread(target=self._run, name="standby-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = connect(self._info)
        except PgvaultError as e:  # pg_backup_stop still refuses a promoted standby's copy
            log.get().warning("cannot watch the standby for a promotion during the copy: %s", e)
            return
        try:
            while True:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    self.promoted.set()
                    self._cancel.set()
                    return
                if self._done.wait(self._interval):
                    return
        except Exception as e:  # noqa: BLE001 - the watch is an early exit; pg_backup_stop is the check
            log.get().warning("stopped watching the standby for a promotion: %s", e)
        finally:
            conn.close()

    def stop(self) -> bool:
        """Stop watching; True if a promotion was seen."""
        self._done.set()
        self._thread.join(timeout=30)
        return self.promoted.is_set()


def pause_for_tests(point: str) -> None:
    """The test hook (:data:`TEST_HOOK_PAUSE`); nothing unless that variable names this point."""
    where, _, path = os.environ.get(TEST_HOOK_PAUSE, "").partition(":")
    if where != point or not path:
        return
    Path(path).touch()
    deadline = time.monotonic() + 120
    while Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def read_control_file(data_dir: Path) -> bytes:
    """``global/pg_control``, read with its CRC checked.

    A standby rewrites pg_control each time minRecoveryPoint moves (often, under load) and we
    read it without a lock, so one read may mix two versions; a torn copy would make the restore
    refuse to start ("incorrect checksum in control file").  Read again until the CRC holds."""
    path = data_dir / CONTROL_FILE
    for _ in range(_CONTROL_READS):
        data = path.read_bytes()
        if control_crc_ok(data):
            return data
        time.sleep(0.01)
    raise PgvaultError(f"{path}: no read of it had a valid CRC ({_CONTROL_READS} tries)",
                       hint="the file is being rewritten constantly or is damaged; try the backup again")


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def control_crc_ok(data: bytes) -> bool:
    """Whether ``data`` is a whole pg_control: ``ControlFileData`` ends with ``crc``, the CRC-32C of
    everything before it, in native byte order (catalog/pg_control.h).  The struct's size differs
    between majors (the CRC sits at byte 288 on 15, 292 on 18), so every 4-aligned end of a prefix
    is tried (a random 32-bit match among a few hundred candidates is negligible); the struct is a
    few hundred bytes, the file 8 KiB with zeros after it."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    limit = min(len(data) - 4, 1024)
    for offset in range(limit):
        if offset >= 64 and offset % 4 == 0:
            (stored,) = struct.unpack_from("=I", data, offset)
            if stored == crc ^ 0xFFFFFFFF:
                return True
        crc = table[(crc ^ data[offset]) & 0xFF] ^ (crc >> 8)
    return False


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def archive_wait_hint(stop_segment: str) -> str:
    """What to do when the segment holding a standby backup's stop LSN was not archived in time."""
    return (f"a backup taken on a standby ends in {stop_segment}, which only the primary can close: set "
            "archive_timeout on the primary (e.g. '60s'), or run SELECT pg_switch_wal() there during the wait; "
            "and check that the primary (or this standby with archive_mode = always) runs "
            "archive_command = 'pgvault wal push %p' into this repository and cluster")
