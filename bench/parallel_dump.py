#!/usr/bin/env python3
"""Benchmark: ``pgvault backup --jobs 1`` against ``--jobs N`` in one interleaved run, and the cost model.

Not a test: a report.  One throwaway PostgreSQL server (issue 12's conditions, as bench/perf.py)
gets ``--size-gb`` of realistic data (bench/_datagen.py); then, ``--rounds`` times, in the same order:
``pgvault backup --jobs 1``, ``pgvault backup --jobs N`` (both zstd + age, local repository), and
``pgvault restore --jobs N`` of each, every restore checked table by table against the source.

From the figures it fits the model of docs/performance.md (policy/parallel_dump.CostModel):

    the shares of the plan run side by side, each at bytes_per_s while the cores carry them
    (cpu_per_job each), slower while more run than that; wall = fixed + until the last share ends

``fixed`` is the wall of a backup of an empty database, ``bytes_per_s`` the table bytes one job
moves per second (from --jobs 1), ``cpu_per_job`` the CPU seconds (pgvault, pg_dump and the server
backend together) per wall second of --jobs 1.  It prints the model's prediction for --jobs N next
to the measurement, and for ``--predict-gb`` on ``--predict-cores`` cores with this data's shape.
``--quick`` (tiny data, one round) checks that every step still runs, for CI.

Run as root with the project's virtualenv::

    python bench/parallel_dump.py --size-gb 1 --rounds 3 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as cm  # noqa: E402
import _datagen as datagen  # noqa: E402
import _procs as pr  # noqa: E402
import perf  # noqa: E402
from _logical_run import Bench, Step, cpu_of  # noqa: E402
from _procs import MiB, log  # noqa: E402

from pgvault.policy.parallel_dump import CostModel, TableSize, plan_shares  # noqa: E402
from support.pgcluster import PgCluster, postgres_tmpdir  # noqa: E402

_SIZES_SQL = """
SELECT n.nspname, c.relname, (c.relpages::bigint + coalesce(t.relpages, 0)) * current_setting('block_size')::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
QUICK = {"size_gb": 0.03, "rounds": 1}
PART_MIN_BYTES = 16 * MiB  # operations/logical/backup.PART_MIN_BYTES


def table_sizes(cluster: PgCluster) -> list[TableSize]:
    cluster.psql("ANALYZE", dbname=datagen.DB)
    out = cluster.psql(_SIZES_SQL, dbname=datagen.DB)
    return [TableSize(s, n, int(b)) for s, n, b in (line.split("|") for line in out.splitlines())]


def backup(b: Bench, jobs: int, rnd: int) -> Step:
    key = f"backup_j{jobs}"
    st = b.timed(key, f"pgvault backup --jobs {jobs}", rnd, lambda: b.runner.run(
        key, [[*b.pgvault, "backup", "-d", datagen.DB, "--no-globals", "--jobs", str(jobs), "--json"]],
        env=b.pgvault_env, capture=True))
    doc = json.loads(st.runs[-1].stdout)["backup"]
    entry = doc["databases"][0]
    st.extra.update(backup_id=doc["backup_id"], objects=1 + len(entry.get("parts", [])),
                    parts=[p["tables"] for p in entry.get("parts", [])])
    return st


def restore(b: Bench, jobs: int, of: str, rnd: int) -> Step:
    key = f"restore_{of}"
    target = f"bench_{key}"
    b.cluster.drop_database(target)
    backup_id = b.steps[of].extra["backup_id"]
    st = b.timed(key, f"pgvault restore --jobs {jobs} (backup of {of})", rnd, lambda: b.runner.run(
        key, [[*b.pgvault, "restore", backup_id, "-d", datagen.DB, "-t", target, "--jobs", str(jobs), "--json"]],
        env=b.pgvault_env, capture=True))
    if not json.loads(st.runs[-1].stdout)["restore"]["verified"]:
        raise pr.StepError(f"restore into {target} did not verify")
    b.check_restored(target)
    b.cluster.drop_database(target)
    return st


def fixed_cost(b: Bench) -> float:
    """Wall of a backup of an empty database: start-up, catalog queries, manifest."""
    b.cluster.drop_database("bench_empty")
    b.cluster.psql("CREATE DATABASE bench_empty TEMPLATE template0")
    walls = [b.runner.run("empty", [[*b.pgvault, "backup", "-d", "bench_empty", "--no-globals"]], env=b.pgvault_env).wall
             for _ in range(3)]
    b.cluster.drop_database("bench_empty")
    return statistics.median(walls)


def model(b: Bench, sizes: list[TableSize], jobs: int, fixed: float, args: argparse.Namespace) -> dict[str, Any]:
    j1 = b.steps["backup_j1"].runs
    jn = b.steps[f"backup_j{jobs}"].runs
    total = sum(t.bytes for t in sizes)
    per_round = [(r1.wall, rn.wall) for r1, rn in zip(j1, jn, strict=True)]
    wall1 = statistics.median(w for w, _ in per_round)
    bytes_per_s = total / max(0.001, wall1 - fixed)
    cpu1 = statistics.median(r.own_cpu() for r in j1) / wall1
    m = CostModel(bytes_per_s=bytes_per_s, cpu_per_job=max(cpu1, 0.01), fixed_s=fixed)
    cores = os.cpu_count() or 1
    plan = plan_shares(sizes, jobs, min_bytes=PART_MIN_BYTES)
    largest = max((t.bytes for t in sizes), default=0)
    scale = args.predict_gb * (1 << 30) / max(1, total)
    scaled = [int(t.bytes * scale) for t in sizes]
    even = [int(args.predict_gb * (1 << 30) / 64)] * 64
    capped = CostModel(bytes_per_s=bytes_per_s, cpu_per_job=m.cpu_per_job, fixed_s=fixed,
                       max_bytes_per_s=args.predict_io_mib_s * MiB)
    return {
        "table_bytes": total,
        "largest_table_bytes": largest,
        "largest_share_of_total": round(largest / max(1, total), 3),
        "plan": [[t.qualified for t in s.tables] for s in plan.shares],
        "fixed_s": round(fixed, 2),
        "bytes_per_s_per_job_mib": round(bytes_per_s / MiB, 1),
        "cpu_per_job": round(cpu1, 2),
        "measured_ratio_jn_over_j1": round(statistics.median(n / o for o, n in per_round), 3),
        "measured_wall_jn_s": round(statistics.median(n for _, n in per_round), 2),
        "predicted_wall_jn_s": round(m.wall_s([t.bytes for t in sizes], jobs, cores), 2),
        "prediction": {
            "size_gb": args.predict_gb, "cores": args.predict_cores, "io_cap_mib_s": args.predict_io_mib_s,
            **{f"this_shape_jobs_{j}_s": round(m.wall_s(scaled, j, args.predict_cores)) for j in (1, 4, 8, args.predict_cores)},
            **{f"even_64_tables_jobs_{j}_s": round(m.wall_s(even, j, args.predict_cores)) for j in (1, 4, 8, args.predict_cores)},
            **{f"even_64_tables_jobs_{j}_io_capped_s": round(capped.wall_s(even, j, args.predict_cores))
               for j in (1, 4, 8, args.predict_cores)},
        },
    }


def render(rows: list[tuple[str, Step]], mdl: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [f"pgvault backup --jobs: {info['size_mib']:,.0f} MiB database, {info['cores']} cores, "
             f"load {info['load_start']} -> {info['load_end']}", ""]
    for _, st in rows:
        walls = ", ".join(f"{r.wall:.1f}" for r in st.runs)
        cpu = statistics.median(cpu_of(r, [p.name for p in r.procs]) + r.server_cpu for r in st.runs)
        lines.append(f"  {st.title:<45} wall s {walls:<24} CPU s (median) {cpu:6.1f}")
    lines += ["", "cost model (policy/parallel_dump.CostModel: shares side by side, sharing the cores):"]
    lines += [f"  {k}: {v}" for k, v in mdl.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--major", type=int, default=15)
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--predict-gb", type=float, default=100.0)
    p.add_argument("--predict-cores", type=int, default=16)
    p.add_argument("--predict-io-mib-s", type=float, default=400.0, help="storage/network cap for the prediction")
    p.add_argument("--quick", action="store_true", help=f"smoke mode for CI: {QUICK}")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if not cm.AS_ROOT:
        p.error("run as root: the server runs as the postgres OS user")
    base = postgres_tmpdir("pgvault-bench-jobs-")
    cluster: PgCluster | None = None
    try:
        log(f"starting PostgreSQL {args.major}")
        cluster = PgCluster.create(args.major, base / "pg", settings=perf.SERVER_SETTINGS, data_checksums=True)
        gen = datagen.generate(cluster, args.size_gb)
        workdir = base / "logical"
        workdir.mkdir()
        b = Bench(argparse.Namespace(size_gb=args.size_gb, repeat=args.rounds), cluster, workdir)
        b.info["source_rows"] = gen["rows"]
        sizes = table_sizes(cluster)
        info = {"size_mib": gen["db_size_bytes"] / MiB, "cores": os.cpu_count(), "load_start": pr.loadavg()}
        fixed = fixed_cost(b)
        for rnd in range(args.rounds):
            log(f"=== round {rnd + 1}/{args.rounds} (load average {pr.loadavg()})")
            backup(b, 1, rnd)
            backup(b, args.jobs, rnd)
            restore(b, args.jobs, "backup_j1", rnd)
            restore(b, args.jobs, f"backup_j{args.jobs}", rnd)
        info["load_end"] = pr.loadavg()
        mdl = model(b, sizes, args.jobs, fixed, args)
        rows = list(b.steps.items())
        if args.json:
            print(json.dumps({"info": info, "model": mdl, "steps": {k: s.to_json() for k, s in rows}}, indent=2))
        else:
            print(render(rows, mdl, info))
        return 0
    except pr.StepError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        pr.kill_live()
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
