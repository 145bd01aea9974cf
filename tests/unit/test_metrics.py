"""Metric samples, job records and the textfile, on synthetic snapshots: no servers.

Read like the on-call's rules: when the last drill never happened, the age alert still fires; when
a job failed while the repository was down, the textfile still says so.  The verdict itself is
tested rule by rule in test_verdict.py.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from pgvault.cli import main
from pgvault.cli.metrics import parse_addr
from pgvault.errors import UsageError
from pgvault.operations.maintenance import metrics
from pgvault.operations.maintenance.metrics import (
    METRICS,
    Sample,
    merge_samples,
    parse,
    render,
    sample,
    snapshot_samples,
)
from pgvault.policy.verdict import evaluate
from pgvault.repository.jobs import JobRecord, JobRun, list_jobs, load_job, merge_run, record_run
from pgvault.storage.memory import MemoryStorage
from support.snapshots import DAY, NOW, drill, healthy, job

# --- the samples ----------------------------------------------------------------------------------


def by_key(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, s.labels): s.value for s in samples}


def test_a_rich_snapshot_exports_every_documented_metric() -> None:
    s = healthy(archiving=replace(healthy().archiving, backlog_segments=2, lag_seconds=30.0))
    samples = snapshot_samples(s, evaluate(s))
    # The pgvault_repository_* series with a repository label come from the survey of every
    # configured repository (repository_samples, tests/unit/test_repo_sync.py), not the snapshot.
    per_repository = {n for n, d in METRICS.items() if "repository" in d.labels}
    assert {x.name for x in samples} == set(METRICS) - {"pgvault_job_last_failure_timestamp"} - per_repository
    failed = healthy(jobs={"backup": job("backup", False)})
    assert "pgvault_job_last_failure_timestamp" in {x.name for x in snapshot_samples(failed, evaluate(failed))}
    for x in samples:
        assert tuple(k for k, _ in x.labels) == METRICS[x.name].labels


def test_no_metric_uses_a_label_prometheus_reserves_for_the_target() -> None:
    # Prometheus sets "job" and "instance" on every series it scrapes: a series' own label of that
    # name is renamed exported_job / exported_instance (unless honor_labels), and the Pushgateway
    # overwrites it with its group's, so a rule selecting {job="verify"} would silently never fire.
    for d in METRICS.values():
        assert not {"job", "instance"} & set(d.labels), d.name
        assert not any(k.startswith("exported_") or k.startswith("__") for k in d.labels), d.name


def test_backup_series_keep_the_legacy_names_and_labels() -> None:
    s = healthy()
    v = by_key(snapshot_samples(s, evaluate(s)))
    key = (("cluster", "c"), ("kind", "logical"), ("database", "app"))
    assert v[("postgresql_backup_last_success_timestamp", key)] == (NOW - dt.timedelta(hours=10)).timestamp()
    # A database no longer in the newest backup is judged by its own newest dump, and ages.
    old = (("cluster", "c"), ("kind", "logical"), ("database", "old"))
    assert v[("postgresql_backup_last_success_timestamp", old)] == (NOW - dt.timedelta(days=2)).timestamp()
    phys = (("cluster", "c"), ("kind", "physical"), ("database", ""))
    assert v[("postgresql_backup_duration_seconds", phys)] == 600.0
    assert v[("postgresql_backup_size_bytes", phys)] == 50_000
    assert v[("pgvault_status", (("cluster", "c"),))] == 0
    assert v[("pgvault_recoverable_window_policy_seconds", (("cluster", "c"),))] == 2 * DAY


def test_never_drilled_exports_zero_so_the_age_alert_fires() -> None:
    s = healthy(drills=())
    v = by_key(snapshot_samples(s, evaluate(s)))
    assert v[("pgvault_drill_last_success_timestamp", (("cluster", "c"), ("kind", "logical")))] == 0
    assert v[("pgvault_drill_last_success_timestamp", (("cluster", "c"), ("kind", "physical")))] == 0
    assert v[("pgvault_status", (("cluster", "c"),))] == 1


def test_the_drill_rto_is_the_one_the_exported_restore_time_was_judged_against() -> None:
    # The newest timed logical drill ran without an objective: no RTO series for logical, even
    # though an older drill had one; the physical drill's own objective is exported.
    s = healthy(drills=(drill("20261101T000000Z", 20 * DAY, rto=60.0), drill("20261110T000000Z", 15 * DAY, rto=None),
                        drill("20261111T000000Z", 14 * DAY, kind="physical", rto=30.0)))
    v = by_key(snapshot_samples(s, evaluate(s)))
    phys, log = (("cluster", "c"), ("kind", "physical")), (("cluster", "c"), ("kind", "logical"))
    assert v[("pgvault_drill_rto_seconds", phys)] == 30.0
    assert v[("pgvault_drill_restore_duration_seconds", phys)] == 42.0  # over the objective: the alert's case
    assert ("pgvault_drill_rto_seconds", log) not in v
    assert v[("pgvault_drill_restore_duration_seconds", log)] == 42.0


def test_exposition_round_trips() -> None:
    s = healthy()
    samples = snapshot_samples(s, evaluate(s))
    text = render(samples).decode()
    assert "# TYPE postgresql_backup_last_success_timestamp gauge" in text
    assert sorted(by_key(parse(text)).items()) == sorted(by_key(samples).items())
    with pytest.raises(ValueError):
        sample("pgvault_up", 1, cluster="c", kind="x")


# --- job records ----------------------------------------------------------------------------------


def run(ok: bool, minutes: int, name: str = "backup") -> JobRun:
    t = NOW + dt.timedelta(minutes=minutes)
    return JobRun(job=name, started_at=t - dt.timedelta(seconds=30), finished_at=t, exit_code=0 if ok else 4,
                  error_kind=None if ok else "storage", error=None if ok else "bucket gone")


def test_a_failure_keeps_the_last_success_and_vice_versa() -> None:
    r1 = merge_run("c", None, run(True, 0))
    r2 = merge_run("c", r1, run(False, 10))
    assert (r2.last_status, r2.last_exit_code, r2.last_error_kind) == ("failed", 4, "storage")
    assert r2.last_success_at == r1.last_success_at and r2.last_failure_at == (NOW + dt.timedelta(minutes=10)).isoformat()
    r3 = merge_run("c", r2, run(True, 20))
    assert r3.ok and r3.last_failure_at == r2.last_failure_at and r3.last_error is None
    assert r3.last_duration_seconds == 30.0


def test_records_round_trip_through_the_repository() -> None:
    storage = MemoryStorage()
    assert load_job(storage, "c", "backup") is None
    record_run(storage, "c", run(True, 0))
    record_run(storage, "c", run(False, 5))
    record_run(storage, "c", replace(run(True, 6, "verify"), details={"checked": 3, "failures": 0}))
    jobs = list_jobs(storage, "c")
    assert sorted(jobs) == ["backup", "verify"]
    assert not jobs["backup"].ok and jobs["backup"].last_success_at == NOW.isoformat()
    assert jobs["verify"].details == {"checked": 3, "failures": 0}
    assert JobRecord.from_json(jobs["backup"].to_json()) == jobs["backup"]


# --- the textfile ---------------------------------------------------------------------------------


def job_series(cluster: str, name: str, ok: bool, when: float) -> list[Sample]:
    return [sample("pgvault_job_last_success_timestamp" if ok else "pgvault_job_last_failure_timestamp", when,
                   cluster=cluster, pgvault_job=name),
            sample("pgvault_job_last_status", 1 if ok else 0, cluster=cluster, pgvault_job=name)]


def test_merging_keeps_other_clusters_and_the_newest_run_of_each_job() -> None:
    other = [sample("pgvault_up", 1, cluster="other")]
    fallback = job_series("c", "backup", False, 2000.0)  # written while the repository was down
    snapshot = [sample("pgvault_up", 1, cluster="c")] + job_series("c", "backup", True, 1000.0)
    merged = by_key(merge_samples(other + fallback, snapshot, "c", whole_cluster=True))
    assert merged[("pgvault_up", (("cluster", "other"),))] == 1
    assert merged[("pgvault_job_last_status", (("cluster", "c"), ("pgvault_job", "backup")))] == 0  # the newer failure stays
    newer = job_series("c", "backup", True, 3000.0)
    merged = by_key(merge_samples(other + fallback, [sample("pgvault_up", 1, cluster="c")] + newer, "c", whole_cluster=True))
    assert merged[("pgvault_job_last_status", (("cluster", "c"), ("pgvault_job", "backup")))] == 1
    assert ("pgvault_job_last_failure_timestamp", (("cluster", "c"), ("pgvault_job", "backup"))) not in merged
    # A job fallback leaves the rest of the cluster's series alone.
    merged = by_key(merge_samples(snapshot + job_series("c", "verify", True, 10.0), fallback, "c", whole_cluster=False))
    assert merged[("pgvault_up", (("cluster", "c"),))] == 1
    assert merged[("pgvault_job_last_status", (("cluster", "c"), ("pgvault_job", "verify")))] == 1
    assert merged[("pgvault_job_last_status", (("cluster", "c"), ("pgvault_job", "backup")))] == 0


def test_job_series_an_older_pgvault_labelled_job_are_dropped_from_the_textfile(tmp_path: Path) -> None:
    # Kept, they would read as pgvault_job="" (one series per old job, all colliding) and no run
    # would ever replace them: PgvaultJobFailed{pgvault_job!="verify"} would fire on them forever.
    path = tmp_path / "pgvault.prom"
    path.write_text('pgvault_job_last_status{cluster="c",job="backup"} 0.0\n'
                    'pgvault_job_last_status{cluster="c",job="verify"} 1.0\n'
                    'pgvault_up{cluster="c"} 1.0\n')
    assert [s.name for s in parse(path.read_text())] == ["pgvault_up"]
    metrics.write_job_textfile(path, "c", run(True, 0), None)
    text = path.read_text()
    assert 'job="' not in text.replace('pgvault_job="', "")
    assert 'pgvault_job_last_status{cluster="c",pgvault_job="backup"} 1.0' in text


def test_job_textfile_without_a_repository_remembers_the_last_success(tmp_path: Path) -> None:
    path = tmp_path / "pgvault.prom"
    metrics.write_job_textfile(path, "c", run(True, 0), None)
    metrics.write_job_textfile(path, "c", run(False, 10), None)
    v = by_key(parse(path.read_text()))
    key = (("cluster", "c"), ("pgvault_job", "backup"))
    assert v[("pgvault_job_last_status", key)] == 0 and v[("pgvault_job_last_exit_code", key)] == 4
    assert v[("pgvault_job_last_success_timestamp", key)] == NOW.timestamp()
    assert v[("pgvault_job_last_failure_timestamp", key)] == (NOW + dt.timedelta(minutes=10)).timestamp()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["pgvault.prom"]  # no temp file left behind
    # A full snapshot written later into the same file keeps the job's newer state.
    metrics.write_textfile(path, [sample("pgvault_up", 1, cluster="c")] + job_series("c", "backup", True, 5.0), "c")
    v = by_key(parse(path.read_text()))
    assert v[("pgvault_job_last_status", key)] == 0 and v[("pgvault_up", (("cluster", "c"),))] == 1
    # The repository is back, with a record that never saw that failure: the file keeps its time.
    fresh = record_run(MemoryStorage(), "c", run(True, 20))
    metrics.write_job_textfile(path, "c", run(True, 20), fresh)
    v = by_key(parse(path.read_text()))
    assert v[("pgvault_job_last_status", key)] == 1
    assert v[("pgvault_job_last_failure_timestamp", key)] == (NOW + dt.timedelta(minutes=10)).timestamp()


def test_a_failing_job_is_recorded_even_when_the_repository_is_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    for k in list(os.environ):
        if k.startswith(("PG", "PGVAULT_")) and k not in ("PGVAULT_POSTGRES_BIN_DIRS", "PGVAULT_PG_BINDIRS"):
            monkeypatch.delenv(k)
    textfile = tmp_path / "jobs.prom"
    monkeypatch.setenv("PGVAULT_METRICS_TEXTFILE", str(textfile))
    missing_repo = tmp_path / "not-mounted"  # local storage never creates a missing root
    code = main(["backup", "--database", "app", "--cluster", "c", "--repository", str(missing_repo),
                 "--dsn", "host=127.0.0.1 port=9 connect_timeout=2 user=x password=y"])
    assert code == 3  # the command's own exit status, whatever recording met
    err = capsys.readouterr().err
    assert "pgvault: error: cannot connect" in err and "could not record the backup job in the repository" in err
    v = by_key(parse(textfile.read_text()))
    assert v[("pgvault_job_last_status", (("cluster", "c"), ("pgvault_job", "backup")))] == 0
    assert v[("pgvault_job_last_exit_code", (("cluster", "c"), ("pgvault_job", "backup")))] == 3
    assert not missing_repo.exists()


def test_parse_addr() -> None:
    assert parse_addr("127.0.0.1:9187") == ("127.0.0.1", 9187)
    assert parse_addr(":9187") == ("0.0.0.0", 9187) and parse_addr("9187") == ("0.0.0.0", 9187)
    assert parse_addr("[::1]:0") == ("::1", 0)
    with pytest.raises(UsageError):
        parse_addr("localhost:http")


def test_a_command_that_returns_its_exit_code_gets_its_error_kind() -> None:
    from pgvault.cli.metrics import _error_kind

    assert _error_kind(None, 0) is None
    assert _error_kind(None, 6) == "integrity"  # verify prints its report and returns 6
    assert _error_kind(None, 9) == "verification" and _error_kind(None, 99) == "error"
    assert _error_kind(KeyboardInterrupt(), 130) == "interrupted" and _error_kind(RuntimeError(), 70) == "internal"


def test_push_replaces_the_cluster_group_on_the_pushgateway_one_group_per_job() -> None:
    import http.server
    import threading

    got: list[tuple[str, str, bytes]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
            got.append(("PUT", self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        metrics.push(f"http://127.0.0.1:{server.server_address[1]}",
                     [sample("pgvault_up", 1, cluster="c/x"), sample("pgvault_job_last_status", 1, cluster="c/x", pgvault_job="backup"),
                      sample("pgvault_job_last_status", 0, cluster="c/x", pgvault_job="verify")], "c/x")
    finally:
        server.shutdown()
        server.server_close()
    # Each job gets its own group (job=<job>), so that a push carrying one job's series (the
    # repository was down) replaces only that job's group, not the other jobs' last status.
    by_job = {path.split("/")[3]: (method, path, body) for method, path, body in got}
    assert sorted(by_job) == ["backup", "pgvault", "verify"] and {m for m, _, _ in got} == {"PUT"}
    assert all("/cluster" in path for _, path, _ in got)
    assert b'pgvault_up{cluster="c/x"} 1.0' in by_job["pgvault"][2] and b"pgvault_job" not in by_job["pgvault"][2]
    assert b'pgvault_job_last_status{cluster="c/x",pgvault_job="verify"} 0.0' in by_job["verify"][2]
    assert b'pgvault_job="backup"' not in by_job["verify"][2]
