"""``pgvault drill --only-on 'first saturday'`` through the CLI: on a day that is not due it exits 0
saying "skipped: not due" (human and --json), records no drill and no drill job; on the due day it
drills as usual.  The CronJob (deploy/kubernetes) and the cron example run it every Saturday."""

from __future__ import annotations

import json
from pathlib import Path

from support.cli import pgvault

NOT_DUE = "2026-12-12T10:00:00Z"  # the second Saturday of December 2026
DUE = "2026-12-05T10:00:00Z"      # the first


def _cluster_dir(env: dict[str, str]) -> Path:
    return Path(env["PGVAULT_REPOSITORY_URL"]) / env["PGVAULT_CLUSTER"]


def test_a_drill_that_is_not_due_is_skipped_and_leaves_no_trace(pg_cluster, sample_db, local_env) -> None:  # type: ignore[no-untyped-def]
    pgvault(["backup", "-d", sample_db], local_env)
    root = _cluster_dir(local_env)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    r = pgvault(["drill", "--only-on", "first saturday", "--now", NOT_DUE], local_env)
    assert r.returncode == 0 and "skipped: not due" in r.stdout, str(r)
    assert "next due Saturday 2027-01-02" in r.stdout
    doc = pgvault(["drill", "--only-on", "first-saturday", "--now", NOT_DUE, "--json"], local_env).json()
    assert doc == {"format": 1, "kind": "drill_skipped", "skipped": True, "reason": "not due", "rule": "first saturday",
                   "today": "2026-12-12", "next_due": "2027-01-02"}
    # In the time zone of the schedule (UTC): Saturday 01:00 at UTC+5 is still Friday in UTC.
    assert pgvault(["drill", "--only-on", "first saturday", "--now", "2026-12-05T01:00:00+05:00", "--json"],
                   local_env).json()["today"] == "2026-12-04"

    # Nothing was written: no drill report, no job record (a skipped Saturday is no successful drill job).
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert pgvault(["drill", "list", "--json"], local_env).json()["drills"] == []
    assert "drill" not in pgvault(["status", "--json"], local_env, check=False).json()["jobs"]


def test_a_drill_that_is_due_runs(pg_cluster, sample_db, local_env) -> None:  # type: ignore[no-untyped-def]
    pgvault(["backup", "-d", sample_db], local_env)
    r = pgvault(["drill", "--only-on", "first saturday", "--now", DUE, "--json"], local_env)
    report = r.json()["drill"]
    assert report["ok"] and report["backup_kind"] == "logical"
    assert [d["drill_id"] for d in pgvault(["drill", "list", "--json"], local_env).json()["drills"]] == [report["drill_id"]]
    job = json.loads((_cluster_dir(local_env) / "jobs" / "drill.json").read_text())
    assert job["last_exit_code"] == 0


def test_a_bad_rule_is_a_usage_error(local_env) -> None:  # type: ignore[no-untyped-def]
    r = pgvault(["drill", "--only-on", "0 10 1-7 * 6"], local_env, check=False)
    assert r.returncode == 2 and "expected '<first|second|third|fourth|fifth|last> <weekday>'" in r.stderr
    r = pgvault(["drill", "--only-on", "first saturday", "--now", "next week"], local_env, check=False)
    assert r.returncode == 2 and "not an ISO 8601 timestamp" in r.stderr
