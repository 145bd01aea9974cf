"""Races the storage layer must settle atomically (issue 8, item 13), on memory, local and S3.

``wal push``: two pushers of the same WAL name used to both pass "is it archived?" and both write,
so different bytes could replace an archived segment, or record and object could come from
different pushers. Lock takeover: two processes taking over the same stale lock could both end
up holding it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import secrets
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pgvault.config import Settings
from pgvault.errors import IntegrityError, LockedError, StorageError
from pgvault.operations.archive import push_fetch as archive
from pgvault.operations.context import Context
from pgvault.pg.conn import ConnInfo
from pgvault.pipeline import PipelineSpec
from pgvault.policy.object_lock import LockRule
from pgvault.repository import layout
from pgvault.repository.locks import RepositoryLock
from pgvault.storage import Storage, open_storage
from pgvault.storage.s3 import S3Settings
from support.seaweed import new_bucket_name

CLUSTER = "race"
SYSID = "7000000000000000001"
SEG = 1 << 20
NAME = "000000010000000000000003"


@pytest.fixture(params=["memory", "local", pytest.param("s3", marks=pytest.mark.s3),
                        pytest.param("s3-object-lock", marks=pytest.mark.s3)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "memory":
        return open_storage(f"memory://race-{secrets.token_hex(6)}")
    if request.param == "local":
        (tmp_path / "repo").mkdir()
        return open_storage(str(tmp_path / "repo"))
    settings: S3Settings = dataclasses.replace(request.getfixturevalue("s3_settings"), part_size=5 << 20)
    if request.param == "s3-object-lock":
        # A WORM bucket: everything pgvault writes is locked (GOVERNANCE), except lock leases.
        return open_storage(f"s3://{lock_bucket(request)}/race",
                            s3=dataclasses.replace(settings, object_lock=LockRule("GOVERNANCE", 3, "3s")))
    bucket: str = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/race", s3=settings)


def lock_bucket(request: pytest.FixtureRequest) -> str:
    """A fresh lock-enabled bucket (its locked versions stay in the session's SeaweedFS data dir)."""
    seaweed = request.getfixturevalue("seaweed")
    name = new_bucket_name("pgvault-race-lock")
    seaweed.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def segment(directory: Path, seed: int) -> Path:
    """A 1 MiB WAL segment file named NAME: a valid long page header, then seeded bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    header = struct.pack("=HHIQI4xQII", 0xD116, 0x0002, 1, 3 * SEG, 0, int(SYSID), SEG, 8192)
    path = directory / NAME
    path.write_bytes(header + random.Random(seed).randbytes(SEG - len(header)))
    return path


def make_ctx(storage: Storage, pgdata: Path) -> Context:
    (pgdata / "global").mkdir(parents=True, exist_ok=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "global" / "pg_control").write_bytes(struct.pack("=Q", int(SYSID)) + bytes(100))
    settings = Settings(cluster=CLUSTER, repository_url=storage.url)
    return Context(settings=settings, storage=storage, conn=ConnInfo.from_dsn("", {}))


def run_together(n: int, work: Callable[[int], object]) -> dict[int, object]:
    barrier = threading.Barrier(n)
    outcome: dict[int, object] = {}

    def one(i: int) -> None:
        barrier.wait()
        try:
            outcome[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - the assertions look at it
            outcome[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcome


def assert_record_matches_object(storage: Storage) -> dict[str, Any]:
    """The record describes exactly the stored object (what fetch verifies)."""
    meta = json.loads(storage.read_bytes(layout.wal_meta(CLUSTER, NAME)))
    stored = storage.read_bytes(meta["key"])
    assert hashlib.sha256(stored).hexdigest() == meta["stored_sha256"]
    assert len(stored) == meta["stored_size"]
    return dict(meta)


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- wal push -------------------------------------------------------------------------------------


def test_concurrent_pushes_of_different_content_archive_exactly_one(storage: Storage, tmp_path: Path) -> None:
    n = 4
    ctx = make_ctx(storage, tmp_path / "pgdata")
    files = [segment(tmp_path / f"server{i}", seed=i) for i in range(n)]
    outcome = run_together(n, lambda i: archive.push(ctx, str(files[i]), pgdata=str(tmp_path / "pgdata")))
    stored = [i for i, r in outcome.items() if isinstance(r, archive.PushResult)]
    assert len(stored) == 1, outcome  # exactly one server's bytes were archived...
    for i, r in outcome.items():
        if i not in stored:  # ...and every other push failed (refused, or told to retry)
            assert isinstance(r, (IntegrityError, StorageError)), outcome
    winner = stored[0]
    meta = assert_record_matches_object(storage)
    assert meta["raw_sha256"] == file_sha(files[winner])
    # Once settled, the retries of the others are refused and the winner's is a no-op.
    for i in range(n):
        if i == winner:
            assert archive.push(ctx, str(files[i]), pgdata=str(tmp_path / "pgdata")).already_archived
        else:
            with pytest.raises(IntegrityError, match="different content"):
                archive.push(ctx, str(files[i]), pgdata=str(tmp_path / "pgdata"))
    assert assert_record_matches_object(storage)["raw_sha256"] == file_sha(files[winner])


def test_concurrent_pushes_of_the_same_file_store_it_once(storage: Storage, tmp_path: Path) -> None:
    n = 4
    ctx = make_ctx(storage, tmp_path / "pgdata")
    path = segment(tmp_path / "wal", seed=7)
    outcome = run_together(n, lambda i: archive.push(ctx, str(path), pgdata=str(tmp_path / "pgdata")))
    fresh = [r for r in outcome.values() if isinstance(r, archive.PushResult) and not r.already_archived]
    assert len(fresh) == 1, outcome
    for r in outcome.values():
        assert isinstance(r, archive.PushResult) or (isinstance(r, StorageError) and "in progress" in str(r)), outcome
    assert assert_record_matches_object(storage)["raw_sha256"] == file_sha(path)
    assert archive.push(ctx, str(path), pgdata=str(tmp_path / "pgdata")).already_archived


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _record_without_object(storage: Storage, **fields: Any) -> None:
    """The record a push writes before committing its object (as push writes it: every field)."""
    doc = {"format": 1, "name": NAME, "kind": "segment", "key": layout.wal_object(CLUSTER, NAME, ".zst"),
           "system_identifier": SYSID, "pipeline": PipelineSpec().to_json(), "archived_at": "2099-01-01T00:00:00+00:00",
           "push_id": "x" * 32, "raw_size": SEG, "raw_sha256": "0" * 64, "stored_size": 1, "stored_sha256": "0" * 64,
           **fields}
    storage.put_if_absent(layout.wal_meta(CLUSTER, NAME), json.dumps(doc).encode())


def test_a_record_left_by_a_dead_push_is_taken_over(storage: Storage, tmp_path: Path) -> None:
    ctx = make_ctx(storage, tmp_path / "pgdata")
    path = segment(tmp_path / "wal", seed=1)
    _record_without_object(storage, host=socket.gethostname(), pid=_dead_pid())
    assert not archive.push(ctx, str(path), pgdata=str(tmp_path / "pgdata")).already_archived
    assert assert_record_matches_object(storage)["raw_sha256"] == file_sha(path)


def test_a_takeover_on_a_worm_bucket_leaves_one_retained_version_that_expire_sweeps(
        request: pytest.FixtureRequest, s3_settings: S3Settings, tmp_path: Path) -> None:
    """The documented exception to "nothing is rewritten": a record taken over from a dead push is a
    second version of its key; the first stays (locked) until expire's sweep after its date."""
    import datetime as dt
    import time

    from pgvault.operations.maintenance.retained import Guard, sweep, versioned

    settings = dataclasses.replace(s3_settings, object_lock=LockRule("GOVERNANCE", 3, "3s"))
    storage = open_storage(f"s3://{lock_bucket(request)}/race", s3=settings)
    ctx = make_ctx(storage, tmp_path / "pgdata")
    path = segment(tmp_path / "wal", seed=1)
    _record_without_object(storage, host=socket.gethostname(), pid=_dead_pid())
    assert not archive.push(ctx, str(path), pgdata=str(tmp_path / "pgdata")).already_archived
    meta = assert_record_matches_object(storage)
    vs = versioned(storage)
    assert vs is not None
    by_key: dict[str, int] = {}
    for v in vs.versions(f"{CLUSTER}/wal/"):
        by_key[v.key] = by_key.get(v.key, 0) + 1
    assert by_key == {layout.wal_meta(CLUSTER, NAME): 2, meta["key"]: 1}
    time.sleep(4)
    swept = sweep(Guard(vs, CLUSTER, dt.datetime.now(dt.UTC)), storage)
    assert swept.versions == 1
    assert [v.key for v in vs.versions(f"{CLUSTER}/")] == sorted([layout.wal_meta(CLUSTER, NAME), meta["key"],
                                                                   layout.cluster_key(CLUSTER)])
    assert assert_record_matches_object(storage) == meta


def test_a_push_in_flight_elsewhere_is_not_overwritten(storage: Storage, tmp_path: Path) -> None:
    ctx = make_ctx(storage, tmp_path / "pgdata")
    path = segment(tmp_path / "wal", seed=1)
    _record_without_object(storage, host="another-host", pid=1,
                           archived_at=__import__("datetime").datetime.now().astimezone().isoformat())
    with pytest.raises(StorageError, match="another push of .* is in progress") as info:
        archive.push(ctx, str(path), pgdata=str(tmp_path / "pgdata"))
    assert info.value.exit_code == 4
    # ...until it is stale: then it is a push that died without a trace on this host.
    storage.delete(layout.wal_meta(CLUSTER, NAME))
    _record_without_object(storage, host="another-host", pid=1, archived_at="2000-01-01T00:00:00+00:00")
    assert not archive.push(ctx, str(path), pgdata=str(tmp_path / "pgdata")).already_archived


class _FailingCommits:
    """Wraps a storage: the next conditional commit fails (a network error), and so do deletes."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.url = inner.url
        self.fail = True  # the next conditional WAL commit
        self.fail_deletes = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def delete(self, key: str) -> None:
        if self.fail_deletes:
            raise StorageError("injected: delete failed")
        self.inner.delete(key)

    def open_write(self, key: str, *, if_absent: bool = False) -> Any:
        writer = self.inner.open_write(key, if_absent=if_absent)
        if if_absent and self.fail and "/wal/" in key and not key.endswith(".json"):
            outer = self

            class W:
                def write(self, data: Any) -> int:
                    return writer.write(data)

                def commit(self) -> None:
                    writer.abort()
                    outer.fail = False
                    raise StorageError("injected: commit failed")

                def abort(self) -> None:
                    writer.abort()

            return W()
        return writer


def test_a_failed_push_does_not_block_the_retry_in_the_same_process(tmp_path: Path) -> None:
    # The background pusher runs every push in one long-lived process: a record its own failed
    # attempt left behind (the store refused even the clean-up) must not read as "in progress".
    storage = _FailingCommits(open_storage(f"memory://race-{secrets.token_hex(6)}"))
    ctx = make_ctx(storage, tmp_path / "pgdata")  # type: ignore[arg-type]
    path = segment(tmp_path / "wal", seed=3)
    with pytest.raises(StorageError, match="injected: commit failed"):
        archive.push(ctx, str(path), pgdata=str(tmp_path / "pgdata"))
    assert storage.inner.stat(layout.wal_meta(CLUSTER, NAME))  # the record is still there
    storage.fail_deletes = False
    assert not archive.push(ctx, str(path), pgdata=str(tmp_path / "pgdata")).already_archived
    assert_record_matches_object(storage.inner)


# -- lock takeover ---------------------------------------------------------------------------------


def test_exactly_one_process_takes_over_a_stale_lock(storage: Storage) -> None:
    for round_ in range(3):
        key = layout.lock_key(CLUSTER, "logical-backup")
        storage.delete(key)
        stale = {"host": socket.gethostname(), "pid": _dead_pid(), "token": f"dead{round_}", "operation": "x",
                 "heartbeat_at": "2000-01-01T00:00:00+00:00", "ttl_seconds": 180}
        storage.put_if_absent(key, json.dumps(stale).encode())
        n = 6
        locks = [RepositoryLock(storage, CLUSTER, "logical-backup") for _ in range(n)]
        outcome = run_together(n, lambda i, locks=locks: locks[i].acquire())
        holders = [i for i, r in outcome.items() if r is None]
        assert len(holders) == 1, (round_, outcome)
        for i, r in outcome.items():
            if i not in holders:
                assert isinstance(r, LockedError), outcome
        assert json.loads(storage.read_bytes(key))["token"] == locks[holders[0]].token
        locks[holders[0]].release()
        leftovers = [i.key for i in storage.list(f"{CLUSTER}/locks/")]
        assert leftovers == [], leftovers  # the markers went with the takeover


def test_a_marker_left_by_a_dead_taker_does_not_wedge_the_lock(storage: Storage) -> None:
    key = layout.lock_key(CLUSTER, "expire")
    stale = {"host": socket.gethostname(), "pid": _dead_pid(), "token": "deadbeef", "heartbeat_at": "2000-01-01T00:00:00+00:00"}
    storage.put_if_absent(key, json.dumps(stale).encode())
    marker = {"host": socket.gethostname(), "pid": _dead_pid(), "token": "cafe", "heartbeat_at": "2000-01-01T00:00:00+00:00",
              "ttl_seconds": 60}
    storage.put_if_absent(f"{key}.takeover-deadbeef-1", json.dumps(marker).encode())
    with RepositoryLock(storage, CLUSTER, "expire") as lock:
        assert json.loads(storage.read_bytes(key))["token"] == lock.token
    assert [i.key for i in storage.list(f"{CLUSTER}/locks/")] == []


def test_a_live_lock_is_never_taken_over(storage: Storage) -> None:
    with RepositoryLock(storage, CLUSTER, "base-backup"):
        with pytest.raises(LockedError, match="is running"):
            RepositoryLock(storage, CLUSTER, "base-backup").acquire()

