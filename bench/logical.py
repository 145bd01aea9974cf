#!/usr/bin/env python3
"""Benchmark: pgvault's logical backup and restore against the plain pg_dump / gzip / psql way.

Not a test: a report.  It starts a throwaway PostgreSQL server (tests/support/pgcluster.py), fills
one database with realistic shop data (customers, products, orders, order items and jsonb-heavy
events: names, e-mails, addresses, timestamps, numerics, Zipf-distributed English text), then times

  a. ``pg_dump -d db > /dev/null``                       pg_dump alone (plain format)
  b. ``pg_dump -d db | gzip > file``                     the plain alternative (gzip -6)
  c. ``pgvault backup -d db``                            defaults (zstd, 2 threads) + age encryption,
     ``pgvault backup -d db --no-exact-counts``          and without counting rows
  d. ``gunzip < file | psql -d new``                     restore of b's plain SQL
     ``pgvault restore ID -d db -t new --jobs 2`` / ``--jobs 1``

and prints wall seconds, stored bytes, CPU per process, pgvault's peak RSS and the ratios the
project targets, each marked PASS or MISS.  Every run is repeated ``--repeat`` times; the fastest
counts.  Exit status: 0 when every step ran (whatever the ratios), 1 when a step failed, 130 on
Ctrl-C.  The server and all temporary files are removed at the end in every case.

How memory and CPU are measured
  A sampler thread reads ``/proc/<pid>/status`` (VmRSS, VmHWM) and ``/proc/<pid>/stat`` (utime,
  stime) of every process of the measured tree every 50 ms; descendants are found through their
  parent pid.  "pgvault peak RSS" is the VmHWM (the kernel's own high-water mark, so no peak
  between two samples is missed) of pgvault's *python process alone*; pg_dump's / pg_restore's
  own peaks are reported separately, and the peak of the whole tree's summed RSS as well.  As a
  cross-check, ``os.wait4`` gives each direct child's ``ru_maxrss`` (the max over the child and
  its reaped descendants, not a sum) and its total CPU including descendants.  Server CPU is the
  growth of the postmaster's own + reaped children's CPU plus that of its live children.

Run it with the project's virtualenv (``source scripts/env.sh``), e.g.::

    python bench/logical.py --size-gb 1 --major 15
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _datagen import SERVER_SETTINGS
from _logical_report import render, to_json
from _logical_run import Bench
from _procs import kill_live, log

from support.pgcluster import PgCluster, postgres_tmpdir


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--major", type=int, default=15, help="PostgreSQL major version of the server (default 15)")
    p.add_argument("--size-gb", type=float, default=1.0, help="database size in GiB, pg_database_size (default 1.0)")
    p.add_argument("--repeat", type=int, default=1, help="runs per step; the fastest counts (default 1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.size_gb <= 0:
        p.error("--repeat must be >= 1 and --size-gb > 0")
    for tool in ("age-keygen", "gzip"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not on PATH")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    base = postgres_tmpdir("pgvault-bench-")
    workdir = Path(tempfile.mkdtemp(prefix="pgvault-bench-work-", dir=os.environ.get("PGVAULT_TEST_TMPDIR") or "/tmp"))
    cluster: PgCluster | None = None
    bench: Bench | None = None
    error: str | None = None
    status = 0
    try:
        log(f"starting PostgreSQL {args.major} in {base}")
        cluster = PgCluster.create(args.major, base / "pg", settings=SERVER_SETTINGS)
        bench = Bench(args, cluster, workdir)
        bench.run_all()
    except KeyboardInterrupt:
        error, status = "interrupted", 130
    except Exception as e:  # noqa: BLE001 - StepError or a bug: reported, then a nonzero exit
        error, status = f"{type(e).__name__}: {e}", 1
    finally:
        kill_live()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    if bench is not None:
        print(to_json(bench, error) if args.json else render(bench, error), flush=True)
    elif error:
        print(f"FAILED: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
