"""Unfinished writes (issue 8 item 9): what killed writers leave, local ``.tmp-*`` files and S3
multipart uploads never completed, is swept by ``expire`` once it is older than
``retention.debris_grace`` and counted by ``verify --all`` and ``status``; a write that may still be
running (younger than the grace, or of a kind whose backup holds its lock) is never touched.

The plan and the verdict are pure; the operations run on a real local repository (temp files made
as a killed writer leaves them) or on the memory backend (a writer never committed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
from pathlib import Path

from pgvault.config import Settings, load_settings
from pgvault.operations.context import Context, build_context
from pgvault.operations.maintenance import expire as expire_op
from pgvault.operations.maintenance.status import gather_status
from pgvault.operations.maintenance.unfinished import UnfinishedSummary, summarize
from pgvault.operations.maintenance.verify import verify
from pgvault.pg.conn import ConnInfo
from pgvault.policy.retention import Inventory, Policy, make_plan, plan_unfinished
from pgvault.policy.verdict import WARNING, evaluate, snapshot_json
from pgvault.policy.wal_check import OK
from pgvault.policy.wal_check import WARNING as VERIFY_WARNING
from pgvault.repository import layout
from pgvault.repository.cluster import ensure_cluster
from pgvault.storage import UnfinishedWrite
from pgvault.storage.memory import MemoryStorage

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOUR = 3600.0
DAY = 86400.0
MiB = 1 << 20
SEG = 16 << 20


def uw(key: str, age: float, size: int = 10) -> UnfinishedWrite:
    return UnfinishedWrite(key, size, NOW - dt.timedelta(seconds=age))


# --- the plan ---------------------------------------------------------------------------------------


def test_the_plan_sweeps_unfinished_writes_older_than_the_grace_and_nothing_younger() -> None:
    old_dump = uw("c/logical/2026/11/20261120T020000Z/.tmp-a", DAY + HOUR, 3 * MiB)
    old_wal = uw("c/wal/0000000100000000/.tmp-b", 2 * DAY, 100)
    young = uw("c/wal/0000000100000000/.tmp-c", HOUR, 7)
    just = uw("c/jobs/.tmp-d", DAY, 1)  # exactly the grace: not older than it
    out = {u.write.key: u for u in plan_unfinished([young, old_wal, just, old_dump], NOW, DAY)}
    assert [k for k, u in out.items() if u.delete] == [old_dump.key, old_wal.key]  # key order
    assert out[old_dump.key].reason == "unfinished write, last written 1d1h ago (grace 1d)"
    assert "younger than the grace 1d: a write may be in progress" in out[young.key].reason
    assert not out[just.key].delete
    plan = make_plan(Inventory(unfinished=(old_dump, young, old_wal, just)), Policy(debris_grace=DAY), NOW)
    assert plan.summary()["unfinished_writes"] == {"keep": 2, "delete": 2, "delete_bytes": 3 * MiB + 100}
    doc = plan.to_json()["unfinished_writes"]
    assert [d["where"] for d in doc] == sorted([old_dump.key, young.key, old_wal.key, just.key])
    assert doc[1] == {"where": old_dump.key, "action": "delete", "reason": out[old_dump.key].reason,
                      "bytes": 3 * MiB, "modified": old_dump.modified.isoformat()}


def test_the_plan_leaves_unfinished_writes_of_a_running_backups_kind_alone_whatever_their_age() -> None:
    dump = uw("c/logical/2026/11/20261101T020000Z/.tmp-a", 20 * DAY)
    tar = uw("c/base/20261101T000000Z/base.tar.zst", 20 * DAY)  # an S3 upload names its key
    wal_tmp = uw("c/wal/0000000100000000/.tmp-b", 20 * DAY)
    out = {u.write.key: u for u in plan_unfinished([dump, tar, wal_tmp], NOW, DAY, busy={"base"})}
    assert (out[dump.key].delete, out[tar.key].delete, out[wal_tmp.key].delete) == (True, False, True)
    assert out[tar.key].reason == "unfinished write, but a base backup is running (its lock is held)"


def test_the_summary_counts_every_write_and_those_older_than_the_grace() -> None:
    s = summarize([uw("c/a", 3 * DAY, 100), uw("c/b", 2 * DAY, 20), uw("c/c", HOUR, 3)], NOW, DAY)
    assert s == UnfinishedSummary(count=3, bytes=123, oldest_age=3 * DAY, stale=2, stale_bytes=120, grace=DAY)
    assert s.to_json() == {"count": 3, "bytes": 123, "oldest_age_seconds": 3 * DAY, "older_than_grace": 2,
                           "older_than_grace_bytes": 120, "grace_seconds": DAY}
    assert summarize([], NOW, DAY) == UnfinishedSummary(grace=DAY)


# --- expire on a local repository -------------------------------------------------------------------


def _repository(tmp_path: Path, **env: str) -> Context:
    environ = {"PGVAULT_REPOSITORY_URL": str(tmp_path / "repo"), "PGVAULT_CLUSTER": "c",
               "PGVAULT_RETENTION_DEBRIS_GRACE": "1d", **env}
    ctx = build_context(load_settings(environ=environ), environ={})
    ctx.storage.check_writable()
    ensure_cluster(ctx.storage, "c", system_identifier="1", server_major=18, wal_segment_size=SEG)
    prefix = layout.logical_prefix("c", "20261120T020000Z")
    for key in (prefix + "app.dump.zst", prefix + layout.MANIFEST_NAME):
        with ctx.storage.open_write(key) as w:
            w.write(b"{}")
    return ctx


def _temp(ctx: Context, folder: str, size: int, age: dt.timedelta) -> Path:
    """A ``.tmp-*`` file as a killed writer leaves it in ``folder`` (a key prefix), ``age`` old."""
    d = Path(ctx.settings.repository_url).joinpath(*folder.strip("/").split("/"))
    d.mkdir(parents=True, exist_ok=True)
    path = d / f".tmp-{secrets.token_hex(8)}"
    path.write_bytes(b"t" * size)
    t = (dt.datetime.now(UTC) - age).timestamp()
    os.utime(path, (t, t))
    return path


def _live_lock(ctx: Context, operation: str) -> None:
    doc = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": dt.datetime.now(UTC).isoformat(),
           "ttl_seconds": 180, "token": "running"}
    ctx.storage.put_if_absent(layout.lock_key("c", operation), json.dumps(doc).encode())


def test_expire_sweeps_old_temp_files_and_the_folders_they_leave_empty_and_reports_them(tmp_path: Path) -> None:
    ctx = _repository(tmp_path)
    root = Path(ctx.settings.repository_url)
    killed = _temp(ctx, layout.logical_prefix("c", "20261124T030000Z"), 3 * MiB, dt.timedelta(days=2))
    pushed = _temp(ctx, "c/wal/0000000100000000/", 1000, dt.timedelta(days=3))
    young = _temp(ctx, "c/wal/0000000100000000/", 7, dt.timedelta(hours=1))

    dry = expire_op.expire(ctx)
    assert dry.applied is None and killed.exists() and pushed.exists()  # a dry run removes nothing
    assert {(u.write.key, u.delete) for u in dry.plan.unfinished} == {
        (str(killed.relative_to(root)), True), (str(pushed.relative_to(root)), True), (str(young.relative_to(root)), False)}
    assert dry.plan.summary()["unfinished_writes"] == {"keep": 1, "delete": 2, "delete_bytes": 3 * MiB + 1000}

    done = expire_op.expire(ctx, apply=True)
    assert done.applied is not None
    assert (done.applied.unfinished, done.applied.unfinished_bytes) == (2, 3 * MiB + 1000)
    assert done.applied.to_json()["unfinished_writes"] == {"count": 2, "bytes": 3 * MiB + 1000}
    assert not killed.exists() and not pushed.exists() and young.exists()
    assert not (root / "c" / "logical" / "2026" / "11" / "20261124T030000Z").exists()  # held nothing else
    assert (root / "c" / "logical" / "2026" / "11" / "20261120T020000Z" / "manifest.json").exists()
    assert [o.key for o in ctx.storage.list("c/locks/")] == []
    again = expire_op.expire(ctx, apply=True)
    assert again.applied is not None and again.applied.unfinished == 0


def test_expire_never_sweeps_a_young_write_or_one_of_a_kind_whose_backup_holds_its_lock(tmp_path: Path) -> None:
    ctx = _repository(tmp_path)
    running_tar = _temp(ctx, layout.base_prefix("c", "20261125T000000Z"), 100, dt.timedelta(days=5))
    running_push = _temp(ctx, "c/wal/0000000100000000/", 100, dt.timedelta(minutes=1))
    old = _temp(ctx, layout.logical_prefix("c", "20261101T020000Z"), 100, dt.timedelta(days=5))
    _live_lock(ctx, "base-backup")
    done = expire_op.expire(ctx, apply=True)
    assert done.applied is not None and done.applied.unfinished == 1
    assert running_tar.exists() and running_push.exists() and not old.exists()
    reasons = {u.write.key: u.reason for u in done.plan.unfinished}
    assert "a base backup is running" in reasons[str(running_tar.relative_to(tmp_path / "repo"))]
    # Even a clock moved past the grace (--now) does not override a live lock.
    later = dt.datetime.now(UTC) + dt.timedelta(days=30)
    done = expire_op.expire(ctx, apply=True, now=later)
    assert running_tar.exists() and not running_push.exists()


def test_expire_skips_an_unfinished_write_touched_since_it_planned(tmp_path: Path) -> None:
    ctx = _repository(tmp_path)
    tmp = _temp(ctx, "c/wal/0000000100000000/", 100, dt.timedelta(days=2))
    plan = expire_op.expire(ctx).plan
    assert [u.delete for u in plan.unfinished] == [True]
    os.utime(tmp)  # its writer was only slow, and wrote again
    done = expire_op.apply_plan(ctx, plan)
    assert tmp.exists() and done.unfinished == 0
    assert done.skipped == [f"{tmp.relative_to(tmp_path / 'repo')}: written to since the listing"]


# --- verify and status ------------------------------------------------------------------------------


def _memory(name: str) -> Context:
    storage = MemoryStorage(name)
    ensure_cluster(storage, "c", system_identifier="1", server_major=18, wal_segment_size=SEG)
    settings = Settings(cluster="c", repository_url=f"memory://{name}", debris_grace=DAY)
    return Context(settings=settings, storage=storage, conn=ConnInfo.from_dsn("", {}))


def _left_open(ctx: Context, key: str, size: int) -> None:
    w = ctx.storage.open_write(key)
    w.write(b"x" * size)  # and never committed: the memory backend's own unfinished write


def test_verify_all_warns_about_unfinished_writes_older_than_the_grace() -> None:
    ctx = _memory("unfinished-verify")
    _left_open(ctx, layout.logical_prefix("c", "20261125T020000Z") + "app.dump.zst", 1500)
    _left_open(ctx, "c/wal/0000000100000000/000000010000000000000001.zst", 500)
    _left_open(ctx, "other/logical/x", 99)  # another cluster's: not this cluster's business
    real = dt.datetime.now(UTC)
    report = verify(ctx, None, now=real + dt.timedelta(days=2))
    [f] = [f for f in report.findings if f.kind == "unfinished"]
    assert f.status == VERIFY_WARNING and f.subject == "2 unfinished write(s), 2.0 KiB"
    assert "older than retention.debris_grace (1d)" in f.detail and "pgvault expire --apply" in f.detail
    doc = report.to_json()
    assert doc["summary"]["unfinished_writes"]["count"] == 2 and doc["summary"]["unfinished_writes"]["bytes"] == 2000
    assert doc["ok"] is True  # a warning, not a failure
    # Younger than the grace: reported, not a warning (a backup may be writing them).
    [f] = [f for f in verify(ctx, None, now=real).findings if f.kind == "unfinished"]
    assert f.status == OK and "younger than retention.debris_grace" in f.detail


def test_status_warns_about_unfinished_writes_older_than_the_grace() -> None:
    ctx = _memory("unfinished-status")
    real = dt.datetime.now(UTC)
    assert gather_status(ctx, now=real, connect=False).unfinished == UnfinishedSummary(grace=DAY)
    _left_open(ctx, layout.base_prefix("c", "20261125T000000Z") + "base.tar.zst", 3000)
    snap = gather_status(ctx, now=real + dt.timedelta(days=3), connect=False)
    assert snap.unfinished.count == 1 and snap.unfinished.stale_bytes == 3000
    [r] = [r for r in evaluate(snap) if r.code == "unfinished_writes"]
    assert r.level == WARNING and r.message.startswith("1 unfinished write(s) older than retention.debris_grace (1d)")
    assert "2.9 KiB" in r.message and "pgvault expire --apply" in r.message
    assert snapshot_json(snap, evaluate(snap))["unfinished_writes"] == snap.unfinished.to_json()
    young = gather_status(ctx, now=real, connect=False)
    assert young.unfinished.count == 1 and "unfinished_writes" not in {r.code for r in evaluate(young)}
