"""``repo sync`` tried from the outside (issue 11, part 3): what the copy meets in production.

The sync CronJob runs every 15 minutes, ``expire`` daily on the same source repository, so the two
overlap.  ``expire`` deletes a backup's manifest first, then its objects, and a WAL file's object
before its record; a sync that listed (or read the manifest/record) just before must take that as
"expired meanwhile", not as damage: before, it failed with exit 6 (integrity) and the message
"listed in its record or manifest but missing" — a false integrity alarm at every overlap.

Also: two configured names for one place (a copy into itself is no copy, yet every run reported
success and ``status`` a lag of 0), and the segment-size amendment of a write-once source on a
write-once target (the copy rewrote ``cluster.json`` in place).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pgvault.config import PRIMARY_REPOSITORY, NamedRepository, Settings
from pgvault.errors import ConfigError
from pgvault.operations.context import Context
from pgvault.operations.maintenance.repo_sync import sync_repository
from pgvault.pg import wal
from pgvault.pg.conn import ConnInfo
from pgvault.pipeline import PipelineSpec, write_stream
from pgvault.repository import layout
from pgvault.repository.cluster import ensure_cluster, read_cluster_info
from pgvault.repository.sync_records import newest_sync_record
from pgvault.storage import Storage, open_storage
from support.cli import clean_env, pgvault

C = "main"
SYSID = "7300000000000000042"
SEG = 16 << 20
SPEC = PipelineSpec(compression="zstd", encryption="none")


def seg(n: int) -> str:
    return wal.segment_name(1, n, SEG)


class ExpireMeanwhile:
    """The source repository, on which ``expire`` deletes ``keys`` (in that order, expire's) right
    after the copy has read ``trigger``: the overlap of a sync run with an expire run."""

    def __init__(self, inner: Storage, trigger: str, keys: Callable[[], list[str]]) -> None:
        self.inner, self.trigger, self.keys, self.fired = inner, trigger, keys, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read_bytes(self, key: str) -> bytes:
        data = self.inner.read_bytes(key)
        if key == self.trigger and not self.fired:
            self.fired = True
            for k in self.keys():
                self.inner.delete(k)
        return data


def _local(tmp_path: Path) -> tuple[Storage, Storage]:
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "b").mkdir(exist_ok=True)
    return open_storage(str(tmp_path / "a")), open_storage(str(tmp_path / "b"))


def _push(storage: Storage, name: str) -> None:
    key = layout.wal_object(C, name, SPEC.suffix())
    out = io.BytesIO()
    result = write_stream(io.BytesIO(name.encode() * 100), out, SPEC)
    doc = {"format": 1, "name": name, "kind": "segment", "key": key, "system_identifier": SYSID,
           "pipeline": SPEC.to_json(), "archived_at": "2026-12-04T10:00:00+00:00", **result.to_json()}
    storage.put_if_absent(layout.wal_meta(C, name), json.dumps(doc).encode())
    storage.put_if_absent(key, out.getvalue())


def _ctx(source: Any, a_url: str, b_url: str) -> Context:
    settings = dataclasses.replace(Settings(cluster=C, repository_url=a_url), repositories=(
        NamedRepository(PRIMARY_REPOSITORY, a_url), NamedRepository("b", b_url)))
    return Context(settings=settings, storage=source, conn=ConnInfo.from_dsn("", {}))


def test_wal_expired_on_the_source_during_the_copy_is_no_integrity_error(tmp_path: Path) -> None:
    a, b = _local(tmp_path)
    ensure_cluster(a, C, system_identifier=SYSID, server_major=15, wal_segment_size=SEG)
    for n in range(1, 4):
        _push(a, seg(n))
    old = seg(1)
    # expire: the object first, then the record -- right after the copy read the record.
    source = ExpireMeanwhile(a, layout.wal_meta(C, old),
                             lambda: [layout.wal_object(C, old, SPEC.suffix()), layout.wal_meta(C, old)])
    r = sync_repository(_ctx(source, str(tmp_path / "a"), str(tmp_path / "b")), "b", open_target=lambda _: b)
    assert source.fired
    assert r.stats.wal_copied == 2  # the expired one is not counted as copied
    assert {i.key for i in b.list(layout.wal_root(C))} >= {layout.wal_object(C, seg(n), SPEC.suffix()) for n in (2, 3)}
    assert layout.wal_object(C, old, SPEC.suffix()) not in {i.key for i in b.list(layout.wal_root(C))}
    record = newest_sync_record(b, C)
    assert record is not None and record["ok"] is True


def test_a_backup_expired_on_the_source_during_the_copy_is_no_integrity_error(pg_latest, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(db)
    try:
        pg_latest.psql("CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)", dbname=db)
        env = clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(tmp_path / "a"), PGVAULT_CLUSTER=C,
                        PGVAULT_ENCRYPTION_AGE_RECIPIENTS="")
        first = pgvault(["--json", "backup", "-d", db, "--no-globals"], env).json()["backup"]["backup_id"]
        second = pgvault(["--json", "backup", "-d", db, "--no-globals"], env).json()["backup"]["backup_id"]
    finally:
        pg_latest.drop_database(db)
    a, b = _local(tmp_path)
    prefix = layout.logical_prefix(C, first)
    manifest = prefix + layout.MANIFEST_NAME
    # expire: the manifest first, then every other object of the backup.
    source = ExpireMeanwhile(a, manifest, lambda: [manifest] + sorted(i.key for i in a.list(prefix)
                                                                      if i.key != manifest))
    r = sync_repository(_ctx(source, str(tmp_path / "a"), str(tmp_path / "b")), "b", open_target=lambda _: b)
    assert source.fired
    assert r.stats.backups_copied == 1  # the other backup
    assert (layout.logical_prefix(C, second) + layout.MANIFEST_NAME) in {i.key for i in b.list(C + "/")}
    assert manifest not in {i.key for i in b.list(C + "/")}
    record = newest_sync_record(b, C)
    assert record is not None and record["ok"] is True


def test_two_names_for_one_place_are_no_copy(tmp_path: Path) -> None:
    a, _ = _local(tmp_path)
    ensure_cluster(a, C, system_identifier=SYSID, server_major=15, wal_segment_size=SEG)
    _push(a, seg(1))
    for spelling in (str(tmp_path / "a"), (tmp_path / "a").as_uri(), str(tmp_path / "x" / ".." / "a") + "/"):
        with pytest.raises(ConfigError, match="same place"):
            sync_repository(_ctx(a, str(tmp_path / "a"), spelling), "b")
    assert newest_sync_record(a, C) is None  # no "successful copy" recorded in the source itself


def test_a_write_once_target_gets_the_segment_size_without_a_rewrite() -> None:
    name = uuid.uuid4().hex[:8]
    a, b = open_storage(f"memory://a-{name}"), open_storage(f"memory://b-{name}")
    a.write_once = b.write_once = True  # type: ignore[attr-defined]  # both WORM (Object Lock) repositories
    ensure_cluster(a, C, system_identifier=SYSID, server_major=15)  # a logical backup came first
    ensure_cluster(a, C, system_identifier=SYSID, server_major=15, wal_segment_size=SEG)  # then WAL: the amendment
    _push(a, seg(1))
    writes: list[str] = []
    real = b.open_write

    def spy(key: str, **kw: Any) -> Any:
        if not kw.get("if_absent"):
            writes.append(key)
        return real(key, **kw)

    b.open_write = spy  # type: ignore[method-assign]
    ctx = _ctx(a, a.url, b.url)
    sync_repository(ctx, "b", open_target=lambda _: b)
    sync_repository(ctx, "b", open_target=lambda _: b)
    assert writes == []  # nothing rewritten in place on a WORM target
    info = read_cluster_info(b, C)
    assert info is not None and info.wal_segment_size == SEG


class SlowReads:
    """The source behind a slow link: every read of an object waits ``delay`` seconds."""

    def __init__(self, inner: Storage, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open_read(self, key: str, *args: Any, **kw: Any) -> Any:
        reader = self.inner.open_read(key, *args, **kw)
        delay = self.delay

        class Slow:
            def __enter__(self) -> Slow:
                reader.__enter__()
                return self

            def __exit__(self, *exc: Any) -> Any:
                return reader.__exit__(*exc)

            def read(self, n: int = -1) -> bytes:
                time.sleep(delay)
                return reader.read(n)

        return Slow()


def test_ctrl_c_or_sigterm_stops_the_copying_threads_at_once(tmp_path: Path) -> None:
    """SIGTERM is Ctrl-C (cli/interrupts.py): the copy of a large object in a worker thread must
    stop within a chunk, not run to its end (Kubernetes' SIGKILL comes 30 s after its SIGTERM)."""
    a, b = _local(tmp_path)
    ensure_cluster(a, C, system_identifier=SYSID, server_major=15, wal_segment_size=SEG)
    name = seg(1)
    key = layout.wal_object(C, name, ".zst")
    out = io.BytesIO()
    spec = PipelineSpec(compression="zstd", encryption="none")
    result = write_stream(io.BytesIO(os.urandom(40 << 20)), out, spec)  # 40 chunks of 1 MiB: 8 s at 0.2 s each
    doc = {"format": 1, "name": name, "kind": "segment", "key": key, "system_identifier": SYSID,
           "pipeline": spec.to_json(), "archived_at": "2026-12-04T10:00:00+00:00", **result.to_json()}
    a.put_if_absent(layout.wal_meta(C, name), json.dumps(doc).encode())
    a.put_if_absent(key, out.getvalue())
    ctx = _ctx(SlowReads(a, 0.2), str(tmp_path / "a"), str(tmp_path / "b"))
    # Python's own Ctrl-C handler for the test's duration: a process started in the background by a
    # non-interactive shell (CI's `.ci/run &`) inherits SIGINT ignored, and Python then keeps it so.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))  # what Ctrl-C does (SIGTERM: cli.interrupts)
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            sync_repository(ctx, "b", open_target=lambda _: b)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    took = time.monotonic() - t0
    assert took < 3.0, f"the interrupted sync took {took:.1f}s to stop"
    record = newest_sync_record(b, C)
    assert record is not None and record["ok"] is False
    assert key not in {i.key for i in b.list(C + "/")}  # the object's write was aborted, nothing visible
    assert not [i for i in b.list(C + "/locks/")]  # the lock released
    again = sync_repository(_ctx(a, str(tmp_path / "a"), str(tmp_path / "b")), "b", open_target=lambda _: b)
    assert again.stats.wal_copied == 1 and b.read_bytes(key) == a.read_bytes(key)


def test_status_does_not_show_a_second_name_for_the_primary_as_a_copy_in_step(tmp_path: Path) -> None:
    from pgvault.operations.maintenance.repositories import survey

    a, _ = _local(tmp_path)
    ensure_cluster(a, C, system_identifier=SYSID, server_major=15, wal_segment_size=SEG)
    _push(a, seg(1))
    settings = dataclasses.replace(Settings(cluster=C, repository_url=str(tmp_path / "a")), repositories=(
        NamedRepository(PRIMARY_REPOSITORY, str(tmp_path / "a")), NamedRepository("dr", (tmp_path / "a").as_uri()),
        NamedRepository("b", str(tmp_path / "b"))))
    rows = {p.name: (p, lag) for p, lag in survey(settings)}
    dr, lag = rows["dr"]
    assert dr.error is not None and "same place as repository 'primary'" in dr.error and lag is None
    assert rows["b"][0].error is None and rows["b"][1] is not None and rows["b"][1].wal_segments == 2
