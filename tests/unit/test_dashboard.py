"""deploy/grafana/pgvault.json: a Grafana dashboard that imports and only queries metrics pgvault
exports (the names come from pgvault.operations.maintenance.metrics, as for the alert rules).

Grafana publishes no schema file to validate against, so these are the checks an import relies on:
uid, title, schemaVersion, a Prometheus datasource variable every query goes through, panels with
unique ids, a known type and a place on the 24-column grid that no other panel takes, targets with
an expression and unique refIds.  With promtool (support/promql.py says when it is required) every expression is also parsed as PromQL.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pgvault.operations.maintenance.metrics import exported_metric_names
from support.promql import TARGET_JOB_LABEL, metric_names, promtool

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "pgvault.json"

# Panel types Grafana ships (core panels of Grafana 9-11); a plugin panel would need installing.
KNOWN_TYPES = {"row", "stat", "timeseries", "table", "state-timeline", "status-history", "gauge", "bargauge",
               "barchart", "piechart", "heatmap", "histogram", "text", "logs", "news", "dashlist", "alertlist",
               "annolist", "nodeGraph", "traces", "flamegraph", "xychart", "trend", "candlestick", "canvas",
               "geomap", "datagrid", "graph", "singlestat"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels() -> list[dict[str, Any]]:
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out += p.get("panels", [])  # a collapsed row keeps its panels inside
    return out


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every target and of the query variables."""
    out = [(f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"]) for p in panels() for t in p.get("targets", [])]
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_]\w*)\)", q)
            out.append((f"variable {v['name']}", m.group(1) if m else q))  # label_values(series, label)
    return out


def test_the_dashboard_has_what_an_import_needs() -> None:
    d = dashboard()
    assert d["title"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"])
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert "id" not in d or d["id"] is None  # an id would tie it to one Grafana's database
    assert d["time"]["from"] and d["time"]["to"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert variables["cluster"]["datasource"] == DATASOURCE and variables["cluster"]["multi"]


def test_panels_have_ids_types_and_places() -> None:
    ids, cells = set(), {}
    for p in panels():
        assert isinstance(p["id"], int) and p["id"] not in ids, p["id"]
        ids.add(p["id"])
        assert p["type"] in KNOWN_TYPES, (p["id"], p["type"])
        assert p["title"], p["id"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["id"]
        assert g["h"] > 0 and g["w"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, p["id"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells.get((x, y))} and {p['id']} overlap at {(x, y)}"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            assert "targets" not in p
            continue
        assert p["datasource"] == DATASOURCE, p["id"]
        assert p["targets"], p["id"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["id"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and isinstance(t["expr"], str) and t["expr"].strip(), (p["id"], t)
            assert '$cluster"' in t["expr"], (p["id"], t["expr"])  # the cluster variable applies everywhere


def test_every_metric_queried_is_exported_by_pgvault() -> None:
    exported = set(exported_metric_names())
    used: set[str] = set()
    for where, expr in queries():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert not names - exported, f"{where} uses {sorted(names - exported)}, which pgvault does not export"
        used |= names
    # What the issue asks the dashboard to show.
    for name in ("pgvault_job_last_success_timestamp", "postgresql_backup_last_success_timestamp",
                 "postgresql_backup_duration_seconds", "postgresql_backup_size_bytes",
                 "pgvault_recoverable_window_start_timestamp", "pgvault_recoverable_window_end_timestamp",
                 "pgvault_wal_archive_lag_seconds", "pgvault_wal_archive_backlog_segments",
                 "pgvault_drill_last_status", "pgvault_drill_restore_duration_seconds", "pgvault_drill_rto_seconds",
                 "pgvault_verify_failures", "pgvault_repository_size_bytes"):
        assert name in used, name


def test_no_query_legend_or_variable_uses_the_scrape_targets_job_label() -> None:
    # The job of a pgvault_job_* series is its pgvault_job label; "job" is the scrape job's.
    legends = [(f"panel {p['id']} legend", t.get("legendFormat", "")) for p in panels() for t in p.get("targets", [])]
    variables = [(f"variable {v['name']}", json.dumps(v)) for v in dashboard()["templating"]["list"]]
    for where, text in queries() + legends + variables:
        assert not TARGET_JOB_LABEL.search(text), f"{where}: {text!r}"


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    tool = promtool()
    rules = [{"record": f"pgvault_dashboard:q{i}", "expr": expr} for i, (_, expr) in enumerate(queries())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
