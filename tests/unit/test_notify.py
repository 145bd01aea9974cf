"""Job notifications: the pure decision and payloads (policy/notify.py), and sending them to a
local HTTP receiver (operations/notify.py) that answers, fails, stalls or is not there."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from pgvault.config import NotifyOptions
from pgvault.log import redact, redact_url
from pgvault.operations.notify import Target, backoff, deliver, send, time_bound
from pgvault.policy.notify import (
    FAILURE,
    RECOVERY,
    SUCCESS,
    TEST,
    event_for,
    job_payload,
    previous_outcome,
    slack_payload,
    slack_text,
    wanted,
)
from pgvault.repository.jobs import JobRecord, JobRun, merge_run
from support.webhook import TOKEN, Receiver, closed_port, webhook_receiver

T0 = dt.datetime(2026, 3, 1, 2, 0, 0, tzinfo=dt.UTC)


def run(ok: bool, *, job: str = "backup", seconds: float = 73.0, details: dict[str, Any] | None = None,
        error: str | None = None) -> JobRun:
    return JobRun(job=job, started_at=T0, finished_at=T0 + dt.timedelta(seconds=seconds), exit_code=0 if ok else 3,
                  error_kind=None if ok else "database",
                  error=None if ok else (error or "cannot connect to PostgreSQL: connection refused"),
                  details=details or {}, host="db1", pgvault_version="9.9.9")


def record(ok: bool) -> JobRecord:
    return merge_run("main", None, run(ok))


# --- the decision -------------------------------------------------------------------------------

ALL = ("failure", "success", "recovery")


@pytest.mark.parametrize("on", [frozenset(c) for n in range(4) for c in itertools.combinations(ALL, n)],
                         ids=lambda on: "+".join(sorted(on)) or "none")
@pytest.mark.parametrize("previous", [None, True, False], ids=["first-run", "after-success", "after-failure"])
@pytest.mark.parametrize("ok", [True, False], ids=["succeeded", "failed"])
def test_every_combination_of_outcome_previous_outcome_and_wanted_events(ok: bool, previous: bool | None,
                                                                         on: frozenset[str]) -> None:
    prev = None if previous is None else record(previous)
    if not ok:
        expected = FAILURE if "failure" in on else None
    elif previous is False and "recovery" in on:
        expected = RECOVERY
    else:  # a recovery is a success too: announced as one when only successes are wanted
        expected = SUCCESS if "success" in on else None
    assert event_for(ok, prev, on) == expected


def test_the_default_events_announce_a_failure_and_its_recovery_once() -> None:
    on = NotifyOptions().events
    history = [True, True, False, False, True, True]
    prev: JobRecord | None = None
    events = []
    for ok in history:
        events.append(event_for(ok, prev, on))
        prev = merge_run("main", prev, run(ok))
    assert events == [None, None, FAILURE, FAILURE, RECOVERY, None]


def test_a_failure_only_this_hosts_textfile_knows_counts_before_the_stored_success() -> None:
    stored_ok = merge_run("main", None, run(True))  # finished 02:01:13
    local_failed_later = replace(merge_run("main", None, replace(run(False), finished_at=T0 + dt.timedelta(hours=1))),
                                 last_finished_at="")  # what previous_job() reads back from a textfile
    local_failed_before = merge_run("main", None, replace(run(False), finished_at=T0 - dt.timedelta(hours=1)))
    local_ok = merge_run("main", None, run(True))
    assert previous_outcome(stored_ok, local_failed_later) is local_failed_later
    assert previous_outcome(stored_ok, local_failed_before) is stored_ok
    assert previous_outcome(stored_ok, local_ok) is stored_ok
    assert previous_outcome(None, local_failed_before) is local_failed_before
    assert previous_outcome(stored_ok, None) is stored_ok and previous_outcome(None, None) is None
    stored_failed = merge_run("main", None, run(False))
    assert previous_outcome(stored_failed, local_ok) is stored_failed


def test_the_job_filter() -> None:
    assert wanted("backup", ())
    assert wanted("backup", ("backup", "verify")) and not wanted("expire", ("backup", "verify"))


# --- the payloads -------------------------------------------------------------------------------


def test_the_generic_payload_of_a_failure_has_every_documented_field() -> None:
    doc = job_payload("main", run(False), FAILURE, previous=record(True))
    assert doc == {
        "format": 1, "kind": "job_notification", "event": "failure", "cluster": "main", "job": "backup",
        "status": "failed", "exit_code": 3, "error_kind": "database",
        "error": "cannot connect to PostgreSQL: connection refused", "backup_id": None, "host": "db1",
        "started_at": "2026-03-01T02:00:00+00:00", "finished_at": "2026-03-01T02:01:13+00:00",
        "duration_seconds": 73.0, "previous_status": "succeeded", "last_failure_at": None, "details": {},
        "pgvault_version": "9.9.9",
    }
    assert json.loads(json.dumps(doc)) == doc


def test_the_generic_payload_of_a_recovery_names_the_backup_and_the_last_failure() -> None:
    before = merge_run("main", None, run(False))
    doc = job_payload("main", run(True, details={"backup_id": "20260301T020000Z"}), RECOVERY, previous=before)
    assert (doc["status"], doc["event"], doc["error"], doc["backup_id"]) == ("succeeded", "recovery", None,
                                                                            "20260301T020000Z")
    assert doc["previous_status"] == "failed" and doc["last_failure_at"] == before.last_failure_at
    assert doc["details"] == {"backup_id": "20260301T020000Z"}


def test_slack_lines_for_people() -> None:
    fail = job_payload("main", run(False), FAILURE)
    assert slack_text(fail) == ("pgvault backup FAILED on cluster main (host db1) after 1m13s (exit code 3): "
                                "cannot connect to PostgreSQL: connection refused")
    ok = job_payload("main", run(True, details={"backup_id": "B1"}), SUCCESS)
    assert slack_text(ok) == "pgvault backup succeeded on cluster main (host db1) in 1m13s; backup B1"
    rec = job_payload("main", run(True, details={"backup_id": "B1"}), RECOVERY, previous=record(False))
    assert slack_text(rec).startswith("pgvault backup RECOVERED on cluster main (host db1): succeeded in 1m13s "
                                      "after failing (last failure 2026-03-01T02:01:13+00:00); backup B1")
    assert "test notification" in slack_text(job_payload("main", run(True, job="test"), TEST))


def test_slack_message_escapes_control_characters_and_shortens_long_errors() -> None:
    doc = job_payload("main", run(False, error="<@U123> & <!channel> " + "x" * 1000), FAILURE)
    msg = slack_payload(doc)
    assert msg["text"].startswith(":red_circle: pgvault backup FAILED")
    assert "<" not in msg["text"] and "&lt;@U123&gt; &amp; &lt;!channel&gt;" in msg["text"]
    assert len(msg["text"]) < 500 and msg["text"].endswith("...")
    [att] = msg["attachments"]
    assert att["color"] == "danger" and {f["title"] for f in att["fields"]} >= {"Cluster", "Job", "Host", "Exit code"}


# --- redaction ----------------------------------------------------------------------------------

SLACK = "https://hooks.slack.com/services/T0AAA/B0BBB/abcdefghijklmnopqrstuvwx"


def test_a_webhook_url_is_named_by_scheme_and_host_only() -> None:
    assert redact_url(SLACK) == "https://hooks.slack.com/..."
    assert redact_url("http://user:pw@127.0.0.1:8080/hook?token=x") == "http://127.0.0.1:8080/..."
    assert redact_url("http://[::1]:9/x") == "http://[::1]:9/..."
    assert redact_url("http://h:notaport/x") == "<url>"


def test_log_redaction_masks_slack_hooks_and_the_configured_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert redact(f"posting to {SLACK} now") == "posting to https://hooks.slack.com/<redacted> now"
    monkeypatch.setenv("PGVAULT_NOTIFY_WEBHOOK_URL", "http://10.0.0.5:8080/alerts/t0k3n")
    assert redact("POST http://10.0.0.5:8080/alerts/t0k3n failed") == "POST <redacted> failed"


# --- sending to a local receiver ------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as r:
        yield r


def test_a_delivered_notification(receiver: Receiver) -> None:
    doc = job_payload("main", run(False), FAILURE)
    d = deliver(Target("webhook", receiver.url()), doc, timeout=2, retries=2)
    assert (d.ok, d.attempts, d.detail, d.where) == (True, 1, "HTTP 200", d.where)
    assert receiver.bodies == [doc]
    assert TOKEN not in repr(d) and TOKEN not in json.dumps(d.to_json())


def test_slack_gets_the_slack_message(receiver: Receiver) -> None:
    doc = job_payload("main", run(False), FAILURE)
    assert deliver(Target("slack", receiver.url()), doc, timeout=2, retries=0).ok
    assert receiver.bodies == [slack_payload(doc)]


def test_a_server_error_is_retried_then_reported(receiver: Receiver) -> None:
    receiver.status = 500
    sleeps: list[float] = []
    d = deliver(Target("webhook", receiver.url()), job_payload("main", run(False), FAILURE), timeout=2, retries=2,
                sleep=sleeps.append)
    assert (d.ok, d.attempts, d.detail) == (False, 3, "HTTP 500 Internal Server Error: no_service")
    assert len(receiver.bodies) == 3 and sleeps == [0.5, 1.0]


def test_a_client_error_is_not_retried(receiver: Receiver) -> None:
    receiver.status = 404  # Slack's answer to a deleted webhook: retrying cannot help
    d = deliver(Target("slack", receiver.url()), job_payload("main", run(False), FAILURE), timeout=2, retries=2)
    assert (d.ok, d.attempts, d.detail) == (False, 1, "HTTP 404 Not Found: no_service")


def test_a_receiver_that_is_down() -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook/{TOKEN}"
    d = deliver(Target("webhook", url), job_payload("main", run(False), FAILURE), timeout=1, retries=1,
                sleep=lambda _: None)
    assert (d.ok, d.attempts, d.detail) == (False, 2, "Connection refused")
    assert TOKEN not in repr(d)


def test_a_receiver_that_never_answers_costs_at_most_the_time_bound(receiver: Receiver) -> None:
    receiver.stall = 30
    opts = NotifyOptions(webhook_url=receiver.url(), slack_webhook_url=receiver.url(), timeout=0.5, retries=1)
    started = time.monotonic()
    results = send(opts, job_payload("main", run(False), FAILURE))
    took = time.monotonic() - started
    assert [(d.kind, d.ok, d.attempts, d.detail) for d in results] == [
        ("webhook", False, 2, "no answer within 0.5s"), ("slack", False, 2, "no answer within 0.5s")]
    # Both targets in parallel: 2 attempts × 0.5 s + 0.5 s backoff each, not twice that.
    assert 1.4 < took < time_bound(opts) == 2.5


def test_the_time_bound_and_the_backoff() -> None:
    assert [backoff(i) for i in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 2.0]
    assert time_bound(NotifyOptions()) == 5 * 3 + 0.5 + 1.0 + 1.0  # the defaults: 17.5 s at the very worst


def test_options_from_the_environment_alone_keep_the_time_bound_sane(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgvault.cli.notify import environment_options

    monkeypatch.setenv("PGVAULT_NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/x")
    monkeypatch.setenv("PGVAULT_NOTIFY_RETRIES", "1000")
    monkeypatch.setenv("PGVAULT_NOTIFY_TIMEOUT", "soon")
    monkeypatch.setenv("PGVAULT_NOTIFY_EVENTS", "failure")
    opts = environment_options()
    assert (opts.webhook_url, opts.events, opts.timeout, opts.retries) == ("http://127.0.0.1:9/x", ("failure",), 5.0, 10)
