"""The pure parts of base backups on a standby (operations/physical/standby_backup.py) and the manifest's
``from_standby`` field.  The real standby behaviour is in tests/e2e/test_standby_backup.py."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest

from pgvault.errors import DatabaseError
from pgvault.operations.physical import standby_backup
from pgvault.pg.wal import LSN
from pgvault.repository.physical import PhysicalManifest

from .test_pitr_plan import backup


def _control(crc_at: int, *, size: int = 8192) -> bytearray:
    """A pg_control-shaped buffer: a struct of ``crc_at`` bytes, its CRC-32C, zeros up to ``size``."""
    body = bytes((i * 7 + 3) % 251 for i in range(crc_at))
    data = bytearray(size)
    data[:crc_at] = body
    struct.pack_into("=I", data, crc_at, standby_backup.crc32c(body))
    return data


def test_crc32c_is_the_castagnoli_crc() -> None:
    assert standby_backup.crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert standby_backup.crc32c(b"") == 0


@pytest.mark.parametrize("crc_at", [288, 292])  # where PostgreSQL 15 and 18 keep it
def test_a_whole_control_file_passes_and_a_torn_one_does_not(crc_at: int) -> None:
    data = _control(crc_at)
    assert standby_backup.control_crc_ok(bytes(data))
    torn = bytearray(data)
    torn[100] ^= 0x01  # one byte of a newer version mixed in
    assert not standby_backup.control_crc_ok(bytes(torn))
    assert not standby_backup.control_crc_ok(bytes(8192))  # all zeros: no struct
    assert not standby_backup.control_crc_ok(bytes(data[:crc_at]))  # cut before its CRC


def test_read_control_file_rereads_until_the_crc_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = bytes(_control(292))
    torn = bytearray(good)
    torn[64] ^= 0xFF
    reads = iter([bytes(torn), bytes(torn), good])
    monkeypatch.setattr(Path, "read_bytes", lambda self: next(reads))
    monkeypatch.setattr(standby_backup.time, "sleep", lambda s: None)
    assert standby_backup.read_control_file(tmp_path) == good


def test_read_control_file_gives_up_on_a_damaged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(bytes(8192))
    monkeypatch.setattr(standby_backup.time, "sleep", lambda s: None)
    with pytest.raises(Exception, match="no read of it had a valid CRC"):
        standby_backup.read_control_file(tmp_path)


def test_the_stop_must_be_on_the_start_timeline_and_not_before_the_start() -> None:
    standby_backup.check_stop(1, 1, LSN.parse("0/3000028"), LSN.parse("0/3000100"))
    standby_backup.check_stop(2, 2, LSN.parse("0/3000028"), LSN.parse("0/3000028"))
    with pytest.raises(standby_backup.StandbyChanged, match="from timeline 1 to 2"):
        standby_backup.check_stop(1, 2, LSN.parse("0/3000028"), LSN.parse("0/5000000"))
    with pytest.raises(standby_backup.StandbyChanged, match="before the backup's start"):
        standby_backup.check_stop(1, 1, LSN.parse("0/5000000"), LSN.parse("0/3000028"))


def test_a_promotion_is_a_database_error_with_the_exact_message() -> None:
    e = standby_backup.promoted_error()
    assert isinstance(e, DatabaseError) and e.exit_code == 3
    assert str(e) == "the standby was promoted during the backup: the copy is discarded, take a new one"
    assert standby_backup.is_promotion_error(Exception("ERROR:  the standby was promoted during online backup"))
    assert not standby_backup.is_promotion_error(Exception("could not connect"))


def test_the_archive_wait_hint_names_the_segment_and_both_remedies() -> None:
    hint = standby_backup.archive_wait_hint("000000010000000000000007")
    assert "000000010000000000000007" in hint and "archive_timeout on the primary" in hint
    assert "pg_switch_wal()" in hint and "archive_mode = always" in hint


def test_the_test_hook_pauses_only_at_its_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "pause"
    monkeypatch.setenv(standby_backup.TEST_HOOK_PAUSE, f"stop:{flag}")
    standby_backup.pause_for_tests("copy")  # another point: returns at once, touches nothing
    assert not flag.exists()
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        flag.unlink()  # the test side removes the file: the backup goes on

    monkeypatch.setattr(standby_backup.time, "sleep", sleep)
    standby_backup.pause_for_tests("stop")
    assert slept and not flag.exists()
    monkeypatch.delenv(standby_backup.TEST_HOOK_PAUSE)
    standby_backup.pause_for_tests("stop")


def test_from_standby_round_trips_and_older_manifests_read_as_primary_backups() -> None:
    m = dataclasses.replace(backup("20261125T100000Z", 2, 3), from_standby=True)
    doc = json.loads(m.dumps())
    assert doc["from_standby"] is True
    assert PhysicalManifest.loads(m.dumps(), where="t").from_standby is True
    del doc["from_standby"]
    assert PhysicalManifest.loads(json.dumps(doc).encode(), where="t").from_standby is False
