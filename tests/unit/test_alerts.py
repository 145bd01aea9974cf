"""deploy/prometheus/alerts.yaml: well-formed Prometheus rule groups that only name metrics pgvault
exports (the exported names come from pgvault.operations.maintenance.metrics.METRICS, not from a list here),
each alert linking its runbook section, and promtool's unit tests (deploy/prometheus/tests/) making
every alert fire and stay quiet.

promtool comes with Debian's `prometheus` package (scripts/setup.sh installs it); without it the
promtool tests skip, unless PGVAULT_REQUIRE_PROMTOOL=1 (scripts/test.sh sets it under CI=true).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgvault.operations.maintenance.metrics import exported_metric_names
from support.promql import metric_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
PROMTOOL_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yaml"))
RUNBOOK = "https://github.com/pgvault/pgvault/blob/main/docs/runbook.md"

# What the issue asks the shipped rules to cover: (alert, metric it must use, severity).
REQUIRED = [
    ("BackupFailed", "postgresql_backup_last_success_timestamp", "critical"),
    ("PgvaultBackupMissing", "postgresql_backup_last_success_timestamp", "critical"),
    ("PgvaultBackupSlow", "postgresql_backup_duration_seconds", "warning"),
    ("PgvaultWalArchivingStalled", "pgvault_wal_archive_lag_seconds", "warning"),
    ("PgvaultWalBacklogGrowing", "pgvault_wal_archive_backlog_segments", "warning"),
    ("PgvaultRecoverableWindowShort", "pgvault_recoverable_window_policy_seconds", "warning"),
    ("PgvaultNoRecentDrill", "pgvault_drill_last_success_timestamp", "warning"),
    ("PgvaultDrillOverRTO", "pgvault_drill_rto_seconds", "warning"),
    ("PgvaultVerifyFailed", "pgvault_verify_failures", "critical"),
]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool (Debian package prometheus) is not installed"
        if os.environ.get("PGVAULT_REQUIRE_PROMTOOL", "") not in ("", "0"):
            pytest.fail(f"{reason} (PGVAULT_REQUIRE_PROMTOOL is set)", pytrace=False)
        pytest.skip(f"{reason}; set PGVAULT_REQUIRE_PROMTOOL=1 to make this a failure")
    return path


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_the_file_is_prometheus_rule_groups() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"} and doc["groups"]
    group_names = [g["name"] for g in doc["groups"]]
    assert len(group_names) == len(set(group_names))
    alerts = []
    for g in doc["groups"]:
        assert set(g) <= {"name", "interval", "rules", "limit"}
        assert g["rules"], g["name"]
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, r
            assert isinstance(r["alert"], str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", r["alert"])
            assert isinstance(r["expr"], str) and r["expr"].strip()
            assert r["expr"].count("(") == r["expr"].count(")") and r["expr"].count("[") == r["expr"].count("]")
            if "for" in r:
                assert re.fullmatch(r"(\d+[smhdwy])+", str(r["for"])), r["for"]
            assert r["labels"]["severity"] in ("warning", "critical")
            assert {"summary", "description"} <= set(r["annotations"])
            for text in r["annotations"].values():
                assert text.count("{{") == text.count("}}")
            alerts.append(r["alert"])
    assert len(alerts) == len(set(alerts))


def test_every_metric_named_is_exported_by_pgvault() -> None:
    exported = set(exported_metric_names())
    used: set[str] = set()
    for r in rules():
        names = metric_names(r["expr"])
        assert names, f"{r['alert']}: no metric in {r['expr']!r}"
        unknown = names - exported
        assert not unknown, f"{r['alert']} uses {sorted(unknown)}, which pgvault does not export"
        used |= names
    assert {"postgresql_backup_last_success_timestamp", "pgvault_up"} <= used


def test_the_issue_s_alerts_are_all_there() -> None:
    by_name = {r["alert"]: r for r in rules()}
    for alert, metric, severity in REQUIRED:
        assert alert in by_name, alert
        assert metric in metric_names(by_name[alert]["expr"]), (alert, metric)
        assert by_name[alert]["labels"]["severity"] == severity
    assert "48 * 3600" in by_name["PgvaultBackupMissing"]["expr"]
    assert "35 * 86400" in by_name["PgvaultNoRecentDrill"]["expr"]
    assert "3600" in by_name["PgvaultBackupSlow"]["expr"]


def test_the_name_extractor_itself() -> None:
    assert metric_names('time() - max by (cluster) (a_b{job="x", k=~"y|z"}) > 35 * 86400') == {"a_b"}
    assert metric_names("deriv(m1[30m]) > 0 and m2 > 1e3 or (m3 - m4) < m5 offset 5m") == {"m1", "m2", "m3", "m4", "m5"}


def test_every_alert_links_its_runbook_section() -> None:
    # docs/runbook.md has a heading "Alert: <Name>" per alert, which GitHub slugs to #alert-<name>.
    for r in rules():
        assert r["annotations"]["runbook_url"] == f"{RUNBOOK}#alert-{r['alert'].lower()}", r["alert"]


def test_the_drill_rto_alert_compares_like_with_like() -> None:
    by_name = {r["alert"]: r for r in rules()}
    assert metric_names(by_name["PgvaultDrillOverRTO"]["expr"]) == {"pgvault_drill_restore_duration_seconds",
                                                                     "pgvault_drill_rto_seconds"}


def promtool_cases() -> list[dict[str, Any]]:
    cases = []
    for path in PROMTOOL_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [ALERTS], path
        for test in doc["tests"]:
            for t in test["alert_rule_test"]:
                assert re.fullmatch(r"(\d+[smhdwy])+", t["eval_time"]), t
                cases.append(t)
    return cases


def test_promtool_cases_make_every_alert_fire_and_stay_quiet() -> None:
    fired = {c["alertname"] for c in promtool_cases() if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in promtool_cases() if not c.get("exp_alerts")}
    names = {r["alert"] for r in rules()}
    assert names - fired == set(), "no promtool case makes these fire"
    assert names - quiet == set(), "no promtool case shows these staying quiet"
    assert (fired | quiet) - names == set(), "promtool cases name alerts the rules do not have"
    for c in promtool_cases():
        for a in c.get("exp_alerts") or []:
            # Full annotations: promtool compares them all, and the text is what the on-call reads.
            assert set(a["exp_annotations"]) == {"summary", "description", "runbook_url"}, c["alertname"]


def test_promtool_accepts_the_rules() -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass() -> None:
    assert PROMTOOL_TESTS
    proc = subprocess.run([promtool(), "test", "rules", *map(str, PROMTOOL_TESTS)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
