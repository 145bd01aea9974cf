"""``pgvault status`` and ``pgvault metrics`` through the CLI, against real servers.

Read like the on-call's runbook: right after a fresh backup (and a passed drill) the status is OK;
when the newest backup is older than the limit it is CRITICAL and says which backup; a backup job
that fails shows up as ``pgvault_job_last_status{pgvault_job="backup"} 0`` in the textfile even when
nobody reads its logs; and the /metrics endpoint serves the documented names, fresh per scrape.
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.archiving import ArchivingCluster
from support.cli import clean_env, pgvault, start
from support.pg_fixtures import pg_majors
from support.pgcluster import PgCluster, free_port

from .conftest import AgeKey

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def series(text: str) -> Series:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(found: Series, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in found, f"{name}{labels} not exported; have {sorted(n for n, _ in found)}"
    return found[key]


@pytest.fixture
def env(pg_latest: PgCluster, tmp_path: Path, age_key: AgeKey) -> dict[str, str]:
    """One server (the newest major) is enough here: status reads the repository and pg_stat_archiver."""
    return clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"),
                     PGVAULT_CLUSTER=f"mon{uuid.uuid4().hex[:6]}",
                     PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
                     PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file))


@pytest.fixture
def small_db(pg_latest: PgCluster) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    pg_latest.create_database(name)
    pg_latest.psql("CREATE TABLE orders(id int PRIMARY KEY, total numeric); "
                   "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 500) g", dbname=name)
    yield name
    pg_latest.drop_database(name)


def passed_drill(env: dict[str, str], backup_id: str) -> None:
    """The report a passing ``pgvault drill`` leaves in the repository (the drill itself has its
    own tests): status needs evidence of a restore to say OK."""
    from pgvault.repository.drills import Check, DrillReport, save_drill
    from pgvault.repository.layout import new_backup_id
    from pgvault.storage import open_storage

    now = dt.datetime.now(dt.UTC)
    save_drill(open_storage(env["PGVAULT_REPOSITORY_URL"]), DrillReport(
        drill_id=new_backup_id(now), cluster=env["PGVAULT_CLUSTER"], backup_kind="logical", backup_id=backup_id,
        started_at=(now - dt.timedelta(seconds=20)).isoformat(), finished_at=now.isoformat(), ok=True,
        restore_seconds=12.5, total_seconds=20.0, checks=(Check("row counts", True, 0.1),)))


def test_status_is_ok_after_a_fresh_backup_and_critical_when_it_is_stale(env: dict[str, str], small_db: str) -> None:
    backup_id = pgvault(["backup", "--database", small_db, "--json"], env).json()["backup"]["backup_id"]

    # Without any drill the backups are unproven: a warning, exit 1.
    r = pgvault(["status", "--json"], env, check=False)
    doc = r.json()
    assert r.returncode == 1 and doc["verdict"] == "WARNING", r
    assert [x["code"] for x in doc["reasons"]] == ["no_drill"]

    passed_drill(env, backup_id)
    r = pgvault(["status", "--json"], env, check=False)
    doc = r.json()
    assert r.returncode == 0 and doc["format"] == 1 and doc["kind"] == "status", r
    assert doc["verdict"] == "OK" and doc["reasons"] == []
    assert doc["last_logical"]["backup_id"] == backup_id and doc["last_logical"]["databases"] == [small_db]
    assert doc["last_logical"]["age_seconds"] < 600 and doc["last_physical"] is None
    assert doc["databases"][small_db]["backup_id"] == backup_id
    assert doc["jobs"]["backup"]["last_status"] == "ok" and doc["jobs"]["backup"]["last_exit_code"] == 0
    assert doc["last_successful_drill"]["backup_id"] == backup_id
    assert doc["repository_size"]["bytes"] > 0 and doc["repository_size"]["by_area"]["logical"] > 0
    # The server is reachable: its archiver is reported (archiving is off on this test server).
    assert doc["archiving"]["connection"] == "ok" and doc["archiving"]["archive_mode"] == "off"
    human = pgvault(["status"], env).stdout
    assert human.startswith("OK: cluster ") and backup_id in human and "last drill:" in human

    # The same backup, judged by a 1-second limit a moment later: stale, CRITICAL, exit 2.
    time.sleep(1.2)
    stale = {**env, "PGVAULT_MONITORING_BACKUP_MAX_AGE": "1s"}
    r = pgvault(["status", "--json"], stale, check=False)
    doc = r.json()
    assert r.returncode == 2 and doc["verdict"] == "CRITICAL", r
    [reason] = doc["reasons"]
    assert reason["code"] == "backup_stale" and backup_id in reason["message"]
    r = pgvault(["status"], stale, check=False)
    assert r.returncode == 2 and r.stdout.startswith("CRITICAL: ") and "backup_max_age" in r.stdout

    # A repository that cannot be read is CRITICAL (the on-call gets an answer, with the reason).
    r = pgvault(["status", "--json"], {**env, "PGVAULT_REPOSITORY_URL": str(Path(env["PGVAULT_REPOSITORY_URL"]) / "nope")},
                check=False)
    assert r.returncode == 2 and "does not exist" in r.json()["repository_error"], r
    assert r.json()["reasons"][0]["code"] == "repository_unreachable"


def test_a_failed_backup_job_is_visible_in_the_textfile_without_reading_logs(
        env: dict[str, str], small_db: str, pg_latest: PgCluster, tmp_path: Path) -> None:
    textfile = tmp_path / "node_exporter" / "pgvault.prom"
    textfile.parent.mkdir()
    job_env = {**env, "PGVAULT_METRICS_TEXTFILE": str(textfile)}
    cluster = env["PGVAULT_CLUSTER"]

    # The repository directory does not exist yet (never written), so only the textfile can tell.
    bad = pgvault(["backup", "--database", small_db], {**job_env, "PGPASSWORD": "wrong-password-5521"}, check=False)
    assert bad.returncode == 3 and "password authentication failed" in bad.stderr
    found = series(textfile.read_text())
    assert value(found, "pgvault_job_last_status", cluster=cluster, pgvault_job="backup") == 0
    assert value(found, "pgvault_job_last_exit_code", cluster=cluster, pgvault_job="backup") == 3
    assert value(found, "pgvault_job_last_failure_timestamp", cluster=cluster, pgvault_job="backup") > time.time() - 600
    assert "wrong-password-5521" not in textfile.read_text()

    # The next run succeeds: status 1, and the failure's time is still there.
    pgvault(["backup", "--database", small_db], job_env)
    found = series(textfile.read_text())
    assert value(found, "pgvault_job_last_status", cluster=cluster, pgvault_job="backup") == 1
    assert value(found, "pgvault_job_last_failure_timestamp", cluster=cluster, pgvault_job="backup") > 0
    assert value(found, "pgvault_job_last_success_timestamp", cluster=cluster, pgvault_job="backup") > time.time() - 600

    # Failing again with the repository in place: recorded there too, and status warns.
    pgvault(["backup", "--database", small_db], {**job_env, "PGPASSWORD": "wrong-password-5521"}, check=False)
    doc = pgvault(["status", "--json"], env, check=False).json()
    assert doc["jobs"]["backup"]["last_status"] == "failed" and doc["jobs"]["backup"]["last_error_kind"] == "database"
    assert "job_failed" in [x["code"] for x in doc["reasons"]] and doc["verdict"] == "WARNING"
    assert "wrong-password-5521" not in str(doc)

    # `metrics --textfile` into the same file: the full set of series, the job state kept.
    pgvault(["metrics", "--textfile", str(textfile)], env)
    found = series(textfile.read_text())
    assert value(found, "pgvault_job_last_status", cluster=cluster, pgvault_job="backup") == 0
    assert value(found, "postgresql_backup_size_bytes", cluster=cluster, kind="logical", database=small_db) > 0
    assert value(found, "pgvault_up", cluster=cluster) == 1
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["pgvault.prom"]


def _get(url: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a local test server
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_metrics_endpoint_serves_the_documented_names_fresh_per_scrape(env: dict[str, str], small_db: str) -> None:
    backup = pgvault(["backup", "--database", small_db, "--json"], env).json()["backup"]
    cluster = env["PGVAULT_CLUSTER"]
    port = free_port()
    proc = start(["metrics", "--serve", f"127.0.0.1:{port}"], env)
    try:
        found = series(_get(f"http://127.0.0.1:{port}/metrics"))
        db = {"cluster": cluster, "kind": "logical", "database": small_db}
        finished = dt.datetime.fromisoformat(backup["finished_at"]).timestamp()
        assert value(found, "postgresql_backup_last_success_timestamp", **db) == pytest.approx(finished)
        assert value(found, "postgresql_backup_duration_seconds", **db) == pytest.approx(backup["duration_seconds"], abs=0.01)
        assert value(found, "postgresql_backup_size_bytes", **db) == backup["databases"][0]["object"]["stored_size"]
        assert value(found, "pgvault_up", cluster=cluster) == 1
        assert value(found, "pgvault_backups", cluster=cluster, kind="logical") == 1
        assert value(found, "pgvault_repository_size_bytes", cluster=cluster) > 0
        assert value(found, "pgvault_drill_last_success_timestamp", cluster=cluster, kind="logical") == 0  # never
        assert value(found, "pgvault_job_last_status", cluster=cluster, pgvault_job="backup") == 1
        assert value(found, "pgvault_status", cluster=cluster) == 1  # WARNING: no drill yet
        assert not [n for n, _ in found if n.startswith(("process_", "python_"))]  # a private registry

        # Values are computed per scrape: a second backup shows up without restarting the server.
        pgvault(["backup", "--database", small_db], env)
        found = series(_get(f"http://127.0.0.1:{port}/metrics"))
        assert value(found, "pgvault_backups", cluster=cluster, kind="logical") == 2
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err




@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_physical_backups_window_and_archiver(major: int | None, archiving: Any) -> None:
    a: ArchivingCluster = archiving(major, cluster_name="mon")
    backup = a.basebackup()
    a.cluster.psql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)")
    a.switch_and_wait()

    r = pgvault(["status", "--json"], a.env(), check=False)
    doc = r.json()
    # Everything is in order but the drill: complete archive, recent base backup, archiver healthy.
    assert [x["code"] for x in doc["reasons"]] == ["no_drill"] and r.returncode == 1, r
    assert doc["last_physical"]["backup_id"] == backup["backup_id"]
    assert doc["archive"]["gaps"] == [] and doc["recoverable_window"]["seconds"] > 0
    ar = doc["archiving"]
    assert ar["connection"] == "ok" and ar["archive_mode"] == "on" and not ar["failing"] and ar["archived_count"] >= 2
    # As superuser status reads data_directory, and the test runs where the data directory is.
    assert ar["data_directory"] and ar["backlog_source"] == "archive_status" and ar["lag_seconds"] < 900

    found = series(pgvault(["metrics"], a.env()).stdout)
    phys = {"cluster": "mon", "kind": "physical", "database": ""}
    assert value(found, "postgresql_backup_last_success_timestamp", **phys) > 0
    assert value(found, "postgresql_backup_size_bytes", **phys) == backup["stored_size"]
    start_ts = value(found, "pgvault_recoverable_window_start_timestamp", cluster="mon")
    assert value(found, "pgvault_recoverable_window_end_timestamp", cluster="mon") > start_ts > 0
    assert value(found, "pgvault_wal_archive_gaps", cluster="mon") == 0
    assert value(found, "pgvault_wal_archive_failing", cluster="mon") == 0
    assert value(found, "pgvault_wal_archive_backlog_segments", cluster="mon") >= 0
    assert value(found, "pgvault_wal_archive_lag_seconds", cluster="mon") < 900
    assert value(found, "pgvault_wal_archive_last_success_timestamp", cluster="mon") > time.time() - 600
    # The base backup ran as a scheduled job (as the postgres OS user) and recorded itself.
    assert value(found, "pgvault_job_last_status", cluster="mon", pgvault_job="basebackup") == 1

    # Without a connection, the .ready files of --pgdata still give the backlog.
    doc = pgvault(["status", "--json", "--no-connect", "--pgdata", str(a.cluster.datadir)], a.env(), check=False).json()
    assert doc["archiving"]["connection"] == "skipped" and doc["archiving"]["backlog_source"] == "archive_status"
