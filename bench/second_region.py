#!/usr/bin/env python3
"""Benchmark: losing a region (issue 11 part 3) — ``repo sync`` throughput and the time from
``restore-cluster`` to a promoted server, restoring from the second region alone.

Not a test: a report.  Two SeaweedFS servers stand for two regions (tests/support/seaweed.py,
same credentials).  A throwaway PostgreSQL server (the settings of bench/logical.py) is filled with
at least ``--size-gb`` GiB of realistic data (bench/_datagen.py) while archive_command is ``true``;
then archive_command becomes ``pgvault wal push %p`` into region A (zstd + age, as configured in
production), and:

  1. ``pgvault basebackup`` into region A (as the postgres OS user), then a WAL switch;
  2. ``pgvault repo sync --to region-b`` (timed: bytes copied / wall = throughput), and a second
     run, which must copy nothing (its wall time is the cost of a sync with nothing to do);
  3. the server is stopped and region A's SeaweedFS is stopped entirely;
  4. ``pgvault --repository region-b restore-cluster --start`` into a new directory, timed from the
     command to a promoted server; every table must hold the source's row count.

Run it with the project's virtualenv (``source scripts/env.sh``), as root::

    python bench/second_region.py --size-gb 1 --major 18 [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402  (puts tests/ and src/ on sys.path)
import _datagen as datagen  # noqa: E402
import psycopg  # noqa: E402
from _procs import StepError, log  # noqa: E402

from support.cli import clean_env  # noqa: E402
from support.pgcluster import PgCluster, free_port  # noqa: E402
from support.seaweed import SeaweedServer  # noqa: E402

MiB = 1 << 20


def run(cmd: list[str], env: dict[str, str], what: str, timeout: float = 3600) -> tuple[float, str]:
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise StepError(f"{what} exited {r.returncode}: {' | '.join(r.stderr.strip().splitlines()[-8:])}")
    return wall, r.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--major", type=int, default=18)
    p.add_argument("--parallel", type=int, default=4, help="repo sync --parallel")
    p.add_argument("--json", metavar="PATH", help="also write the report here")
    a = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="pgvault-bench-region-"))
    base.chmod(0o755)
    report: dict[str, Any] = {"size_gb_requested": a.size_gb, "major": a.major, "parallel": a.parallel,
                              "cpus": os.cpu_count()}
    servers: list[SeaweedServer] = []
    cluster: PgCluster | None = None
    dest: Path | None = None
    try:
        region_a = SeaweedServer(base / "region-a")
        region_b = SeaweedServer(base / "region-b", access_key=region_a.access_key, secret_key=region_a.secret_key)
        for s in (region_a, region_b):
            (base / s.workdir.name).mkdir(exist_ok=True)
            s.start()
            servers.append(s)
        bucket_a, bucket_b = region_a.create_bucket(), region_b.create_bucket()
        creds = {"AWS_ACCESS_KEY_ID": region_a.access_key, "AWS_SECRET_ACCESS_KEY": region_a.secret_key,
                 "AWS_DEFAULT_REGION": region_a.region}
        os.environ.update(creds)  # the server (archive_command, restore_command) inherits them
        work = cm.postgres_dir(base / "work", 0o755)
        launcher = cm.build_launcher(base / "launcher")
        key = cm.make_age_key(work)
        conf = cm.write_pgvault_config(work / "pgvault.yaml", {
            "cluster": "bench", "repository.url": f"s3://{bucket_a}/prod",
            "repository.s3.endpoint_url": region_a.endpoint_url, "repository.s3.force_path_style": True,
            "encryption.age_recipients": [key.recipient], "encryption.age_identity_file": str(key.identity_file),
            "repositories": {"region-b": {"url": f"s3://{bucket_b}/prod",
                                          "s3": {"endpoint_url": region_b.endpoint_url, "force_path_style": True}}},
        })
        log(f"starting PostgreSQL {a.major} and generating >= {a.size_gb} GiB")
        cluster = PgCluster.create(a.major, base / "pg", settings={**datagen.SERVER_SETTINGS, "archive_mode": "on",
                                                                    "archive_command": "true"})
        gen = datagen.generate(cluster, a.size_gb)
        report["db_size_bytes"] = gen["db_size_bytes"]
        report["rows"] = gen["rows"]
        cluster.set_config(archive_command=cm.pgvault_archive_command(launcher, conf))
        cluster.psql("SELECT pg_reload_conf()")
        cm.switch_and_wait(cluster, 300)
        env = clean_env(**cluster.env(), **creds, PGVAULT_CONFIG=str(conf))

        log("basebackup into region A")
        wall, out = run(cm.as_postgres([str(launcher), "basebackup", "--json", "--archive-timeout", "600"]), env,
                        "basebackup")
        backup = json.loads(out)["backup"]
        report["basebackup"] = {"seconds": round(wall, 1), "stored_bytes": backup["stored_size"],
                                "raw_bytes": backup["raw_size"]}
        cm.switch_and_wait(cluster, 300)

        log("repo sync to region B")
        wall, out = run([str(launcher), "repo", "sync", "--to", "region-b", "--parallel", str(a.parallel), "--json"],
                        env, "repo sync")
        r = json.loads(out)["runs"][0]
        report["sync"] = {"seconds": round(wall, 1), "bytes": r["bytes_copied"], "wal_files": r["wal_copied"],
                          "backups": r["backups_copied"], "mb_per_s": round(r["bytes_copied"] / 1e6 / wall, 1),
                          "mb_per_s_inside": r["mb_per_second"]}
        wall, out = run([str(launcher), "repo", "sync", "--to", "region-b", "--json"], env, "second repo sync")
        r2 = json.loads(out)["runs"][0]
        if r2["bytes_copied"] or r2["wal_copied"] or r2["backups_copied"]:
            raise StepError(f"the second sync copied something: {r2}")
        report["sync_again"] = {"seconds": round(wall, 1), "bytes": r2["bytes_copied"]}

        log("region A is lost")
        cluster.stop(mode="immediate")
        region_a.stop()

        log("restore-cluster from region B")
        dest = cm.postgres_dir(base / "restored", 0o700)
        port = free_port()
        cmd = [str(launcher), "--repository", "region-b", "restore-cluster", "--data-dir", str(dest), "--start",
               "--port", str(port), "--pgvault-command", str(launcher), "--timeout", "3600", "--json"]
        wall, out = run(cmd, clean_env(**creds, PGVAULT_CONFIG=str(conf)), "restore-cluster")
        doc = json.loads(out)
        rec = doc.get("recovery") or {}
        if rec.get("state") != "promoted":
            raise StepError(f"recovery state {rec.get('state')!r}, not promoted")
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname={datagen.DB} connect_timeout=10"
        with psycopg.connect(dsn, password=cluster.password, autocommit=True) as conn:
            for table, want in gen["rows"].items():
                got = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                if not got or int(got[0]) != want:
                    raise StepError(f"restored {table} has {got} rows, the source {want}")
        report["restore_from_b"] = {"seconds": round(wall, 1), "layout_s": doc.get("restore_seconds"),
                                    "recovery_s": rec.get("seconds"), "wal_files": rec.get("segments_restored"),
                                    "rows_checked": sum(gen["rows"].values())}
        log(json.dumps(report, indent=1))
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1))
        return 0
    except StepError as e:
        log(f"FAILED: {e}")
        report["error"] = str(e)
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1))
        return 1
    finally:
        if dest is not None and cluster is not None and (dest / "postmaster.pid").exists():
            subprocess.run(cm.as_postgres([str(cluster.bindir.program("pg_ctl")), "-D", str(dest), "-m", "immediate",
                                           "-w", "stop"]), capture_output=True, check=False)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.stop(mode="immediate")
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
