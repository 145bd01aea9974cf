#!/usr/bin/env python3
"""Benchmark: every row of issue 12's performance table in one interleaved run.

Not a test: a report.  One throwaway PostgreSQL server under the issue's conditions (fsync,
synchronous_commit and full_page_writes on, data checksums on, shared_buffers 512MB, max_wal_size
4GB) gets ``--size-gb`` of realistic data (bench/_datagen.py); then, ``--rounds`` times, in the
same order each round (A B C A B C ...):

  logical   (server running)  ``pg_dump -Fc -Z0 > /dev/null``, ``pg_dump | gzip > file``,
            ``pg_dump | zstd -3 -T2 | age > file``, ``pgvault backup`` (zstd, age), then
            ``gunzip | psql`` and ``pgvault restore --jobs 2`` (bench/_logical_run.py's steps)
  base      (server stopped; a fresh copy per tool, fresh repositories per round) pgvault
            basebackup with age, without encryption, pgBackRest full (zst level 3, process-max 2,
            unencrypted); then each restored to a promoted server (bench/physical.py's steps)
  wal-drain (a fresh copy per tool) a backlog of ``--drain-segments`` segments written while
            archive_command is empty, then drained by pgvault (age / none), pgBackRest async, cp,
            with archive_command as PostgreSQL calls it; CPU seconds per segment

Before every timed step: the archive backlog drained, CHECKPOINT, sync.  Each ratio is the median
of the per-round ratios; peak memory is VmHWM of pgvault's process (max over rounds).  Every row is
printed with the issue's goal and PASS/MISS.  ``--quick`` (tiny data, one round, a 3-segment
backlog) checks that every row still produces numbers, for CI.

Exit status: 0 when every step ran (whatever the figures), 1 when a step failed, 130 on Ctrl-C.
Run as root with the project's virtualenv (``source scripts/env.sh``)::

    python bench/perf.py --size-gb 1 --rounds 3
    python bench/perf.py --quick --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as cm  # noqa: E402
import _datagen as datagen  # noqa: E402
import _procs as pr  # noqa: E402
import archive  # noqa: E402
import physical  # noqa: E402
from _perf_report import ROW_KEYS, Round, render, to_json  # noqa: E402
from _perf_steps import LogicalBench, drain_round, logical_round, physical_round  # noqa: E402
from _procs import MiB, log  # noqa: E402

from support.pgcluster import PgCluster, postgres_tmpdir  # noqa: E402

#: The issue's conditions: default durability (the harness turns fsync off: back on), bigger caches.
SERVER_SETTINGS: dict[str, str | int | bool] = {
    **physical.SERVER_SETTINGS,
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
}
SHOWN = ("fsync", "synchronous_commit", "full_page_writes", "data_checksums", "shared_buffers", "max_wal_size",
         "wal_segment_size", "checkpoint_timeout", "autovacuum", "server_version")
QUICK = {"size_gb": 0.02, "rounds": 1, "drain_segments": 3}


class Perf:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base
        self.rows = args.rows
        self.rounds: list[Round] = []
        self.errors: list[str] = []
        self.info: dict[str, Any] = {}
        self.pb = physical.Bench(argparse.Namespace(pgbackrest_cipher="none", restore_timeout=args.restore_timeout), base)
        self.lb: LogicalBench | None = None

    def wants(self, *rows: str) -> bool:
        return any(r in self.rows for r in rows)

    def run(self) -> None:
        a = self.args
        self.info.update(host=platform.node(), cpus=os.cpu_count(), python=platform.python_version(),
                         loadavg_start=pr.loadavg(), rounds=a.rounds, quick=a.quick, size_gb_requested=a.size_gb,
                         drain_segments=a.drain_segments, rows=list(self.rows), loadavg_rounds=[],
                         pgbackrest_version=cm.pgbackrest_version(), pgbackrest_settings=self.pb.br.settings())
        log(f"starting PostgreSQL {a.major} (data checksums on)")
        source = self.pb.source = PgCluster.create(a.major, self.base / "pg", settings=SERVER_SETTINGS,
                                                   data_checksums=True)
        self.info["conditions"] = {k: source.psql(f"SHOW {k}") for k in SHOWN}
        self.info["server_version"] = self.info["conditions"]["server_version"]
        log(f"generating >= {a.size_gb} GiB of data in {datagen.DB}")
        gen = datagen.generate(source, a.size_gb)
        self.info["data"] = gen
        self.pb.info["source_rows"] = gen["rows"]
        log(f"  {gen['db_size_bytes'] / MiB:,.0f} MiB in {gen['seconds']} s")
        if self.wants("logical", "stored", "restore"):
            workdir = self.base / "logical"
            workdir.mkdir()
            lb = self.lb = LogicalBench(argparse.Namespace(size_gb=a.size_gb, repeat=a.rounds), source, workdir)
            lb.info["source_rows"] = gen["rows"]
            log("warm-up pg_dump (untimed)")
            self.info["plain_dump_bytes"] = lb.plain_dump_size()
        for rnd in range(a.rounds):
            self.info["loadavg_rounds"].append(pr.loadavg())
            log(f"=== round {rnd + 1}/{a.rounds} (load average {pr.loadavg()})")
            self.rounds.append(self.one_round(rnd))
        self.info["loadavg_end"] = pr.loadavg()

    def one_round(self, rnd: int) -> Round:
        out: Round = {}
        source = self.pb.source
        assert source is not None
        if self.lb is not None:
            if not source.is_running():
                source.start()
                self.lb.runner = pr.Runner(self.lb.workdir, pr.postmaster_pid(source))
            try:
                out.update(logical_round(self.lb, rnd, restore=self.wants("restore")))
            except pr.StepError as e:
                self.errors.append(f"round {rnd + 1} logical: {e}")
                log(f"  FAILED: {e}")
        if self.wants("base", "base-restore", "base-mem", "wal-drain"):
            if source.is_running():
                self.pb.stop_source()
            if self.wants("base", "base-restore", "base-mem"):
                out.update(physical_round(self.pb, rnd, restore=self.wants("base-restore")))
            if self.wants("wal-drain"):
                out.update(drain_round(self.pb, rnd, self.args.drain_segments))
        self.errors += [f"round {rnd + 1} {k}: {v['error']}" for k, v in out.items() if v.get("error")]
        return out


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--major", type=int, default=15, help="PostgreSQL major version (default 15)")
    p.add_argument("--size-gb", type=float, default=1.0, help="database size in GiB (default 1.0)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--rows", default=",".join(ROW_KEYS), help=f"comma-separated rows (default all: {','.join(ROW_KEYS)})")
    p.add_argument("--drain-segments", type=int, default=65, help="WAL backlog to drain, segments (default 65)")
    p.add_argument("--restore-timeout", type=float, default=1800.0, help="seconds allowed per base restore (1800)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke mode for CI: {QUICK['size_gb']} GiB, 1 round, {QUICK['drain_segments']}-segment backlog")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--render", type=Path, metavar="JSON", help="print the text report of a saved --json report and exit")
    args = p.parse_args(argv)
    if args.render:
        return args
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(args.rows) - set(ROW_KEYS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; known: {', '.join(ROW_KEYS)}")
    if args.rounds < 1 or args.size_gb <= 0 or args.drain_segments < 1:
        p.error("--rounds, --size-gb and --drain-segments must be positive")
    for tool in ("age", "age-keygen", "zstd", "gzip", "pgbackrest"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not on PATH")
    if not cm.AS_ROOT:
        p.error("run as root: servers, archivers and pgBackRest run as the postgres OS user")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.render:
        doc = json.loads(args.render.read_text())
        print(render(doc["info"], doc["rounds"], doc["info"]["rows"], doc["errors"]))
        return 0

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    archive.become_subreaper()  # helpers detached by archive_command are reaped by us: their CPU counts
    base = postgres_tmpdir("pgvault-bench-perf-")
    perf: Perf | None = None
    status = 0
    try:
        perf = Perf(args, base)
        perf.run()
        status = 1 if perf.errors else 0
    except KeyboardInterrupt:
        status = 130
        if perf is not None:
            perf.errors.append("interrupted")
    except Exception as e:  # noqa: BLE001 - StepError or a bug: reported, then a nonzero exit
        status = 1
        if perf is None:
            print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        else:
            perf.errors.append(f"{type(e).__name__}: {e}")
    finally:
        pr.kill_live()
        if perf is not None:
            for dest in list(perf.pb.restored):
                with contextlib.suppress(Exception):
                    perf.pb.stop_restored(dest)
            perf.pb.retire_copy()
            if perf.pb.source is not None:
                with contextlib.suppress(Exception):
                    perf.pb.source.destroy()
        cm.kill_strays(str(base))
        archive.REAPER.reap()
        shutil.rmtree(base, ignore_errors=True)
    if perf is not None:
        report = to_json if args.json else render
        print(report(perf.info, perf.rounds, args.rows, perf.errors), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
