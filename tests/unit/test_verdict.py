"""The status verdict (policy/verdict.py), rule by rule, on synthetic snapshots: no servers.

Read like the on-call's rules: when the newest backup is older than the limit, then CRITICAL; when
the last drill is old, then WARNING.  Every reason code ``evaluate`` can give has an example that gives it
alone (``EXAMPLES``, held against the source), and each threshold is tried on both sides of its
edge.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pgvault.operations.maintenance.unfinished import UnfinishedSummary
from pgvault.operations.server_probe import ArchivingFacts
from pgvault.policy import verdict as verdict_module
from pgvault.policy.verdict import (
    ARCHIVE_LAG_CRITICAL,
    ARCHIVE_LAG_WARNING,
    CRITICAL,
    OK,
    VERDICT_EXIT,
    WARNING,
    BackupFacts,
    Policy,
    Reason,
    StatusSnapshot,
    age_seconds,
    describe_age,
    evaluate,
    snapshot_json,
    timestamp,
    verdict,
)
from pgvault.repository.catalog import DamagedManifest
from pgvault.repository.physical import BadPageEntry, PageChecksums
from support.snapshots import DAY, HOUR, NOW, ago, archive, drill, healthy, job, logical, physical


def codes(s: StatusSnapshot) -> dict[str, str]:
    return {r.code: r.level for r in evaluate(s)}


def messages(s: StatusSnapshot, code: str) -> list[str]:
    return [r.message for r in evaluate(s) if r.code == code]


_SEG = "00000001000000000000000A"
_DAMAGED = DamagedManifest("physical", "20261125T030000Z", "c/base/20261125T030000Z/manifest.json", "unreadable")
# One snapshot per reason code evaluate() can give, changed from healthy() so that it gives exactly
# that one finding; test_every_reason_code_has_an_example holds the table against the source.
def _lock(configured: str = "governance", enabled: bool = True) -> dict[str, Any]:
    return {"configured": configured, "retention": "30d", "retention_seconds": 30 * DAY, "versioning": "Enabled",
            "bucket": {"enabled": enabled, "default_mode": None, "default_days": None, "default_years": None},
            "error": None}


EXAMPLES: dict[str, tuple[str, Callable[[], StatusSnapshot]]] = {
    "repository_unreachable": (CRITICAL, lambda: healthy(logical=(), physical=(), archive=None, drills=(), jobs={},
                                                         repository_error="timeout")),
    "no_backup": (CRITICAL, lambda: healthy(logical=(), physical=(), archive=None, policy=Policy())),
    "backup_stale": (CRITICAL, lambda: healthy(logical=(logical("a", 3 * DAY, "app"),))),
    "archive_gap": (CRITICAL, lambda: healthy(archive=archive(gaps=[(_SEG, _SEG)]))),
    "wal_object_missing": (CRITICAL, lambda: healthy(archive=replace(archive(), unfinished=[_SEG]))),
    "no_recoverable_window": (CRITICAL, lambda: healthy(archive=None, policy=Policy())),
    "window_short": (WARNING, lambda: healthy(archive=archive(window_from=DAY))),
    "archiver_failing": (WARNING, lambda: healthy(archiving=replace(healthy().archiving, last_failed_time=ago(1)))),
    "archive_mode_off": (WARNING, lambda: healthy(archiving=replace(healthy().archiving, archive_mode="off"))),
    "archive_lag": (WARNING, lambda: healthy(archiving=replace(healthy().archiving, lag_seconds=ARCHIVE_LAG_WARNING))),
    "drills_unreadable": (WARNING, lambda: healthy(drill_error="bad JSON")),
    "no_drill": (WARNING, lambda: healthy(drills=())),
    "drill_stale": (WARNING, lambda: healthy(drills=(drill("d", 40 * DAY),))),
    "drill_failed": (WARNING, lambda: healthy(drills=(drill("a", 2 * DAY), drill("b", DAY, ok=False)))),
    "jobs_unreadable": (WARNING, lambda: healthy(jobs_error="bad JSON")),
    "manifest_damaged": (WARNING, lambda: healthy(damaged=(_DAMAGED,))),
    "unfinished_writes": (WARNING, lambda: healthy(unfinished=UnfinishedSummary(
        count=1, bytes=5, oldest_age=2 * DAY, stale=1, stale_bytes=5, grace=DAY))),
    "verify_failed": (CRITICAL, lambda: healthy(jobs={"verify": job("verify", False, details={"failures": 1},
                                                                   kind="integrity")})),
    "job_failed": (WARNING, lambda: healthy(jobs={"backup": job("backup", False)})),
    "object_lock_missing": (WARNING, lambda: healthy(object_lock=_lock(configured="governance", enabled=False))),
    "corrupt_pages": (CRITICAL, lambda: healthy(physical=tuple(
        physical(p.backup_id, HOUR * 12, bad_pages=3, first_bad_page="base/5/16384 block 7: public.t in database app")
        if p.backup_id == healthy().newest("physical").backup_id else p  # type: ignore[union-attr]
        for p in healthy().physical))),
    "object_lock_unknown": (WARNING, lambda: healthy(object_lock={**_lock(), "bucket": None, "error": "access denied"})),
    # An incr of a base backup that expire or a person deleted.
    "chain_broken": (CRITICAL, lambda: healthy(physical=(*healthy().physical, replace(
        physical("20261125T060000Z", 6 * HOUR), backup_type="incr", reference="20261124T000000Z")))),
}


def test_a_broken_chain_names_each_backup_and_why() -> None:
    full = replace(physical("20261124T000000Z", DAY), start_lsn="0/4000028")
    incr = replace(physical("20261125T000000Z", 12 * HOUR), backup_type="incr", reference=full.backup_id,
                   reference_start_lsn="0/4000028")
    on_incr = replace(physical("20261125T060000Z", 6 * HOUR), backup_type="incr", reference=incr.backup_id)
    assert "chain_broken" not in codes(healthy(physical=(full, incr, on_incr)))
    s = healthy(physical=(incr, on_incr))  # the full is gone: both incrementals are unrestorable
    assert messages(s, "chain_broken") == [
        f"2 incremental base backup(s) cannot be restored, their chain is broken ({incr.backup_id}: it needs base "
        f"backup {full.backup_id}, and it is not in the repository; {on_incr.backup_id}: it needs base backup "
        f"{full.backup_id}, and it is not in the repository): take a full backup"]
    damaged = DamagedManifest("physical", full.backup_id, "k", "not JSON")
    assert "its manifest is damaged (not JSON)" in messages(replace(s, damaged=(damaged,)), "chain_broken")[0]
    doc = snapshot_json(s, evaluate(s))["last_physical"]
    assert (doc["backup_type"], doc["reference"]) == ("incr", incr.backup_id)


def test_an_enforced_or_unconfigured_object_lock_is_no_finding() -> None:
    assert evaluate(healthy(object_lock=_lock(configured="compliance", enabled=True))) == []
    assert evaluate(healthy(object_lock=_lock(configured="off", enabled=False))) == []
    # A key without s3:GetBucketObjectLockConfiguration is not judged unless a lock is configured.
    assert evaluate(healthy(object_lock={**_lock(configured="off"), "bucket": None, "error": "access denied"})) == []


def test_every_reason_code_has_an_example() -> None:
    source = Path(verdict_module.__file__).read_text()
    assert set(re.findall(r'add\(\w+, "(\w+)"', source)) == set(EXAMPLES)


@pytest.mark.parametrize("code", sorted(EXAMPLES))
def test_each_reason_alone(code: str) -> None:
    level, snapshot = EXAMPLES[code]
    s = snapshot()
    assert codes(s) == {code: level}
    assert verdict(evaluate(s)) == level and snapshot_json(s, evaluate(s))["exit_code"] == VERDICT_EXIT[level]


# --- a healthy cluster, the verdict and the exit code ---------------------------------------------


def test_a_healthy_cluster_is_ok() -> None:
    s = healthy()
    assert evaluate(s) == [] and verdict(evaluate(s)) == OK
    doc = snapshot_json(s, evaluate(s))
    assert doc["verdict"] == "OK" and doc["exit_code"] == 0
    assert doc["last_logical"]["backup_id"] == "20261125T020000Z" and doc["last_logical"]["age_seconds"] == 10 * HOUR
    assert doc["recoverable_window"]["seconds"] == 3 * DAY - 60


def test_the_verdict_is_the_worst_level_and_critical_comes_first() -> None:
    w, c = Reason(WARNING, "a", "x"), Reason(CRITICAL, "b", "y")
    assert verdict([]) == OK and verdict([w]) == WARNING and verdict([w, c]) == CRITICAL and verdict([c, w]) == CRITICAL
    assert VERDICT_EXIT == {OK: 0, WARNING: 1, CRITICAL: 2}  # the Nagios plugin convention
    # Order: CRITICAL first; within a level, the order the rules are checked in (stable).
    s = healthy(drills=(), jobs={"verify": job("verify", False, details={"failures": 1}, kind="integrity"),
                                 "backup": job("backup", False)},
                archive=archive(gaps=[("00000001000000000000000A", "00000001000000000000000A")]))
    assert [(r.level, r.code) for r in evaluate(s)] == [
        (CRITICAL, "archive_gap"), (CRITICAL, "verify_failed"), (WARNING, "no_drill"), (WARNING, "job_failed")]
    assert snapshot_json(s, evaluate(s))["exit_code"] == 2


# --- backups --------------------------------------------------------------------------------------


def test_no_backup_at_all_is_critical() -> None:
    assert codes(healthy(logical=(), physical=(), archive=None)) == {
        "no_backup": CRITICAL, "window_short": WARNING}
    assert codes(healthy(logical=(), physical=(), archive=None, policy=Policy())) == {"no_backup": CRITICAL}
    assert messages(healthy(logical=(), physical=(), archive=None), "no_backup") == [
        "no backup of cluster 'c' in the repository"]
    # One kind is enough not to be "no backup": a cluster may use only logical or only base backups.
    assert codes(healthy(physical=(), archive=None, policy=Policy())) == {}
    assert codes(healthy(logical=())) == {}


def test_a_backup_older_than_the_limit_is_critical_per_kind() -> None:
    stale = healthy(logical=(logical("20261122T000000Z", 49 * HOUR, "app"),))
    assert codes(stale) == {"backup_stale": CRITICAL}
    assert "49h" not in evaluate(stale)[0].message and "2d01h" in evaluate(stale)[0].message
    assert messages(stale, "backup_stale") == [
        "the newest logical backup 20261122T000000Z finished 2d01h ago (monitoring.backup_max_age is 2d00h)"]
    assert codes(healthy(physical=(physical("20261122T000000Z", 49 * HOUR),))) == {"backup_stale": CRITICAL}
    # The limit is the policy's: a 1-second limit makes anything stale.
    assert codes(healthy(policy=Policy(backup_max_age=1.0))) == {"backup_stale": CRITICAL}
    assert sum(r.code == "backup_stale" for r in evaluate(healthy(policy=Policy(backup_max_age=1.0)))) == 2


def test_the_backup_age_edge_is_strictly_older() -> None:
    limit = Policy().backup_max_age
    assert limit == 48 * HOUR  # the documented default
    assert codes(healthy(logical=(logical("a", limit, "app"),))) == {}
    assert codes(healthy(logical=(logical("a", limit + 1, "app"),))) == {"backup_stale": CRITICAL}


def test_only_the_newest_backup_of_a_kind_is_judged() -> None:
    # Backups are oldest first: an old backup kept by retention is not stale news.
    assert codes(healthy(logical=(logical("old", 30 * DAY, "app"), logical("new", HOUR, "app")))) == {}
    assert codes(healthy(logical=(logical("new", HOUR, "app"), logical("old", 30 * DAY, "app")))) == {
        "backup_stale": CRITICAL}
    # A finish time that cannot be read has no age: not judged stale (damage is verify's finding).
    assert codes(healthy(logical=(replace(logical("x", 0, "app"), finished_at="garbage"),))) == {}


# --- the WAL archive and the recoverable window ---------------------------------------------------


def test_the_archive_window_and_gaps() -> None:
    assert codes(healthy(archive=archive(gaps=[("00000001000000000000000A", "00000001000000000000000B")]))) == {
        "archive_gap": CRITICAL}
    assert codes(healthy(archive=archive(window_from=1 * DAY))) == {"window_short": WARNING}
    assert codes(healthy(archive=replace(archive(), windows=[]))) == {"no_recoverable_window": CRITICAL}
    assert codes(healthy(archive=archive(window_from=1 * DAY), policy=Policy(pitr_window=None))) == {}


def test_gap_messages_name_at_most_five() -> None:
    seg = [f"0000000100000000000000{i:02X}" for i in range(0x10, 0x20)]
    one = healthy(archive=archive(gaps=[(seg[0], seg[0])]))
    assert messages(one, "archive_gap") == [f"1 gap(s) in the WAL archive: {seg[0]} missing"]
    seven = healthy(archive=archive(gaps=[(seg[2 * i], seg[2 * i + 1]) for i in range(7)]))
    [m] = messages(seven, "archive_gap")
    assert m.startswith(f"7 gap(s) in the WAL archive: {seg[0]}..{seg[1]}, ") and m.endswith(" and 2 more missing")
    assert seg[8] in m and seg[10] not in m
    five = healthy(archive=archive(gaps=[(s, s) for s in seg[:5]]))
    assert "more" not in messages(five, "archive_gap")[0]


def test_a_checksum_record_without_its_object_is_critical() -> None:
    seg = [f"0000000100000000000000{i:02X}" for i in range(0x10, 0x17)]
    two = healthy(archive=replace(archive(), unfinished=seg[:2]))
    assert codes(two) == {"wal_object_missing": CRITICAL}
    assert messages(two, "wal_object_missing")[0].endswith(f"(recovery cannot read them): {seg[0]}, {seg[1]}")
    [m] = messages(healthy(archive=replace(archive(), unfinished=seg[:6])), "wal_object_missing")
    assert m.startswith("6 archived WAL file(s)") and m.endswith(f"{seg[4]} ...") and seg[5] not in m
    assert not messages(healthy(archive=replace(archive(), unfinished=seg[:5])), "wal_object_missing")[0].endswith("...")
    # An upload still under way is not a hole.
    assert codes(healthy(archive=replace(archive(), in_flight=seg[:2]))) == {}


def test_base_backups_without_a_recoverable_window_are_critical() -> None:
    assert codes(healthy(archive=None, policy=Policy())) == {"no_recoverable_window": CRITICAL}
    assert codes(healthy(archive=replace(archive(), windows=[]), policy=Policy())) == {"no_recoverable_window": CRITICAL}
    # Without base backups there is nothing to recover: logical-only clusters are not judged by WAL.
    assert codes(healthy(physical=(), archive=None, policy=Policy())) == {}


def test_the_window_against_retention_pitr_window() -> None:
    # The window runs from the oldest base backup's end (3 days ago) to the last archived segment (1 min ago).
    span = 3 * DAY - 60
    assert codes(healthy(policy=Policy(pitr_window=span))) == {}  # exactly long enough
    assert codes(healthy(policy=Policy(pitr_window=span + 1))) == {"window_short": WARNING}
    assert messages(healthy(archive=archive(window_from=DAY + 60)), "window_short") == [
        "the recoverable window covers 1d00h, less than retention.pitr_window (2d00h)"]
    # A policy but no base backup at all: the window cannot be there.
    no_base = healthy(physical=(), archive=None)
    assert codes(no_base) == {"window_short": WARNING}
    assert messages(no_base, "window_short") == ["retention.pitr_window is 2d00h, but there is no base backup"]
    # A window whose end time is unknown (no archived_at) is not judged short: it cannot be measured.
    assert codes(healthy(archive=replace(archive(), to_time=None), policy=Policy(pitr_window=10 * DAY))) == {}
    assert snapshot_json(healthy(archive=replace(archive(), to_time=None)), [])["recoverable_window"] is None


# --- the server's archiver ------------------------------------------------------------------------


def test_the_archiver_failing_and_lagging() -> None:
    failing = replace(healthy().archiving, failed_count=3, last_failed_wal="00000001000000000000000A",
                      last_failed_time=ago(30))
    assert failing.failing and codes(healthy(archiving=failing)) == {"archiver_failing": WARNING}
    recovered = replace(failing, last_failed_time=ago(120))  # a success since the last failure
    assert not recovered.failing and codes(healthy(archiving=recovered)) == {}
    lagging = replace(healthy().archiving, backlog_segments=7, lag_seconds=20 * 60)
    assert codes(healthy(archiving=lagging)) == {"archive_lag": WARNING}
    assert codes(healthy(archiving=replace(lagging, lag_seconds=2 * HOUR))) == {"archive_lag": CRITICAL}
    off = replace(healthy().archiving, archive_mode="off")
    assert codes(healthy(archiving=off)) == {"archive_mode_off": WARNING}
    # An unreachable server is a note, not a finding: the repository is what is judged.
    assert codes(healthy(archiving=ArchivingFacts(connection="failed", error="refused"))) == {}


def test_archiver_messages() -> None:
    failing = replace(healthy().archiving, failed_count=3, last_failed_wal="00000001000000000000000A",
                      last_failed_time="2026-11-25T11:59:30+00:00")
    assert messages(healthy(archiving=failing), "archiver_failing") == [
        "archive_command is failing: last failure for 00000001000000000000000A at 2026-11-25 11:59:30, last success "
        "000000010000000000000009 at 2026-11-25 11:59:00 (3 failures since the statistics reset)"]
    never = replace(failing, last_archived_wal=None, last_archived_time=None)  # failing since the start
    assert never.failing and "last success - at -" in messages(healthy(archiving=never), "archiver_failing")[0]
    lagging = replace(healthy().archiving, backlog_segments=7, lag_seconds=20 * 60)
    assert messages(healthy(archiving=lagging), "archive_lag") == [
        "7 WAL file(s) wait to be archived, the oldest for 20m00s"]


def test_the_archive_lag_edges() -> None:
    assert (ARCHIVE_LAG_WARNING, ARCHIVE_LAG_CRITICAL) == (15 * 60, 60 * 60)  # documented: 15 min / 1 h

    def lag(seconds: float | None) -> dict[str, str]:
        return codes(healthy(archiving=replace(healthy().archiving, backlog_segments=3, lag_seconds=seconds)))

    assert lag(None) == {} and lag(0.0) == {}
    assert lag(ARCHIVE_LAG_WARNING - 0.001) == {}
    assert lag(ARCHIVE_LAG_WARNING) == {"archive_lag": WARNING}
    assert lag(ARCHIVE_LAG_CRITICAL - 0.001) == {"archive_lag": WARNING}
    assert lag(ARCHIVE_LAG_CRITICAL) == {"archive_lag": CRITICAL}


def test_the_server_is_judged_only_when_connected_but_the_backlog_always() -> None:
    bad = replace(healthy().archiving, archive_mode="off", failed_count=1, last_failed_wal="00000001000000000000000A",
                  last_failed_time=ago(1))
    assert codes(healthy(archiving=bad)) == {"archiver_failing": WARNING, "archive_mode_off": WARNING}
    for connection in ("failed", "skipped", "other_cluster"):
        assert codes(healthy(archiving=replace(bad, connection=connection))) == {}
    # The .ready files of a readable data directory need no connection.
    ready = ArchivingFacts(connection="failed", backlog_segments=40, backlog_source="archive_status", lag_seconds=2 * HOUR)
    assert codes(healthy(archiving=ready)) == {"archive_lag": CRITICAL}


def test_archive_mode_off_matters_only_when_the_repository_holds_wal() -> None:
    off = replace(healthy().archiving, archive_mode="off")
    assert codes(healthy(archiving=off, physical=(), archive=None, policy=Policy())) == {}


# --- drills ---------------------------------------------------------------------------------------


def test_drills() -> None:
    assert codes(healthy(drills=())) == {"no_drill": WARNING}
    assert codes(healthy(drills=(drill("20261001T000000Z", 40 * DAY),))) == {"drill_stale": WARNING}
    failed = (drill("20261110T000000Z", 15 * DAY), drill("20261124T000000Z", DAY, ok=False))
    reasons = evaluate(healthy(drills=failed))
    assert [r.code for r in reasons] == ["drill_failed"] and "row counts" in reasons[0].message
    # The drill job's own failure is not reported twice.
    assert codes(healthy(drills=failed, jobs={"drill": job("drill", False, kind="verification")})) == {
        "drill_failed": WARNING}
    assert codes(healthy(drill_error="bad JSON")) == {"drills_unreadable": WARNING}


def test_the_drill_age_edge_is_strictly_older() -> None:
    limit = Policy().drill_max_age
    assert limit == 35 * DAY  # the documented default
    assert codes(healthy(drills=(drill("d", limit),))) == {}
    assert codes(healthy(drills=(drill("d", limit + 1),))) == {"drill_stale": WARNING}
    assert messages(healthy(drills=(drill("d", 40 * DAY),)), "drill_stale") == [
        "the last successful drill d was 40d00h ago (monitoring.drill_max_age is 35d00h)"]
    assert codes(healthy(drills=(drill("d", 2 * HOUR),), policy=replace(Policy(), drill_max_age=HOUR))) == {
        "drill_stale": WARNING}


def test_the_newest_drill_decides_whether_drills_fail() -> None:
    # The newest by finish time, whatever the order they were listed in.
    assert codes(healthy(drills=(drill("new", DAY), drill("old", 2 * DAY, ok=False)))) == {}
    assert codes(healthy(drills=(drill("old", 2 * DAY), drill("new", DAY, ok=False)))) == {"drill_failed": WARNING}
    # Only failed drills: none passed, and the newest failed.
    assert codes(healthy(drills=(drill("d", DAY, ok=False),))) == {"no_drill": WARNING, "drill_failed": WARNING}
    # An old pass and a newer failure: both the age and the failure are findings.
    both = healthy(drills=(drill("old", 40 * DAY), drill("new", DAY, ok=False)))
    assert codes(both) == {"drill_stale": WARNING, "drill_failed": WARNING}


def test_drill_failure_messages() -> None:
    failed = drill("d", DAY, ok=False, kind="physical")
    assert messages(healthy(drills=(failed,)), "drill_failed") == [
        "the newest drill d (physical backup 20261124T020000Z) failed: row counts"]
    restore_failed = replace(failed, error="pg_ctl start failed", checks=())
    assert messages(healthy(drills=(restore_failed,)), "drill_failed")[0].endswith("failed: pg_ctl start failed")
    unknown = replace(failed, checks=())
    assert messages(healthy(drills=(unknown,)), "drill_failed")[0].endswith("failed: see pgvault drill list")


def test_unreadable_drill_reports_replace_the_drill_rules() -> None:
    assert codes(healthy(drills=(), drill_error="bad JSON")) == {"drills_unreadable": WARNING}
    assert messages(healthy(drill_error="bad JSON"), "drills_unreadable") == ["drill reports cannot be read: bad JSON"]


# --- jobs, damaged manifests, unfinished writes ---------------------------------------------------


def test_jobs_and_verify() -> None:
    assert codes(healthy(jobs={"backup": job("backup", False)})) == {"job_failed": WARNING}
    bad = job("verify", False, details={"checked": 9, "failures": 2}, kind="integrity")
    assert codes(healthy(jobs={"verify": bad})) == {"verify_failed": CRITICAL}
    assert codes(healthy(jobs={"verify": job("verify", False, kind="integrity")})) == {"verify_failed": CRITICAL}
    assert codes(healthy(jobs={"verify": job("verify", False, kind="storage")})) == {"job_failed": WARNING}
    r = evaluate(healthy(jobs={"verify": bad}, drills=()))
    assert [x.level for x in r] == [CRITICAL, WARNING] and verdict(r) == CRITICAL


def test_verify_failures_count_whatever_the_exit() -> None:
    # Failures recorded in the details are corruption found, even by a run that ended "ok".
    assert codes(healthy(jobs={"verify": job("verify", True, details={"failures": 1})})) == {"verify_failed": CRITICAL}
    assert codes(healthy(jobs={"verify": job("verify", True, details={"failures": "3"})})) == {"verify_failed": CRITICAL}
    # A value that is no number counts as none (a record from another version must not crash status).
    assert codes(healthy(jobs={"verify": job("verify", True, details={"failures": "many"})})) == {}
    assert codes(healthy(jobs={"verify": job("verify", True, details={"failures": None})})) == {}
    # failures only count for verify.
    assert codes(healthy(jobs={"backup": job("backup", True, details={"failures": 5})})) == {}


def test_job_messages() -> None:
    at = (NOW - dt.timedelta(hours=1)).isoformat()[:19].replace("T", " ")
    bad = job("verify", False, details={"failures": 2}, kind="integrity")
    assert messages(healthy(jobs={"verify": bad}), "verify_failed") == [
        f"the last verify ({at}) found 2 failure(s): boom"]
    assert messages(healthy(jobs={"verify": job("verify", False, kind="integrity")}), "verify_failed") == [
        f"the last verify ({at}) found integrity failure(s): boom"]
    assert messages(healthy(jobs={"expire": job("expire", False, kind="storage")}), "job_failed") == [
        f"the last expire run failed at {at} (exit 3, storage): boom"]


def test_the_drill_job_failing_is_reported_when_no_drill_failed() -> None:
    # The job failed before writing a report (e.g. the scratch server would not start).
    assert codes(healthy(jobs={"drill": job("drill", False)})) == {"job_failed": WARNING}


def test_every_failed_job_is_one_reason() -> None:
    jobs = {name: job(name, False) for name in ("backup", "basebackup", "expire")}
    assert [r.message.split()[2] for r in evaluate(healthy(jobs=jobs)) if r.code == "job_failed"] == [
        "backup", "basebackup", "expire"]


def test_unreadable_job_records_are_a_warning() -> None:
    assert codes(healthy(jobs={}, jobs_error="bad JSON")) == {"jobs_unreadable": WARNING}
    assert messages(healthy(jobs_error="bad JSON"), "jobs_unreadable") == ["job records cannot be read: bad JSON"]


def test_a_damaged_manifest_is_a_warning_naming_it() -> None:
    bad = DamagedManifest("logical", "20261125T030000Z", "c/logical/2026/11/20261125T030000Z/manifest.json",
                          "manifest c/logical/2026/11/20261125T030000Z/manifest.json is unreadable: JSONDecodeError")
    s = healthy(damaged=(bad,))
    [r] = evaluate(s)
    assert (r.level, r.code) == (WARNING, "manifest_damaged") and "20261125T030000Z" in r.message
    assert r.message.startswith("logical backup 20261125T030000Z cannot be restored: manifest c/logical/")
    assert snapshot_json(s, [r])["damaged"][0]["backup_id"] == "20261125T030000Z"
    assert len(evaluate(healthy(damaged=(bad, replace(bad, kind="physical", backup_id="x"))))) == 2


def test_unfinished_writes_older_than_the_grace_are_a_warning() -> None:
    assert codes(healthy(unfinished=None)) == {}  # not read
    assert codes(healthy(unfinished=UnfinishedSummary(grace=DAY))) == {}
    young = UnfinishedSummary(count=2, bytes=100, oldest_age=HOUR, grace=DAY)  # a backup at work
    assert codes(healthy(unfinished=young)) == {}
    old = UnfinishedSummary(count=2, bytes=100, oldest_age=2 * DAY, stale=1, stale_bytes=60, grace=DAY)
    assert codes(healthy(unfinished=old)) == {"unfinished_writes": WARNING}
    assert messages(healthy(unfinished=old), "unfinished_writes") == [old.warning()]
    # A store that refuses to list them is not a finding (the permission is only needed to sweep).
    assert codes(healthy(unfinished=UnfinishedSummary(error="AccessDenied"))) == {}


# --- an unreadable repository ---------------------------------------------------------------------


def test_an_unreadable_repository_is_critical_and_the_server_is_still_judged() -> None:
    failing = replace(healthy().archiving, failed_count=7, last_failed_wal="00000001000000000000000A",
                      last_failed_time=ago(30), lag_seconds=2 * HOUR, backlog_segments=40)
    s = healthy(logical=(), physical=(), archive=None, drills=(), jobs={}, archiving=failing,
                repository_error="the repository s3://b/p did not answer within 15s")
    found = evaluate(s)
    assert found[0].code == "repository_unreachable" and found[0].level == CRITICAL
    assert {r.code for r in found} >= {"archive_lag"}
    assert not {r.code for r in found} & {"no_backup", "window_short", "no_drill"}  # nothing judged on no evidence
    assert snapshot_json(s, found)["repository_error"].endswith("within 15s")
    assert codes(s) == {"repository_unreachable": CRITICAL, "archive_lag": CRITICAL, "archiver_failing": WARNING}
    assert found[0].message == ("the repository s3://b/p did not answer within 15s: backups, WAL archive and drills "
                                "cannot be checked; WAL archiving into it is probably failing too")


def test_an_unreadable_repository_skips_every_drill_rule() -> None:
    s = healthy(logical=(), physical=(), archive=None, drills=(), jobs={}, drill_error="x",
                repository_error="gone", archiving=ArchivingFacts())
    assert codes(s) == {"repository_unreachable": CRITICAL}


# --- the JSON document and the helpers ------------------------------------------------------------


def test_the_json_document() -> None:
    s = healthy(drills=(drill("ok1", 2 * DAY), drill("bad", DAY, ok=False, kind="physical")))
    reasons = evaluate(s)
    doc = snapshot_json(s, reasons)
    assert list(doc) == [
        "cluster", "repository", "checked_at", "verdict", "exit_code", "reasons", "repository_error", "last_logical",
        "last_physical", "backups", "databases", "archive", "recoverable_window", "archiving", "last_drill",
        "last_successful_drill", "jobs", "damaged", "repository_size", "unfinished_writes", "policy", "object_lock"]
    assert doc["checked_at"] == NOW.isoformat() and (doc["verdict"], doc["exit_code"]) == (WARNING, 1)
    assert doc["reasons"] == [r.to_json() for r in reasons]
    assert doc["last_physical"] == {"backup_id": "20261125T000000Z", "finished_at": ago(12 * HOUR),
                                    "age_seconds": 12 * HOUR, "duration_seconds": 600.0, "stored_size": 50_000,
                                    "stop_lsn": "0/5000100", "bad_pages": 0, "backup_type": "full", "reference": None}
    assert doc["last_logical"]["databases"] == ["app"] and "stop_lsn" not in doc["last_logical"]
    assert doc["backups"] == {"logical": 2, "physical": 2}
    # Each database by its own newest dump ("old" is only in the older backup).
    assert doc["databases"] == {"app": {"backup_id": "20261125T020000Z", "finished_at": ago(10 * HOUR)},
                                "old": {"backup_id": "20261123T020000Z", "finished_at": ago(2 * DAY)}}
    assert doc["last_drill"] == {"drill_id": "bad", "backup_kind": "physical", "backup_id": "20261124T020000Z",
                                 "finished_at": ago(DAY), "age_seconds": DAY, "ok": False, "restore_seconds": 42.0,
                                 "error": "", "failed_checks": ["row counts"]}
    assert doc["last_successful_drill"]["drill_id"] == "ok1"
    assert doc["recoverable_window"] == {"from": ago(3 * DAY), "to": ago(60), "seconds": 3 * DAY - 60}
    assert doc["repository_size"] == {"bytes": 123456, "objects": 40,
                                      "by_area": {"base": 100000, "logical": 2000, "wal": 21456}}
    assert doc["policy"] == {"backup_max_age_seconds": 48 * HOUR, "drill_max_age_seconds": 35 * DAY,
                             "pitr_window_seconds": 2 * DAY, "archive_lag_warning_seconds": 900.0,
                             "archive_lag_critical_seconds": 3600.0}
    assert doc["unfinished_writes"] is None and doc["damaged"] == [] and doc["repository_error"] is None
    assert sorted(doc["jobs"]) == ["backup", "verify"]
    assert doc["archive"]["recoverable_from"] == {"time": ago(3 * DAY), "lsn": "0/3000028",
                                                  "backup_id": "20261122T120000Z"}
    assert doc["archive"]["recoverable_to"] == {"wal": "000000010000000000000009", "archived_at": ago(60)}


def test_the_json_document_of_an_empty_repository() -> None:
    s = StatusSnapshot(cluster="c", repository="memory://", taken_at=NOW, policy=Policy(), archiving=ArchivingFacts())
    doc = snapshot_json(s, evaluate(s))
    assert (doc["verdict"], doc["exit_code"]) == (CRITICAL, 2)
    assert [r["code"] for r in doc["reasons"]] == ["no_backup", "no_drill"]
    for key in ("last_logical", "last_physical", "archive", "recoverable_window", "last_drill", "last_successful_drill"):
        assert doc[key] is None, key
    assert doc["archiving"]["connection"] == "skipped"
    assert doc["databases"] == {} and doc["jobs"] == {}


def test_a_snapshot_always_says_what_the_server_said() -> None:
    with pytest.raises(TypeError):
        StatusSnapshot(cluster="c", repository="memory://", taken_at=NOW, policy=Policy())  # type: ignore[call-arg]


def test_snapshot_accessors() -> None:
    s = healthy()
    assert s.newest("logical") is s.logical[-1] and s.newest("physical") is s.physical[-1]
    assert healthy(logical=()).newest("logical") is None
    drills = (drill("a", 3 * DAY), drill("b", DAY, ok=False, kind="physical"), drill("c", 2 * DAY))
    s = healthy(drills=drills)
    found = {(ok, kind): r.drill_id if (r := s.last_drill(ok=ok, kind=kind)) else None
             for ok in (None, True, False) for kind in (None, "logical", "physical")}
    assert found == {(None, None): "b", (None, "logical"): "c", (None, "physical"): "b",
                     (True, None): "c", (True, "logical"): "c", (True, "physical"): None,
                     (False, None): "b", (False, "logical"): None, (False, "physical"): "b"}
    assert healthy(archive=None).window() is None
    assert healthy(archive=replace(archive(), windows=[])).window() is None


def test_backup_facts_from_manifests() -> None:
    from types import SimpleNamespace

    obj = SimpleNamespace(result=SimpleNamespace(stored_size=7))
    m = SimpleNamespace(backup_id="b", finished_at=ago(0), duration_seconds=1.5, stored_size=9,
                        databases=[SimpleNamespace(name="app", object=obj, stored_size=7)], stop_lsn="0/1",
                        page_checksums=None, backup_type="full", reference=None, reference_start_lsn="", start_lsn="0/28")
    assert BackupFacts.of_logical(m) == BackupFacts("logical", "b", ago(0), 1.5, 9, (("app", 7),))  # type: ignore[arg-type]
    assert BackupFacts.of_physical(m) == BackupFacts("physical", "b", ago(0), 1.5, 9, stop_lsn="0/1", start_lsn="0/28")  # type: ignore[arg-type]
    bad = BadPageEntry("base/5/16384", 16384, "main", 7, 0x1234, 0x4321, "public.t", "app")
    m.page_checksums = PageChecksums(checked=True, pages=100, failed=2, bad_pages=(bad,))
    assert BackupFacts.of_physical(m) == BackupFacts("physical", "b", ago(0), 1.5, 9, stop_lsn="0/1", bad_pages=2,  # type: ignore[arg-type]
                                                     first_bad_page=bad.describe(), start_lsn="0/28")
    m.backup_type, m.reference, m.reference_start_lsn = "diff", "a", "0/8"
    assert BackupFacts.of_physical(m).reference == "a"  # type: ignore[arg-type]
    m.page_checksums = PageChecksums(checked=False, reason="off")
    assert BackupFacts.of_physical(m).bad_pages is None  # type: ignore[arg-type]


def test_describe_age() -> None:
    assert [describe_age(s) for s in (0, 0.4, 59, 59.4)] == ["0s", "0s", "59s", "59s"]
    assert [describe_age(s) for s in (60, 61, 3599)] == ["1m00s", "1m01s", "59m59s"]
    assert [describe_age(s) for s in (3600, 3660, 86399)] == ["1h00m", "1h01m", "23h59m"]
    assert [describe_age(s) for s in (86400, 90000, 49 * HOUR, 400 * DAY)] == ["1d00h", "1d01h", "2d01h", "400d00h"]


def test_timestamps_and_ages() -> None:
    assert timestamp(None) is None and timestamp("") is None and timestamp("yesterday") is None
    assert timestamp("2026-11-25T12:00:00+00:00") == NOW.timestamp()
    assert timestamp("2026-11-25T12:00:00") == NOW.timestamp()  # naive means UTC
    naive_end = healthy(archive=replace(archive(), to_time="2026-11-25T11:59:00")).window()
    assert naive_end is not None and naive_end[1] == NOW - dt.timedelta(minutes=1)
    assert timestamp("2026-11-25T13:00:00+01:00") == NOW.timestamp()
    assert age_seconds(NOW, ago(90)) == 90.0
    assert age_seconds(NOW, (NOW + dt.timedelta(hours=1)).isoformat()) == 0.0  # a clock ahead is not a negative age
    assert age_seconds(NOW, None) is None and age_seconds(NOW, "nonsense") is None
