"""S3 Object Lock without a store: the rule (policy/object_lock.py), the plan holding retained
backups (and their WAL), the S3 put headers, and the write-once job records and cluster amendment
on a repository that must never rewrite a key (MemoryStorage.write_once records any rewrite)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from pgvault.pg import wal
from pgvault.policy.object_lock import MARGIN, LockRule, policy_horizon, resolve, retained
from pgvault.policy.retention import Backup, Inventory, LogicalPolicy, PhysicalPolicy, Policy, make_plan
from pgvault.policy.retention_wal import WalFile
from pgvault.repository import layout
from pgvault.repository.cluster import ensure_cluster, read_cluster_info
from pgvault.repository.jobs import JobRun, list_jobs, load_job, record_run, superseded_runs
from pgvault.storage import ObjectInfo
from pgvault.storage.memory import MemoryStorage

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DAY = 86400.0
SEG = 16 << 20


# --- the rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "horizon"), [
    (Policy(), None),
    (Policy(LogicalPolicy(keep_last=7), PhysicalPolicy(keep_last=2)), None),  # count rules have no date
    (Policy(LogicalPolicy(keep_within=10 * DAY)), 10 * DAY),
    (Policy(LogicalPolicy(daily=7)), 7 * DAY),
    (Policy(LogicalPolicy(weekly=4)), 28 * DAY),
    (Policy(LogicalPolicy(monthly=12)), 372 * DAY),
    (Policy(LogicalPolicy(yearly=2)), 732 * DAY),
    (Policy(LogicalPolicy(daily=7, weekly=8), PhysicalPolicy(pitr_window=14 * DAY)), 56 * DAY),
    (Policy(physical=PhysicalPolicy(keep_within=3 * DAY, pitr_window=5 * DAY)), 5 * DAY),
])
def test_the_policy_horizon_is_the_longest_time_rule(policy: Policy, horizon: float | None) -> None:
    assert policy_horizon(policy) == horizon


def test_resolve() -> None:
    p = Policy(LogicalPolicy(daily=7))
    assert resolve("off", None, p) == (None, [])
    rule, problems = resolve("Governance", None, p)
    assert problems == [] and rule == LockRule("GOVERNANCE", 7 * DAY + MARGIN, "retention policy: 7d (+1d margin)")
    rule, problems = resolve("compliance", 30 * DAY, Policy())
    assert problems == [] and rule == LockRule("COMPLIANCE", 30 * DAY, "30d")
    assert "needs a time-based retention rule" in resolve("governance", None, Policy())[1][0]
    assert "must be at least 1s" in resolve("governance", 0.2, p)[1][0]
    assert "is not one of" in resolve("legal", 5.0, p)[1][0]


def test_retain_until_is_whole_seconds_never_earlier_than_the_duration() -> None:
    rule = LockRule("GOVERNANCE", 60, "1m")
    assert rule.retain_until(NOW) == NOW + dt.timedelta(seconds=60)
    t = NOW + dt.timedelta(microseconds=1)
    assert rule.retain_until(t) == NOW + dt.timedelta(seconds=61)
    assert rule.to_json() == {"mode": "governance", "retention_seconds": 60, "retention": "1m"}
    assert retained(NOW + dt.timedelta(seconds=1), NOW) and not retained(NOW, NOW) and not retained(None, NOW)


def test_s3_puts_carry_mode_and_date_and_leases_none() -> None:
    from pgvault.storage.s3 import S3Settings, S3Storage

    rule = LockRule("COMPLIANCE", 3600, "1h")
    s = S3Storage("b", "p", S3Settings(endpoint_url="http://127.0.0.1:9", object_lock=rule))
    before = dt.datetime.now(UTC)
    args = s._lock_args("c/base/20261125T120000Z/base.tar")
    assert args["ObjectLockMode"] == "COMPLIANCE"
    assert before + dt.timedelta(seconds=3600) <= args["ObjectLockRetainUntilDate"] <= before + dt.timedelta(seconds=3602)
    assert s._lock_args("c/locks/base-backup.lock") == {}
    assert s._lock_args("c/locks/base-backup.lock.takeover-abc-1") == {}
    assert s._lock_args("locks/wal/0000000100000000/x") != {}  # a cluster named "locks" is not a lease
    assert s.write_once
    plain = S3Storage("b", "p", S3Settings(endpoint_url="http://127.0.0.1:9"))
    assert plain._lock_args("c/x") == {} and not plain.write_once


# --- the plan -------------------------------------------------------------------------------------


def _backup(t: dt.datetime, start_seg: int | None = None) -> Backup:
    kw: dict[str, Any] = {}
    if start_seg is not None:
        kw = {"ended_at": t + dt.timedelta(minutes=5), "start_lsn": wal.segment_start_lsn(start_seg, SEG) + 0x28}
    return Backup.from_id(layout.new_backup_id(t), **kw)


def _wal(seg: int) -> WalFile:
    name = wal.segment_name(1, seg, SEG)
    info = ObjectInfo(f"c/wal/{name[:16]}/{name}", 10, NOW - dt.timedelta(days=9))
    return WalFile(name, (info,), ObjectInfo(f"c/wal/{name[:16]}/{name}.json", 1, NOW - dt.timedelta(days=9)))


def test_a_retained_backup_is_kept_with_its_reason_and_keeps_its_wal() -> None:
    old, new = _backup(NOW - dt.timedelta(days=9), 2), _backup(NOW - dt.timedelta(days=1), 6)
    inv = Inventory(physical=(old, new), wal=tuple(_wal(s) for s in range(1, 8)), seg_size=SEG)
    policy = Policy(physical=PhysicalPolicy(keep_last=1))
    plain = make_plan(inv, policy, NOW)
    assert [d.keep for d in plain.physical] == [True, False]
    assert [f.name[-2:] for f in plain.wal.delete] == ["01", "02", "03", "04", "05"]
    until = NOW + dt.timedelta(hours=3)
    held = make_plan(dataclasses.replace(inv, retained={("physical", old.backup_id): until}), policy, NOW)
    assert [d.keep for d in held.physical] == [True, True]
    assert held.physical[1].reasons == ("retained until 2026-11-25 15:00:00 UTC (object lock)",)
    assert [f.name[-2:] for f in held.wal.delete] == ["01"]  # the retained backup's WAL stays
    # The same id as a logical backup is another backup: not held.
    other = make_plan(dataclasses.replace(inv, retained={("logical", old.backup_id): until}), policy, NOW)
    assert [d.keep for d in other.physical] == [True, False]


# --- write-once job records and cluster descriptor ------------------------------------------------


def _run(job: str, minute: int, code: int = 0) -> JobRun:
    t = NOW + dt.timedelta(minutes=minute)
    return JobRun(job, t - dt.timedelta(seconds=30), t, code, error_kind=None if code == 0 else "storage",
                  error=None if code == 0 else "boom")


def test_job_records_on_a_write_once_repository_are_new_keys_and_readers_take_the_newest() -> None:
    repo = MemoryStorage("worm-jobs")
    record_run(repo, "c", _run("backup", 0))  # written before the switch: the legacy key
    repo.write_once = True
    record_run(repo, "c", _run("backup", 1, code=1))
    record_run(repo, "c", _run("backup", 2))
    record_run(repo, "c", _run("verify", 3))
    assert repo.overwritten == []
    keys = [i.key for i in repo.list("c/jobs/")]
    assert keys[0] == "c/jobs/backup.json" and len(keys) == 4
    assert all(k.startswith(("c/jobs/backup/2026", "c/jobs/verify/2026")) for k in keys[1:])
    rec = load_job(repo, "c", "backup")
    assert rec is not None and rec.ok
    assert rec.last_failure_at == (NOW + dt.timedelta(minutes=1)).isoformat()  # merged from the newest
    assert rec.last_success_at == (NOW + dt.timedelta(minutes=2)).isoformat()
    assert set(list_jobs(repo, "c")) == {"backup", "verify"}
    assert list_jobs(repo, "c")["backup"] == rec
    assert superseded_runs(repo, "c") == [keys[1]]  # the newest per job stays
    # Switched back off: the legacy key is rewritten and is newer than every per-run record.
    repo.write_once = False
    record_run(repo, "c", _run("backup", 9, code=2))
    assert load_job(repo, "c", "backup").last_exit_code == 2  # type: ignore[union-attr]


def test_the_segment_size_is_an_amendment_not_a_rewrite_on_a_write_once_repository() -> None:
    repo = MemoryStorage("worm-cluster")
    repo.write_once = True
    ensure_cluster(repo, "c", system_identifier="111", server_major=18)  # a logical backup registers it
    info = ensure_cluster(repo, "c", system_identifier="111", server_major=18, wal_segment_size=SEG)
    assert info.wal_segment_size == SEG
    assert repo.overwritten == []
    assert json.loads(repo.read_bytes("c/cluster.json"))["system_identifier"] == "111"
    assert "wal_segment_size" not in json.loads(repo.read_bytes("c/cluster.json"))
    assert json.loads(repo.read_bytes(layout.segment_size_key("c"))) == {"wal_segment_size": SEG}
    assert read_cluster_info(repo, "c").wal_segment_size == SEG  # type: ignore[union-attr]
    # Recorded once: a second push finds it.
    assert ensure_cluster(repo, "c", system_identifier="111", server_major=18, wal_segment_size=SEG) == info
    assert repo.overwritten == []


# --- expire's guard and sweep on a versioned store (a fake with versions and dates) ----------------


class FakeVersioned(MemoryStorage):
    """Just enough of a versioned bucket: ``history`` per key, newest last; ``dates`` per version."""

    def __init__(self) -> None:
        super().__init__("fake-versioned")
        self.history: dict[str, list[tuple[str, bool]]] = {}  # key → [(version id, is delete marker)]
        self.dates: dict[str, dt.datetime] = {}
        self.deleted: list[str] = []

    def add(self, key: str, vid: str, *, marker: bool = False, until: dt.datetime | None = None) -> None:
        self.history.setdefault(key, []).append((vid, marker))
        if until is not None:
            self.dates[vid] = until
        if marker:
            MemoryStorage.delete(self, key)
        else:
            self._objects[key] = (vid.encode(), NOW)

    def versioning(self) -> str:
        return "Enabled"

    def versions(self, prefix: str = "") -> list[Any]:
        from pgvault.storage.base import ObjectVersion

        out = []
        for key in sorted(k for k in self.history if k.startswith(prefix)):
            hist = self.history[key]
            for i, (vid, marker) in reversed(list(enumerate(hist))):
                out.append(ObjectVersion(key, vid, i == len(hist) - 1, marker, 0 if marker else 1,
                                         NOW - dt.timedelta(minutes=len(hist) - i)))
        return out

    def retain_until(self, key: str, version_id: str) -> dt.datetime | None:
        return self.dates.get(version_id)

    def delete_version(self, key: str, version_id: str) -> None:
        assert not retained(self.dates.get(version_id), NOW), f"the store would refuse {version_id}: retained"
        self.history[key] = [h for h in self.history[key] if h[0] != version_id]
        self.deleted.append(version_id)

    def lock_configuration(self) -> dict[str, object]:
        return {"enabled": True}


def test_the_sweep_removes_what_its_date_allows_and_reports_the_rest() -> None:
    from pgvault.operations.maintenance.retained import Guard, sweep, versioned

    later, past = NOW + dt.timedelta(hours=1), NOW - dt.timedelta(seconds=1)
    s = FakeVersioned()
    s.add("c/wal/r.json", "a1", until=later)  # taken over: noncurrent and still retained
    s.add("c/wal/r.json", "a2", until=later)  # current: never touched
    s.add("c/locks/x.lock", "b1")  # heartbeats of a held lease: old ones go
    s.add("c/locks/x.lock", "b2")
    s.add("c/wal/gone.json", "g1", until=later)  # deleted while retained: hidden, both stay
    s.add("c/wal/gone.json", "g2", marker=True)
    s.add("c/wal/old.json", "o1", until=past)  # deleted while retained, date passed: all goes
    s.add("c/wal/old.json", "o2", marker=True)
    s.add("c/x", "m1", marker=True)  # a noncurrent marker hides nothing
    s.add("c/x", "x2")
    guard = Guard(versioned(s), "c", NOW)  # type: ignore[arg-type]
    swept = sweep(guard, s)
    assert sorted(s.deleted) == ["b1", "m1", "o1", "o2"]
    assert (swept.versions, swept.job_records) == (4, 0)
    assert {h["what"] for h in guard.held} == {"c/wal/r.json", "c/wal/gone.json"}
    assert all(h["retained_until"] == later.isoformat() for h in guard.held)
    assert s.history["c/wal/gone.json"] == [("g1", False), ("g2", True)]


def test_the_plan_holds_a_backup_while_any_of_its_objects_is_retained() -> None:
    from pgvault.operations.maintenance.retained import Guard, plan_with_retention

    old, new = (layout.new_backup_id(NOW - dt.timedelta(days=d)) for d in (3, 1))
    s = FakeVersioned()
    s.add(f"{layout.logical_prefix('c', old)}db.dump", "d1", until=NOW - dt.timedelta(seconds=5))
    s.add(f"{layout.logical_prefix('c', old)}manifest.json", "d2", until=NOW + dt.timedelta(minutes=2))
    inv = Inventory(logical=(Backup.from_id(old), Backup.from_id(new)))
    policy = Policy(LogicalPolicy(keep_last=1))
    guard = Guard(s, "c", NOW)  # type: ignore[arg-type]
    plan = plan_with_retention(guard, inv, policy, NOW)
    assert [d.keep for d in plan.logical] == [True, True]
    assert guard.held == [{"what": f"logical backup {old}", "retained_until": (NOW + dt.timedelta(minutes=2)).isoformat()}]
    # Once the dates passed, the same plan deletes it.
    later = Guard(s, "c", NOW + dt.timedelta(minutes=3))  # type: ignore[arg-type]
    assert [d.keep for d in plan_with_retention(later, inv, policy, NOW).logical] == [True, False]
    assert later.held == []


@pytest.mark.parametrize("locked", [False, True])
def test_a_key_without_get_bucket_versioning_keeps_plain_deletes_unless_a_lock_is_configured(locked: bool) -> None:
    from botocore.stub import Stubber

    from pgvault.errors import StorageError
    from pgvault.storage.s3 import S3Settings, S3Storage

    rule = LockRule("GOVERNANCE", 60, "1m") if locked else None
    s = S3Storage("b", "p", S3Settings(endpoint_url="http://127.0.0.1:9", access_key_id="k", secret_access_key="s",
                                       region="us-east-1", object_lock=rule))
    with Stubber(s._client) as stub:
        stub.add_client_error("get_bucket_versioning", "AccessDenied", "Access Denied", 403)
        if locked:
            with pytest.raises(StorageError, match="access denied") as e:
                s.versioning()
            assert e.value.hint is not None and "s3:PutObjectRetention" in e.value.hint
        else:
            assert s.versioning() == ""
            stub.add_response("delete_object", {}, {"Bucket": "b", "Key": "p/x"})
            s.delete("x")  # one plain DeleteObject, as before versions were looked at
        stub.assert_no_pending_responses()
