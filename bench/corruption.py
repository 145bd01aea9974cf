#!/usr/bin/env python3
"""Benchmark: the corruption scenario (issue 11, part 5) at scale — detecting a damaged page and
rebuilding the cluster with ``pgvault restore-cluster --start``.

Not a test: a report (tests/e2e/test_corruption_scenario.py is the test, at scale 1).  It starts a
throwaway PostgreSQL server with **data checksums** (tests/support/pgcluster.py, the settings of
bench/_datagen.py plus ``archive_command = pgvault wal push`` into a local repository, zstd + age),
loads the sample database (``pgvault.sample``) at ``--scale`` (about 1.1 MB per unit: 920 is about
1 GiB), takes a base backup, writes ``--wal-mb`` MiB of WAL (configs updated in batches; their
audit trigger writes config_history), checkpoints and archives everything.  Then, as the test
does, it stops the server and overwrites 64 bytes in the middle of block 1 of ``configs`` behind
PostgreSQL's back, and times:

  1. ``pg_checksums --check`` on the stopped server (reads every data file; names the block);
  2. a query that reads the page (``invalid page in block 1 of relation ...``), after a start;
  3. ``pg_amcheck --all --install-missing --heapallindexed`` on the damaged server (exit 2);
  4. (damaged server stopped) ``pgvault restore-cluster -D NEW --start --json`` to a promoted
     server: **unpack** (``restore_seconds``: the base backup laid out) and **recovery**
     (``recovery.seconds``: server start, WAL fetched, decrypted and replayed, promotion);
  5. ``pg_amcheck --all --install-missing --heapallindexed`` on the rebuilt copy, which must pass;
     its row counts must equal what was committed before the damage.

It prints a table (wall seconds, the 1-minute load average when each step started, a rate of
what the step grows with) and a linear model for a 100 GiB cluster.

Exit 0 when every step ran and the copy passed, 1 when one failed, 130 on Ctrl-C; the servers and
``/tmp/pgvault-bench-corrupt-*`` are removed at the end in every case.  Run as root with the
project's virtualenv (``source scripts/env.sh``)::

    python bench/corruption.py --scale 920 --wal-mb 256 --major 15
    python bench/corruption.py --scale 20 --wal-mb 16 --major 18     # a quick check (under a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as cm  # noqa: E402
import _datagen as datagen  # noqa: E402
from _procs import MiB, StepError, log  # noqa: E402

from support.pgcluster import PgCluster, PgClusterError, free_port  # noqa: E402

DB = "app"
TABLES = ("organizations", "projects", "configs", "config_history")
TABLE = "configs"
BLOCK = 1
OFFSET = 8192 * BLOCK + 4000  # tuple data, not the page header (as the test)
GARBAGE = bytes(range(64))


def load1() -> float:
    return round(os.getloadavg()[0], 2)


class Steps:
    """Timed steps in order: name -> seconds, load average at the start, and what they measured."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.rows: dict[str, dict[str, Any]] = info.setdefault("steps", {})

    def timed(self, name: str, fn: Any, *args: Any, **kw: Any) -> Any:
        load = load1()
        t0 = time.monotonic()
        out = fn(*args, **kw)
        self.rows[name] = {"seconds": round(time.monotonic() - t0, 2), "load1": load}
        return out


def counts(psql: Any) -> dict[str, int]:
    return {t: int(psql(f"SELECT count(*) FROM {t}")) for t in TABLES}


def _psql_port(cluster: PgCluster, port: int, sql: str, dbname: str = "postgres", check: bool = True) -> str:
    cmd = [str(cluster.bindir.program("psql")), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
           "-p", str(port), "-U", cluster.user, "-d", dbname, "-c", sql]
    r = subprocess.run(cmd, env=cluster.client_env(), capture_output=True, text=True, timeout=600, check=False)
    if check and r.returncode != 0:
        raise StepError(f"{sql}: {r.stderr.strip()}")
    return r.stdout.strip()


def amcheck(cluster: PgCluster, port: int) -> subprocess.CompletedProcess[str]:
    """As the runbook and the drill run it: over TCP, every database, heap and B-tree indexes."""
    cmd = [str(cluster.bindir.program("pg_amcheck")), "-h", "127.0.0.1", "-p", str(port), "-U", cluster.user,
           "--all", "--install-missing", "--heapallindexed"]
    return subprocess.run(cmd, env=cluster.client_env(), capture_output=True, text=True, timeout=7200, check=False)


def pgvault_env(conf: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGVAULT_")) or k == "PGVAULT_POSTGRES_BIN_DIRS"}
    return env | {"PGVAULT_CONFIG": str(conf)}


def run(args: argparse.Namespace, base: Path, info: dict[str, Any]) -> None:
    work = cm.postgres_dir(base / "work", 0o755)
    launcher = cm.build_launcher(base / "launcher")
    key = cm.make_age_key(work)
    repo = cm.postgres_dir(work / "repo", 0o750)
    conf = cm.write_pgvault_config(work / "pgvault.yaml", {
        "cluster": "bench", "repository.url": str(repo), "encryption.age_recipients": [key.recipient],
        "encryption.age_identity_file": str(key.identity_file)})
    settings = {**datagen.SERVER_SETTINGS, "archive_mode": "on", "archive_command": cm.pgvault_archive_command(launcher, conf)}
    cluster = PgCluster.create(args.major, base / "pg", settings=settings, data_checksums=True)
    info["server_version"] = cluster.bindir.version
    rebuilt = cm.postgres_dir(base / "rebuilt", 0o700)
    try:
        _scenario(args, cluster, launcher, conf, rebuilt, info)
    finally:
        cm.stop_datadir(cluster.bindir.program("pg_ctl"), rebuilt)
        cluster.stop(mode="immediate")
        cm.kill_strays(str(base))


def _scenario(args: argparse.Namespace, cluster: PgCluster, launcher: Path, conf: Path, rebuilt: Path,
              info: dict[str, Any]) -> None:
    steps = Steps(info)
    if cluster.psql("SHOW data_checksums") != "on":
        raise StepError("data checksums are off")
    log(f"loading the sample database at scale {args.scale}")
    steps.timed("load sample", cluster.load_sample, DB, scale=args.scale, timeout=7200)
    info["db_size_bytes"] = int(cluster.psql(f"SELECT pg_database_size('{DB}')"))
    info["cluster_size_bytes"] = int(cluster.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
    log(f"  {info['db_size_bytes'] / MiB:,.0f} MiB in {steps.rows['load sample']['seconds']} s")
    cm.switch_and_wait(cluster, 600)

    log("base backup")
    env = pgvault_env(conf) | cluster.env()
    out = steps.timed("basebackup", cm.run_checked, cm.as_postgres([str(launcher), "basebackup", "--json",
                                                                    "--archive-timeout", "600"]),
                      "basebackup", env=env, timeout=7200)
    backup = json.loads(out)["backup"]
    info["backup"] = {k: backup.get(k) for k in ("backup_id", "raw_size", "stored_size", "start_lsn")}

    log(f"workload: {args.wal_mb} MiB of WAL (configs updated in batches, audited into config_history)")
    start = cluster.psql("SELECT pg_current_wal_lsn()")

    def workload() -> int:
        n = 0
        while int(cluster.psql(f"SELECT pg_current_wal_lsn() - '{start}'::pg_lsn")) < args.wal_mb * MiB:
            cluster.psql(f"UPDATE configs SET value = jsonb_build_object('bench', {n}, 'was', value -> 'was'), "
                         f"version = version + 1 WHERE id % 50 = {n % 50}", dbname=DB)
            n += 1
        return n

    info["workload_batches"] = steps.timed("workload", workload)
    cluster.psql("CHECKPOINT")
    committed = counts(lambda sql: cluster.psql(sql, dbname=DB))
    info["committed_rows"] = committed
    cm.switch_and_wait(cluster, 1800)  # every committed row is in the archive
    info["wal_since_backup_bytes"] = int(cluster.psql(f"SELECT pg_current_wal_lsn() - '{backup['start_lsn']}'::pg_lsn"))

    rel = cluster.psql(f"SELECT pg_relation_filepath('{TABLE}')", dbname=DB)
    if int(cluster.psql(f"SELECT pg_relation_size('{TABLE}') / 8192", dbname=DB)) <= BLOCK:
        raise StepError(f"{TABLE} has too few pages")
    log(f"stopping the server and scribbling 64 bytes into block {BLOCK} of {rel}")
    cluster.stop()  # a clean shutdown writes every dirty page first: ours is the last write
    with open(cluster.datadir / rel, "r+b") as f:
        f.seek(OFFSET)
        f.write(GARBAGE)
        f.flush()
        os.fsync(f.fileno())
    # What pg_checksums reads: the data files, not pg_wal (which max_wal_size lets grow to gigabytes).
    info["datadir_bytes"] = cm.tree_bytes(cluster.datadir) - cm.tree_bytes(cluster.datadir / "pg_wal")

    log("pg_checksums --check (server stopped)")
    r = steps.timed("pg_checksums --check", subprocess.run, cm.as_postgres(
        [str(cluster.bindir.program("pg_checksums")), "--check", "-D", str(cluster.datadir)]),
        capture_output=True, text=True, timeout=7200, check=False, env=cm.server_env())
    if r.returncode != 1 or f'{rel}", block {BLOCK}' not in r.stderr:
        raise StepError(f"pg_checksums --check did not name the block (exit {r.returncode}): {r.stderr[-2000:]}")
    info["pg_checksums"] = r.stderr.strip().splitlines()[0]
    steps.rows["pg_checksums --check"]["found"] = f"block {BLOCK} of {rel}"

    log("start, and a query that reads the page")
    cluster.start()

    def query() -> str:
        try:
            cluster.psql(f"SELECT count(*) FROM {TABLE}", dbname=DB)
        except PgClusterError as e:
            return str(e)
        raise StepError(f"SELECT count(*) FROM {TABLE} read the damaged page without an error")

    err = steps.timed("query (seq scan)", query)
    if not re.search(f'invalid page in block {BLOCK} of relation "?{re.escape(rel)}"?$', err, re.M):
        raise StepError(f"unexpected error from the query: {err[-1000:]}")
    info["query_error"] = err.strip().splitlines()[-1]
    steps.rows["query (seq scan)"]["found"] = "invalid page"

    log("pg_amcheck --all --heapallindexed on the damaged server")
    r = steps.timed("pg_amcheck damaged", amcheck, cluster, cluster.port)
    both = r.stdout + r.stderr
    if r.returncode == 0 or f"invalid page in block {BLOCK}" not in both:
        raise StepError(f"pg_amcheck did not report the page (exit {r.returncode}): {both[-2000:]}")
    info["amcheck_damaged"] = {"exit": r.returncode, "first": both.strip().splitlines()[0], "lines": len(both.splitlines())}
    steps.rows["pg_amcheck damaged"]["found"] = f"exit {r.returncode}"
    cluster.stop(mode="fast")  # it is not the copy; its memory and CPU are not the rebuild's

    log("restore-cluster -D NEW --start (latest base backup + WAL to the end of the archive)")
    port = free_port()
    cmd = [str(launcher), "restore-cluster", "--data-dir", str(rebuilt), "--start", "--port", str(port),
           "--option", "listen_addresses=127.0.0.1", "--pgvault-command", str(launcher), "--timeout", "7200", "--json"]
    doc = json.loads(steps.timed("restore-cluster --start", cm.run_checked, cmd, "restore-cluster",
                                 env=pgvault_env(conf), timeout=7200))
    rec = doc.get("recovery") or {}
    if rec.get("state") != "promoted" or doc["plan"]["backup_id"] != backup["backup_id"]:
        raise StepError(f"recovery state {rec.get('state')!r}, backup {doc['plan']['backup_id']}")
    row = steps.rows["restore-cluster --start"]
    row["unpack"] = doc["restore_seconds"]
    row["recovery"] = round(rec["seconds"], 2)
    row["segments"] = rec["segments_restored"]
    info["rebuilt_last_transaction_time"] = rec.get("last_transaction_time")
    got = counts(lambda sql: _psql_port(cluster, port, sql, DB))
    if got != committed:
        raise StepError(f"the rebuilt copy holds {got}, committed was {committed}")
    if _psql_port(cluster, port, "SHOW data_checksums") != "on":
        raise StepError("the rebuilt copy has data checksums off")

    log("pg_amcheck --all --heapallindexed on the rebuilt copy")
    r = steps.timed("pg_amcheck rebuilt", amcheck, cluster, port)
    if r.returncode != 0:
        raise StepError(f"pg_amcheck failed on the rebuilt copy (exit {r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
    steps.rows["pg_amcheck rebuilt"]["found"] = "exit 0"
    info["verified"] = True


def report(info: dict[str, Any]) -> list[str]:
    """The table, each step's rate of what it grows with, and the 100 GiB model."""
    st = info["steps"]
    size = info["cluster_size_bytes"] / MiB
    wal = info["wal_since_backup_bytes"] / MiB
    dd = info.get("datadir_bytes", info["cluster_size_bytes"]) / MiB
    rates: dict[str, tuple[float, str]] = {
        "load sample": (info["db_size_bytes"] / MiB, "MiB/s of sample database"),
        "basebackup": (size, "MiB/s of cluster"),
        "workload": (wal, "MiB/s of WAL written"),
        "pg_checksums --check": (dd, "MiB/s of data files"),
        "query (seq scan)": (0.0, ""),
        "restore-cluster --start": (0.0, "wall, command to a promoted server"),
        "pg_amcheck damaged": (size, "MiB/s of cluster"),
        "pg_amcheck rebuilt": (size, "MiB/s of cluster"),
    }
    lines = [f"{'step':<26}{'seconds':>9}{'load1':>7}  rate / result"]
    for name, row in st.items():
        mib, unit = rates.get(name, (0.0, ""))
        rate = f"{mib / max(row['seconds'], 1e-3):7.1f} {unit}" if mib else unit
        found = f"  [{row['found']}]" if "found" in row else ""
        lines.append(f"{name:<26}{row['seconds']:9.1f}{row['load1']:7.2f}  {rate}{found}")
        if name == "restore-cluster --start":
            lines.append(f"{'  unpack':<26}{row['unpack']:9.1f}{'':7}  {size / max(row['unpack'], 1e-3):7.1f} "
                         f"MiB/s of cluster ({size:,.0f} MiB)")
            lines.append(f"{'  recovery':<26}{row['recovery']:9.1f}{'':7}  {wal / max(row['recovery'], 1e-3):7.1f} "
                         f"MiB/s of WAL since the backup ({wal:,.0f} MiB, {row['segments']} segments), incl. start")
            lines.append(f"{'  other':<26}{row['seconds'] - row['unpack'] - row['recovery']:9.1f}{'':7}  "
                         "plan, checks, promotion confirmed, python start-up")
    rc = st.get("restore-cluster --start")
    if rc and "pg_amcheck rebuilt" in st:
        g100 = 100 * 1024
        unpack = size / max(rc["unpack"], 1e-3)
        replay = wal / max(rc["recovery"], 1e-3)
        am = size / max(st["pg_amcheck rebuilt"]["seconds"], 1e-3)
        ck = dd / max(st["pg_checksums --check"]["seconds"], 1e-3)
        lines += [
            f"load average now {load1()} on {info['cpus']} CPUs",
            "model for a 100 GiB cluster with W GiB of WAL since the base backup (same machine):",
            f"  detect: pg_checksums --check {g100 / ck / 60:.1f} min (stopped, page cache), "
            f"pg_amcheck --heapallindexed {g100 / am / 60:.1f} min",
            f"  rebuild: unpack {g100 / unpack / 60:.1f} min + recovery {1024 / replay / 60:.2f} min per GiB of WAL",
            f"  check the copy: pg_amcheck --heapallindexed {g100 / am / 60:.1f} min",
            f"  with 10 GiB of WAL since the base backup: rebuild and check "
            f"{(g100 / unpack + 10 * 1024 / replay + g100 / am) / 60:.0f} min",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    return cm.sample_scenario_main(argv, __doc__.split("\n\n")[0], "pgvault-bench-corrupt-",
                                   "MiB of WAL written between the base backup and the damage", run, report,
                                   lambda info: bool(info.get("steps")) and "cluster_size_bytes" in info,
                                   load1_at_start=load1())


if __name__ == "__main__":
    sys.exit(main())
