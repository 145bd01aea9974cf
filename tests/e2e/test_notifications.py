"""Job notifications through the real CLI, against a real server and a local webhook receiver.

Read like the on-call's story: the nightly backup fails (the database is unreachable) and both
webhooks hear about it with the error; the next night it works again and both hear "recovered",
with the new backup's id; the night after, silence (the default events are failure and
recovery).  A receiver that answers 500, never answers, or is not there at all costs a bounded
few seconds and never changes the job's exit status.  The webhook URL (with its token) shows up
in no output, no log line and nothing the job writes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import Result, clean_env, pgvault
from support.pgcluster import PgCluster
from support.webhook import TOKEN, Receiver, closed_port, webhook_receiver

from .conftest import AgeKey

# Quick settings for the failure cases: bound = 2 attempts × 1 s + 0.5 s backoff + 1 s slack.
FAST = {"PGVAULT_NOTIFY_TIMEOUT": "1s", "PGVAULT_NOTIFY_RETRIES": "1"}
FAST_BOUND = 3.5


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as r:
        yield r


@pytest.fixture
def env(pg_latest: PgCluster, tmp_path: Path, age_key: AgeKey, receiver: Receiver) -> dict[str, str]:
    return clean_env(**pg_latest.env(), PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"),
                     PGVAULT_CLUSTER=f"ntf{uuid.uuid4().hex[:6]}",
                     PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
                     PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file),
                     PGVAULT_METRICS_TEXTFILE=str(tmp_path / "jobs.prom"),
                     PGVAULT_NOTIFY_WEBHOOK_URL=receiver.url("/hook"),
                     PGVAULT_NOTIFY_SLACK_WEBHOOK_URL=receiver.url("/services/T01/B02"))


def unreachable(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PGHOST": "127.0.0.1", "PGPORT": str(closed_port())}


def assert_no_secret(res: Result, tmp_path: Path) -> None:
    """The token is in no output, no job record, no textfile."""
    assert TOKEN not in res.stdout + res.stderr, str(res)
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".prom"):
            assert TOKEN not in f.read_text(errors="replace"), f


def test_a_failure_and_its_recovery_reach_both_webhooks(env: dict[str, str], receiver: Receiver, orders_db: str,
                                                        tmp_path: Path) -> None:
    first = pgvault(["backup", "--database", orders_db], env)
    assert receiver.posts == [] and "notified" not in first.stderr  # a success: not wanted by default

    failed = pgvault(["backup", "--database", orders_db], unreachable(env), check=False)
    assert failed.returncode == 3, str(failed)
    assert_no_secret(failed, tmp_path)
    [doc] = receiver.bodies_at("/hook")
    assert set(doc) >= {"cluster", "job", "status", "event", "exit_code", "duration_seconds", "error", "backup_id",
                        "host", "started_at", "finished_at", "pgvault_version"}
    assert (doc["cluster"], doc["job"], doc["status"], doc["event"], doc["exit_code"], doc["error_kind"],
            doc["backup_id"]) == (env["PGVAULT_CLUSTER"], "backup", "failed", "failure", 3, "database", None)
    assert doc["error"] and doc["host"] and doc["duration_seconds"] >= 0
    [slack] = receiver.bodies_at("/services/T01/B02")
    assert slack["text"].startswith(f":red_circle: pgvault backup FAILED on cluster {env['PGVAULT_CLUSTER']} "
                                    f"(host {doc['host']})")
    assert "notified webhook (http://127.0.0.1:" in failed.stderr and "/...)" in failed.stderr

    receiver.posts.clear()
    ok = pgvault(["backup", "--database", orders_db, "--json"], env)
    assert_no_secret(ok, tmp_path)
    backup_id = ok.json()["backup"]["backup_id"]
    [doc] = receiver.bodies_at("/hook")
    assert (doc["status"], doc["event"], doc["backup_id"], doc["error"], doc["previous_status"]) == (
        "succeeded", "recovery", backup_id, None, "failed")
    [slack] = receiver.bodies_at("/services/T01/B02")
    assert "RECOVERED" in slack["text"] and backup_id in slack["text"]

    receiver.posts.clear()
    pgvault(["backup", "--database", orders_db], env)
    assert receiver.posts == []  # an ordinary success: not wanted by default

    # The filter and the success event: verify of that backup, and only verify.
    quiet_backup = {**env, "PGVAULT_NOTIFY_EVENTS": "success", "PGVAULT_NOTIFY_JOBS": "verify"}
    pgvault(["backup", "--database", orders_db], quiet_backup)
    assert receiver.posts == []
    verified = pgvault(["verify", backup_id], quiet_backup)
    assert_no_secret(verified, tmp_path)
    assert [(d["job"], d["event"], d["backup_id"]) for d in receiver.bodies_at("/hook")] == [
        ("verify", "success", backup_id)]


def test_a_failure_the_repository_missed_is_still_followed_by_its_recovery(
        env: dict[str, str], receiver: Receiver, orders_db: str, tmp_path: Path) -> None:
    # The repository is where the job record lives; when it is the repository that fails, this
    # host's metrics textfile remembers the failure, so the next success is still a recovery.
    pgvault(["backup", "--database", orders_db], env)
    (tmp_path / "not-a-directory").write_text("")
    broken = {**env, "PGVAULT_REPOSITORY_URL": str(tmp_path / "not-a-directory" / "repo")}
    failed = pgvault(["backup", "--database", orders_db], broken, check=False)
    assert failed.returncode == 4, str(failed)
    assert "could not record the backup job in the repository" in failed.stderr
    assert [(d["event"], d["error_kind"]) for d in receiver.bodies_at("/hook")] == [("failure", "storage")]
    receiver.posts.clear()
    pgvault(["backup", "--database", orders_db], env)
    assert [(d["event"], d["previous_status"]) for d in receiver.bodies_at("/hook")] == [("recovery", "failed")]


def test_a_job_whose_configuration_does_not_load_still_notifies_its_failure(env: dict[str, str], receiver: Receiver,
                                                                            orders_db: str, tmp_path: Path) -> None:
    res = pgvault(["backup", "--database", orders_db], {**env, "PGVAULT_BACKUP_PARALLEL": "99"}, check=False)
    assert res.returncode == 2, str(res)
    assert_no_secret(res, tmp_path)
    [doc] = receiver.bodies_at("/hook")
    assert (doc["event"], doc["exit_code"], doc["error_kind"]) == ("failure", 2, "config")
    assert "backup.parallel" in doc["error"]


def test_a_webhook_url_in_the_config_file_is_refused(env: dict[str, str], orders_db: str, tmp_path: Path) -> None:
    config = tmp_path / "pgvault.yaml"
    url = f"https://hooks.slack.com/services/T01/B02/{TOKEN}"
    config.write_text(f"notify:\n  slack_webhook_url: {url}\n")
    res = pgvault(["config", "check", "-c", str(config)], env, check=False)
    assert res.returncode == 2
    assert "'notify.slack_webhook_url' must not be stored in a config file; use PGVAULT_NOTIFY_SLACK_WEBHOOK_URL" \
        in res.stderr
    assert_no_secret(res, tmp_path)


@pytest.mark.parametrize("mode", ["http-500", "never-answers", "down"])
def test_a_broken_receiver_never_changes_the_exit_status_and_costs_a_bounded_time(
        mode: str, env: dict[str, str], receiver: Receiver, orders_db: str, tmp_path: Path) -> None:
    env = {**env, **FAST, "PGVAULT_NOTIFY_EVENTS": "failure,success"}
    if mode == "http-500":
        receiver.status = 500
    elif mode == "never-answers":
        receiver.stall = 60
    else:
        env["PGVAULT_NOTIFY_WEBHOOK_URL"] = f"http://127.0.0.1:{closed_port()}/hook/{TOKEN}"
        env["PGVAULT_NOTIFY_SLACK_WEBHOOK_URL"] = f"http://127.0.0.1:{closed_port()}/services/T01/B02/{TOKEN}"
    # The failing job is quick (connection refused), so its run time is start-up + notifying.
    started = time.monotonic()
    failed = pgvault(["backup", "--database", orders_db], unreachable(env), check=False)
    took = time.monotonic() - started
    assert failed.returncode == 3, str(failed)
    assert_no_secret(failed, tmp_path)
    assert "could not notify webhook (http://127.0.0.1:" in failed.stderr
    assert "could not notify slack (http://127.0.0.1:" in failed.stderr
    assert "the job's outcome is unchanged" in failed.stderr
    print(f"\n{mode}: failing backup with notification took {took:.2f}s (bound {FAST_BOUND}s + start-up)")
    assert took < FAST_BOUND + 4.0
    if mode != "down":
        assert len(receiver.bodies_at("/hook")) == 2 and len(receiver.bodies_at("/services/T01/B02")) == 2

    ok = pgvault(["backup", "--database", orders_db, "--json"], env)  # exit 0 in spite of the receiver
    assert ok.json()["backup"]["backup_id"]
    assert_no_secret(ok, tmp_path)
    assert "could not notify webhook" in ok.stderr


def test_notify_test_checks_the_webhooks(env: dict[str, str], receiver: Receiver, tmp_path: Path) -> None:
    res = pgvault(["notify", "--test", "--json"], env)
    assert_no_secret(res, tmp_path)
    doc = res.json()
    assert [(d["target"], d["ok"], d["detail"]) for d in doc["deliveries"]] == [
        ("webhook", True, "HTTP 200"), ("slack", True, "HTTP 200")]
    assert doc["deliveries"][0]["where"] == f"http://127.0.0.1:{receiver.port}/..."
    [generic] = receiver.bodies_at("/hook")
    assert (generic["event"], generic["job"], generic["status"]) == ("test", "test", "succeeded")
    assert "test notification" in receiver.bodies_at("/services/T01/B02")[0]["text"]

    receiver.status = 404
    res = pgvault(["notify", "--test"], {**env, **FAST}, check=False)
    assert res.returncode == 2, str(res)
    assert_no_secret(res, tmp_path)
    assert "notify: slack (http://127.0.0.1:" in res.stderr and "HTTP 404" in res.stderr

    res = pgvault(["notify", "--test"], clean_env(PGVAULT_REPOSITORY_URL=str(tmp_path / "repo")), check=False)
    assert res.returncode == 2 and "no notification webhook is configured" in res.stderr
