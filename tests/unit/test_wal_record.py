"""The checksum record of an archived WAL file (:class:`WalRecord`): typed, validated, and
byte-compatible with what ``wal push`` has always written (issue 9, item 2)."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from pgvault.errors import IntegrityError
from pgvault.pg import wal
from pgvault.pipeline import PipelineSpec, StreamResult
from pgvault.repository import layout
from pgvault.repository.wal_record import (
    WalRecord,
    archived_at,
    archived_at_iso,
    load_record,
    read_record,
    save_record,
)
from pgvault.storage import ObjectExists
from pgvault.storage.memory import MemoryStorage

# Written by ``wal push`` before the record was typed (pgvault at 7e6413a), byte for byte.
SEGMENT_RECORD = b"""{
 "format": 1,
 "name": "000000010000000000000003",
 "kind": "segment",
 "key": "c/wal/0000000100000000/000000010000000000000003.zst",
 "system_identifier": "7000000000000000001",
 "pipeline": {
  "compression": "zstd",
  "level": null,
  "encryption": "none",
  "recipients": []
 },
 "archived_at": "2026-12-04T08:07:54.304443+00:00",
 "push_id": "6043d563a7a64451b59609e203ae2b59",
 "host": "vm",
 "pid": 3578,
 "raw_size": 1048576,
 "raw_sha256": "6baf4370d57187757ac079b07828e33f7bed66783cf7c062a4d89df3379ceb82",
 "stored_size": 1048613,
 "stored_sha256": "2fe39409f473cc7fc570bccfbb92637b3d6c7f9e719989a81f6af23d5a043161"
}"""
HISTORY_RECORD = b"""{
 "format": 1,
 "name": "00000002.history",
 "kind": "history",
 "key": "c/wal/00000002.history.zst",
 "system_identifier": "7000000000000000001",
 "pipeline": {
  "compression": "zstd",
  "level": null,
  "encryption": "none",
  "recipients": []
 },
 "archived_at": "2026-12-04T08:07:54.305238+00:00",
 "push_id": "1b7d3e82022f435da345f3fb62ab929e",
 "host": "vm",
 "pid": 3578,
 "raw_size": 41,
 "raw_sha256": "8c31988d7213139b8abecc89825cebdb5b0dd6ea7bd4433af74d5b02a0547cca",
 "stored_size": 54,
 "stored_sha256": "e6a55ab6b2215a880ec005d196c352055de113ae90662796acb84ddda69d4cf6",
 "history": "1\\t0/3000000\\tno recovery target specified\\n"
}"""
SEG = "000000010000000000000003"
KEY = layout.wal_meta("c", SEG)


def test_a_record_written_before_it_was_typed_reads_and_round_trips_byte_for_byte() -> None:
    rec = WalRecord.loads(SEGMENT_RECORD, where=KEY)
    assert rec == WalRecord(
        name=SEG, kind=wal.WalFileKind.SEGMENT, key="c/wal/0000000100000000/000000010000000000000003.zst",
        system_identifier="7000000000000000001", pipeline=PipelineSpec(),
        checksums=StreamResult(1048576, "6baf4370d57187757ac079b07828e33f7bed66783cf7c062a4d89df3379ceb82",
                               1048613, "2fe39409f473cc7fc570bccfbb92637b3d6c7f9e719989a81f6af23d5a043161"),
        archived_at=dt.datetime(2026, 12, 4, 8, 7, 54, 304443, tzinfo=dt.UTC),
        push_id="6043d563a7a64451b59609e203ae2b59", host="vm", pid=3578,
    )
    assert rec.dumps() == SEGMENT_RECORD
    history = WalRecord.loads(HISTORY_RECORD, where="h")
    assert history.kind is wal.WalFileKind.HISTORY and history.history == "1\t0/3000000\tno recovery target specified\n"
    assert history.dumps() == HISTORY_RECORD


def test_a_record_from_before_pushes_claimed_it_has_no_pusher() -> None:
    doc = json.loads(SEGMENT_RECORD)
    for field in ("push_id", "host", "pid"):
        del doc[field]
    rec = WalRecord.from_json(doc, where=KEY)
    assert (rec.push_id, rec.host, rec.pid) == (None, None, None)
    assert rec.to_json() == doc and list(rec.to_json()) == list(doc)  # same keys, same order


def test_unknown_keys_of_a_newer_record_are_ignored() -> None:
    doc = {**json.loads(SEGMENT_RECORD), "written_by": "pgvault 9"}
    assert WalRecord.from_json(doc, where=KEY) == WalRecord.loads(SEGMENT_RECORD, where=KEY)


def broken(**changes: object) -> dict[str, object]:
    doc = json.loads(SEGMENT_RECORD)
    for field, value in changes.items():
        if value is ...:
            del doc[field]
        else:
            doc[field] = value
    return doc  # type: ignore[no-any-return]


@pytest.mark.parametrize(("doc", "problem"), [
    (broken(name=...), "'name' is missing"),
    (broken(name=3), "'name' must be a string (got int)"),
    (broken(kind=...), "'kind' is missing"),
    (broken(kind="wal"), "'kind' must be one of segment, partial, history, backup_history (got 'wal')"),
    (broken(key=...), "'key' is missing"),
    (broken(key=["a"]), "'key' must be a string (got list)"),
    (broken(system_identifier=...), "'system_identifier' is missing"),
    (broken(system_identifier="abc"), "'system_identifier' must be a system identifier (decimal digits, got 'abc')"),
    (broken(pipeline=...), "'pipeline' is missing"),
    (broken(pipeline="zstd"), "'pipeline': pipeline spec in manifest is not a JSON object"),
    (broken(pipeline={"compression": 1, "encryption": "none"}), "'pipeline': malformed pipeline spec"),
    (broken(raw_size=...), "checksums: malformed stream checksums in manifest: 'raw_size' must be a non-negative"),
    (broken(stored_sha256="abc"), "'stored_sha256' must be 64 lowercase hex digits"),
    (broken(archived_at=...), "'archived_at' is missing"),
    (broken(archived_at="yesterday"), "'archived_at' must be an ISO 8601 time with a UTC offset (got 'yesterday')"),
    (broken(archived_at="2026-12-04T08:07:54"), "'archived_at' must be an ISO 8601 time with a UTC offset"),
    (broken(archived_at=1700000000), "'archived_at' must be an ISO 8601 time with a UTC offset (got 1700000000)"),
    (broken(push_id=7), "'push_id' must be a string (got int)"),
    (broken(host=False), "'host' must be a string (got bool)"),
    (broken(pid="3578"), "'pid' must be an integer of at least 1 (got '3578')"),
    (broken(pid=0), "'pid' must be an integer of at least 1 (got 0)"),
    (broken(history=["1"]), "'history' must be a string (got list)"),
])
def test_each_malformed_field_is_named(doc: dict[str, object], problem: str) -> None:
    with pytest.raises(IntegrityError, match=re.escape(f"checksum record {KEY} is malformed: ")) as e:
        WalRecord.from_json(doc, where=KEY)
    assert problem in e.value.message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(IntegrityError) as e:
        WalRecord.from_json(broken(name=..., pid=-1, archived_at="x"), where=KEY)
    assert "'name' is missing" in e.value.message and "'pid'" in e.value.message and "'archived_at'" in e.value.message


@pytest.mark.parametrize(("data", "problem"), [
    (b"{not json", f"checksum record {KEY} is not valid JSON"),
    (b"[1, 2]", f"checksum record {KEY} is not a JSON object"),
    (json.dumps(broken(format=2)).encode(), f"checksum record {KEY} has an unsupported format (2)"),
    (json.dumps(broken(format=...)).encode(), f"checksum record {KEY} has an unsupported format (None)"),
])
def test_an_unreadable_document(data: bytes, problem: str) -> None:
    with pytest.raises(IntegrityError) as e:
        WalRecord.loads(data, where=KEY)
    assert e.value.message == problem


def test_load_read_save_through_storage() -> None:
    storage = MemoryStorage("records")
    assert read_record(storage, "c", SEG) is None and archived_at(storage, "c", SEG) is None
    with pytest.raises(IntegrityError, match=f"archived {SEG} has no checksum record {KEY}"):
        load_record(storage, "c", SEG)
    rec = WalRecord.loads(SEGMENT_RECORD, where=KEY)
    save_record(storage, "c", rec, replace=False)
    assert storage.read_bytes(KEY) == SEGMENT_RECORD
    assert load_record(storage, "c", SEG) == rec
    assert archived_at_iso(storage, "c", SEG) == "2026-12-04T08:07:54.304443+00:00"
    with pytest.raises(ObjectExists):  # claiming is create-only
        save_record(storage, "c", rec, replace=False)
    other = WalRecord.from_json(broken(push_id="y" * 32), where=KEY)
    save_record(storage, "c", other, replace=True)  # taking over a dead push's record
    assert load_record(storage, "c", SEG).push_id == "y" * 32


def test_an_unreadable_record_has_no_time() -> None:
    storage = MemoryStorage("records-bad")
    storage.put_if_absent(KEY, json.dumps(broken(raw_size=...)).encode())
    assert archived_at(storage, "c", SEG) is None
    with pytest.raises(IntegrityError, match="'raw_size'"):
        load_record(storage, "c", SEG)
