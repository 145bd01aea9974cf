#!/usr/bin/env python3
"""Benchmark: incremental base backups, page checksum checking and delta restore (issue 13).

Not a test: a report.  It starts a throwaway PostgreSQL server with data checksums (bench
settings: fsync off, autovacuum off), ``archive_command = pgvault wal push`` into a local
repository (age + zstd, the defaults), fills ``--size-gb`` GiB in 8 tables of equal size, freezes
them (hint bits set, as on any table read since it was written), and then, ``--rounds`` times:

  1. two full base backups, page checksums checked (``backup.page_checksums: fail``) and not
     (``off``), in alternating order, each after reading the data directory once (so both find it
     in the page cache): the cost of checking;
  2. changes about ``--change-pct`` % of the pages, in one of two patterns (alternating rounds):
       spread   every table: a contiguous run of rows rewritten with rows of the same width (the old
                pages get their row versions deleted, the new versions go to the end), half the
                percentage each;
       hot      one table takes the whole change (the others are untouched);
  3. an ``incr`` base backup against the newest full: its time and stored size against the full's;
  4. restore-cluster (layout only, no recovery) of the incr into an empty directory, against
     ``restore-cluster --delta`` of the same incr over a directory holding the restored full: both
     produce the same files; the delta keeps those whose SHA-256 matches.

Reported per round and as medians: seconds, stored bytes, and the ratios the issue sets goals for:
checksums on / off ≤ 1.10; incr / full stored ≤ 0.05; incr / full time ≤ 0.30; delta / full
restore time ≤ 0.30.  Exit 0 when every step ran.

Run it with the project's virtualenv, as root (the server and pgvault run as ``postgres``)::

    python bench/incremental.py --size-gb 1 --rounds 3 --json /tmp/incr.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as cm  # noqa: E402
from _procs import log  # noqa: E402

from support.cli import clean_env  # noqa: E402
from support.pgcluster import PgCluster, postgres_tmpdir  # noqa: E402

TABLES = 8
ROW_BYTES = 200  # about: 4 + 128 chars of text + tuple header and line pointer


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = postgres_tmpdir("pgvault-bench-incr-")
        self.launcher = cm.build_launcher(self.base / "launcher")
        self.key = cm.make_age_key(self.base)
        self.repo = cm.postgres_dir(self.base / "repo")
        self.config = cm.write_pgvault_config(self.base / "pgvault.yaml", {
            "cluster": "bench", "repository.url": str(self.repo), "encryption.age_recipients": [self.key.recipient],
            "encryption.age_identity_file": str(self.key.identity_file)})
        self.cluster = PgCluster.create(args.major, self.base / "pg", data_checksums=True, settings={
            "fsync": "off", "autovacuum": "off", "shared_buffers": "256MB", "max_wal_size": "4GB",
            "archive_mode": "on", "archive_command": cm.pgvault_archive_command(self.launcher, self.config)})
        self.rows = int(args.size_gb * (1 << 30) / ROW_BYTES / TABLES)
        self.rounds: list[dict[str, Any]] = []

    def env(self, **extra: str) -> dict[str, str]:
        return dict(clean_env(**self.cluster.env(), PGVAULT_CONFIG=str(self.config), **extra))

    def fill(self) -> None:
        t0 = time.monotonic()
        for k in range(TABLES):
            self.cluster.psql(f"CREATE TABLE t{k}(i int PRIMARY KEY, t text);"
                              f" INSERT INTO t{k} SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, {self.rows}) g")
        self.cluster.psql("VACUUM (FREEZE, ANALYZE)")
        self.cluster.psql("CHECKPOINT")
        size = self.cluster.psql("SELECT pg_database_size('postgres')")
        log(f"filled {int(size) / 2**30:.2f} GiB in {time.monotonic() - t0:.0f}s")

    def pgvault(self, args: list[str], **extra: str) -> tuple[float, dict[str, Any]]:
        cm.switch_and_wait(self.cluster, 300)
        self.cluster.psql("CHECKPOINT")
        t0 = time.monotonic()
        # /usr/bin/time reports the largest peak RSS of the processes it waited for, pgvault's included.
        r = subprocess.run(["/usr/bin/time", "-f", "PEAK_RSS_KB %M", *cm.as_postgres([str(self.launcher), *args, "--json"])],
                           env=self.env(**extra), capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"pgvault {args[0]} exited {r.returncode}: {r.stderr[-2000:]}")
        doc = json.loads(r.stdout)
        peak = [int(ln.split()[1]) for ln in r.stderr.splitlines() if ln.startswith("PEAK_RSS_KB ")]
        doc["peak_rss_mb"] = round(peak[-1] / 1024, 1) if peak else None
        return wall, doc

    def warm(self) -> None:
        """Read the data directory once, so that every timed backup finds it in the page cache (a
        restore just before evicts part of it: without this, whichever backup ran first read from disk)."""
        for path in self.cluster.datadir.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass
        os.sync()  # and the restores' writeback is not still under way when the clock starts

    def backup(self, kind: str, checksums: str = "fail") -> tuple[float, dict[str, Any]]:
        self.warm()
        wall, doc = self.pgvault(["basebackup", "--type", kind, "--archive-timeout", "300"],
                                 PGVAULT_BACKUP_PAGE_CHECKSUMS=checksums)
        return wall, doc["backup"] | {"peak_rss_mb": doc["peak_rss_mb"]}

    def change(self, pattern: str, rnd: int) -> None:
        share = self.args.change_pct / 100
        if pattern == "spread":
            n = int(self.rows * share / 2)
            for k in range(TABLES):
                lo = 1 + (rnd * 7919 * (k + 1)) % max(1, self.rows - n)
                self.cluster.psql(f"UPDATE t{k} SET t = repeat(md5((i + {rnd})::text), 4) WHERE i BETWEEN {lo} AND {lo + n}")
        else:
            k = rnd % TABLES
            n = int(self.rows * TABLES * share / 2)
            self.cluster.psql(f"UPDATE t{k} SET t = repeat(md5((i + {rnd})::text), 4) WHERE i <= {min(n, self.rows)}")

    def restore(self, backup_id: str, dest: Path, *more: str) -> float:
        t0 = time.monotonic()
        cm.run_checked([str(self.launcher), "restore-cluster", "-D", str(dest), "--backup", backup_id,
                        "--target-immediate", "--pgvault-command", str(self.launcher), *more],
                       "restore-cluster", env=self.env(), timeout=3600)
        return time.monotonic() - t0

    def one_round(self, rnd: int) -> dict[str, Any]:
        r: dict[str, Any] = {"round": rnd}
        order = ["fail", "off"] if rnd % 2 == 0 else ["off", "fail"]
        for checks in order:
            wall, b = self.backup("full", checks)
            r[f"full_{checks}_s"] = wall
            r[f"full_{checks}_stored"] = b["stored_size"]
            r[f"full_{checks}_peak_rss_mb"] = b["peak_rss_mb"]
            full = b
        pattern = "spread" if rnd % 2 == 0 else "hot"
        r["pattern"] = pattern
        self.change(pattern, rnd)
        wall, incr = self.backup("incr")
        assert incr["backup_type"] == "incr" and incr["reference"] == full["backup_id"], incr["type_reason"]
        r.update(incr_s=wall, incr_stored=incr["stored_size"], full_s=r["full_fail_s"], full_stored=r["full_fail_stored"])
        # Restores: the incr into an empty directory; the full's restore then the incr --delta over it.
        empty = self.base / f"r{rnd}-empty"
        r["restore_full_s"] = self.restore(incr["backup_id"], empty)
        shutil.rmtree(empty)
        over = self.base / f"r{rnd}-delta"
        self.restore(full["backup_id"], over)
        r["restore_delta_s"] = self.restore(incr["backup_id"], over, "--delta")
        shutil.rmtree(over)
        r["checksum_ratio"] = r["full_fail_s"] / r["full_off_s"]
        r["incr_size_ratio"] = r["incr_stored"] / r["full_stored"]
        r["incr_time_ratio"] = r["incr_s"] / r["full_s"]
        r["delta_restore_ratio"] = r["restore_delta_s"] / r["restore_full_s"]
        log(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
        return r

    def close(self) -> None:
        try:
            self.cluster.stop(mode="immediate")
        finally:
            cm.kill_strays(str(self.base))
            shutil.rmtree(self.base, ignore_errors=True)


GOALS = {"checksum_ratio": 1.10, "incr_size_ratio": 0.05, "incr_time_ratio": 0.30, "delta_restore_ratio": 0.30}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--change-pct", type=float, default=2.0)
    p.add_argument("--major", type=int, default=18)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    bench = Bench(args)
    try:
        bench.fill()
        rounds = [bench.one_round(i) for i in range(args.rounds)]
    finally:
        bench.close()
    summary: dict[str, Any] = {}
    # Checking costs the same whatever changed: one figure over every round, the geometric mean
    # (each round's order of the two backups alternates, so this balances any order effect).
    ck = [r["checksum_ratio"] for r in rounds]
    gm = statistics.geometric_mean(ck)
    summary["checksum_ratio[geomean]"] = {"median": round(gm, 3), "goal": GOALS["checksum_ratio"],
                                          "met": gm <= GOALS["checksum_ratio"]}
    for key, goal in GOALS.items():
        for pattern in ("spread", "hot", "all"):
            values = [r[key] for r in rounds if pattern == "all" or r["pattern"] == pattern]
            if values:
                med = statistics.median(values)
                summary[f"{key}[{pattern}]"] = {"median": round(med, 3), "goal": goal, "met": med <= goal}
    for k, v in summary.items():
        print(f"{k:32s} {v['median']:7.3f}  goal <= {v['goal']:.2f}  {'PASS' if v['met'] else 'MISS'}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "summary": summary, "args": vars(args) | {"json": str(args.json)}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
