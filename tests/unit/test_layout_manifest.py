"""Repository key naming and the manifest's JSON form."""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault.errors import IntegrityError
from pgvault.pipeline import PipelineSpec, StreamResult
from pgvault.repository import layout
from pgvault.repository.manifest import (
    DatabaseEntry,
    DatabaseProperties,
    DumpPart,
    Grant,
    LogicalManifest,
    StoredObject,
    TableCount,
)
from pgvault.storage.base import validate_key

UTC = dt.UTC
SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-%")

# --- backup ids -----------------------------------------------------------------------------------


def test_backup_id_format() -> None:
    assert layout.new_backup_id(dt.datetime(2026, 11, 25, 12, 34, 56, 789, tzinfo=UTC)) == "20261125T123456Z"


def test_backup_id_is_in_utc_whatever_the_input_zone() -> None:
    berlin = dt.timezone(dt.timedelta(hours=2))
    assert layout.new_backup_id(dt.datetime(2026, 4, 1, 1, 30, tzinfo=berlin)) == "20260331T233000Z"


def test_sequence_suffix() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert layout.new_backup_id(now, 0) == "20260102T030405Z"
    assert layout.new_backup_id(now, 1) == "20260102T030405Z-1"
    assert layout.new_backup_id(now, 12) == "20260102T030405Z-12"
    for seq in (1, 2, 12):
        backup_id = layout.new_backup_id(now, seq)
        assert layout.is_backup_id(backup_id)
        assert layout.parse_backup_id(backup_id) == now  # the suffix does not change the time


@settings(max_examples=200)
@given(st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(UTC)))
def test_backup_id_round_trip(t: dt.datetime) -> None:
    backup_id = layout.new_backup_id(t)
    assert layout.is_backup_id(backup_id)
    assert layout.parse_backup_id(backup_id) == t.replace(microsecond=0)


@given(st.lists(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2999, 1, 1), timezones=st.just(UTC)), min_size=2))
def test_backup_ids_sort_like_their_times(times: list[dt.datetime]) -> None:
    ids = [layout.new_backup_id(t) for t in times]
    assert [layout.parse_backup_id(i) for i in sorted(ids)] == sorted(t.replace(microsecond=0) for t in times)


@pytest.mark.parametrize(
    "text",
    [
        "latest",
        "",
        "20260101T000000",
        "20260101T000000Z-",
        "20260101T000000Z-x",
        "x20260101T000000Z",
        "20260101t000000z",
        "2026-01-01T00:00:00Z",
        "20261301T000000Z",  # month 13
        "20260230T000000Z",  # 30 February
        "20260101T246000Z",  # hour 24
    ],
)
def test_not_backup_ids(text: str) -> None:
    assert not layout.is_backup_id(text)
    with pytest.raises(ValueError):
        layout.parse_backup_id(text)


def test_logical_prefix_uses_year_and_month_of_the_id() -> None:
    assert layout.logical_prefix("main", "20261125T123456Z") == "main/logical/2026/11/20261125T123456Z/"
    assert layout.logical_prefix("main", "20260105T000000Z-3") == "main/logical/2026/01/20260105T000000Z-3/"
    # Local 1 April is still March in UTC: the prefix follows the id, which is UTC.
    berlin = dt.timezone(dt.timedelta(hours=2))
    backup_id = layout.new_backup_id(dt.datetime(2026, 4, 1, 1, 0, tzinfo=berlin))
    assert layout.logical_prefix("c", backup_id).startswith("c/logical/2026/03/")
    assert layout.logical_prefix("c", backup_id).startswith(layout.logical_root("c"))


def test_logical_prefix_refuses_non_ids() -> None:
    with pytest.raises(ValueError, match="not a backup id"):
        layout.logical_prefix("main", "latest")


def test_fixed_keys() -> None:
    assert layout.DESCRIPTOR_KEY == "pgvault.json"
    assert layout.cluster_key("main") == "main/cluster.json"
    assert layout.logical_root("main") == "main/logical/"
    assert layout.lock_key("main", "backup") == "main/locks/backup.lock"
    assert layout.globals_object(".zst.age") == "globals.sql.zst.age"
    assert layout.database_object("app", ".zst") == "app.dump.zst"


# --- database names as key components ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("app", "app"),
        ("my_db-2", "my_db-2"),
        ("my.db", "my%2Edb"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("a/b", "a%2Fb"),
        ("../../etc", "%2E%2E%2F%2E%2E%2Fetc"),
        ("with space", "with%20space"),
        ("100%", "100%25"),
        ("café", "caf%C3%A9"),
        ("データ", "%E3%83%87%E3%83%BC%E3%82%BF"),
        ("", ""),
    ],
)
def test_encode_name_examples(name: str, encoded: str) -> None:
    assert layout.encode_name(name) == encoded


def test_encoded_names_of_odd_databases_make_valid_keys() -> None:
    prefix = layout.logical_prefix("main", "20260101T000000Z")
    for name in (".", "..", "a/b", "/", "a//b", " ", "x\ny", "tab\tname", "ümlaut"):
        key = prefix + layout.database_object(name, ".zst.age")
        assert validate_key(key) == key
        assert key.count("/") == prefix.count("/")  # never adds a level


@settings(max_examples=300)
@given(st.text())
def test_encode_name_gives_a_valid_key_that_decodes_back(name: str) -> None:
    encoded = layout.encode_name(name)
    assert set(encoded) <= SAFE
    key = layout.logical_prefix("main", "20260101T000000Z") + layout.database_object(name, ".zst")
    assert validate_key(key) == key
    # Decoding gives the name back, so the encoding is injective: distinct names, distinct keys.
    assert unquote(encoded, errors="strict") == name


@settings(max_examples=300)
@given(st.text(), st.text())
def test_distinct_names_get_distinct_encodings(a: str, b: str) -> None:
    if a != b:
        assert layout.encode_name(a) != layout.encode_name(b)
        assert layout.database_object(a, ".zst") != layout.database_object(b, ".zst")


def test_names_differing_only_in_case_or_escapes_stay_distinct() -> None:
    names = ["App", "app", "a.b", "a%2Eb", "a%252Eb", "a b", "a_b", "a-b"]
    assert len({layout.encode_name(n) for n in names}) == len(names)


# --- manifest -------------------------------------------------------------------------------------

SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


def stored(name: str, key: str, raw: int = 1000, stored_size: int = 400) -> StoredObject:
    return StoredObject(name=name, key=key, result=StreamResult(raw, SHA_A, stored_size, SHA_B))


def sample_manifest(**changes: object) -> LogicalManifest:
    base = dict(
        backup_id="20261125T123456Z",
        cluster="main",
        system_identifier="7312345678901234567",
        server_version="18.1",
        server_version_num=180001,
        pg_dump_version="pg_dump (PostgreSQL) 18.1",
        client_bindir="/usr/lib/postgresql/18/bin",
        started_at="2026-11-25T12:34:56+00:00",
        finished_at="2026-11-25T12:35:40+00:00",
        duration_seconds=44.125,
        pipeline=PipelineSpec(compression="zstd", level=3, encryption="none"),
        host="db1",
        pgvault_version="0.1.0",
        databases=(
            DatabaseEntry(
                name="app",
                object=stored("app", "app.dump.zst", 5000, 1200),
                encoding="UTF8",
                collate="C.UTF-8",
                ctype="C.UTF-8",
                size_bytes=8_000_000,
                row_counts_exact=True,
                tables=(TableCount("public", "users", 10), TableCount("audit", "log", 0)),
                properties=DatabaseProperties(
                    owner="app_owner", acl=(Grant(None, "TEMPORARY"), Grant("app_owner", "CONNECT", True)),
                    comment="the app", connection_limit=20, settings=("search_path=app, public",),
                    role_settings=(("reporting", ("statement_timeout=5min", "work_mem=64MB")),),
                ),
            ),
            DatabaseEntry(
                name="my.db",
                object=stored("my.db", "my%2Edb.dump.zst", 300, 100),
                encoding="LATIN1",
                collate="C",
                ctype="C",
                size_bytes=7_000_000,
                row_counts_exact=False,
            ),
        ),
        globals=stored("globals", "globals.sql.zst", 50, 30),
    )
    base.update(changes)
    return LogicalManifest(**base)  # type: ignore[arg-type]


def test_manifest_json_form() -> None:
    m = sample_manifest()
    doc = json.loads(m.dumps())
    assert doc["format"] == 1 and doc["kind"] == "logical"
    assert doc["raw_size"] == 5000 + 300 + 50 == m.raw_size
    assert doc["stored_size"] == 1200 + 100 + 30 == m.stored_size
    assert doc["pipeline"] == {"compression": "zstd", "level": 3, "encryption": "none", "recipients": []}
    assert doc["databases"][0]["object"] == {
        "name": "app",
        "key": "app.dump.zst",
        "raw_size": 5000,
        "raw_sha256": SHA_A,
        "stored_size": 1200,
        "stored_sha256": SHA_B,
    }
    assert doc["databases"][0]["tables"] == [
        {"schema": "public", "name": "users", "rows": 10},
        {"schema": "audit", "name": "log", "rows": 0},
    ]
    assert "extra" not in doc  # only written when there is something in it
    assert m.dumps().endswith(b"}\n")


def test_manifest_round_trip() -> None:
    m = sample_manifest(extra={"note": "before upgrade"})
    assert LogicalManifest.loads(m.dumps(), where="k") == m


def test_database_properties_json_form_and_manifests_without_them() -> None:
    doc = json.loads(sample_manifest().dumps())
    assert doc["databases"][0]["properties"] == {
        "owner": "app_owner",
        "acl": [{"grantee": None, "privilege": "TEMPORARY", "grantable": False},
                {"grantee": "app_owner", "privilege": "CONNECT", "grantable": True}],
        "comment": "the app", "connection_limit": 20, "is_template": False, "tablespace": "pg_default",
        "settings": ["search_path=app, public"],
        "role_settings": {"reporting": ["statement_timeout=5min", "work_mem=64MB"]},
    }
    # Manifests written before database properties were recorded stay loadable.
    assert "properties" not in doc["databases"][1]
    del doc["databases"][0]["properties"]
    old = LogicalManifest.loads(json.dumps(doc).encode(), where="k")
    assert old.databases[0].properties is None and old.databases[0].tables == sample_manifest().databases[0].tables


@pytest.mark.parametrize("damage", ["x", {"acl": [1]}, {"owner": "o", "role_settings": ["r"]}, {"owner": "o", "acl": ["x"]}])
def test_damaged_database_properties_are_integrity_errors(damage: object) -> None:
    doc = json.loads(sample_manifest().dumps())
    doc["databases"][0]["properties"] = damage
    with pytest.raises(IntegrityError, match="manifest k is unreadable"):
        LogicalManifest.loads(json.dumps(doc).encode(), where="k")


def test_manifest_without_globals_round_trips() -> None:
    m = sample_manifest(globals=None)
    assert json.loads(m.dumps())["globals"] is None
    assert LogicalManifest.loads(m.dumps(), where="k") == m
    assert [o.name for o in m.objects()] == ["app", "my.db"]


def test_manifest_helpers() -> None:
    m = sample_manifest()
    assert [o.name for o in m.objects()] == ["globals", "app", "my.db"]
    entry = m.database("my.db")
    assert entry is not None and entry.encoding == "LATIN1"
    assert m.database("absent") is None
    assert m.databases[0].tables[0].qualified == "public.users"


def test_duration_is_rounded_to_milliseconds() -> None:
    m = sample_manifest(duration_seconds=1.23456789)
    assert json.loads(m.dumps())["duration_seconds"] == 1.235


_names = st.text(min_size=1, max_size=20)
_sha = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_results = st.builds(StreamResult, st.integers(0, 2**50), _sha, st.integers(0, 2**50), _sha)
_objects = st.builds(StoredObject, name=_names, key=_names, result=_results)
_tables = st.builds(TableCount, schema=_names, name=_names, rows=st.integers(0, 2**40))
_entries = st.builds(
    DatabaseEntry,
    name=_names,
    object=_objects,
    encoding=st.sampled_from(["UTF8", "LATIN1", "SQL_ASCII"]),
    collate=st.text(max_size=10),
    ctype=st.text(max_size=10),
    size_bytes=st.integers(0, 2**50),
    row_counts_exact=st.booleans(),
    tables=st.lists(_tables, max_size=4).map(tuple),
    properties=st.none() | st.builds(
        DatabaseProperties,
        owner=_names,
        acl=st.lists(st.builds(Grant, st.none() | _names, st.sampled_from(["CREATE", "CONNECT", "TEMPORARY"]),
                               st.booleans()), max_size=4).map(tuple),
        comment=st.none() | st.text(max_size=10),
        connection_limit=st.integers(-1, 1000),
        is_template=st.booleans(),
        tablespace=_names,
        settings=st.lists(st.text(max_size=12), max_size=3).map(tuple),
        role_settings=st.dictionaries(_names, st.lists(st.text(max_size=12), max_size=3).map(tuple),
                                      max_size=3).map(lambda d: tuple(d.items())),
    ),
)
_pipelines = st.builds(
    PipelineSpec,
    compression=st.sampled_from(["zstd", "gzip", "none"]),
    level=st.none() | st.integers(1, 19),
    encryption=st.just("none"),
)
_json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
_manifests = st.builds(
    LogicalManifest,
    backup_id=st.datetimes(min_value=dt.datetime(2000, 1, 1), timezones=st.just(UTC)).map(layout.new_backup_id),
    cluster=_names,
    system_identifier=st.integers(0, 2**64 - 1).map(str),
    server_version=_names,
    server_version_num=st.integers(90000, 999999),
    pg_dump_version=_names,
    client_bindir=st.text(max_size=30),
    started_at=_names,
    finished_at=_names,
    duration_seconds=st.integers(0, 10**9).map(lambda ms: ms / 1000),
    pipeline=_pipelines,
    host=st.text(max_size=20),
    pgvault_version=st.text(max_size=10),
    databases=st.lists(_entries, max_size=4).map(tuple),
    globals=st.none() | _objects,
    extra=st.dictionaries(st.text(max_size=8), _json_scalars, max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(_manifests)
def test_manifest_round_trip_property(m: LogicalManifest) -> None:
    data = m.dumps()
    again = LogicalManifest.loads(data, where="k")
    assert again == m
    assert again.dumps() == data


@pytest.mark.parametrize(
    "change",
    [
        {"format": 3},
        {"format": "1"},
        {"format": None},
        {"kind": "physical"},
    ],
)
def test_unsupported_manifest_is_an_integrity_error(change: dict[str, object]) -> None:
    doc = sample_manifest().to_json()
    doc.update(change)
    where = "main/logical/2026/11/20261125T123456Z/manifest.json"
    with pytest.raises(IntegrityError, match="unsupported manifest") as exc:
        LogicalManifest.loads(json.dumps(doc).encode(), where=where)
    assert where in str(exc.value)
    assert exc.value.exit_code == 6


def test_manifest_without_format_is_unsupported() -> None:
    doc = sample_manifest().to_json()
    del doc["format"]
    with pytest.raises(IntegrityError, match=r"unsupported manifest \(format None"):
        LogicalManifest.from_json(doc)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"{not json",
        b'{"format": 1, "kind": "logical"',  # truncated
        b"[]",
        b"null",
        b"42",
        b'"a string"',
        b'{"format": 1, "kind": "logical"}',  # fields missing
    ],
)
def test_garbage_manifest_is_an_integrity_error_naming_the_key(data: bytes) -> None:
    where = "main/logical/2026/11/20261125T123456Z/manifest.json"
    with pytest.raises(IntegrityError) as exc:
        LogicalManifest.loads(data, where=where)
    assert f"manifest {where}" in str(exc.value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("databases",), "not a list"),
        (("databases", 0), "not an object"),
        (("databases", 0, "object", "raw_sha256"), "short"),
        (("databases", 0, "object", "stored_size"), -1),
        (("databases", 0, "tables", 0), {"schema": "s", "name": "t", "rows": 1, "bogus": 2}),
        (("pipeline",), []),
        (("pipeline", "level"), "high"),
        (("globals", "raw_size"), "big"),
        (("server_version_num",), "eighteen"),
    ],
)
def test_damaged_manifest_fields_are_integrity_errors_naming_the_key(path: tuple[object, ...], value: object) -> None:
    doc = json.loads(sample_manifest().dumps())
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    where = "main/logical/2026/11/20261125T123456Z/manifest.json"
    with pytest.raises(IntegrityError) as exc:
        LogicalManifest.loads(json.dumps(doc).encode(), where=where)
    assert f"manifest {where}" in str(exc.value)


def test_a_backup_in_parts_is_format_2_and_round_trips() -> None:
    """backup --jobs: parts listed with their tables; format 2 so a format-1 reader refuses it."""
    single = sample_manifest()
    assert single.to_json()["format"] == 1 and "parts" not in single.to_json()["databases"][0]
    entry = single.databases[0]
    part = DumpPart(object=stored("app (part 1)", "app.part1.dump.zst", 9000, 2000), tables=(("public", "users"),))
    m = sample_manifest(databases=(DatabaseEntry(**{**entry.__dict__, "parts": (part,)}), *single.databases[1:]))
    doc = m.to_json()
    assert doc["format"] == 2
    assert doc["databases"][0]["parts"][0]["tables"] == [["public", "users"]]
    again = LogicalManifest.loads(m.dumps(), where="k")
    assert again == m
    assert again.databases[0].part_of("public", "users") == part
    assert again.databases[0].part_of("audit", "log") is None
    keys = [o.key for o in again.objects()]
    assert keys[keys.index("app.dump.zst") + 1] == "app.part1.dump.zst"
    assert sorted(keys) == sorted([o.key for o in single.objects()] + ["app.part1.dump.zst"])
    assert again.raw_size == single.raw_size + 9000
    doc["databases"][0]["parts"][0]["tables"] = ["public.users"]
    with pytest.raises(IntegrityError, match="not \\[schema, table\\]"):
        LogicalManifest.loads(json.dumps(doc).encode(), where="k")


def test_part_object_names_never_collide_with_a_database() -> None:
    assert layout.database_part_object("app", 1, ".zst.age") == "app.part1.dump.zst.age"
    assert layout.database_object("app.part1", ".zst.age") != layout.database_part_object("app", 1, ".zst.age")
