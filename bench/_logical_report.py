"""bench/logical.py's report: the ratios against their targets, the text table and the JSON document."""

from __future__ import annotations

import json
from typing import Any

from _datagen import DB
from _logical_run import Bench, Step, cpu_of, peak_of, python_proc
from _procs import MiB

#: Ratio targets: (key, description, limit, "le" | "lt").
TARGETS: list[tuple[str, str, float, str]] = [
    ("backup_vs_gzip_pipeline", "pgvault backup wall / (pg_dump | gzip) wall", 0.35, "le"),
    ("backup_vs_pg_dump", "pgvault backup wall / pg_dump alone wall", 1.15, "le"),
    ("stored_vs_gzip", "pgvault stored bytes / gzip file bytes", 1.0, "le"),
    ("peak_rss_mb", "pgvault python process peak RSS (MB, all runs)", 150.0, "lt"),
    ("restore_j2_vs_psql", "pgvault restore -j2 wall / (gunzip | psql) wall", 1.0, "le"),
]
#: Same ratios for variants, shown for information with the same targets.
INFO_TARGETS: list[tuple[str, str, float, str]] = [
    ("backup_noexact_vs_gzip_pipeline", "  --no-exact-counts wall / (pg_dump | gzip) wall", 0.35, "le"),
    ("backup_noexact_vs_pg_dump", "  --no-exact-counts wall / pg_dump alone wall", 1.15, "le"),
    ("restore_j1_vs_psql", "  pgvault restore -j1 wall / (gunzip | psql) wall", 1.0, "le"),
]


def ratios(steps: dict[str, Step]) -> dict[str, float | None]:
    def wall(k: str) -> float | None:
        s = steps.get(k)
        return s.best.wall if s and s.runs else None

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    rss = [
        p.hwm_kb / 1024
        for k in ("pgvault", "pgvault_noexact", "restore_j2", "restore_j1")
        if k in steps
        for r in steps[k].runs
        for p in [python_proc(r)]
        if p is not None
    ]
    g, v = steps.get("gzip"), steps.get("pgvault")
    return {
        "backup_vs_gzip_pipeline": div(wall("pgvault"), wall("gzip")),
        "backup_vs_pg_dump": div(wall("pgvault"), wall("pg_dump")),
        "stored_vs_gzip": div(v.stored_bytes if v else None, g.stored_bytes if g else None),
        "peak_rss_mb": round(max(rss), 1) if rss else None,
        "restore_j2_vs_psql": div(wall("restore_j2"), wall("restore_psql")),
        "backup_noexact_vs_gzip_pipeline": div(wall("pgvault_noexact"), wall("gzip")),
        "backup_noexact_vs_pg_dump": div(wall("pgvault_noexact"), wall("pg_dump")),
        "restore_j1_vs_psql": div(wall("restore_j1"), wall("restore_psql")),
    }


def verdicts(r: dict[str, float | None]) -> list[dict[str, Any]]:
    out = []
    for key, desc, limit, op in TARGETS + INFO_TARGETS:
        value = r.get(key)
        ok = None if value is None else (value <= limit if op == "le" else value < limit)
        out.append({
            "key": key, "description": desc.strip(), "value": value, "target": f"{'<=' if op == 'le' else '<'} {limit:g}",
            "status": "n/a" if ok is None else ("PASS" if ok else "MISS"), "primary": (key, desc, limit, op) in TARGETS,
        })
    return out


CAVEATS = [
    "All runs are warm: the database was just written and read by an untimed warm-up pg_dump, and it fits in the "
    "OS page cache many times over, so pg_dump never waits for disk. Cold-cache numbers on real servers will be "
    "dominated by read I/O for both sides alike.",
    "fsync=off and synchronous_commit=off on the server (both restore methods alike); autovacuum off so a "
    "background ANALYZE of a freshly restored database cannot land in the next timing.",
    "pgvault's local repository fsyncs every object it commits; the gzip pipeline never fsyncs its file: "
    "pgvault pays for durability the plain alternative does not.",
    "Between runs the server CHECKPOINTs and the OS flushes dirty pages (sync), so writeback of one run does "
    "not slow the next. Steps run in --repeat rounds (a, b, c, d, a, b, ...); the fastest run of each step counts.",
    "pgvault walls are whole CLI invocations (python start-up, version probes, globals dump, manifest); "
    "pgvault restore also re-counts every table to verify it, psql does nothing of the sort.",
    "Restore timings include building indexes and foreign keys (both methods), not CREATE DATABASE for psql.",
]


def render(bench: Bench, error: str | None) -> str:
    s, info = bench.steps, bench.info
    lines: list[str] = []
    add = lines.append
    data = info.get("data", {})
    ncpu = info.get("cpus") or 1
    add("")
    add(f"pgvault logical benchmark — PostgreSQL {bench.cluster.bindir.version}, client tools {info.get('client_bindir')}")
    add(f"host {info.get('host')}: {ncpu} CPUs, Python {info.get('python')}, load average at start "
        f"{info.get('loadavg_start', '?')}, at end {info.get('loadavg_end', '?')}")
    if data:
        add(f"database {DB}: {data['db_size_bytes'] / MiB:,.0f} MiB (pg_database_size), rows {data['rows']}")
    if "plain_dump_bytes" in info:
        add(f"plain dump {info['plain_dump_bytes'] / MiB:,.0f} MiB, gzip -6 ratio {info.get('gzip_ratio', '?')}x")
    pv = s.get("pgvault")
    if pv and "dump_raw_bytes" in pv.extra:
        ratio = pv.extra["dump_raw_bytes"] / pv.extra["db_object_stored_bytes"]
        add(f"pgvault: custom-format archive {pv.extra['dump_raw_bytes'] / MiB:,.0f} MiB, stored {ratio:.2f}x smaller "
            f"({pv.extra['pipeline']}; {pv.extra['pg_dump_version']})")
    add("")
    head = (f"{'step':<46} {'wall s':>8} {'stored MiB':>11} {'CPU s: tools':>12} {'server':>7} {'python':>7} "
            f"{'CPU/wall':>8} {'other':>6} {'peak RSS MiB':>18}")
    add(head)
    add("-" * len(head))
    tools = ("pg_dump", "gzip", "psql", "pg_restore", "pg_dumpall")
    for st in s.values():
        if not st.runs:
            continue
        r = st.best
        py = python_proc(r)
        tool_cpu = cpu_of(r, tools)
        py_cpu = py.cpu if py else 0.0
        total_cpu = tool_cpu + py_cpu + r.server_cpu
        if py is not None:
            rss = f"py {py.hwm_kb / 1024:.0f}"
            extra = peak_of(r, ("pg_dump", "pg_restore"))
            if extra:
                rss += f" / tool {extra:.0f}"
        else:
            rss = f"tool {peak_of(r, ('pg_dump', 'psql', 'gzip')):.0f}"
        stored = f"{st.stored_bytes / MiB:,.1f}" if st.stored_bytes else "-"
        walls = "" if len(st.runs) == 1 else "  (" + ", ".join(f"{x.wall:.1f}" for x in st.runs) + ")"
        add(
            f"{st.title[:46]:<46} {r.wall:>8.1f} {stored:>11} {tool_cpu:>12.1f} {r.server_cpu:>7.1f} "
            f"{py_cpu:>7.1f} {total_cpu / r.wall:>8.2f} {r.other_cpu():>6.1f} {rss:>18}{walls}"
        )
    add("")
    add("CPU/wall: CPU seconds of every process involved (tools + server backends + pgvault's python) per wall")
    add(f"second; {ncpu:.0f}.00 means all {ncpu} cores busy for the whole run. other: CPU seconds used meanwhile by")
    add("everything else on the machine (other users' processes, kernel threads); well above 0.5 means the run")
    add("was disturbed and its time is not to be trusted.")
    steal = sum(r.steal for st in s.values() for r in st.runs)
    if steal > 0.5:
        add(f"The hypervisor stole {steal:.1f} CPU seconds during the timed runs.")
    for key in ("pgvault", "pgvault_noexact", "restore_j2", "restore_j1"):
        step = s.get(key)
        if not step or not step.runs:
            continue
        py = python_proc(step.best)
        if py is None:
            continue
        threads = sorted(py.threads.items(), key=lambda kv: -kv[1])
        main = py.threads.get(py.pid, 0.0)
        others = ", ".join(f"{c:.1f}" for t, c in threads if t != py.pid and c >= 0.05)
        add(f"  {key}: python main thread {main:.1f} s CPU; other threads (zstd workers, ...) {others or '-'}; tree peak RSS "
            f"{step.best.tree_peak_kb / 1024:.0f} MiB; wait4 ru_maxrss {max(c.maxrss_kb for c in step.best.children) / 1024:.0f} MiB")
    add("")
    rat = ratios(s)
    add(f"{'ratio':<56} {'value':>8} {'target':>8}  result")
    add("-" * 82)
    for v in verdicts(rat):
        val = "-" if v["value"] is None else f"{v['value']:.3f}" if v["key"] != "peak_rss_mb" else f"{v['value']:.1f}"
        label = v["description"] if v["primary"] else "  " + v["description"]
        add(f"{label:<56} {val:>8} {v['target']:>8}  {v['status']}")
    disturbed = [st.title for st in s.values() if st.runs and st.best.other_cpu() > 1.0]
    if disturbed:
        add("")
        add("WARNING: other work used more than 1 CPU second during the fastest run of: " + "; ".join(disturbed))
        add("         The machine was busy; those walls and ratios are not representative. Re-run when it is idle.")
    add("")
    add("Caveats:")
    for c in CAVEATS:
        add(f"  - {c}")
    if error:
        add("")
        add(f"FAILED: {error}")
    return "\n".join(lines)


def to_json(bench: Bench, error: str | None) -> str:
    r = ratios(bench.steps)
    doc = {
        "format": 1,
        "kind": "bench_logical",
        "info": bench.info,
        "steps": {k: v.to_json() for k, v in bench.steps.items()},
        "ratios": verdicts(r),
        "disturbed_steps": [k for k, st in bench.steps.items() if st.runs and st.best.other_cpu() > 1.0],
        "caveats": CAVEATS,
        "error": error,
    }
    return json.dumps(doc, indent=2, default=str)

