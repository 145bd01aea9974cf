"""Restore drills through the CLI: they pass on good backups, fail (and clean up) on corrupt
objects, wrong row counts, failing smoke queries and a missed recovery-time objective, and leave
a report in the repository every time."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from pgvault.sample import Sample
from support.cli import pgvault
from support.pg_fixtures import pg_majors

ORGANIZATIONS = Sample().counts()["organizations"]
FIRST_SLUG = next(Sample().rows("organizations")).split("\t")[1]
SMOKE = [{"name": "organizations", "sql": "SELECT count(*) FROM organizations", "min": ORGANIZATIONS},
         {"name": "first organization", "sql": "SELECT slug FROM organizations WHERE id = 1", "expect": FIRST_SLUG}]


def _leftovers() -> set[str]:
    """Scratch directories and servers of drills still around."""
    dirs = {str(p) for p in Path(tempfile.gettempdir()).glob("pgvault-drill*")}
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return dirs | {line for line in ps.splitlines() if "pgvault-drill" in line and "postgres" in line}


_OWNER = re.compile(r"pgvault-drill\.[A-Za-z0-9-]+\.(\d+)\.")


def _of_finished_drills(found: set[str]) -> set[str]:
    """Of ``found``, what belongs to a drill process that has ended (its pid is in the name): a
    drill another test run has going on this machine at the same time is not ours to judge."""
    return {f for f in found if not ((m := _OWNER.search(f)) and Path(f"/proc/{m.group(1)}").exists())}


def _drill(env: dict[str, str], *args: str, ok: bool = True) -> dict:  # type: ignore[type-arg]
    before = _leftovers()
    r = pgvault(["drill", "--json", *args], env, check=False)
    assert r.returncode == (0 if ok else 9), str(r)
    left = _of_finished_drills(_leftovers() - before)
    assert not left, f"the drill left a scratch server or directory behind: {sorted(left)}"
    return dict(r.json()["drill"])


def _check(report: dict, name: str) -> dict:  # type: ignore[type-arg]
    [c] = [c for c in report["checks"] if c["name"] == name]
    return dict(c)


def test_logical_drill_passes_and_is_recorded(pg_cluster, sample_db, local_env) -> None:  # type: ignore[no-untyped-def]
    # With the "postgres" database too, which every scratch server already has (as with --all).
    backup = pgvault(["backup", "-d", sample_db, "-d", "postgres", "--json"], local_env).json()["backup"]
    env = {**local_env, "PGVAULT_DRILL_SMOKE_QUERIES": json.dumps(
        [{**q, "database": sample_db} for q in SMOKE] + [{"sql": "SELECT current_database()", "database": "postgres",
                                                          "expect": "pgvault_drill_postgres"}])}
    report = _drill(env)
    assert report["ok"] and report["backup_id"] == backup["backup_id"] and report["backup_kind"] == "logical"
    assert report["target"]["kind"] == "scratch server" and report["restore_seconds"] > 0
    assert _check(report, f"{sample_db}: row counts")["ok"] and _check(report, "postgres: row counts")["ok"]
    assert "constraints valid" in _check(report, f"{sample_db}: constraints")["detail"]
    assert _check(report, "smoke: SELECT current_database()")["ok"]
    assert _check(report, "smoke: organizations")["ok"] and _check(report, "smoke: first organization")["ok"]
    assert all(c["seconds"] >= 0 for c in report["checks"])
    # The report is in the repository, under drills/<YYYY>/<MM>/, and in the history.
    stored = list(Path(local_env["PGVAULT_REPOSITORY_URL"]).glob(f"*/drills/*/*/{report['drill_id']}.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["ok"] is True
    history = pgvault(["drill", "list", "--json"], env).json()["drills"]
    assert [d["drill_id"] for d in history] == [report["drill_id"]]
    assert "PASSED" not in pgvault(["drill", "list"], env).stdout  # the table says ok/FAILED per drill


def test_logical_drill_failures_are_reported_and_cleaned_up(pg_cluster, sample_db, local_env) -> None:  # type: ignore[no-untyped-def]
    backup = pgvault(["backup", "--database", sample_db, "--json"], local_env).json()["backup"]
    repo = Path(local_env["PGVAULT_REPOSITORY_URL"])
    [folder] = [p.parent for p in repo.glob(f"*/logical/*/*/{backup['backup_id']}/manifest.json")]

    # A smoke query that does not hold.
    env = {**local_env, "PGVAULT_DRILL_SMOKE_QUERIES": json.dumps([{"name": "orgs", "sql": "SELECT count(*) FROM organizations",
                                                                        "expect": "7"}])}
    report = _drill(env, ok=False)
    detail = _check(report, "smoke: orgs")["detail"]
    assert not _check(report, "smoke: orgs")["ok"] and f"expected 7, got {ORGANIZATIONS}" in detail, detail
    assert _check(report, f"{sample_db}: row counts")["ok"]

    # A recovery-time objective the restore cannot meet.
    report = _drill({**local_env, "PGVAULT_DRILL_RTO": "0.001"}, ok=False)
    assert not _check(report, "recovery-time objective")["ok"]

    # A table's row count that does not match the manifest.
    manifest = folder / "manifest.json"
    original = manifest.read_text()
    doc = json.loads(original)
    orgs = next(t for t in doc["databases"][0]["tables"] if t["name"] == "organizations")
    orgs["rows"] += 1
    manifest.write_text(json.dumps(doc))
    report = _drill(local_env, ok=False)
    assert "public.organizations" in _check(report, f"{sample_db}: row counts")["detail"]
    manifest.write_text(original)

    # A corrupt stored object: the restore fails, the drill says so.
    [obj] = folder.glob(f"{sample_db}.dump.*")
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    report = _drill(local_env, ok=False)
    assert not _check(report, f"{sample_db}: restore")["ok"] and report["restore_seconds"] is None

    history = pgvault(["drill", "list", "--json"], local_env).json()["drills"]
    assert [d["ok"] for d in history] == [False, False, False, False]




@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_physical_drill_restores_checks_and_removes_a_scratch_cluster(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a = archiving(major, cluster_name="drill")
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 500)")
    a.basebackup()
    a.cluster.psql("INSERT INTO ticks SELECT generate_series(501, 800)")
    a.switch_and_wait()
    env = {**a.env(), "PGVAULT_DRILL_SMOKE_QUERIES": json.dumps([{"sql": "SELECT count(*) FROM ticks", "expect": 800}])}
    report = _drill(env, "--kind", "physical", "--pgvault-command", str(a.launcher))
    assert report["ok"] and report["backup_kind"] == "physical", report
    assert _check(report, "restore and recovery")["ok"] and report["restore_seconds"] > 0
    assert _check(report, "pg_amcheck")["ok"]
    assert _check(report, "smoke: SELECT count(*) FROM ticks")["ok"]
    # The production server was not touched and keeps archiving.
    assert a.cluster.psql("SELECT count(*) FROM ticks") == "800"
    a.switch_and_wait()


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_a_failed_physical_drill_keeps_the_cause_in_its_report(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """The scratch directory and the server log in it are deleted after a drill: the report must
    carry the server's own words about why recovery failed (issue 8)."""
    from pathlib import Path

    a = archiving(major, cluster_name="drill")
    a.cluster.psql("CREATE TABLE ticks(i int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 500)")
    m = a.basebackup()
    a.cluster.psql("INSERT INTO ticks SELECT generate_series(501, 30000)")
    a.switch_and_wait()
    victims = sorted(p for p in Path(a.repo_url).glob("drill/wal/*/*.zst.age") if m["last_wal"] < p.name.split(".")[0])
    data = bytearray(victims[0].read_bytes())
    data[len(data) // 2] ^= 0x40
    victims[0].write_bytes(bytes(data))
    report = _drill(a.env(), "--kind", "physical", "--pgvault-command", str(a.launcher), ok=False)
    check = _check(report, "restore and recovery")
    assert not check["ok"] and "last server log lines" in check["detail"], check
    assert victims[0].name.split(".")[0] in check["detail"], check  # which file, in the server's log lines
    listed = pgvault(["drill", "list", "--json"], a.env()).json()
    assert listed["drills"][-1]["ok"] is False


def test_logical_drill_from_s3_into_a_named_server(pg_cluster, sample_db, s3_env, s3_bucket) -> None:  # type: ignore[no-untyped-def]
    """Backups in SeaweedFS, restored into scratch databases on a server the operator names."""
    from support.cli import clean_env

    env = clean_env(
        **pg_cluster.env(), **{k: v for k, v in s3_env.items() if k.startswith("AWS_")},
        PGVAULT_REPOSITORY_URL=f"s3://{s3_bucket}/drills", PGVAULT_REPOSITORY_S3_ENDPOINT_URL=s3_env["PGVAULT_S3_ENDPOINT_URL"],
        PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE="true", PGVAULT_CLUSTER=f"pg{pg_cluster.major}",
        PGVAULT_DRILL_SMOKE_QUERIES=json.dumps(SMOKE[:1]),
    )
    pgvault(["backup", "-d", sample_db], env)
    report = _drill(env, "--target-dsn", pg_cluster.dsn())
    assert report["ok"] and report["target"]["kind"] == "named server", report
    # The scratch databases are gone again.
    assert "pgvault_drill" not in pg_cluster.psql("SELECT string_agg(datname, ',') FROM pg_database")
    assert pgvault(["drill", "list", "--json"], env).json()["drills"][0]["drill_id"] == report["drill_id"]
