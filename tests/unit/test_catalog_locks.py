"""Reading the repository (catalog) and the per-cluster operation locks, on memory storage."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import uuid

import pytest

from pgvault.errors import ConfigError, IntegrityError, LockedError, NotFoundError, PgvaultError
from pgvault.pipeline import PipelineSpec, StreamResult
from pgvault.repository import catalog, layout
from pgvault.repository.cluster import ClusterInfo, ensure_cluster, read_cluster_info
from pgvault.repository.locks import TTL_SECONDS, RepositoryLock
from pgvault.repository.manifest import DatabaseEntry, LogicalManifest, StoredObject
from pgvault.storage import open_storage
from pgvault.storage.memory import MemoryStorage

SHA = "f" * 64


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> MemoryStorage:
    return MemoryStorage(request.node.name)


def entry(name: str) -> DatabaseEntry:
    obj = StoredObject(name=name, key=layout.database_object(name, ".zst"), result=StreamResult(10, SHA, 5, SHA))
    return DatabaseEntry(name=name, object=obj, encoding="UTF8", collate="C", ctype="C", size_bytes=1, row_counts_exact=True)


def put_backup(storage: MemoryStorage, backup_id: str, databases: tuple[str, ...] = ("app",), cluster: str = "main") -> LogicalManifest:
    m = LogicalManifest(
        backup_id=backup_id,
        cluster=cluster,
        system_identifier="42",
        server_version="18.1",
        server_version_num=180001,
        pg_dump_version="18.1",
        client_bindir="",
        started_at="s",
        finished_at="f",
        duration_seconds=1.0,
        pipeline=PipelineSpec(),
        host="h",
        pgvault_version="0",
        databases=tuple(entry(d) for d in databases),
    )
    prefix = layout.logical_prefix(cluster, backup_id)
    for d in m.databases:
        storage.put_if_absent(prefix + d.object.key, b"dump")
    storage.put_if_absent(prefix + layout.MANIFEST_NAME, m.dumps())
    return m


# --- listing ------------------------------------------------------------------------------------


def test_empty_repository_has_no_backups(repo: MemoryStorage) -> None:
    assert catalog.logical_ids(repo, "main") == []
    assert catalog.list_logical(repo, "main") == []


def test_logical_ids_are_complete_backups_oldest_first(repo: MemoryStorage) -> None:
    put_backup(repo, "20260301T000000Z")
    put_backup(repo, "20251231T235959Z")
    put_backup(repo, "20260115T120000Z")
    assert catalog.logical_ids(repo, "main") == ["20251231T235959Z", "20260115T120000Z", "20260301T000000Z"]
    assert [m.backup_id for m in catalog.list_logical(repo, "main")] == catalog.logical_ids(repo, "main")


def test_logical_ids_ignore_debris_and_foreign_folders(repo: MemoryStorage) -> None:
    put_backup(repo, "20260101T000000Z")
    # An interrupted backup: objects, but no manifest (the manifest is written last).
    debris = layout.logical_prefix("main", "20260102T000000Z")
    repo.put_if_absent(debris + "app.dump.zst", b"partial")
    # Folders that are not backup ids, even with something called manifest.json inside.
    repo.put_if_absent("main/logical/2026/01/tmp/manifest.json", b"{}")
    repo.put_if_absent("main/logical/2026/01/20261399T000000Z/manifest.json", b"{}")  # impossible date
    repo.put_if_absent("main/logical/2026/01/20260103T000000Z/manifest.json.tmp", b"{}")
    repo.put_if_absent("main/logical/README", b"hands off")
    # Another cluster, including one whose name extends ours.
    put_backup(repo, "20260104T000000Z", cluster="other")
    put_backup(repo, "20260105T000000Z", cluster="main2")
    assert catalog.logical_ids(repo, "main") == ["20260101T000000Z"]
    assert [m.backup_id for m in catalog.list_logical(repo, "main")] == ["20260101T000000Z"]


def test_same_second_ids_sort_by_sequence_number(repo: MemoryStorage) -> None:
    base = "20260101T000000Z"
    for backup_id in (f"{base}-10", f"{base}-2", base, f"{base}-1", "20260101T000001Z"):
        put_backup(repo, backup_id)
    assert catalog.logical_ids(repo, "main") == [base, f"{base}-1", f"{base}-2", f"{base}-10", "20260101T000001Z"]


# --- loading and resolving ------------------------------------------------------------------------


def test_load_logical_reads_the_manifest(repo: MemoryStorage) -> None:
    m = put_backup(repo, "20260101T000000Z", ("app", "crm"))
    assert catalog.load_logical(repo, "main", "20260101T000000Z") == m


def test_load_logical_of_a_non_id(repo: MemoryStorage) -> None:
    with pytest.raises(NotFoundError) as exc:
        catalog.load_logical(repo, "main", "yesterday")
    assert str(exc.value) == "'yesterday' is not a backup id"
    assert exc.value.hint == "see 'pgvault list'"
    assert exc.value.exit_code == 5


def test_load_logical_of_an_impossible_date_is_not_found(repo: MemoryStorage) -> None:
    # Shaped like an id but month 13: a typo, not a crash.
    with pytest.raises(NotFoundError, match="'20261301T000000Z' is not a backup id"):
        catalog.load_logical(repo, "main", "20261301T000000Z")


def test_load_logical_of_a_missing_backup(repo: MemoryStorage) -> None:
    put_backup(repo, "20260101T000000Z")
    with pytest.raises(NotFoundError) as exc:
        catalog.load_logical(repo, "main", "20260102T000000Z")
    assert str(exc.value) == f"no logical backup 20260102T000000Z for cluster 'main' in {repo.url}"
    assert exc.value.hint == "see 'pgvault list'"


def test_load_logical_of_a_corrupt_manifest_names_the_key(repo: MemoryStorage) -> None:
    key = layout.logical_prefix("main", "20260101T000000Z") + layout.MANIFEST_NAME
    repo.put_if_absent(key, b"\x00garbage")
    with pytest.raises(IntegrityError, match=key):
        catalog.load_logical(repo, "main", "20260101T000000Z")


@pytest.mark.parametrize("data", [b"{\"format\": 1, \"kind\": \"log", b"[]", b'{"format": 1, "kind": "logical"}'],
                         ids=["truncated", "not-an-object", "missing-fields"])
def test_a_damaged_manifest_is_listed_apart_and_hides_nothing(repo: MemoryStorage, data: bytes) -> None:
    put_backup(repo, "20260101T000000Z")
    key = layout.logical_prefix("main", "20260102T000000Z") + layout.MANIFEST_NAME
    repo.put_if_absent(key, data)
    put_backup(repo, "20260103T000000Z")
    good, damaged = catalog.scan_logical(repo, "main")
    assert [m.backup_id for m in good] == ["20260101T000000Z", "20260103T000000Z"]
    [d] = damaged
    assert (d.kind, d.backup_id, d.key) == ("logical", "20260102T000000Z", key) and key in d.reason
    assert [m.backup_id for m in catalog.list_logical(repo, "main")] == ["20260101T000000Z", "20260103T000000Z"]
    # Asked for by its id it is an integrity error (exit 6) that says what is wrong and what to do.
    with pytest.raises(catalog.DamagedManifestError) as exc:
        catalog.resolve_logical(repo, "main", "20260102T000000Z")
    assert exc.value.exit_code == 6 and "logical backup 20260102T000000Z is damaged" in exc.value.message
    assert exc.value.hint and "pgvault list" in exc.value.hint


def test_latest_passes_over_a_damaged_manifest_with_a_warning(repo: MemoryStorage, caplog: pytest.LogCaptureFixture) -> None:
    put_backup(repo, "20260101T000000Z")
    repo.put_if_absent(layout.logical_prefix("main", "20260102T000000Z") + layout.MANIFEST_NAME, b"{trunc")
    assert catalog.resolve_logical(repo, "main", "latest").backup_id == "20260101T000000Z"
    assert "20260102T000000Z" in caplog.text


def test_a_damaged_base_manifest_is_listed_apart(repo: MemoryStorage) -> None:
    key = layout.base_prefix("main", "20260102T000000Z") + layout.MANIFEST_NAME
    repo.put_if_absent(key, b"\x00garbage")
    good, damaged = catalog.scan_physical(repo, "main")
    assert good == [] and [(d.kind, d.backup_id) for d in damaged] == [("physical", "20260102T000000Z")]
    with pytest.raises(catalog.DamagedManifestError, match="base backup 20260102T000000Z is damaged"):
        catalog.load_physical(repo, "main", "20260102T000000Z")


def test_scan_caches_good_manifests_only(repo: MemoryStorage) -> None:
    put_backup(repo, "20260101T000000Z")
    key = layout.logical_prefix("main", "20260102T000000Z") + layout.MANIFEST_NAME
    repo.put_if_absent(key, b"{trunc")
    cache: dict[str, LogicalManifest] = {}
    assert len(catalog.scan_logical(repo, "main", cache=cache)[1]) == 1
    assert list(cache) == ["20260101T000000Z"]
    repo.delete(key)
    put_backup(repo, "20260102T000000Z")  # repaired: counts again
    good, damaged = catalog.scan_logical(repo, "main", cache=cache)
    assert [m.backup_id for m in good] == ["20260101T000000Z", "20260102T000000Z"] and damaged == []


def test_resolve_by_id(repo: MemoryStorage) -> None:
    put_backup(repo, "20260101T000000Z")
    put_backup(repo, "20260102T000000Z")
    assert catalog.resolve_logical(repo, "main", "20260101T000000Z").backup_id == "20260101T000000Z"


def test_resolve_latest(repo: MemoryStorage) -> None:
    put_backup(repo, "20260101T000000Z")
    put_backup(repo, "20260301T000000Z")
    put_backup(repo, "20260201T000000Z")
    repo.put_if_absent(layout.logical_prefix("main", "20260401T000000Z") + "app.dump.zst", b"unfinished")
    assert catalog.resolve_logical(repo, "main", "latest").backup_id == "20260301T000000Z"


def test_resolve_latest_same_second_takes_the_highest_sequence(repo: MemoryStorage) -> None:
    for backup_id in ("20260101T000000Z-2", "20260101T000000Z-10", "20260101T000000Z"):
        put_backup(repo, backup_id)
    assert catalog.resolve_logical(repo, "main", "latest").backup_id == "20260101T000000Z-10"


def test_resolve_latest_holding_a_database(repo: MemoryStorage) -> None:
    put_backup(repo, "20260101T000000Z", ("app", "crm"))
    put_backup(repo, "20260102T000000Z", ("crm", "app"))
    put_backup(repo, "20260103T000000Z", ("app",))
    assert catalog.resolve_logical(repo, "main", "latest", database="crm").backup_id == "20260102T000000Z"
    assert catalog.resolve_logical(repo, "main", "latest", database="app").backup_id == "20260103T000000Z"


def test_resolve_latest_database_nowhere(repo: MemoryStorage) -> None:
    put_backup(repo, "20260101T000000Z", ("app",))
    with pytest.raises(NotFoundError) as exc:
        catalog.resolve_logical(repo, "main", "latest", database="ghost")
    assert str(exc.value) == f"no logical backup containing database 'ghost' for cluster 'main' in {repo.url}"


def test_resolve_latest_in_an_empty_repository(repo: MemoryStorage) -> None:
    with pytest.raises(NotFoundError) as exc:
        catalog.resolve_logical(repo, "main", "latest")
    assert str(exc.value) == f"no logical backup for cluster 'main' in {repo.url}"


def test_resolve_a_database_filter_does_not_apply_to_an_explicit_id(repo: MemoryStorage) -> None:
    put_backup(repo, "20260101T000000Z", ("app",))
    m = catalog.resolve_logical(repo, "main", "20260101T000000Z", database="ghost")
    assert m.database("ghost") is None  # the caller reports the missing database with context


# --- cluster descriptor ---------------------------------------------------------------------------


def test_read_cluster_info_of_a_new_cluster(repo: MemoryStorage) -> None:
    assert read_cluster_info(repo, "main") is None


@pytest.mark.parametrize("data", [b"{broken", b"[1, 2]"])
def test_read_cluster_info_of_a_damaged_descriptor(repo: MemoryStorage, data: bytes) -> None:
    repo.put_if_absent("main/cluster.json", data)
    with pytest.raises(IntegrityError, match="main/cluster.json"):
        read_cluster_info(repo, "main")


def test_ensure_cluster_creates_both_descriptors_once(repo: MemoryStorage) -> None:
    ensure_cluster(repo, "main", system_identifier="7300000000000000001", server_major=18)
    assert json.loads(repo.read_bytes("pgvault.json")) == {"format": 1, "tool": "pgvault"}
    assert read_cluster_info(repo, "main") == ClusterInfo("main", "7300000000000000001", 18)
    assert json.loads(repo.read_bytes("main/cluster.json")) == {
        "cluster": "main", "system_identifier": "7300000000000000001", "server_major": 18}
    before = {info.key: (repo.read_bytes(info.key), info.modified) for info in repo.list()}
    # Same server again (even after a major upgrade): nothing is rewritten, nothing is raised.
    ensure_cluster(repo, "main", system_identifier="7300000000000000001", server_major=18)
    ensure_cluster(repo, "main", system_identifier="7300000000000000001", server_major=19)
    assert {info.key: (repo.read_bytes(info.key), info.modified) for info in repo.list()} == before


def test_ensure_cluster_refuses_another_system_identifier(repo: MemoryStorage) -> None:
    ensure_cluster(repo, "main", system_identifier="111", server_major=18)
    with pytest.raises(ConfigError) as exc:
        ensure_cluster(repo, "main", system_identifier="222", server_major=18)
    assert exc.value.problems == [
        f"cluster 'main' in {repo.url} belongs to system identifier 111, but the server has 222"
    ]
    assert exc.value.hint is not None and "--cluster" in exc.value.hint
    assert read_cluster_info(repo, "main") == ClusterInfo("main", "111", 18)


def test_ensure_cluster_keeps_clusters_apart(repo: MemoryStorage) -> None:
    ensure_cluster(repo, "main", system_identifier="111", server_major=18)
    ensure_cluster(repo, "replica-site", system_identifier="222", server_major=15)
    assert read_cluster_info(repo, "replica-site") == ClusterInfo("replica-site", "222", 15)


def test_ensure_cluster_accepts_a_numeric_identifier_written_by_hand(repo: MemoryStorage) -> None:
    repo.put_if_absent("main/cluster.json", b'{"system_identifier": 111}')
    assert ensure_cluster(repo, "main", system_identifier="111", server_major=18) == ClusterInfo("main", "111")
    # Recording the segment size (the first archived WAL) rewrites it in the typed form.
    assert ensure_cluster(repo, "main", system_identifier="111", server_major=18, wal_segment_size=16 << 20) \
        == ClusterInfo("main", "111", None, 16 << 20)
    assert json.loads(repo.read_bytes("main/cluster.json")) == {
        "cluster": "main", "system_identifier": "111", "server_major": None, "wal_segment_size": 16 << 20}


def test_the_segment_size_is_recorded_once_and_kept(repo: MemoryStorage) -> None:
    first = ensure_cluster(repo, "main", system_identifier="111", server_major=18, wal_segment_size=1 << 20)
    assert first == ClusterInfo("main", "111", 18, 1 << 20)
    assert ensure_cluster(repo, "main", system_identifier="111", server_major=18, wal_segment_size=16 << 20) == first


@pytest.mark.parametrize(("doc", "problem"), [
    ({"cluster": "main"}, "'system_identifier' is missing"),
    ({"system_identifier": "12ab"}, "'system_identifier' must be a system identifier"),
    ({"system_identifier": True}, "'system_identifier' must be a system identifier"),
    ({"system_identifier": "1", "cluster": 5}, "'cluster' must be a string"),
    ({"system_identifier": "1", "server_major": "18"}, "'server_major' must be an integer"),
    ({"system_identifier": "1", "wal_segment_size": 16}, "'wal_segment_size' must be a power of two"),
    ({"system_identifier": "1", "wal_segment_size": "16MB"}, "'wal_segment_size' must be an integer"),
])
def test_a_malformed_descriptor_names_the_key(repo: MemoryStorage, doc: dict[str, object], problem: str) -> None:
    repo.put_if_absent("main/cluster.json", json.dumps(doc).encode())
    with pytest.raises(IntegrityError, match=re.escape(f"main/cluster.json in {repo.url} is malformed: ") + ".*" + problem):
        read_cluster_info(repo, "main")
    with pytest.raises(IntegrityError, match=problem):  # never overwritten by a later backup or push
        ensure_cluster(repo, "main", system_identifier="1", server_major=18)


def test_the_descriptor_round_trips() -> None:
    for info in (ClusterInfo("main", "7300000000000000001", 18, 16 << 20), ClusterInfo("x", "1", None)):
        assert ClusterInfo.from_json(json.loads(info.dumps()), cluster="other", where="k") == info


def test_catalog_works_through_open_storage() -> None:
    storage = open_storage(f"memory://catalog-{uuid.uuid4().hex}")
    assert isinstance(storage, MemoryStorage)
    put_backup(storage, "20260101T000000Z")
    assert catalog.resolve_logical(open_storage(storage.url), "main", "latest").backup_id == "20260101T000000Z"


# --- locks -------------------------------------------------------------------------------------

LOCK_KEY = "main/locks/backup.lock"


def lock_doc(repo: MemoryStorage) -> dict[str, object]:
    return json.loads(repo.read_bytes(LOCK_KEY))  # type: ignore[no-any-return]


def write_foreign_lock(repo: MemoryStorage, *, host: str, pid: int, age_seconds: float, ttl: float = TTL_SECONDS) -> str:
    token = uuid.uuid4().hex
    beat = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_seconds)
    doc = {"host": host, "pid": pid, "token": token, "operation": "backup", "heartbeat_at": beat.isoformat(), "ttl_seconds": ttl}
    repo.put_if_absent(LOCK_KEY, json.dumps(doc).encode())
    return token


def dead_pid() -> int:
    """A pid that existed a moment ago and is now reaped."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_lock_is_held_inside_and_gone_after(repo: MemoryStorage) -> None:
    lock = RepositoryLock(repo, "main", "backup")
    with lock as held:
        assert held is lock
        doc = lock_doc(repo)
        assert doc["host"] == socket.gethostname()
        assert doc["pid"] == os.getpid()
        assert doc["token"] == lock.token
        assert doc["operation"] == "backup"
        assert doc["ttl_seconds"] == TTL_SECONDS
        beat = dt.datetime.fromisoformat(str(doc["heartbeat_at"]))
        assert abs((dt.datetime.now(dt.UTC) - beat).total_seconds()) < 60
    assert [i.key for i in repo.list("main/locks/")] == []


def test_lock_is_released_when_the_body_raises(repo: MemoryStorage) -> None:
    with pytest.raises(RuntimeError):
        with RepositoryLock(repo, "main", "backup"):
            raise RuntimeError("boom")
    assert [i.key for i in repo.list("main/locks/")] == []


def test_lock_can_be_taken_again_after_release(repo: MemoryStorage) -> None:
    for _ in range(3):
        lock = RepositoryLock(repo, "main", "backup")
        lock.acquire()
        assert lock_doc(repo)["token"] == lock.token
        lock.release()


def test_second_acquire_names_the_holder(repo: MemoryStorage) -> None:
    with RepositoryLock(repo, "main", "backup") as first:
        with pytest.raises(LockedError) as exc:
            RepositoryLock(repo, "main", "backup").acquire()
        message = str(exc.value)
        assert f"host {socket.gethostname()}" in message
        assert f"pid {os.getpid()}" in message
        assert "another pgvault backup of cluster 'main' is running" in message
        assert exc.value.exit_code == 7 and exc.value.hint
        assert lock_doc(repo)["token"] == first.token  # the loser changed nothing


def test_locks_are_per_cluster_and_operation(repo: MemoryStorage) -> None:
    with RepositoryLock(repo, "main", "backup"):
        with RepositoryLock(repo, "main", "restore"), RepositoryLock(repo, "other", "backup"):
            assert sorted(i.key for i in repo.list()) == [
                "main/locks/backup.lock",
                "main/locks/restore.lock",
                "other/locks/backup.lock",
            ]


def test_lock_of_a_dead_process_on_this_host_is_taken_over(repo: MemoryStorage) -> None:
    pid = dead_pid()
    write_foreign_lock(repo, host=socket.gethostname(), pid=pid, age_seconds=0)  # fresh heartbeat
    with RepositoryLock(repo, "main", "backup") as lock:
        assert lock_doc(repo)["token"] == lock.token
        assert lock_doc(repo)["pid"] == os.getpid()


def test_lock_of_a_live_process_on_another_host_is_respected(repo: MemoryStorage) -> None:
    # The pid means nothing on another host: only the heartbeat can tell whether it is alive.
    write_foreign_lock(repo, host="pod-7f9c", pid=dead_pid(), age_seconds=10)
    with pytest.raises(LockedError, match=r"host pod-7f9c, pid \d+"):
        RepositoryLock(repo, "main", "backup").acquire()


def test_lock_with_an_expired_heartbeat_from_another_host_is_taken_over(repo: MemoryStorage) -> None:
    old = write_foreign_lock(repo, host="pod-7f9c", pid=1, age_seconds=TTL_SECONDS + 60)
    with RepositoryLock(repo, "main", "backup") as lock:
        doc = lock_doc(repo)
        assert doc["token"] == lock.token != old
        assert doc["host"] == socket.gethostname()


def test_lock_ttl_is_read_from_the_lock(repo: MemoryStorage) -> None:
    write_foreign_lock(repo, host="pod-7f9c", pid=1, age_seconds=20, ttl=10)
    with RepositoryLock(repo, "main", "backup") as lock:
        assert lock_doc(repo)["token"] == lock.token


def test_unreadable_lock_is_taken_over(repo: MemoryStorage) -> None:
    repo.put_if_absent(LOCK_KEY, b"\x00 not json")
    with RepositoryLock(repo, "main", "backup") as lock:
        assert lock_doc(repo)["token"] == lock.token


def test_release_does_not_delete_someone_elses_lock(repo: MemoryStorage) -> None:
    ours = RepositoryLock(repo, "main", "backup")
    ours.acquire()
    # Meanwhile our lock was judged stale and another host took it over.
    repo.delete(LOCK_KEY)
    theirs = write_foreign_lock(repo, host="pod-new", pid=1, age_seconds=0)
    ours.release()
    assert lock_doc(repo)["token"] == theirs


def test_release_without_a_lock_object_is_harmless(repo: MemoryStorage) -> None:
    lock = RepositoryLock(repo, "main", "backup")
    lock.acquire()
    repo.delete(LOCK_KEY)
    lock.release()
    lock.release()  # twice, too
    assert list(repo.list()) == []


@pytest.mark.parametrize("prefix_of", [lambda i: layout.base_prefix("main", i), lambda i: layout.logical_prefix("main", i)],
                         ids=["base", "logical"])
def test_a_backup_started_in_a_taken_second_gets_the_next_free_id(repo: MemoryStorage, prefix_of) -> None:  # type: ignore[no-untyped-def]
    now = dt.datetime(2026, 12, 4, 23, 59, 59, 900000, tzinfo=dt.UTC)
    assert catalog.free_backup_id(repo, prefix_of, now) == "20261204T235959Z"
    # A finished backup, and a failed run's leftovers without a manifest: neither folder is reused.
    repo.put_if_absent(prefix_of("20261204T235959Z") + layout.MANIFEST_NAME, b"{}")
    repo.put_if_absent(prefix_of("20261204T235959Z-1") + "base.tar.zst", b"partial")
    assert catalog.free_backup_id(repo, prefix_of, now) == "20261204T235959Z-2"
    # Another second, or the other kind of backup, is not affected.
    assert catalog.free_backup_id(repo, prefix_of, now + dt.timedelta(seconds=1)) == "20261205T000000Z"
    for seq in range(2, 100):
        repo.put_if_absent(prefix_of(layout.new_backup_id(now, seq)) + "x", b"")
    with pytest.raises(PgvaultError, match="could not allocate a backup id"):
        catalog.free_backup_id(repo, prefix_of, now)
