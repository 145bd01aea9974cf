"""``pgvault recover-table`` against real servers: the runbook's accidental DELETE, undone on the
live server without stopping it.

The scene is the sample database (organizations ─< projects ─< configs ─< config_history, every
foreign key ON DELETE CASCADE, config_history partitioned) with a workload writing to several
tables before and after ``DELETE FROM organizations`` (whose cascade empties all four).  The
target is the delete's own transaction, exclusive: ``--target-xid X --target-exclusive``, as
``pgvault wal find`` prints it.  Every check compares whole rows: after the recovery each table
must hold exactly the rows it had at the target plus every row written since, every other table
must be untouched, and the production server must never have restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from support.archiving import ArchivingCluster
from support.cli import pgvault, start
from support.pg_fixtures import pg_majors
from support.pgcluster import postgres_tmpdir

from .test_sigterm import _alive, _wait_for

DB = "app"
TABLES = ("organizations", "projects", "configs", "config_history")
KEYS = {"organizations": "id", "projects": "id", "configs": "id", "config_history": "id, changed_at",
        "tickets": "id"}


def _rows(a: ArchivingCluster, table: str) -> dict[str, str]:
    """Every row of ``table`` as text, by key."""
    out = a.cluster.psql(f"SELECT ({KEYS[table]})::text, t::text FROM {table} t", dbname=DB)
    rows = {}
    for line in out.splitlines():
        k, _, v = line.partition("|")
        rows[k] = v
    return rows


def _snapshot(a: ArchivingCluster) -> dict[str, dict[str, str]]:
    return {t: _rows(a, t) for t in (*TABLES, "tickets")}


def _leftovers(tmpdir: Path) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [str(p) for p in tmpdir.iterdir()] + [ln for ln in ps.splitlines() if str(tmpdir) in ln]


def _workload(a: ArchivingCluster, tag: str) -> None:
    """Writes to several tables: a new organization with a project and a config (whose audit
    trigger writes config_history), a config changed (history again), tickets."""
    a.cluster.psql(f"""
        INSERT INTO organizations (slug, name) VALUES ('{tag}-org', 'Org {tag}');
        INSERT INTO projects (organization_id, name, environment)
            SELECT id, 'p-{tag}', 'production' FROM organizations WHERE slug = '{tag}-org';
        INSERT INTO configs (project_id, key, value)
            SELECT p.id, 'k-{tag}', '{{"v": 1}}' FROM projects p WHERE p.name = 'p-{tag}';
        UPDATE configs SET value = '{{"changed": "{tag}"}}' WHERE id = (SELECT min(id) FROM configs);
        INSERT INTO tickets (note) VALUES ('{tag}');
    """, dbname=DB)


def _scene(archiving: Any, major: int | None, owner: str | None = None,
           incremental: bool = False) -> tuple[ArchivingCluster, dict[str, Any]]:
    """``owner``: a role (password ``owner``, no superuser) that owns the application's tables;
    ``incremental``: the base backup before the target is an incremental on top of a full one."""
    a = archiving(major, cluster_name="recover")
    a.cluster.load_sample(DB)
    a.cluster.psql("CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);"
                   'CREATE TABLE "Offset Table" (id int PRIMARY KEY, "offset" int); '
                   'INSERT INTO "Offset Table" VALUES (1, 10), (2, 20), (3, 30)', dbname=DB)
    if owner:
        a.cluster.psql(f"CREATE ROLE {owner} LOGIN PASSWORD '{owner}'; GRANT CREATE ON SCHEMA public TO {owner};"
                       + "".join(f"ALTER TABLE {t} OWNER TO {owner};" for t in (*TABLES, "tickets")), dbname=DB)
    a.basebackup()
    if incremental:
        _workload(a, "between")
        a.switch_and_wait()
        assert a.basebackup("--type", "incr")["backup_type"] == "incr"
    for i in range(3):
        _workload(a, f"before{i}")
    at_target = _snapshot(a)
    import psycopg

    env = a.cluster.env()
    with psycopg.connect(host=env["PGHOST"], port=int(env["PGPORT"]), user=env["PGUSER"], password=env["PGPASSWORD"],
                         dbname=DB) as conn:
        xid = str(conn.execute("SELECT pg_current_xact_id()").fetchone()[0])  # type: ignore[index]
        deleted = conn.execute("DELETE FROM organizations").rowcount
    assert deleted == len(at_target["organizations"]) and _rows(a, "configs") == {}  # the cascade emptied them all
    for i in range(2):
        _workload(a, f"after{i}")
    a.switch_and_wait()
    after = _snapshot(a)
    started = a.cluster.psql("SELECT pg_postmaster_start_time()")
    return a, {"xid": xid, "at_target": at_target, "after": after, "started": started}


def _env(a: ArchivingCluster, tmp: Path) -> dict[str, str]:
    return a.env(PGDATABASE=DB, TMPDIR=str(tmp))


def _recover(a: ArchivingCluster, env: dict[str, str], *args: str, check: bool = True) -> Any:
    r = pgvault(["recover-table", "--json", "--pgvault-command", str(a.launcher), *args], env, check=False, timeout=900)
    if check:
        assert r.returncode == 0, str(r)
    return r


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_accidental_delete_is_undone_on_the_live_server(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a, s = _scene(archiving, major)
    tmp = postgres_tmpdir("pgvault-recover-")
    env = _env(a, tmp)
    target = ["--target-xid", s["xid"], "--target-exclusive"]

    # configs alone: its projects are missing now; the set-based foreign-key check refuses, naming them.
    r = _recover(a, env, "--table", "public.configs", "--mode", "missing-rows", *target, check=False)
    assert r.returncode == 2 and "reference rows of public.projects that do not exist" in r.stderr, str(r)
    assert _snapshot(a) == s["after"]

    # 1. organizations alone: put back, and the command says what else the cascade reached.
    doc = _recover(a, env, "--table", "public.organizations", "--mode", "missing-rows", *target).json()
    [res] = doc["results"]
    n_orgs = len(s["at_target"]["organizations"])
    assert res["inserted"] == n_orgs and res["rows_at_target"] == n_orgs, res
    assert res["rows_before"] == len(s["after"]["organizations"]) == res["not_at_target"], res
    assert "before commit of transaction " + s["xid"] in doc["recovery"]["stop_detail"]
    assert [x["table"] for x in doc["cascade_advice"]] == ["public.projects", "public.configs", "public.config_history"]
    assert any("public.projects" in n for n in res["notes"]), res
    assert _rows(a, "projects") == s["after"]["projects"]  # only organizations changed
    assert not _leftovers(tmp), _leftovers(tmp)

    # 2. All four in one command: everything back; parents were inserted before children.
    r = _recover(a, env, *[x for t in TABLES for x in ("--table", f"public.{t}")], "--mode", "missing-rows", *target)
    doc = r.json()
    assert [x["table"] for x in doc["results"]] == [f"public.{t}" for t in TABLES]
    assert doc["cascade_advice"] == []
    for res in doc["results"]:
        t = res["table"].split(".")[1]
        assert res["rows_at_target"] == len(s["at_target"][t]), res
    assert "recovery:" in r.stderr or "recovering base backup" in r.stderr  # progress on stderr
    # Each table: exactly its rows at the target plus every row written since, untouched.
    for t in TABLES:
        expected = {**s["at_target"][t], **s["after"][t]}
        assert _rows(a, t) == expected, t
    assert _rows(a, "tickets") == s["after"]["tickets"]
    assert a.cluster.psql("SELECT pg_postmaster_start_time()") == s["started"]  # never restarted
    assert not _leftovers(tmp), _leftovers(tmp)
    # The server archives as before, and the triggers are enabled again.
    conf = next(x for x in doc["results"] if x["table"] == "public.configs")
    assert conf["triggers_disabled"] == ["configs_audit", "configs_touch"] and "replica" in conf["triggers_how"]
    a.switch_and_wait()


@pytest.mark.parametrize("major", pg_majors() or [None])
def test_new_table_replace_database_and_dry_run(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a, s = _scene(archiving, major)
    tmp = postgres_tmpdir("pgvault-recover-")
    env = _env(a, tmp)
    target = ["--target-xid", s["xid"], "--target-exclusive"]

    # --dry-run: the plan, nothing started, nothing changed.
    r = pgvault(["recover-table", "--table", "organizations", "--mode", "missing-rows", "--dry-run", *target], env)
    assert "nothing was changed" in r.stdout and "would: insert into public.organizations" in r.stdout, r.stdout
    assert "public.config_history references public.configs" in r.stdout, r.stdout  # the cascade, named up front
    assert _snapshot(a) == s["after"] and not _leftovers(tmp)

    # new-table (the default): a copy beside the original, named after the target.
    doc = _recover(a, env, "--table", "public.organizations", "--table", "public.config_history", *target).json()
    org, hist = doc["results"]
    assert org["created"] == f"public.organizations__recovered_xid{s['xid']}x", org
    copy_rows = a.cluster.psql(f"SELECT id::text, t::text FROM {org['created']} t", dbname=DB).splitlines()
    assert dict(line.split("|", 1) for line in copy_rows) == s["at_target"]["organizations"]
    names = [c.split(" ")[0] for c in org["constraints"]]
    assert names == [f"organizations__recovered_xid{s['xid']}x_pkey", f"organizations__recovered_xid{s['xid']}x_slug_key"]
    assert a.cluster.psql(f"SELECT count(*) FROM pg_class WHERE relname = ANY(ARRAY{names!r})", dbname=DB) == "2"
    assert any("foreign key" in n for n in hist["not_copied"]) and any("partitioning" in n for n in hist["not_copied"])
    assert hist["rows_after"] == len(s["at_target"]["config_history"])  # every partition's rows
    assert _snapshot(a) == s["after"]  # the originals untouched
    # The same name again is refused before anything starts.
    r = _recover(a, env, "--table", "public.organizations", "--into", org["created"].split(".")[1], *target, check=False)
    assert r.returncode == 11 and "already exists" in r.stderr, str(r)

    # Names that need quoting (a keyword, upper case, a space) are one name on both servers.
    a.cluster.psql('DELETE FROM "Offset Table" WHERE id = 2', dbname=DB)
    doc = _recover(a, env, "--table", 'public."Offset Table"', "--mode", "missing-rows", *target).json()
    assert doc["results"][0]["table"] == 'public."Offset Table"' and doc["results"][0]["inserted"] == 1, doc["results"]
    assert a.cluster.psql('SELECT string_agg("offset"::text, \',\' ORDER BY id) FROM "Offset Table"', dbname=DB) == "10,20,30"

    # replace, refused: projects (not recovered) references organizations rows that would vanish.
    a.cluster.psql("INSERT INTO organizations (id, slug, name) OVERRIDING SYSTEM VALUE VALUES (1, 'back', 'Back')", dbname=DB)
    r = _recover(a, env, "--table", "public.organizations", "--mode", "replace", *target, check=False)
    assert r.returncode == 2 and "public.projects" in r.stderr and "nothing was changed" in r.stderr, str(r)
    # Nor with projects alone: configs written since reference projects written since.
    r = _recover(a, env, "--table", "public.organizations", "--table", "public.projects", "--mode", "replace", *target,
                 check=False)
    assert r.returncode == 2 and "rows of public.configs reference rows of public.projects" in r.stderr, str(r)
    assert _rows(a, "organizations")["1"].startswith("(1,back,")  # nothing changed
    # All four: their contents become the target's (rows written since are gone: that is replace).
    before = _snapshot(a)
    r = _recover(a, env, *[x for t in TABLES for x in ("--table", f"public.{t}")], "--mode", "replace", *target)
    res = {x["table"]: x for x in r.json()["results"]}
    for t in TABLES:
        assert _rows(a, t) == s["at_target"][t], t
        assert res[f"public.{t}"]["rows_before"] == len(before[t]) and res[f"public.{t}"]["rows_after"] == len(s["at_target"][t])
    assert res["public.organizations"]["updated"] == 1  # id 1 was there, with other values
    assert res["public.organizations"]["deleted"] == len(before["organizations"]) - 1
    assert _rows(a, "tickets") == s["after"]["tickets"]

    # The whole database as of the target, into a new database.
    r = _recover(a, env, "--database", DB, "--target-database", "app_before", *target)
    counts = r.json()["database_counts"]
    assert counts["public.organizations"] == len(s["at_target"]["organizations"])
    assert counts["public.config_history_default"] + counts["public.config_history_2025"] > 0
    got = a.cluster.psql("SELECT count(*) FROM config_history", dbname="app_before")
    assert int(got) == len(s["at_target"]["config_history"])
    r = _recover(a, env, "--database", DB, "--target-database", "app_before", *target, check=False)
    assert r.returncode == 11, str(r)
    assert a.cluster.psql("SELECT pg_postmaster_start_time()") == s["started"]
    assert not _leftovers(tmp), _leftovers(tmp)


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_refusals_failures_and_sigterm_leave_production_untouched(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a, s = _scene(archiving, major)
    tmp = postgres_tmpdir("pgvault-recover-")
    env = _env(a, tmp)
    orgs = ["--table", "public.organizations", "--mode", "missing-rows"]

    # Before the only base backup: no backup can reach it (exit 5), nothing started.
    r = _recover(a, env, *orgs, "--target-time", "2020-01-01 00:00:00+00", check=False)
    assert r.returncode == 5 and "after the target time" in r.stderr, str(r)
    # Beyond the archive: a transaction that never committed; recovery cannot reach it (exit 12).
    r = _recover(a, env, *orgs, "--target-xid", str(int(s["xid"]) + 100000), check=False)
    print(r.stderr)
    assert r.returncode == 12 and "recovery ended before configured recovery target was reached" in r.stderr, str(r)
    # A table without a key cannot be told "missing": refused at once, before any recovery.
    a.cluster.psql("CREATE TABLE nokey (v text)", dbname=DB)
    r = _recover(a, env, "--table", "public.nokey", "--mode", "missing-rows", "--target-xid", s["xid"],
                 "--target-exclusive", check=False)
    assert r.returncode == 2 and "no primary key" in r.stderr and "recovering" not in r.stderr, str(r)
    # It did not exist at the target (made after the backup): refused after recovery, before any change.
    r = _recover(a, env, "--table", "public.nokey", "--target-xid", s["xid"], "--target-exclusive", check=False)
    assert r.returncode == 5 and "did not exist at the target" in r.stderr, str(r)
    a.cluster.psql("DROP TABLE nokey", dbname=DB)
    assert _snapshot(a) == s["after"] and not _leftovers(tmp), _leftovers(tmp)

    # SIGTERM in the middle of recovery: the scratch server stopped, its directory removed.
    proc = start(["recover-table", "--pgvault-command", str(a.launcher), *orgs, "--target-xid", s["xid"],
                  "--target-exclusive"], env)
    try:
        postmaster = _wait_for(lambda: _scratch_postmaster(tmp, proc), timeout=120, what="the scratch server")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    time.sleep(0.5)
    assert not _alive(postmaster), "the scratch server was left running"
    assert not _leftovers(tmp), _leftovers(tmp)
    assert _snapshot(a) == s["after"]
    assert a.cluster.psql("SELECT pg_postmaster_start_time()") == s["started"]


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_sigterm_during_the_load_changes_nothing(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """The load is one transaction: stopped half-way (organizations and projects inserted, configs
    waiting for a lock another session holds), nothing of it stays."""
    import psycopg

    a, s = _scene(archiving, major)
    tmp = postgres_tmpdir("pgvault-recover-")
    env = _env(a, tmp)
    e = a.cluster.env()
    blocker = psycopg.connect(host=e["PGHOST"], port=int(e["PGPORT"]), user=e["PGUSER"], password=e["PGPASSWORD"],
                              dbname=DB)
    try:
        blocker.execute("LOCK TABLE configs IN SHARE MODE")  # readers go on; the load's writes to configs wait
        proc = start(["recover-table", "--pgvault-command", str(a.launcher), "--mode", "missing-rows",
                      *[x for t in TABLES for x in ("--table", f"public.{t}")], "--target-xid", s["xid"],
                      "--target-exclusive"], env)

        def waiting() -> bool:
            assert proc.poll() is None, proc.communicate()
            return a.cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                                  "application_name = 'pgvault'") == "1"

        _wait_for(waiting, timeout=180, what="the load waiting for the lock on configs")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        blocker.close()
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert "loading into" in err  # it was in the load, not before it
    _wait_for(lambda: a.cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgvault'") == "0",
              timeout=30, what="the load's session to end")
    assert _snapshot(a) == s["after"]  # organizations and projects it had inserted: rolled back
    assert not _leftovers(tmp), _leftovers(tmp)


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_without_superuser_triggers_are_disabled_by_their_owner(major, archiving) -> None:  # type: ignore[no-untyped-def]
    """A role that may not set session_replication_role (the tables' owner, not a superuser):
    the triggers are disabled with ALTER TABLE for the transaction, PostgreSQL checks the
    foreign keys, and the result is the same."""
    a, s = _scene(archiving, major, owner="app_owner")
    tmp = postgres_tmpdir("pgvault-recover-")
    env = {**_env(a, tmp), "PGUSER": "app_owner", "PGPASSWORD": "app_owner"}
    target = ["--target-xid", s["xid"], "--target-exclusive"]
    # configs alone: its projects are missing now, PostgreSQL's own foreign key check refuses.
    r = _recover(a, env, "--table", "public.configs", "--mode", "missing-rows", *target, check=False)
    assert r.returncode == 3 and "ForeignKeyViolation" in r.stderr and "nothing was changed" in r.stderr, str(r)
    doc = _recover(a, env, *[x for t in TABLES for x in ("--table", f"public.{t}")], "--mode", "missing-rows",
                   *target).json()
    conf = next(x for x in doc["results"] if x["table"] == "public.configs")
    assert conf["triggers_disabled"] == ["configs_audit", "configs_touch"] and "ALTER TABLE" in conf["triggers_how"]
    for t in TABLES:
        assert _rows(a, t) == {**s["at_target"][t], **s["after"][t]}, t
    assert a.cluster.psql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'configs'::regclass AND tgenabled = 'D'",
                          dbname=DB) == "0"
    assert not _leftovers(tmp), _leftovers(tmp)


def _scratch_postmaster(tmp: Path, proc: subprocess.Popen[str]) -> int | None:
    assert proc.poll() is None, proc.communicate()
    for pidfile in tmp.glob("pgvault-drill*/data/postmaster.pid"):
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
    return None


def test_json_is_one_document(tmp_path: Path) -> None:
    """--json without a repository still answers with one error document (exit 2 on usage)."""
    r = pgvault(["recover-table", "--json", "--repository", str(tmp_path), "--table", "x"], {**os.environ}, check=False)
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == "usage", str(r)


@pytest.mark.parametrize("major", pg_majors()[-1:] or [None])
def test_recover_table_from_an_incremental_restores_its_chain(major, archiving) -> None:  # type: ignore[no-untyped-def]
    a, s = _scene(archiving, major, incremental=True)
    newest = max((b for b in pgvault(["list", "--json"], a.env()).json()["backups"] if b["kind"] == "physical"),
                 key=lambda b: b["backup_id"])
    assert newest["backup_type"] == "incr"
    tmp = postgres_tmpdir("pgvault-recover-")
    env = _env(a, tmp)
    doc = _recover(a, env, "--table", "public.organizations", "--mode", "missing-rows",
                   "--target-xid", s["xid"], "--target-exclusive").json()
    assert doc["plan"]["backup_id"] == newest["backup_id"]  # the incremental, restored with its full backup
    [res] = doc["results"]
    assert res["inserted"] == len(s["at_target"]["organizations"]), res
    assert _rows(a, "organizations") == {**s["at_target"]["organizations"], **s["after"]["organizations"]}
    assert not _leftovers(tmp), _leftovers(tmp)
