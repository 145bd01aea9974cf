"""deploy/prometheus/alerts.yaml: well-formed Prometheus rule groups that only name metrics pgvault
exports (the exported names come from pgvault.operations.maintenance.metrics.METRICS, not from a list here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgvault.operations.maintenance.metrics import exported_metric_names

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"

# What the issue asks the shipped rules to cover: (alert, metric it must use, severity).
REQUIRED = [
    ("PgvaultBackupMissing", "postgresql_backup_last_success_timestamp", "critical"),
    ("PgvaultBackupSlow", "postgresql_backup_duration_seconds", "warning"),
    ("PgvaultWalArchivingStalled", "pgvault_wal_archive_lag_seconds", "warning"),
    ("PgvaultWalBacklogGrowing", "pgvault_wal_archive_backlog_segments", "warning"),
    ("PgvaultRecoverableWindowShort", "pgvault_recoverable_window_policy_seconds", "warning"),
    ("PgvaultNoRecentDrill", "pgvault_drill_last_success_timestamp", "warning"),
    ("PgvaultVerifyFailed", "pgvault_verify_failures", "critical"),
]

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
             "inf", "nan", "atan2"}
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, aggregation
    modifiers, keywords, label names/values (inside {...}) or durations (inside [...])."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", text)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        after = text[m.end():].lstrip()
        if after.startswith("(") or re.match(r"(by|without)\b", after):  # a function or an aggregation
            continue
        if word.lower() in _KEYWORDS or _DURATION.match(word):
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # the exponent of 1e9
        names.add(word)
    return names


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


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_rules() -> None:
    proc = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
