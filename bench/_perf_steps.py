"""The timed steps of bench/perf.py, one round of each group: logical (on the running source),
base backup and restore (on copies of the stopped source, bench/physical.py's Bench), WAL drain
(a backlog made with archive_command empty, then drained by each archiver).

Every step returns nothing: its figures land in the Bench objects it drives (logical: the Step's
runs, physical and drain: Bench.results), and perf.py collects them per round.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path
from typing import Any

import _common as cm
import _logical_run
import _procs as pr
import archive
import physical
from _datagen import DB
from _procs import StepError

from support.pgcluster import PgCluster

SEGMENT = 16 * pr.MiB
DRAIN_TIMEOUT = 600.0


# --- logical -------------------------------------------------------------------------------------


class LogicalBench(_logical_run.Bench):
    """bench/logical.py's steps, plus the references issue 12 names, with its settling rule."""

    def settle(self) -> None:
        # Before every timed step: the archive backlog drained, CHECKPOINT, sync.
        cm.wait_no_ready(self.cluster, 300)
        super().settle()

    def pg_dump_custom(self, rnd: int) -> None:
        self.timed("pg_dump_fc", "pg_dump -Fc -Z0 > /dev/null", rnd, lambda: self.runner.run(
            "pg_dump -Fc -Z0", [[self.prog("pg_dump"), "-Fc", "-Z0", "-d", DB]], env=self.pg_env))

    def pg_dump_zstd_age(self, rnd: int) -> None:
        out = self.workdir / "benchdb.sql.zst.age"
        recipient = self.pgvault_env["PGVAULT_ENCRYPTION_AGE_RECIPIENTS"]
        st = self.timed("tuned", "pg_dump | zstd -3 -T2 | age > file", rnd, lambda: self.runner.run(
            "pg_dump|zstd|age", [[self.prog("pg_dump"), "-d", DB], ["zstd", "-q", "-3", "-T2"], ["age", "-r", recipient]],
            env=self.pg_env, stdout_path=out))
        st.stored_bytes = out.stat().st_size


    def pg_restore_floor(self, rnd: int) -> None:
        """What PostgreSQL alone needs: ``pg_restore -j 2`` of an unencrypted, uncompressed local archive
        (no download, decryption, decompression or verification) into a new database."""
        archive = self.workdir / "floor.dump"
        if not archive.exists():  # untimed, once
            cm.run_checked([self.prog("pg_dump"), "-Fc", "-Z0", "-f", str(archive), "-d", DB], "pg_dump -Fc -Z0",
                           env=self.pg_env)
        target = "bench_restore_floor"
        self.cluster.drop_database(target)
        self.cluster.psql(f"CREATE DATABASE {target} TEMPLATE template0")
        self.timed("restore_floor", "pg_restore -j 2 -d new local.dump (-Z0, the server's own work)", rnd,
                   lambda: self.runner.run("pg_restore -j 2", [[self.prog("pg_restore"), "-j", "2", "--exit-on-error",
                                                                "-d", target, str(archive)]], env=self.pg_env))
        self.check_restored(target)
        self.cluster.drop_database(target)


def logical_round(lb: LogicalBench, rnd: int, *, restore: bool) -> dict[str, dict[str, Any]]:
    """One round of the logical steps, in a fixed order (A B C ...); figures of this round."""
    lb.pg_dump_custom(rnd)
    lb.pg_dump_gzip(rnd)
    lb.pg_dump_zstd_age(rnd)
    # The count(*) variant first: "latest", which the restore steps take, is then the default backup.
    lb.pgvault_backup("pgvault_snapcount", "pgvault backup -d db, row counts from count(*) in the snapshot", [], rnd,
                      env={"PGVAULT_BACKUP_ROW_COUNTS_FROM": "snapshot"})
    lb.pgvault_backup("pgvault", "pgvault backup -d db (zstd, age)", [], rnd)
    if restore:
        lb.restore_psql(rnd)
        lb.pgvault_restore("restore_j2", 2, rnd)
        lb.pg_restore_floor(rnd)
    out: dict[str, dict[str, Any]] = {}
    for key, st in lb.steps.items():
        run = st.runs[-1]
        py = _logical_run.python_proc(run) if key.startswith(("pgvault", "restore_j")) else None
        out[f"logical:{key}"] = {"title": st.title, "wall_s": round(run.wall, 3), "stored_bytes": st.stored_bytes,
                                 "peak_rss_mb": round(py.hwm_kb / 1024, 1) if py else None,
                                 "other_cpu_s": round(run.other_cpu(), 2)}
    return out


# --- base backup and restore ---------------------------------------------------------------------


def physical_round(pb: physical.Bench, rnd: int, *, restore: bool) -> dict[str, dict[str, Any]]:
    """Back up a fresh copy of the stopped source with each tool (fresh repositories), then restore each."""
    pb.fresh_repositories(cm.postgres_dir(pb.base / f"round-{rnd}", 0o755))
    pb.results.clear()
    for v in pb.variants:
        pb.step(f"backup:{v.key}", f"backup  {v.label}", functools.partial(pb.backup, v))
    if restore:
        for v in pb.variants:
            if v.backup_id is not None:
                pb.step(f"restore:{v.key}", f"restore {v.label}", functools.partial(pb.restore, v))
    archive.REAPER.reap()  # servers restore-cluster started were reparented to us
    return {k: _result_json(r) for k, r in pb.results.items()}


def _result_json(r: physical.Result) -> dict[str, Any]:
    return {"title": r.title, "wall_s": None if r.wall is None else round(r.wall, 3), "stored_bytes": r.stored_bytes,
            "peak_rss_mb": None if r.peak_rss_mb is None else round(r.peak_rss_mb, 1), "error": r.error,
            "other_cpu_s": r.extra.get("other_cpu_s"), **{k: r.extra[k] for k in ("segments", "cpu_s", "cpu_s_per_segment",
                                                                                  "seg_per_s", "layout_s", "recovery_s")
                                                if k in r.extra}}


# --- WAL drain -----------------------------------------------------------------------------------


def drain_round(pb: physical.Bench, rnd: int, segments: int) -> dict[str, dict[str, Any]]:
    """Each archiver drains a backlog of ``segments`` segments that PostgreSQL accumulated while
    archive_command was empty; PostgreSQL calls it as it does in production (once per segment)."""
    pb.fresh_repositories(cm.postgres_dir(pb.base / f"drain-{rnd}", 0o755))
    pb.results.clear()
    cp_dir = cm.postgres_dir(pb.work / "cp-archive", 0o750)
    tools = [(v.key, v.label, v.archive_command) for v in pb.variants]
    tools.append(("cp", "cp (test ! -f && cp)", f"test ! -f {cp_dir}/%f && cp %p {cp_dir}/%f"))
    for key, label, command in tools:
        pb.step(f"drain:{key}", f"drain {segments} segments: {label}",
                functools.partial(drain_one, pb, key, command, segments))
    return {k: _result_json(r) for k, r in pb.results.items()}


def make_backlog(cluster: PgCluster, segments: int) -> str:
    """Write at least ``segments`` segments of table data WAL (rows copied from ``events``), switch,
    and return the name of the last segment; archive_command is empty, so all stay ``.ready``."""
    with contextlib.closing(cm.connect(cluster, DB)) as conn:
        conn.execute("CREATE TABLE perf_wal_fill (LIKE events)")
        start = int(cm.scalar(conn, archive.WAL_POSITION))
        while int(cm.scalar(conn, archive.WAL_POSITION)) - start < segments * SEGMENT:
            conn.execute("INSERT INTO perf_wal_fill SELECT * FROM events LIMIT 20000")
        last = str(cm.scalar(conn, "SELECT pg_walfile_name(pg_switch_wal())"))
    t0 = time.monotonic()
    while cm.ready_count(cluster) < segments:
        if time.monotonic() - t0 > 60:
            raise StepError(f"only {cm.ready_count(cluster)} .ready files after writing {segments} segments")
        time.sleep(0.1)
    return last


def drain_one(pb: physical.Bench, key: str, command: str, segments: int, res: physical.Result) -> None:
    copy = pb.start_copy(physical.Variant(f"drain-{key}", key, False, ""))
    try:
        if key == "pgbackrest":
            pb.br.write_config(copy)
            pb.br.run("stanza-create")
        last = make_backlog(copy, segments)
        copy.psql("CHECKPOINT")
        os.sync()
        with contextlib.closing(cm.connect(copy)) as conn:
            archiver = int(cm.scalar(conn, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'"))
            backlog = cm.ready_count(copy)
            base = cm.archiver_stats(conn)
            cpu = archive.ArchiverCpu(archiver, str(copy.base_dir))
            busy0, steal0 = pr.machine_cpu()
            copy.set_config(archive_command=command)
            t0 = time.monotonic()
            conn.execute("SELECT pg_reload_conf()")
            while True:
                st = cm.archiver_stats(conn)
                if cm.archived_past(st, last) and cm.ready_count(copy) == 0:
                    break
                if st.failed > base.failed:
                    raise StepError(f"archive_command failed on {st.last_failed}: {cm.archive_failures(copy)}")
                if time.monotonic() - t0 > DRAIN_TIMEOUT:
                    raise StepError(f"backlog not drained within {DRAIN_TIMEOUT:.0f}s")
                cpu.sample()
                time.sleep(0.02)
            res.wall = time.monotonic() - t0
            busy1, steal1 = pr.machine_cpu()
            res.machine_busy, res.steal = busy1 - busy0, steal1 - steal0
            cpu.sample()
    finally:
        pb.retire_copy()  # ends the helpers (pgBackRest's async process, pgvault's pusher): their CPU is reaped
    archive.REAPER.reap()
    cmd_s, helper_s, _names = cpu.seconds()
    res.extra.update(segments=backlog, cpu_s=round(cmd_s + helper_s, 2),
                     cpu_s_per_segment=round((cmd_s + helper_s) / backlog, 4), seg_per_s=round(backlog / res.wall, 2),
                     archive_command_cpu_s=round(cmd_s, 2), helper_cpu_s=round(helper_s, 2))
    if key != "cp":
        assert pb.variants
        repo: Path | None = next((v.repo for v in pb.variants if v.key == key), None)
        if repo is not None and not any(p.name.startswith(last) for p in repo.rglob("*")):
            raise StepError(f"{last} was reported archived but is not in {repo}")
