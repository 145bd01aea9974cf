"""Issue 11 part 3: the pure plan of ``repo sync`` (policy/sync.py), the lag of a copy, named
repositories in the configuration, and the copy itself between two in-memory repositories
(record before object, manifest last, idempotent, never overwriting)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json

import pytest

from pgvault.config import PRIMARY_REPOSITORY, NamedRepository, S3Options, Settings, load_settings
from pgvault.errors import ConfigError, IntegrityError
from pgvault.operations.context import Context
from pgvault.operations.maintenance.repo_sync import sync_repository
from pgvault.pg import wal
from pgvault.pg.conn import ConnInfo
from pgvault.pipeline import PipelineSpec, write_stream
from pgvault.policy.sync import (
    ObjectState,
    RepositoryPosition,
    WalFiles,
    lag_behind,
    object_action,
    plan_backups,
    plan_wal,
)
from pgvault.repository import layout
from pgvault.repository.cluster import ensure_cluster
from pgvault.repository.sync_records import newest_sync_record
from pgvault.storage.memory import MemoryStorage

SEG = 16 << 20
C = "main"
SYSID = "7300000000000000042"
SPEC = PipelineSpec(compression="zstd", encryption="none")


def seg(n: int, tli: int = 1) -> str:
    return wal.segment_name(tli, n, SEG)


# --- plan_wal ---------------------------------------------------------------------------------------

FULL = WalFiles(record=True, objects=frozenset({"k"}))


def test_wal_complete_on_the_source_and_absent_on_the_target_is_copied_in_name_order() -> None:
    plan = plan_wal({seg(3): FULL, seg(2): FULL}, {})
    assert [c.name for c in plan.copies] == [seg(2), seg(3)]
    assert all(c.copy_record and not c.target_objects for c in plan.copies)
    assert plan.done == 0 and plan.unfinished_on_source == ()


def test_wal_complete_on_both_is_done_and_copies_nothing() -> None:
    plan = plan_wal({seg(2): FULL}, {seg(2): FULL})
    assert plan.copies == () and plan.done == 1


def test_a_record_without_object_on_the_source_is_left_for_the_next_run() -> None:
    only_record = WalFiles(record=True)
    only_object = WalFiles(objects=frozenset({"k"}))
    plan = plan_wal({seg(2): only_record, seg(3): only_object, seg(4): FULL}, {})
    assert [c.name for c in plan.copies] == [seg(4)]
    assert plan.unfinished_on_source == (seg(2), seg(3))


def test_a_copy_cut_short_on_the_target_is_resumed_without_rewriting_the_record() -> None:
    plan = plan_wal({seg(2): FULL, seg(3): FULL}, {seg(2): WalFiles(record=True), seg(3): WalFiles(objects=frozenset({"k"}))})
    by = {c.name: c for c in plan.copies}
    assert by[seg(2)].copy_record is False and by[seg(2)].target_objects == frozenset()
    assert by[seg(3)].copy_record is True and by[seg(3)].target_objects == frozenset({"k"})


# --- plan_backups / object_action -----------------------------------------------------------------


def test_backups_with_a_manifest_on_the_source_only_are_copied_oldest_first() -> None:
    plan = plan_backups({"c/base/20261204T100000Z/", "c/base/20261203T100000Z/", "c/base/20261202T100000Z/"},
                        {"c/base/20261202T100000Z/"})
    assert plan.copies == ("c/base/20261203T100000Z/", "c/base/20261204T100000Z/") and plan.done == 1


def test_nothing_to_copy_when_the_target_has_every_manifest() -> None:
    assert plan_backups({"a/"}, {"a/", "b/"}) == type(plan_backups([], []))((), 1)


@pytest.mark.parametrize(("there", "action"), [(None, "copy"), (10, "verify"), (9, "conflict"), (0, "conflict")])
def test_object_action(there: int | None, action: str) -> None:
    assert object_action(10, ObjectState(there)) == action


# --- lag ---------------------------------------------------------------------------------------------

T0 = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def pos(name: str, newest: str | None, at: dt.datetime | None = None, **kw: object) -> RepositoryPosition:
    return RepositoryPosition(name, f"s3://{name}", newest_wal=newest, newest_wal_archived_at=at, **kw)  # type: ignore[arg-type]


def test_lag_in_segments_and_seconds() -> None:
    lag = lag_behind(pos("a", seg(10), T0 + dt.timedelta(minutes=5)), pos("b", seg(7), T0), SEG)
    assert lag is not None and lag.wal_segments == 3 and lag.wal_seconds == 300.0 and not lag.in_step


def test_in_step_copy_has_no_lag() -> None:
    lag = lag_behind(pos("a", seg(10), T0, newest_physical="20261204T100000Z"),
                     pos("b", seg(10), T0, newest_physical="20261204T100000Z"), SEG)
    assert lag is not None and lag.in_step and lag.wal_seconds == 0.0


def test_an_empty_copy_lacks_every_segment_and_its_age_is_unknown() -> None:
    lag = lag_behind(pos("a", seg(4), T0, newest_logical="20261204T100000Z"), pos("b", None), SEG)
    assert lag is not None and lag.wal_segments == 5 and lag.wal_seconds is None and lag.logical_behind


def test_a_copy_on_an_older_timeline_counts_from_the_start_of_the_new_one() -> None:
    lag = lag_behind(pos("a", seg(12, tli=2), T0), pos("b", seg(11, tli=1), T0), SEG)
    assert lag is not None and lag.wal_segments == 13


def test_lag_is_unknown_when_either_cannot_be_read() -> None:
    assert lag_behind(pos("a", seg(1), T0), RepositoryPosition("b", "s3://b", error="down"), SEG) is None
    assert lag_behind(RepositoryPosition("a", "s3://a", error="down"), pos("b", seg(1), T0), SEG) is None


def test_newest_backup_missing_on_the_copy() -> None:
    lag = lag_behind(pos("a", None, newest_physical="20261204T100000Z", newest_logical="20261204T110000Z"),
                     pos("b", None, newest_physical="20261203T100000Z", newest_logical="20261204T110000Z"), SEG)
    assert lag is not None and lag.physical_behind and not lag.logical_behind and lag.wal_segments == 0


# --- configuration -------------------------------------------------------------------------------


def test_named_repositories_from_yaml_and_environment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "c.yaml"
    conf.write_text("repository: {url: s3://a/p, s3: {endpoint_url: 'http://a:1'}}\n"
                    "repositories:\n  region-b:\n    url: s3://b/p\n    s3: {endpoint_url: 'http://b:2', "
                    "force_path_style: true, profile: west}\n")
    s = load_settings(str(conf), environ={"PGVAULT_REPOSITORIES_REGION_B_S3_PART_SIZE_MB": "32",
                                          "PGVAULT_REPOSITORIES_THIRD_URL": "/srv/third"})
    assert [r.name for r in s.all_repositories()] == [PRIMARY_REPOSITORY, "region-b", "third"]
    b = s.with_repository("region-b")
    assert (b.repository_url, b.repository_name, b.s3.endpoint_url, b.s3.profile, b.s3.part_size_mb,
            b.s3.force_path_style) == ("s3://b/p", "region-b", "http://b:2", "west", 32, True)
    assert b.with_repository(PRIMARY_REPOSITORY).repository_url == "s3://a/p"
    with pytest.raises(ConfigError, match="no repository named 'nope'"):
        s.with_repository("nope")


def test_named_repositories_are_validated_like_the_primary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "c.yaml"
    conf.write_text("repositories:\n  b: {url: 'ftp://x', s3: {part_size_mb: 1, secret: 2}}\n  Bad_Name: {url: /x}\n"
                    "  c: {s3: {region: x}}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(str(conf), environ={})
    text = "\n".join(e.value.problems)
    assert "repositories.b.url: unsupported scheme" in text
    assert "repositories.b.s3.part_size_mb" in text
    assert "unknown setting 'repositories.b.s3.secret'" in text
    assert "repositories.Bad_Name: not a valid repository name" in text
    assert "repositories.c.url: must be set" in text


def test_only_the_primary_without_named_ones() -> None:
    s = Settings(repository_url="/x")
    assert s.all_repositories() == (NamedRepository(PRIMARY_REPOSITORY, "/x", S3Options()),)


# --- the copy, between two in-memory repositories ------------------------------------------------


def _push(storage: MemoryStorage, name: str) -> None:
    key = layout.wal_object(C, name, SPEC.suffix())
    out = io.BytesIO()
    result = write_stream(io.BytesIO(name.encode() * 100), out, SPEC)
    doc = {"format": 1, "name": name, "kind": "segment", "key": key, "system_identifier": SYSID,
           "pipeline": SPEC.to_json(), "archived_at": T0.isoformat(), **result.to_json()}
    storage.put_if_absent(layout.wal_meta(C, name), json.dumps(doc).encode())
    storage.put_if_absent(key, out.getvalue())


@pytest.fixture
def two(monkeypatch: pytest.MonkeyPatch) -> tuple[MemoryStorage, MemoryStorage, Context]:
    a, b = MemoryStorage("sync-a"), MemoryStorage("sync-b")
    ensure_cluster(a, C, system_identifier=SYSID, server_major=15, wal_segment_size=SEG)
    for n in range(1, 4):
        _push(a, seg(n))
    settings = dataclasses.replace(Settings(cluster=C, repository_url="memory://sync-a"), repositories=(
        NamedRepository(PRIMARY_REPOSITORY, "memory://sync-a"), NamedRepository("b", "memory://sync-b")))
    ctx = Context(settings=settings, storage=a, conn=ConnInfo.from_dsn("", {}))
    return a, b, ctx


def _keys(s: MemoryStorage, *skip: str) -> dict[str, bytes]:
    return {i.key: s.read_bytes(i.key) for i in s.list("") if not any(f"/{x}/" in i.key for x in skip)}


def test_sync_copies_wal_then_is_idempotent(two) -> None:  # type: ignore[no-untyped-def]
    a, b, ctx = two
    r = sync_repository(ctx, "b", open_target=lambda _: b)
    assert (r.stats.wal_copied, r.stats.bytes_copied > 0) == (3, True)
    assert _keys(a) == _keys(b, "locks", "sync")
    again = sync_repository(ctx, "b", open_target=lambda _: b)
    assert (again.stats.wal_copied, again.stats.bytes_copied, again.stats.wal_already) == (0, 0, 3)
    record = newest_sync_record(b, C)
    assert record is not None and record["ok"] is True and record["run_id"] == again.run_id


def test_a_record_left_by_a_cut_short_run_is_completed(two) -> None:  # type: ignore[no-untyped-def]
    a, b, ctx = two
    meta = layout.wal_meta(C, seg(2))
    b.put_if_absent(meta, a.read_bytes(meta))  # the record arrived, the object never did
    r = sync_repository(ctx, "b", open_target=lambda _: b)
    assert r.stats.wal_copied == 3 and _keys(a) == _keys(b, "locks", "sync")


def test_a_different_object_on_the_target_is_never_overwritten(two) -> None:  # type: ignore[no-untyped-def]
    a, b, ctx = two
    key = layout.wal_object(C, seg(3), SPEC.suffix())
    planted = bytes(len(a.read_bytes(key)))  # same size, other bytes
    b.put_if_absent(key, planted)
    with pytest.raises(IntegrityError, match="nothing was overwritten"):
        sync_repository(ctx, "b", open_target=lambda _: b)
    assert b.read_bytes(key) == planted
    record = newest_sync_record(b, C)
    assert record is not None and record["ok"] is False and seg(3) in record["error"]


def test_a_source_object_that_does_not_match_its_record_is_not_copied(two) -> None:  # type: ignore[no-untyped-def]
    a, b, ctx = two
    key = layout.wal_object(C, seg(1), SPEC.suffix())
    with a.open_write(key) as w:
        w.write(b"rot" + a.read_bytes(key)[3:])
    with pytest.raises(IntegrityError, match="does not match its checksums"):
        sync_repository(ctx, "b", open_target=lambda _: b)
    assert key not in {i.key for i in b.list("")}


def test_a_target_of_another_cluster_is_refused(two) -> None:  # type: ignore[no-untyped-def]
    a, b, ctx = two
    ensure_cluster(b, C, system_identifier="7399999999999999999", server_major=15, wal_segment_size=SEG)
    with pytest.raises(ConfigError, match="belongs to system identifier"):
        sync_repository(ctx, "b", open_target=lambda _: b)
    assert not [i for i in b.list(layout.wal_root(C))]


def test_syncing_a_repository_into_itself_is_refused(two) -> None:  # type: ignore[no-untyped-def]
    _, _, ctx = two
    with pytest.raises(ConfigError, match="same repository"):
        sync_repository(ctx, PRIMARY_REPOSITORY)


# --- metrics -------------------------------------------------------------------------------------


def test_repository_samples_carry_the_repository_label() -> None:
    from pgvault.operations.maintenance.metrics import METRICS, repository_samples

    first = pos("primary", seg(10), T0 + dt.timedelta(minutes=5), newest_physical="20261204T100000Z")
    copy = dataclasses.replace(pos("region-b", seg(8), T0), last_sync={"finished_at": T0.isoformat(), "ok": True})
    down = RepositoryPosition("region-c", "s3://c", error="connection refused")
    rows = [(first, None), (copy, lag_behind(first, copy, SEG)), (down, None)]
    got = {(x.name, x.labels): x.value for x in repository_samples("c", rows)}
    r = (("cluster", "c"), ("repository", "region-b"))
    assert got[("pgvault_repository_reachable", r)] == 1
    assert got[("pgvault_repository_wal_lag_segments", r)] == 2
    assert got[("pgvault_repository_wal_lag_seconds", r)] == 300
    assert got[("pgvault_repository_newest_backup_missing", (*r, ("kind", "physical")))] == 1
    assert got[("pgvault_repository_newest_backup_missing", (*r, ("kind", "logical")))] == 0
    assert got[("pgvault_repository_last_sync_timestamp", r)] == T0.timestamp()
    assert got[("pgvault_repository_last_sync_status", r)] == 1
    assert got[("pgvault_repository_wal_lag_segments", (("cluster", "c"), ("repository", "primary")))] == 0
    assert got[("pgvault_repository_reachable", (("cluster", "c"), ("repository", "region-c")))] == 0
    assert not [k for k in got if k[1][1] == ("repository", "region-c") and k[0] != "pgvault_repository_reachable"]
    per_repository = {n for n, d in METRICS.items() if "repository" in d.labels}
    assert {k[0] for k in got} == per_repository


def test_restore_command_of_a_named_repository_lets_nothing_of_the_primary_leak_in(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pgvault.config.restore_env import fetch_environment

    conf = tmp_path / "c.yaml"
    conf.write_text("repository: {url: s3://a/p, s3: {endpoint_url: 'http://a:1', region: eu-central-1, "
                    "force_path_style: true, retries: 7}}\nrepositories:\n  dr: {url: s3://b/p, s3: {region: eu-west-1}}\n")
    s = load_settings(str(conf), environ={})
    env = fetch_environment(s.with_repository("dr"))
    assert env["PGVAULT_REPOSITORY_URL"] == "s3://b/p"
    assert env["PGVAULT_REPOSITORY_S3_ENDPOINT_URL"] == "" and env["PGVAULT_REPOSITORY_S3_REGION"] == "eu-west-1"
    assert env["PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE"] == "false" and env["PGVAULT_REPOSITORY_S3_RETRIES"] == "3"
    # What wal fetch on the restored server loads: the config file plus this environment.
    fetched = load_settings(str(conf), environ=env)
    assert (fetched.repository_url, fetched.s3.endpoint_url, fetched.s3.region, fetched.s3.force_path_style,
            fetched.s3.retries) == ("s3://b/p", None, "eu-west-1", False, 3)
    assert "PGVAULT_REPOSITORY_S3_REGION" not in {k for k, v in fetch_environment(s).items() if v == ""}


def test_two_syncs_into_one_target_do_not_race(two) -> None:  # type: ignore[no-untyped-def]
    from pgvault.errors import LockedError
    from pgvault.repository.locks import RepositoryLock

    a, b, ctx = two
    with RepositoryLock(b, C, "sync"), pytest.raises(LockedError):
        sync_repository(ctx, "b", open_target=lambda _: b)
    assert not [i for i in b.list(layout.wal_root(C))]  # the second one copied nothing
    assert sync_repository(ctx, "b", open_target=lambda _: b).stats.wal_copied == 3  # once the first is done


def test_an_interrupted_run_is_recorded_as_not_completed(two, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from pgvault.operations.maintenance import repo_sync

    a, b, ctx = two

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(repo_sync._Copier, "restore_points", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sync_repository(ctx, "b", open_target=lambda _: b)
    record = newest_sync_record(b, C)
    assert record is not None and record["ok"] is False and record["error"] == "KeyboardInterrupt"
    assert record["wal_copied"] == 3


def test_a_named_repository_has_its_own_object_lock(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "c.yaml"
    conf.write_text("repository: {url: s3://a/p}\n"
                    "repositories:\n  dr: {url: s3://b/p, s3: {object_lock: governance, object_lock_retention: 30d}}\n")
    s = load_settings(str(conf), environ={})
    rule = s.with_repository("dr").object_lock_rule()  # what repo sync's writes into dr carry
    assert s.object_lock_rule() is None and rule is not None and (rule.mode, rule.seconds) == ("GOVERNANCE", 30 * 86400.0)
    conf.write_text("repositories:\n  dr: {url: /x, s3: {object_lock: governance, object_lock_retention: 30d}}\n")
    with pytest.raises(ConfigError, match="repositories.dr.s3.object_lock: needs an s3:// repository"):
        load_settings(str(conf), environ={})


def test_a_different_restore_point_of_the_same_name_on_the_target_is_an_integrity_error(two) -> None:  # type: ignore[no-untyped-def]
    from pgvault.repository.archive_scan import restore_point_key

    a, b, ctx = two
    key = restore_point_key(C, "before-migration")
    a.put_if_absent(key, json.dumps({"name": "before-migration", "lsn": "0/3000028"}).encode())
    planted = json.dumps({"name": "before-migration", "lsn": "0/9000028"}).encode()
    b.put_if_absent(key, planted)
    with pytest.raises(IntegrityError, match="restore point"):
        sync_repository(ctx, "b", open_target=lambda _: b)
    assert b.read_bytes(key) == planted
    same = restore_point_key(C, "same")
    a.put_if_absent(same, b"{}")
    b.put_if_absent(same, b"{}")
    b.delete(key)
    assert sync_repository(ctx, "b", open_target=lambda _: b).stats.restore_points_copied == 1  # the other one
