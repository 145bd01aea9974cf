#!/usr/bin/env python3
"""Benchmark: ``pgvault recover-table`` undoing ``DELETE FROM organizations`` on the sample database.

Not a test: a report.  It starts a throwaway PostgreSQL server (tests/support/pgcluster.py, the
settings of bench/_datagen.py plus archiving through pgvault: ``archive_command = pgvault wal push``
into a local repository with age encryption), loads the sample database (``pgvault.sample``) at
``--scale`` (about 1.1 MB per unit: scale 920 is about 1 GiB), takes a base backup, then writes
``--wal-mb`` MiB of WAL with an application-like workload (configs updated in batches; their audit
trigger writes config_history), records the counts, runs ``DELETE FROM organizations`` (the cascade
empties all four tables), writes a little more, and waits until everything is archived.

Then it times::

    pgvault recover-table --table organizations --table projects --table configs --table config_history
                          --mode missing-rows --target-xid <the DELETE> --target-exclusive

and reports its phases as the command measures them (``phases`` in its JSON): **unpack** (the base
backup laid out in the scratch directory), **replay** (server start and WAL replay up to the
target), **dump** (COPY of the four tables out of the scratch server, counted), **load** (one
transaction on the live server, verified), and a linear model of each against what it grows with.
The live server is checked afterwards: every table holds its rows at the target plus those written
since, and ``pg_postmaster_start_time()`` did not change.

Exit 0 when every step ran, 1 when one failed, 130 on Ctrl-C; the servers and
``/tmp/pgvault-bench-recover-*`` are removed at the end in every case.  Run as root with the
project's virtualenv (``source scripts/env.sh``)::

    python bench/recover_table.py --scale 920 --wal-mb 256 --major 15
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as cm  # noqa: E402
import _datagen as datagen  # noqa: E402
from _procs import MiB, log  # noqa: E402

from support.pgcluster import PgCluster, postgres_tmpdir  # noqa: E402

TABLES = ("organizations", "projects", "configs", "config_history")
DB = "app"


def counts(cluster: PgCluster) -> dict[str, int]:
    return {t: int(cluster.psql(f"SELECT count(*) FROM {t}", dbname=DB)) for t in TABLES}


def wal_bytes(cluster: PgCluster, since: str) -> int:
    return int(cluster.psql(f"SELECT pg_current_wal_lsn() - '{since}'::pg_lsn"))


def run(args: argparse.Namespace, base: Path, info: dict[str, Any]) -> None:
    work = cm.postgres_dir(base / "work", 0o755)
    launcher = cm.build_launcher(base / "launcher")
    key = cm.make_age_key(work)
    repo = cm.postgres_dir(work / "repo", 0o750)
    conf = cm.write_pgvault_config(work / "pgvault.yaml", {
        "cluster": "bench", "repository.url": str(repo), "encryption.age_recipients": [key.recipient],
        "encryption.age_identity_file": str(key.identity_file)})
    settings = {**datagen.SERVER_SETTINGS, "archive_mode": "on",
                "archive_command": cm.pgvault_archive_command(launcher, conf)}
    cluster = PgCluster.create(args.major, base / "pg", settings=settings)
    info["server_version"] = cluster.bindir.version
    try:
        _scenario(args, cluster, launcher, conf, base, info)
    finally:
        cluster.stop(mode="immediate")
        cm.kill_strays(str(base))


def _pgvault(launcher: Path, conf: Path, cluster: PgCluster, args: list[str], *, as_postgres: bool,
             extra: dict[str, str] | None = None, timeout: float = 7200) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGVAULT_")) or k == "PGVAULT_POSTGRES_BIN_DIRS"}
    env.update(cluster.env(), PGVAULT_CONFIG=str(conf), **(extra or {}))
    cmd = [str(launcher), *args]
    r = subprocess.run(cm.as_postgres(cmd) if as_postgres else cmd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"pgvault {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    for line in r.stderr.splitlines():
        if line.startswith("recover-table:"):
            log("  " + line)
    return dict(json.loads(r.stdout))


def _scenario(args: argparse.Namespace, cluster: PgCluster, launcher: Path, conf: Path, base: Path,
              info: dict[str, Any]) -> None:
    log(f"loading the sample database at scale {args.scale}")
    t0 = time.monotonic()
    cluster.load_sample(DB, scale=args.scale, timeout=7200)
    info["load_seconds"] = round(time.monotonic() - t0, 1)
    info["db_size_bytes"] = int(cluster.psql(f"SELECT pg_database_size('{DB}')"))
    info["cluster_size_bytes"] = int(cluster.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
    info["table_bytes"] = {t: int(cluster.psql(f"SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM "
                                               f"pg_partition_tree('{t}')), pg_total_relation_size('{t}'))", dbname=DB))
                           for t in TABLES}
    log(f"  {info['db_size_bytes'] / MiB:,.0f} MiB in {info['load_seconds']} s")
    cm.switch_and_wait(cluster, 600)
    log("base backup")
    t0 = time.monotonic()
    backup = _pgvault(launcher, conf, cluster, ["basebackup", "--json", "--archive-timeout", "600"], as_postgres=True)["backup"]
    info["basebackup_seconds"] = round(time.monotonic() - t0, 1)
    start = cluster.psql("SELECT pg_current_wal_lsn()")
    log(f"workload: {args.wal_mb} MiB of WAL (configs updated in batches, audited into config_history)")
    t0 = time.monotonic()
    n = 0
    while wal_bytes(cluster, start) < args.wal_mb * MiB:
        cluster.psql(f"UPDATE configs SET value = jsonb_build_object('bench', {n}, 'was', value -> 'was') "
                     f"WHERE id % 50 = {n % 50}", dbname=DB)
        n += 1
    info["workload_batches"] = n
    info["workload_seconds"] = round(time.monotonic() - t0, 1)
    at_target = counts(cluster)
    import psycopg

    env = cluster.env()
    with psycopg.connect(host=env["PGHOST"], port=int(env["PGPORT"]), user=env["PGUSER"], password=env["PGPASSWORD"],
                         dbname=DB) as conn:
        xid = str(conn.execute("SELECT pg_current_xact_id()").fetchone()[0])  # type: ignore[index]
        target_lsn = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]
        t0 = time.monotonic()
        conn.execute("DELETE FROM organizations")
    info["delete_seconds"] = round(time.monotonic() - t0, 1)
    info["wal_to_target_bytes"] = int(cluster.psql(f"SELECT '{target_lsn}'::pg_lsn - '{backup['start_lsn']}'::pg_lsn"))
    cluster.psql("INSERT INTO organizations (slug, name) VALUES ('after-1', 'After'); "
                 "INSERT INTO projects (organization_id, name, environment) SELECT id, 'p', 'production' "
                 "FROM organizations WHERE slug = 'after-1'", dbname=DB)
    after = counts(cluster)
    log("archiving everything (the DELETE's WAL too)")
    cm.switch_and_wait(cluster, 1800)
    started = cluster.psql("SELECT pg_postmaster_start_time()")
    tmp = postgres_tmpdir("pgvault-bench-recover-scratch-")
    log("recover-table --mode missing-rows, four tables, --target-xid X --target-exclusive")
    t0 = time.monotonic()
    tables = [x for t in TABLES for x in ("--table", f"public.{t}")]
    doc = _pgvault(launcher, conf, cluster, ["recover-table", "--json", *tables, "--database", DB, "--mode", "missing-rows",
                                             "--target-xid", xid, "--target-exclusive", "--pgvault-command", str(launcher)],
                   as_postgres=False, extra={"TMPDIR": str(tmp)})
    info["recover_wall_seconds"] = round(time.monotonic() - t0, 1)
    info["phases"] = doc["phases"]
    info["segments_replayed"] = doc["recovery"]["segments_restored"]
    info["results"] = [{k: r[k] for k in ("table", "rows_at_target", "rows_before", "inserted", "rows_after")}
                       for r in doc["results"]]
    now = counts(cluster)
    ok = all(now[t] == at_target[t] + after[t] for t in TABLES)  # after[t]: only rows written since the DELETE
    info["verified"] = ok and cluster.psql("SELECT pg_postmaster_start_time()") == started and not any(tmp.iterdir())
    shutil.rmtree(tmp, ignore_errors=True)
    if not info["verified"]:
        raise RuntimeError(f"verification failed: now {now}, at target {at_target}, after the delete {after}")


def model(info: dict[str, Any]) -> list[str]:
    """Each phase as a rate of what it grows with, and the 100 GB figure that follows."""
    ph = info["phases"]
    cluster_b, wal_b = info["cluster_size_bytes"], info["wal_to_target_bytes"]
    tables_b = sum(info["table_bytes"].values())
    unpack = cluster_b / MiB / max(ph["unpack"], 1e-3)
    replay = wal_b / MiB / max(ph["replay"], 1e-3)
    dump = tables_b / MiB / max(ph["dump"], 1e-3)
    load = tables_b / MiB / max(ph["load"], 1e-3)
    g100 = 100 * 1024
    lines = [
        f"unpack  {ph['unpack']:7.1f} s  {unpack:6.0f} MiB/s of cluster ({cluster_b / MiB:,.0f} MiB)",
        f"replay  {ph['replay']:7.1f} s  {replay:6.0f} MiB/s of WAL since the backup ({wal_b / MiB:,.0f} MiB, "
        f"{info['segments_replayed']} segments) incl. server start",
        f"dump    {ph['dump']:7.1f} s  {dump:6.0f} MiB/s of the recovered tables ({tables_b / MiB:,.0f} MiB on disk)",
        f"load    {ph['load']:7.1f} s  {load:6.0f} MiB/s of the recovered tables (one transaction, verified)",
        f"total   {info['recover_wall_seconds']:7.1f} s wall (command start to exit)",
        "model for a 100 GiB cluster whose recovered tables are X GiB, with W GiB of WAL since the base backup:",
        f"  unpack {g100 / unpack / 60:.0f} min + replay {1024 / replay / 60:.1f} min per GiB of WAL + "
        f"dump {1024 / dump / 60:.1f} min and load {1024 / load / 60:.1f} min per GiB of recovered tables",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    return cm.sample_scenario_main(argv, __doc__.split("\n\n")[0], "pgvault-bench-recover-",
                                   "MiB of WAL the workload writes between backup and DELETE", run, model,
                                   lambda info: "phases" in info)


if __name__ == "__main__":
    sys.exit(main())
