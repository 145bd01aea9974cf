#!/usr/bin/env python3
"""Benchmark: how fast does ``pgvault wal find`` read archived WAL, against plain ``pg_waldump``
over the same segments already decrypted on local disk?  (Issue 11, part 2.)

Not a test: a report.  It

  1. starts a throwaway PostgreSQL server (fsync off, synchronous_commit off, max_wal_size 16GB),
     loads ``pgbench -i -s SCALE`` with archive_command = true, then archives through pgvault
     (``wal push``: zstd + age, local repository) and takes a base backup (the anchor wal find needs);
  2. runs ``pgbench -c 4 -j 2 -T DURATION -N -M prepared`` and then deletes 1 % of
     ``pgbench_accounts`` (``aid % 100 = 0``) in one transaction, switches and waits until all is archived;
  3. times ``pgvault wal find --table public.pgbench_accounts --json`` (fetch + decrypt + decompress
     + verify each segment, pg_waldump, the Python tracker), and checks it names the DELETE with
     the right row count;
  4. fetches the same segments once more into a local directory (in-process, one after another:
     the cost of the pipeline alone) and times plain pg_waldump over them: every record to
     /dev/null, and with wal find's resource-manager filter (-r Heap/Transaction/Storage/Standby)
     piped into ``wc -l`` (both with ``-e`` at the end of the last segment, as wal find runs it:
     without it pg_waldump waits 5 s for the next file before it gives up).

Exit status 0 when every step ran and wal find found the DELETE, 1 otherwise.  The server and all
files are removed at the end.  Run with the project's virtualenv (``source scripts/env.sh``)::

    python bench/wal_find.py --major 18 --duration 40
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as cm  # noqa: E402
from _procs import MiB, StepError, log  # noqa: E402

from pgvault.config import load_settings  # noqa: E402
from pgvault.operations.archive.push_fetch import fetch  # noqa: E402
from pgvault.operations.context import build_context  # noqa: E402
from pgvault.pg import wal  # noqa: E402
from support.pgcluster import PgCluster, postgres_tmpdir  # noqa: E402

SERVER_SETTINGS: dict[str, str | int | bool] = {
    "shared_buffers": "256MB", "max_wal_size": "16GB", "synchronous_commit": "off", "archive_mode": "on",
    "archive_command": "true", "jit": "off",
}
RMGRS = ["-r", "Heap", "-r", "Transaction", "-r", "Storage", "-r", "Standby"]


def _timed(cmd: list[str], *, env: dict[str, str], shell_tail: str = "") -> tuple[float, str]:
    t = time.monotonic()
    if shell_tail:
        r = subprocess.run(" ".join(map(str, cmd)) + shell_tail, shell=True, capture_output=True, text=True,
                           env=env, timeout=1800, check=False)
    else:
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, timeout=1800,
                           check=False)
    return time.monotonic() - t, (r.stdout if shell_tail else "") + r.stderr


def run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    work = cm.postgres_dir(base / "work", 0o755)
    launcher = cm.build_launcher(base / "launcher")
    key = cm.make_age_key(work)
    log(f"starting PostgreSQL {args.major}")
    cluster = PgCluster.create(args.major, base / "pg", settings=SERVER_SETTINGS)
    try:
        env = cluster.client_env()
        pgbench = str(cluster.bindir.program("pgbench"))
        log(f"pgbench -i -s {args.scale} (archive_command = true)")
        cm.run_checked([pgbench, "-i", "-q", "-s", str(args.scale), "postgres"], "pgbench -i", env=env, timeout=1800)
        repo = cm.postgres_dir(work / "repo", 0o750)
        conf = cm.write_pgvault_config(work / "pgvault.yaml", {
            "cluster": "bench", "repository.url": str(repo), "encryption.age_recipients": [key.recipient],
            "encryption.age_identity_file": str(key.identity_file)})
        cm.set_archive_command(cluster, cm.pgvault_archive_command(launcher, conf))
        cm.switch_and_wait(cluster, 120)
        pg_env = {**env, "PGVAULT_CONFIG": str(conf), "PGDATABASE": "postgres"}
        cm.run_checked(cm.as_postgres([launcher, "basebackup", "--json"]), "basebackup", env=pg_env, timeout=1800)
        log(f"pgbench -c 4 -j 2 -T {args.duration} -N -M prepared")
        cm.run_checked([pgbench, "-c", "4", "-j", "2", "-T", str(args.duration), "-N", "-M", "prepared", "postgres"],
                       "pgbench", env=env, timeout=args.duration + 600)
        out = cluster.psql("WITH d AS (DELETE FROM pgbench_accounts WHERE aid % 100 = 0 RETURNING 1) "
                           "SELECT txid_current(), count(*) FROM d")
        xid, deleted = (int(x) for x in out.split("|"))
        cm.switch_and_wait(cluster, 600)
        cm.wait_no_ready(cluster, 600)

        log("pgvault wal find --table public.pgbench_accounts")
        find_env = {k: v for k, v in pg_env.items() if k != "PGVAULT_POSTGRES_BIN_DIRS"} | {
            "PGVAULT_POSTGRES_BIN_DIRS": os.environ.get("PGVAULT_POSTGRES_BIN_DIRS", "")}
        t = time.monotonic()
        doc = json.loads(cm.run_checked([str(launcher), "wal", "find", "--table", "public.pgbench_accounts", "--json",
                                         "--no-live-check"], "wal find", env=find_env, timeout=3600))
        find_s = time.monotonic() - t
        found = [e for e in doc["events"] if e["xid"] == xid]
        ok = bool(found) and found[0]["rows_deleted"] == deleted

        log("the same segments, fetched to local disk, and plain pg_waldump")
        settings = load_settings(str(conf))
        ctx = build_context(settings, environ={**os.environ, "PGVAULT_CONFIG": str(conf)})
        seg_dir = work / "segments"
        seg_dir.mkdir()
        names = _names(doc["first_segment"], doc["last_segment"])
        t = time.monotonic()
        for name in names:
            fetch(ctx, name, str(seg_dir / name), pgdata=str(seg_dir), foreground=False)
        fetch_s = time.monotonic() - t
        waldump = doc["pg_waldump"]
        wd_env = {**os.environ, "TZ": "UTC"}
        # -e at the end of the last segment: without it pg_waldump waits 5 s for the next file.
        last_no = wal.parse_segment_name(names[-1], 16 * MiB)[1]
        end = wal.segment_start_lsn(last_no + 1, 16 * MiB)
        start = ["-p", str(seg_dir), "-t", "1", "-s", doc["start_lsn"], "-e", str(end)]
        full_s, full_err = _timed([waldump, *start], env=wd_env)
        filt_s, filt_out = _timed([waldump, *start, *RMGRS], env=wd_env, shell_tail=" 2>/dev/null | wc -l")
        total_bytes = sum(p.stat().st_size for p in seg_dir.iterdir())
        return {
            "major": args.major, "server": cluster.bindir.version, "scale": args.scale, "duration": args.duration,
            "segments": len(names), "wal_bytes": total_bytes, "records_parsed": doc["records"],
            "deleted_rows": deleted, "xid": xid, "found": found[0] if found else None, "ok": ok,
            "wal_find_s": round(find_s, 2), "wal_find_internal_s": doc["seconds"],
            "wal_find_fetch_thread_s": doc["fetch_seconds"], "wal_find_fetch_wait_s": doc["fetch_wait_seconds"],
            "wal_find_waldump_s": doc["waldump_seconds"], "fetch_sequential_s": round(fetch_s, 2),
            "pg_waldump_full_s": round(full_s, 2), "pg_waldump_filtered_s": round(filt_s, 2),
            "pg_waldump_filtered_lines": int(filt_out.split()[0]) if filt_out.split() else None,
            "pg_waldump_full_stderr_tail": full_err.strip().splitlines()[-1:] if full_err.strip() else [],
        }
    finally:
        with contextlib.suppress(Exception):
            cluster.stop(mode="immediate")
        cm.kill_strays(str(base))
        with contextlib.suppress(Exception):
            cluster.destroy()


def _names(first: str, last: str) -> list[str]:
    seg = 16 * MiB  # the server's default; wal find read these on one timeline
    tli, lo = wal.parse_segment_name(first, seg)
    hi = wal.parse_segment_name(last, seg)[1]
    return [wal.segment_name(tli, n, seg) for n in range(lo, hi + 1)]


def render(r: dict[str, Any]) -> str:
    mb = r["wal_bytes"] / MiB
    lines = [
        f"wal find benchmark — PostgreSQL {r['server']}, pgbench -s {r['scale']} -T {r['duration']} -N, "
        f"then DELETE 1 % of pgbench_accounts ({r['deleted_rows']} rows, xid {r['xid']})",
        f"  WAL searched: {r['segments']} segments, {mb:,.0f} MiB; {r['records_parsed']:,} records parsed by the tracker",
        f"  found the DELETE with the right count: {'yes' if r['ok'] else 'NO'} ({r['found']})",
        f"  pgvault wal find (fetch+decrypt+verify, pg_waldump, parse): {r['wal_find_s']:.2f} s = "
        f"{mb / r['wal_find_s']:,.0f} MiB/s",
        f"    of which waiting for segments {r['wal_find_fetch_wait_s']:.2f} s, pg_waldump runs with the parsing "
        f"{r['wal_find_waldump_s']:.2f} s (fetch threads busy {r['wal_find_fetch_thread_s']:.2f} s in all)",
        f"  fetch of the same segments alone (sequential, in-process): {r['fetch_sequential_s']:.2f} s = "
        f"{mb / r['fetch_sequential_s']:,.0f} MiB/s",
        f"  plain pg_waldump on local segments, every record to /dev/null: {r['pg_waldump_full_s']:.2f} s = "
        f"{mb / r['pg_waldump_full_s']:,.0f} MiB/s",
        f"  plain pg_waldump -r Heap/Transaction/Storage/Standby | wc -l: {r['pg_waldump_filtered_s']:.2f} s "
        f"({r['pg_waldump_filtered_lines']:,} lines)",
        f"  ratio wal find / plain pg_waldump (full): {r['wal_find_s'] / r['pg_waldump_full_s']:.1f}x; "
        f"/ (fetch + filtered pg_waldump): {r['wal_find_s'] / (r['fetch_sequential_s'] + r['pg_waldump_filtered_s']):.2f}x",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--major", type=int, default=18)
    p.add_argument("--scale", type=int, default=30, help="pgbench -i -s (default 30)")
    p.add_argument("--duration", type=int, default=40, help="pgbench -T seconds (default 40)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    base = postgres_tmpdir("pgvault-bench-walfind-")
    try:
        r = run(args, base)
    except (StepError, KeyboardInterrupt) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(r, indent=2) if args.json else render(r), flush=True)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
