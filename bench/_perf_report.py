"""bench/perf.py's report: the rows of issue 12's table (each a median of per-round ratios, or a peak),
with the issue's goal and PASS/MISS, as text or JSON."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _procs import report_tail

Round = dict[str, dict[str, Any]]  # step key -> figures of that step in one round

CAVEATS = [
    "Each ratio is the median of the per-round ratios (steps interleaved A B C A B C ...); peaks are the maximum "
    "over the rounds; absolute seconds mean little on a shared machine.",
    "Before every timed step: the archive backlog drained, CHECKPOINT, sync. The page cache is warm (the data was "
    "just generated and read).",
    "pgvault walls are whole CLI invocations (python start-up included); pgBackRest is C.",
    "Base backups and drains each run on a fresh copy of the stopped source with fresh repositories; restores run "
    "to the end of each tool's archive until the server is promoted and accepts connections.",
    "The WAL backlog is table data copied from events (archive_command empty while it is written); PostgreSQL then "
    "calls archive_command once per segment. CPU per segment = the archive_command processes plus the helpers "
    "they detach (pgBackRest's async process, pgvault's background pusher).",
    "The zstd reference size is `pg_dump | zstd -3 -T2 | age` (age adds about 0.02%).",
]


@dataclass(frozen=True)
class RowSpec:
    key: str  # --rows name
    path: str  # the "path" column
    measure: str
    goal: str
    check: Callable[[float], bool]
    value: Callable[[Sequence[Round]], tuple[float | None, list[float]]]
    refs: Callable[[Sequence[Round]], list[tuple[str, float | None, str]]]
    unit: str = "x"


def _per_round(rounds: Sequence[Round], a: str, b: str, field: str = "wall_s", invert: bool = False) -> list[float]:
    out = []
    for r in rounds:
        va, vb = (r.get(a) or {}).get(field), (r.get(b) or {}).get(field)
        if va is not None and vb:
            out.append(vb / va if invert else va / vb)
    return out


def ratio(a: str, b: str, field: str = "wall_s", invert: bool = False) -> Callable[[Sequence[Round]], tuple[float | None, list[float]]]:
    """Median over rounds of a/b (``invert``: b/a, for rates measured as walls)."""

    def f(rounds: Sequence[Round]) -> tuple[float | None, list[float]]:
        vals = _per_round(rounds, a, b, field, invert)
        return (round(statistics.median(vals), 3) if vals else None), [round(v, 3) for v in vals]

    return f


def peak(key: str, field: str = "peak_rss_mb") -> Callable[[Sequence[Round]], tuple[float | None, list[float]]]:
    def f(rounds: Sequence[Round]) -> tuple[float | None, list[float]]:
        vals = [v for r in rounds if (v := (r.get(key) or {}).get(field)) is not None]
        return (max(vals) if vals else None), vals

    return f


def median_of(key: str, field: str) -> Callable[[Sequence[Round]], float | None]:
    def f(rounds: Sequence[Round]) -> float | None:
        vals = [v for r in rounds if (v := (r.get(key) or {}).get(field)) is not None]
        return round(statistics.median(vals), 4) if vals else None

    return f


def refs(*items: tuple[str, Callable[[Sequence[Round]], Any], str]) -> Callable[[Sequence[Round]], list[tuple[str, float | None, str]]]:
    """Reference figures printed under a row: (label, value, unit)."""

    def f(rounds: Sequence[Round]) -> list[tuple[str, float | None, str]]:
        out = []
        for label, fn, unit in items:
            v = fn(rounds)
            out.append((label, v[0] if isinstance(v, tuple) else v, unit))
        return out

    return f


ROWS = [
    RowSpec("logical", "logical backup (age + zstd)", "pgvault backup / pg_dump -Fc -Z0 > /dev/null", "<= 1.10",
            lambda v: v <= 1.10, ratio("logical:pgvault", "logical:pg_dump_fc"),
            refs(("pgvault / pg_dump | gzip", ratio("logical:pgvault", "logical:gzip"), "x"),
                 ("row counts by count(*) in the snapshot (backup.row_counts_from: snapshot) / pg_dump -Fc -Z0",
                  ratio("logical:pgvault_snapcount", "logical:pg_dump_fc"), "x"),
                 ("row counts from the dump stream / by count(*) in the snapshot",
                  ratio("logical:pgvault", "logical:pgvault_snapcount"), "x"),
                 ("pg_dump | zstd -T2 | age / pg_dump | gzip", ratio("logical:tuned", "logical:gzip"), "x"),
                 ("pg_dump | zstd -T2 | age / pg_dump -Fc -Z0", ratio("logical:tuned", "logical:pg_dump_fc"), "x"))),
    RowSpec("stored", "logical stored size", "pgvault stored bytes / pg_dump | gzip bytes", "<= 1.00",
            lambda v: v <= 1.00, ratio("logical:pgvault", "logical:gzip", "stored_bytes"),
            refs(("zstd -3 on the plain dump / gzip", ratio("logical:tuned", "logical:gzip", "stored_bytes"), "x"))),
    RowSpec("restore", "logical restore --jobs 2", "pgvault restore --jobs 2 / gunzip | psql", "<= 0.60",
            lambda v: v <= 0.60, ratio("logical:restore_j2", "logical:restore_psql"),
            refs(("pg_restore -j 2 of a local -Z0 archive (PostgreSQL's own work) / gunzip | psql",
                  ratio("logical:restore_floor", "logical:restore_psql"), "x"),
                 ("pgvault restore --jobs 2 / that pg_restore -j 2", ratio("logical:restore_j2", "logical:restore_floor"),
                  "x"))),
    RowSpec("base", "base backup", "pgvault basebackup (age) / pgBackRest full", "<= 0.65",
            lambda v: v <= 0.65, ratio("backup:pgvault-age", "backup:pgbackrest"),
            refs(("without encryption", ratio("backup:pgvault-plain", "backup:pgbackrest"), "x"))),
    RowSpec("base-restore", "base restore to a promoted server", "pgvault restore-cluster (age) / pgBackRest restore + start",
            "<= 0.80", lambda v: v <= 0.80, ratio("restore:pgvault-age", "restore:pgbackrest"),
            refs(("without encryption", ratio("restore:pgvault-plain", "restore:pgbackrest"), "x"),
                 ("layout (files written and synced), pgvault age / pgBackRest",
                  ratio("restore:pgvault-age", "restore:pgbackrest", "layout_s"), "x"),
                 ("recovery (start to promoted: restore_command calls, replay), pgvault age / pgBackRest",
                  ratio("restore:pgvault-age", "restore:pgbackrest", "recovery_s"), "x"),
                 ("pgvault age layout", median_of("restore:pgvault-age", "layout_s"), "s"),
                 ("pgvault age recovery", median_of("restore:pgvault-age", "recovery_s"), "s"),
                 ("pgBackRest layout", median_of("restore:pgbackrest", "layout_s"), "s"),
                 ("pgBackRest recovery", median_of("restore:pgbackrest", "recovery_s"), "s"))),
    RowSpec("base-mem", "base backup peak memory", "pgvault basebackup (age) peak RSS, MB (max over rounds)",
            "<= 64 MB", lambda v: v <= 64, peak("backup:pgvault-age"),
            refs(("without encryption", peak("backup:pgvault-plain"), "MB"), ("pgBackRest", peak("backup:pgbackrest"), "MB")),
            unit="MB"),
    RowSpec("wal-drain", "WAL archive drain", "pgvault (age) segments/s / pgBackRest async segments/s", ">= 1.00",
            lambda v: v >= 1.0, ratio("drain:pgvault-age", "drain:pgbackrest", invert=True),
            refs(("pgvault age", median_of("drain:pgvault-age", "seg_per_s"), "seg/s"),
                 ("pgvault no encryption", median_of("drain:pgvault-plain", "seg_per_s"), "seg/s"),
                 ("pgBackRest async", median_of("drain:pgbackrest", "seg_per_s"), "seg/s"),
                 ("cp", median_of("drain:cp", "seg_per_s"), "seg/s"),
                 ("pgvault age", median_of("drain:pgvault-age", "cpu_s_per_segment"), "CPU s/seg"),
                 ("pgvault no encryption", median_of("drain:pgvault-plain", "cpu_s_per_segment"), "CPU s/seg"),
                 ("pgBackRest async", median_of("drain:pgbackrest", "cpu_s_per_segment"), "CPU s/seg"),
                 ("cp", median_of("drain:cp", "cpu_s_per_segment"), "CPU s/seg"))),
]
ROW_KEYS = [r.key for r in ROWS]


def rows(rounds: Sequence[Round], selected: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for spec in ROWS:
        if spec.key not in selected:
            continue
        value, per_round = spec.value(rounds)
        status = "n/a" if value is None else ("PASS" if spec.check(value) else "MISS")
        out.append({"key": spec.key, "path": spec.path, "measure": spec.measure, "value": value, "unit": spec.unit,
                    "goal": spec.goal, "status": status, "per_round": per_round,
                    "references": [{"label": lbl, "value": v, "unit": u} for lbl, v, u in spec.refs(rounds)]})
    return out


def _fmt(v: float | None, unit: str = "x") -> str:
    if v is None:
        return "-"
    if unit == "MB":
        return f"{v:.1f} MB"
    return f"{v:.3f}x" if unit == "x" else f"{v:.3g} {unit}"


def render(info: dict[str, Any], rounds: Sequence[Round], selected: Sequence[str], errors: Sequence[str]) -> str:
    lines: list[str] = []
    add = lines.append
    add("")
    add(f"pgvault performance benchmark (issue 12) — PostgreSQL {info.get('server_version', '?')}, "
        f"{info.get('pgbackrest_version', 'pgBackRest ?')}")
    add(f"host {info.get('host')}: {info.get('cpus')} CPUs; load average at start {info.get('loadavg_start', '?')}, "
        f"at end {info.get('loadavg_end', '?')}")
    add(f"conditions (SHOW on the server): {info.get('conditions', {})}")
    data = info.get("data") or {}
    if data:
        add(f"data: {data.get('db_size_bytes', 0) / (1 << 20):,.0f} MiB in benchdb, rows {data.get('rows')}")
    add(f"rounds {info.get('rounds')} (interleaved), WAL backlog {info.get('drain_segments')} segments"
        f"{', QUICK MODE (tiny data: figures only show the benchmark works)' if info.get('quick') else ''}")
    add("")
    add("per round (wall s / stored MiB / peak RSS MB; drains: seg/s, CPU s per segment):")
    for i, r in enumerate(rounds):
        add(f"  round {i + 1} (load average {info.get('loadavg_rounds', ['?'] * (i + 1))[i]})")
        for key, st in r.items():
            if st.get("error"):
                add(f"    {key:<26} FAILED: {st['error']}")
                continue
            parts = [f"{st['wall_s']:.2f} s" if st.get("wall_s") is not None else "-"]
            if st.get("stored_bytes"):
                parts.append(f"{st['stored_bytes'] / (1 << 20):,.1f} MiB")
            if st.get("peak_rss_mb"):
                parts.append(f"peak {st['peak_rss_mb']:.0f} MB")
            if st.get("seg_per_s") is not None:
                parts.append(f"{st['segments']} seg, {st['seg_per_s']:.2f} seg/s, {st['cpu_s_per_segment']:.3f} CPU s/seg")
            if (st.get("other_cpu_s") or 0) > 1.0:
                parts.append(f"other work {st['other_cpu_s']:.1f} CPU s")
            add(f"    {key:<26} {', '.join(parts)}")
    add("")
    add(f"{'path':<36} {'measure':<62} {'value':>9} {'goal':>9}  result")
    add("-" * 128)
    for row in rows(rounds, selected):
        add(f"{row['path']:<36} {row['measure']:<62} {_fmt(row['value'], row['unit']):>9} {row['goal']:>9}  "
            f"{row['status']}")
        if len(row["per_round"]) > 1:
            add(f"{'':<36}   per round: {', '.join(str(v) for v in row['per_round'])}")
        for ref in row["references"]:
            add(f"{'':<36}   {ref['label']:<58} {_fmt(ref['value'], ref['unit']):>15}")
    lines += report_tail(CAVEATS, list(errors))
    return "\n".join(lines)


def to_json(info: dict[str, Any], rounds: Sequence[Round], selected: Sequence[str], errors: Sequence[str]) -> str:
    doc = {"format": 1, "kind": "bench_perf", "info": info, "rounds": list(rounds), "rows": rows(rounds, selected),
           "caveats": CAVEATS, "errors": list(errors)}
    return json.dumps(doc, indent=2, default=str)
