"""Logical restores under faults (issue 8): a full scratch disk, Ctrl-C, kill -9, a busy swap.

Each fault must be reported as what it is (never as corruption of an intact backup), and leave
every database either as it was or fully restored, under a name the message gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.cli import pgvault, start
from support.pg_fixtures import LARGE_SCALE


def _error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("pgvault: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def _children(parent: int, comm: str) -> list[int]:
    """Processes named ``comm`` whose parent is ``parent`` (not ``comm --version``, which pgvault
    runs first to record the version)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                cmdline = (d / "cmdline").read_bytes()  # empty for a process that has exited
                if ppid == parent and (d / "comm").read_text().strip() == comm and cmdline and b"--version" not in cmdline:
                    pids.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def _scratch_databases(cluster) -> list[str]:  # type: ignore[no-untyped-def]
    out = cluster.psql(r"SELECT datname FROM pg_database WHERE datname LIKE '%\_pgvault\_%' ORDER BY 1")
    return out.splitlines()


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a scratch directory that fills up (needs root)."""
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_full_scratch_dir_is_disk_full_not_corruption(pg_cluster, sample_db_large, scratch_db, local_env, tiny_dir: Path) -> None:
    pgvault(["backup", "-d", sample_db_large, "--no-globals"], local_env)
    res = pgvault(["restore", "latest", "-d", sample_db_large, "-t", scratch_db, "--jobs", "2", "--scratch-dir", str(tiny_dir)],
                  local_env, check=False)
    assert res.returncode == 4, res
    line = _error_line(res.stderr)
    assert f"disk full in {tiny_dir}" in line, line
    assert "corrupt" not in res.stderr and "--scratch-dir" in res.stderr  # the hint says what to do
    assert not pg_cluster.database_exists(scratch_db)
    assert _scratch_databases(pg_cluster) == []
    assert list(tiny_dir.iterdir()) == []  # the partial spool file is gone
    # The backup was intact all along.
    pgvault(["restore", "latest", "-d", sample_db_large, "-t", scratch_db, "--jobs", "2"], local_env)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigint_during_restore_is_an_interruption(pg_cluster, sample_db_large, scratch_db, local_env, jobs: str) -> None:
    pgvault(["backup", "-d", sample_db_large, "--no-globals"], local_env)
    proc = start(["restore", "latest", "-d", sample_db_large, "-t", scratch_db, "--jobs", jobs], local_env)
    try:
        # Ctrl-C while the object streams into pg_restore: pg_restore is paused so that the
        # pipe fills and pgvault sits in a write to it, in the middle of the pipeline.
        _wait_for(lambda: _children(proc.pid, "pg_restore"), interval=0.01)
        [restorer] = _children(proc.pid, "pg_restore")
        os.kill(restorer, signal.SIGSTOP)
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "corrupt" not in stderr and "integrity" not in stderr, stderr
    assert not pg_cluster.database_exists(scratch_db)
    assert _scratch_databases(pg_cluster) == []


# --- item 3: the swap is all-or-nothing -------------------------------------------------------


class _Intruder:
    """Connects to the restore's scratch copy as soon as it appears, and stays (``sql`` runs there).

    Stands for a monitoring agent or a curious person: something the restore did not start."""

    def __init__(self, cluster, target: str, sql: str) -> None:  # type: ignore[no-untyped-def]
        self.cluster, self.target, self.sql = cluster, target, sql
        self.database: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pattern = self.target.replace("_", "\\_") + "\\_pgvault\\_%"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.database is None:
            names = self.cluster.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{pattern}'")
            self.database = names.splitlines()[0] if names else None
            time.sleep(0.02)
        if self.database is not None:
            self.proc = subprocess.Popen(
                [str(self.cluster.bindir.program("psql")), "-X", "-d", self.database, "-c", self.sql],
                env={**self.cluster.client_env(), "PGAPPNAME": "test-intruder"}, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)

    def connected(self) -> bool:
        return self.cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'test-intruder'"
                                 " AND state IS NOT NULL") != "0"

    def close(self) -> str:
        self._thread.join(timeout=130)
        self.cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-intruder'")
        if self.proc is None:
            return ""
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def test_clean_restore_ends_sessions_on_its_scratch_copy_and_swaps(pg_cluster, sample_db_large, scratch_db, local_env) -> None:
    """Issue 8 item 3: a session on the scratch copy made the second rename fail (exit 70) after
    the first had moved the target away: the target name no longer existed."""
    pgvault(["backup", "-d", sample_db_large, "--no-globals"], local_env)
    pgvault(["restore", "latest", "-d", sample_db_large, "-t", scratch_db], local_env)
    pg_cluster.psql("CREATE TABLE marks_the_old_copy(i int)", dbname=scratch_db)
    intruder = _Intruder(pg_cluster, scratch_db, "SELECT pg_sleep(600)")
    try:
        res = pgvault(["restore", "latest", "-d", sample_db_large, "-t", scratch_db, "--clean"], local_env, check=False)
    finally:
        intruder_stderr = intruder.close()
    assert intruder.database is not None and intruder.proc is not None
    assert "terminat" in intruder_stderr, intruder_stderr  # it was in the copy until the swap ended it
    assert res.returncode == 0, res
    assert pg_cluster.psql("SELECT to_regclass('marks_the_old_copy') IS NULL", dbname=scratch_db) == "t"
    assert _scratch_databases(pg_cluster) == []


def test_a_swap_that_cannot_happen_changes_nothing_and_says_where_everything_is(make_pg_cluster, local_env) -> None:
    # A prepared transaction keeps a database in use and cannot be ended: the rename of the copy
    # fails whatever pgvault does.  Both renames must then be undone, and the message must say
    # where each database is.
    cluster = make_pg_cluster(15, settings={"max_prepared_transactions": 2})
    env = {**local_env, **cluster.env()}
    cluster.load_sample("app", scale=LARGE_SCALE)  # a restore that lasts long enough for the intruder
    pgvault(["backup", "-d", "app", "--no-globals"], env)
    cluster.psql("CREATE TABLE before_restore(i int)", dbname="app")
    intruder = _Intruder(cluster, "app", "BEGIN; CREATE TABLE intruder(i int); PREPARE TRANSACTION 'intruder'")
    try:
        res = pgvault(["restore", "latest", "-d", "app", "--clean"], env, check=False)
    finally:
        intruder.close()
    assert intruder.database is not None
    assert res.returncode == 8, res
    line = _error_line(res.stderr)
    # The renames were tried, in one transaction: the second failed and the first was undone.
    assert "is being accessed by other users" in line and "prepared transaction(s) intruder" in line, line
    assert "nothing changed: 'app' is still the previous database" in line, line
    assert f"the restore's copy {intruder.database!r} could not be dropped" in line, line
    assert cluster.psql("SELECT to_regclass('before_restore') IS NOT NULL", dbname="app") == "t"  # the old one, in place
    assert sorted(_scratch_databases(cluster)) == [intruder.database]
    # Once the prepared transaction is gone, the next restore sweeps the copy and succeeds.
    cluster.psql("ROLLBACK PREPARED 'intruder'", dbname=intruder.database)
    out = pgvault(["restore", "latest", "-d", "app", "--clean", "--json"], env).json()["restore"]
    assert out["verified"] and any(intruder.database in s for s in out["swept"])
    assert cluster.psql("SELECT to_regclass('before_restore') IS NULL", dbname="app") == "t"
    assert _scratch_databases(cluster) == []


# --- item 11: kill -9 -------------------------------------------------------------------------


def test_kill_9_mid_restore_leaves_no_target_and_the_next_run_sweeps(pg_cluster, sample_db_large, scratch_db, local_env,
                                                                      tmp_path: Path) -> None:
    pgvault(["backup", "-d", sample_db_large, "--no-globals"], local_env)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    args = ["restore", "latest", "-d", sample_db_large, "-t", scratch_db, "--jobs", "2", "--scratch-dir", str(spool_dir)]
    proc = start(args, local_env)
    try:
        _wait_for(lambda: _children(proc.pid, "pg_restore") and any(spool_dir.iterdir()), interval=0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Nothing under the target name: applications (and the rerun) never see a half restore.
    assert not pg_cluster.database_exists(scratch_db)
    [left] = _scratch_databases(pg_cluster)
    assert left.startswith(scratch_db + "_pgvault_")
    [spool] = list(spool_dir.iterdir())
    res = pgvault([*args, "--json"], local_env)
    out = res.json()["restore"]
    assert out["verified"] is True
    assert sorted(out["swept"]) == sorted([next(s for s in out["swept"] if s.startswith(f"database {left} ")),
                                           f"file {spool}"])
    assert "swept" in res.stderr  # said in the log too
    assert pg_cluster.database_exists(scratch_db) and _scratch_databases(pg_cluster) == []
    assert list(spool_dir.iterdir()) == []


def test_a_running_restore_is_not_swept_by_another(pg_cluster, sample_db_large, scratch_db, local_env) -> None:
    pgvault(["backup", "-d", sample_db_large, "--no-globals"], local_env)
    first = start(["restore", "latest", "-d", sample_db_large, "-t", scratch_db], local_env)
    other = scratch_db + "_b"
    try:
        _wait_for(lambda: _children(first.pid, "pg_restore"), interval=0.01)
        [restorer] = _children(first.pid, "pg_restore")
        os.kill(restorer, signal.SIGSTOP)  # the first restore is alive, just slow
        try:
            out = pgvault(["restore", "latest", "-d", sample_db_large, "-t", other, "--json"], local_env).json()["restore"]
        finally:
            os.kill(restorer, signal.SIGCONT)
        assert out["swept"] == []
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        pg_cluster.drop_database(other)
    assert pg_cluster.database_exists(scratch_db)


# --- item 4: database-level properties ----------------------------------------------------------


_PROPS = """
SELECT json_build_object(
  'owner', pg_get_userbyid(d.datdba), 'connlimit', d.datconnlimit,
  'comment', shobj_description(d.oid, 'pg_database'),
  'acl', (SELECT json_agg(x ORDER BY x) FROM (SELECT coalesce(pg_get_userbyid(nullif(a.grantee, 0)), 'PUBLIC')
          || ':' || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END AS x
          FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a) s),
  'settings', (SELECT json_object_agg(coalesce(r.rolname, '*'), s.setconfig) FROM pg_db_role_setting s
               LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid))
FROM pg_database d WHERE d.datname = '{db}'
"""


def _props(cluster, db: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return dict(json.loads(cluster.psql(_PROPS.format(db=db))))


def test_database_properties_survive_restores(pg_cluster, scratch_db, local_env) -> None:
    """Issue 8 item 4: owner, privileges (REVOKE CONNECT FROM PUBLIC), comment, settings and the
    connection limit came back as defaults after a restore under another name or with --clean."""
    tag = uuid.uuid4().hex[:8]
    src, owner, reader, gone, nobody = (f"{p}_{tag}" for p in ("src", "owner", "reader", "gone", "nobody"))
    pg_cluster.psql(f"CREATE ROLE {owner}; CREATE ROLE {reader}; CREATE ROLE {gone}; CREATE ROLE {nobody}")
    try:
        pg_cluster.psql(f"""
            CREATE DATABASE {src} OWNER {owner} CONNECTION LIMIT 7;
            REVOKE ALL ON DATABASE {src} FROM PUBLIC;
            GRANT CONNECT ON DATABASE {src} TO {reader};
            GRANT CONNECT, TEMPORARY ON DATABASE {src} TO {gone} WITH GRANT OPTION;
            COMMENT ON DATABASE {src} IS 'the app''s data';
            ALTER DATABASE {src} SET search_path = app, "$user", "Odd Schema";
            ALTER DATABASE {src} SET work_mem = '8MB';
            ALTER ROLE {reader} IN DATABASE {src} SET statement_timeout = '5s';
            ALTER ROLE {gone} IN DATABASE {src} SET work_mem = '1MB';
        """)
        pg_cluster.psql("CREATE TABLE public.t(i int); INSERT INTO public.t VALUES (1), (2)", dbname=src)
        source = _props(pg_cluster, src)
        manifest = pgvault(["backup", "-d", src, "--no-globals", "--json"], local_env).json()["backup"]
        recorded = manifest["databases"][0]["properties"]
        assert recorded["owner"] == owner and recorded["connection_limit"] == 7
        assert recorded["comment"] == "the app's data" and recorded["role_settings"] == {
            gone: ["work_mem=1MB"], reader: ["statement_timeout=5s"]}
        # A role that is gone by the time of the restore: a warning, not a failure.
        pg_cluster.psql(f"REVOKE ALL ON DATABASE {src} FROM {gone} CASCADE; ALTER ROLE {gone} IN DATABASE {src} RESET ALL;"
                        f" DROP ROLE {gone}")
        res = pgvault(["restore", "latest", "-d", src, "-t", scratch_db], local_env)
        assert "row counts verified" in res.stdout
        assert f"role {gone!r} does not exist here" in res.stdout and f"role {gone!r} does not exist" in res.stderr
        restored = _props(pg_cluster, scratch_db)
        expected = {**source,
                    "acl": [a for a in source["acl"] if not a.startswith(gone)],
                    "settings": {k: v for k, v in source["settings"].items() if k != gone}}
        assert restored == expected
        assert pg_cluster.psql(f"SELECT has_database_privilege('{nobody}', '{scratch_db}', 'CONNECT')") == "f"
        assert pg_cluster.psql(f"SELECT has_database_privilege('{reader}', '{scratch_db}', 'CONNECT')") == "t"
        # --clean puts them back over a database whose properties were changed.
        pg_cluster.psql(f"""
            GRANT ALL ON DATABASE {scratch_db} TO PUBLIC; COMMENT ON DATABASE {scratch_db} IS 'changed';
            ALTER DATABASE {scratch_db} RESET ALL; ALTER DATABASE {scratch_db} OWNER TO {nobody};
            ALTER DATABASE {scratch_db} CONNECTION LIMIT -1""")
        out = pgvault(["restore", "latest", "-d", src, "-t", scratch_db, "--clean", "--json"], local_env).json()["restore"]
        assert out["verified"] and "owner" in out["properties"]["applied"]
        assert any(gone in w for w in out["properties"]["warnings"])
        assert _props(pg_cluster, scratch_db) == expected
        # --no-owner leaves owner and privileges to the restoring user, and says so.
        pg_cluster.drop_database(scratch_db)
        out = pgvault(["restore", "latest", "-d", src, "-t", scratch_db, "--no-owner", "--json"], local_env).json()["restore"]
        assert set(out["properties"]["skipped"]) >= {"owner", "privileges"}
        assert _props(pg_cluster, scratch_db)["owner"] == "postgres"
        assert _props(pg_cluster, scratch_db)["settings"] == expected["settings"]
    finally:
        for db in (src, scratch_db):
            pg_cluster.drop_database(db)
        pg_cluster.psql(f"DROP ROLE IF EXISTS {owner}; DROP ROLE IF EXISTS {reader}; DROP ROLE IF EXISTS {gone};"
                        f" DROP ROLE IF EXISTS {nobody}")


def test_logical_drill_checks_database_properties(pg_cluster, local_env) -> None:
    tag = uuid.uuid4().hex[:8]
    src, reader = f"src_{tag}", f"reader_{tag}"
    pg_cluster.psql(f"CREATE ROLE {reader}; CREATE DATABASE {src}; REVOKE CONNECT ON DATABASE {src} FROM PUBLIC;"
                    f" GRANT CONNECT ON DATABASE {src} TO {reader}; ALTER DATABASE {src} SET work_mem = '3MB';"
                    f" ALTER ROLE {reader} IN DATABASE {src} SET work_mem = '5MB'; COMMENT ON DATABASE {src} IS 'x'")
    try:
        pgvault(["backup", "-d", src], local_env)
        report = pgvault(["drill", "--json"], local_env).json()["drill"]
        [check] = [c for c in report["checks"] if c["name"] == f"{src}: database properties"]
        assert report["ok"] and check["ok"], report
        assert "match the manifest" in check["detail"]
    finally:
        pg_cluster.drop_database(src)
        pg_cluster.psql(f"DROP ROLE IF EXISTS {reader}")
