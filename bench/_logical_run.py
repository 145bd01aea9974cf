"""bench/logical.py's timed steps: the Bench that runs pg_dump, pg_dump | gzip, pgvault backup,
gunzip | psql and pgvault restore against one server, each ``--repeat`` times."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as cm
from _datagen import DB, SERVER_SETTINGS, generate
from _procs import LIVE, MiB, ProcInfo, Run, Runner, StepError, loadavg, log, postmaster_pid

from pgvault.config import environment_value
from pgvault.pg.bindir import BinDir, bindir_for_server
from support.cli import clean_env
from support.pgcluster import PgCluster


@dataclass
class Step:
    key: str
    title: str
    runs: list[Run] = field(default_factory=list)
    stored_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.wall)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"title": self.title, "stored_bytes": self.stored_bytes, **self.extra}
        if self.runs:
            d["wall_s_best"] = round(self.best.wall, 3)
            d["wall_s_all"] = [round(r.wall, 3) for r in self.runs]
            d["best_run"] = self.best.to_json()
        return d


def cpu_of(run: Run, names: Sequence[str]) -> float:
    return sum(p.cpu for p in run.procs if p.name in names)


def peak_of(run: Run, names: Sequence[str]) -> float:
    return max((p.hwm_kb for p in run.procs if p.name in names), default=0) / 1024


def python_proc(run: Run) -> ProcInfo | None:
    roots = [p for p in run.procs if p.name.startswith("python")]
    return roots[0] if roots else None


def repo_bytes(repo: Path, backup_id: str) -> int:
    total = 0
    for path in repo.rglob("*"):
        if path.is_file() and backup_id in path.parts:
            total += path.stat().st_size
    return total


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: PgCluster, workdir: Path) -> None:
        self.args = args
        self.cluster = cluster
        self.workdir = workdir
        self.runner = Runner(workdir, postmaster_pid(cluster))
        self.steps: dict[str, Step] = {}
        self.info: dict[str, Any] = {}
        # The bin dir pgvault itself picks for this server (same function, same search path).
        self.bindir: BinDir = bindir_for_server(cluster.major, environment_value("postgres.bin_dirs"))
        self.pg_env = cluster.client_env()
        self.gz = workdir / "benchdb.sql.gz"
        self.repo = workdir / "repo"
        key = cm.make_age_key(workdir)
        self.pgvault_env = clean_env(
            **cluster.env(),
            PGVAULT_REPOSITORY_URL=str(self.repo),
            PGVAULT_CLUSTER=f"pg{cluster.major}",
            PGVAULT_ENCRYPTION_AGE_RECIPIENTS=key.recipient,
            PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(key.identity_file),
        )
        self.pgvault = [sys.executable, "-m", "pgvault"]

    def prog(self, name: str) -> str:
        return str(self.bindir.program(name))

    def settle(self) -> None:
        """Between timed runs: flush dirty pages so one run's writeback doesn't slow the next."""
        self.cluster.psql("CHECKPOINT")
        os.sync()

    def step(self, key: str, title: str) -> Step:
        return self.steps.setdefault(key, Step(key, title))

    def timed(self, key: str, title: str, rnd: int, fn: Callable[[], Run]) -> Step:
        """One timed run of a step (round ``rnd``), after settling the machine."""
        st = self.step(key, title)
        self.settle()
        log(f"{title} (run {rnd + 1}/{self.args.repeat})")
        run = fn()
        st.runs.append(run)
        log(f"  {run.wall:.1f} s")
        return st

    # a.
    def pg_dump_alone(self, rnd: int) -> None:
        self.timed(
            "pg_dump", "pg_dump -d db > /dev/null", rnd,
            lambda: self.runner.run("pg_dump", [[self.prog("pg_dump"), "-d", DB]], env=self.pg_env),
        )

    # b.
    def pg_dump_gzip(self, rnd: int) -> None:
        st = self.timed(
            "gzip", "pg_dump -d db | gzip > file", rnd,
            lambda: self.runner.run(
                "pg_dump|gzip", [[self.prog("pg_dump"), "-d", DB], ["gzip"]], env=self.pg_env, stdout_path=self.gz
            ),
        )
        st.stored_bytes = self.gz.stat().st_size

    # c.
    def pgvault_backup(self, key: str, title: str, extra: list[str], rnd: int, env: dict[str, str] | None = None) -> None:
        st = self.timed(
            key, title, rnd,
            lambda: self.runner.run(
                key, [[*self.pgvault, "backup", "-d", DB, "--json", *extra]], env={**self.pgvault_env, **(env or {})},
                capture=True,
            ),
        )
        doc = json.loads(st.runs[-1].stdout)["backup"]
        backup_id = doc["backup_id"]
        st.stored_bytes = repo_bytes(self.repo, backup_id)
        db_entry = next(d for d in doc["databases"] if d["name"] == DB)
        pipeline = doc.get("pipeline") or {}
        st.extra.update(
            backup_id=backup_id,
            dump_raw_bytes=db_entry["object"]["raw_size"],
            db_object_stored_bytes=db_entry["object"]["stored_size"],
            internal_duration_s=round(doc["duration_seconds"], 2),
            client_bindir=doc.get("client_bindir"),
            pg_dump_version=doc.get("pg_dump_version"),
            pipeline=f"{pipeline.get('compression')} level {pipeline.get('level') or 'default'}, "
            f"encryption {pipeline.get('encryption')}",
        )
        if doc.get("client_bindir") and Path(doc["client_bindir"]).resolve() != self.bindir.path.resolve():
            raise StepError(f"pgvault used {doc['client_bindir']}, the benchmark {self.bindir.path}")

    # d.
    def restore_psql(self, rnd: int) -> None:
        target = "bench_restore_psql"
        self.cluster.drop_database(target)
        self.cluster.psql(f"CREATE DATABASE {target} TEMPLATE template0")
        self.timed(
            "restore_psql", "gunzip < file | psql -d new", rnd,
            lambda: self.runner.run(
                "gunzip|psql",
                [["gzip", "-dc"], [self.prog("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target]],
                env=self.pg_env, stdin_path=self.gz,
            ),
        )
        self.check_restored(target)
        self.cluster.drop_database(target)

    def pgvault_restore(self, key: str, jobs: int, rnd: int) -> None:
        target = f"bench_restore_j{jobs}"
        latest = self.steps["pgvault"].extra["backup_id"]
        self.cluster.drop_database(target)
        st = self.timed(
            key, f"pgvault restore latest -d db -t new --jobs {jobs}", rnd,
            lambda: self.runner.run(
                key,
                [[*self.pgvault, "restore", "latest", "-d", DB, "-t", target, "--jobs", str(jobs), "--json"]],
                env=self.pgvault_env, capture=True,
            ),
        )
        doc = json.loads(st.runs[-1].stdout)["restore"]
        if doc["backup_id"] != latest:
            raise StepError(f"'latest' resolved to {doc['backup_id']}, expected the default backup {latest}")
        st.extra.update(verified=doc["verified"], internal_duration_s=doc["duration_seconds"],
                        pg_restore_version=doc["pg_restore_version"])
        if not doc["verified"]:
            raise StepError(f"pgvault restore into {target} did not verify")
        self.check_restored(target)
        self.cluster.drop_database(target)

    def check_restored(self, target: str) -> None:
        want = self.info["source_rows"]
        for table, n in want.items():
            got = int(self.cluster.psql(f"SELECT count(*) FROM {table}", dbname=target))
            if got != n:
                raise StepError(f"restored {target}.{table} has {got} rows, the source {n}")

    def plain_dump_size(self) -> int:
        """Untimed warm-up pass that also measures the plain dump's size."""
        proc = subprocess.Popen([self.prog("pg_dump"), "-d", DB], stdout=subprocess.PIPE, env=self.pg_env,
                                start_new_session=True)
        LIVE[proc.pid] = proc
        n = 0
        assert proc.stdout is not None
        while chunk := proc.stdout.read(MiB):
            n += len(chunk)
        if proc.wait() != 0:
            raise StepError("warm-up pg_dump failed")
        LIVE.pop(proc.pid, None)
        return n

    def run_all(self) -> None:
        a = self.args
        self.info.update(
            host=platform.node(), cpus=os.cpu_count(), python=platform.python_version(), loadavg_start=loadavg(),
            server_major=self.cluster.major, client_bindir=str(self.bindir.path), client_version=self.bindir.version,
            size_gb_requested=a.size_gb, repeat=a.repeat,
            server_settings={**SERVER_SETTINGS, "fsync": "off", "wal_level": "replica"},
        )
        log(f"generating >= {a.size_gb} GiB of data in {DB} (PostgreSQL {self.cluster.bindir.version})")
        gen = generate(self.cluster, a.size_gb)
        self.info["data"] = gen
        self.info["source_rows"] = gen["rows"]
        log(f"  {gen['db_size_bytes'] / MiB:.0f} MiB in {gen['seconds']} s: {gen['rows']}")
        log("warm-up pg_dump (untimed; measures the plain dump size)")
        self.info["plain_dump_bytes"] = self.plain_dump_size()
        # Rounds rather than step after step: a drift of the machine's speed then spreads over
        # every step instead of favouring the ones that happened to run first.
        for rnd in range(a.repeat):
            self.pg_dump_alone(rnd)
            self.pg_dump_gzip(rnd)
            if rnd == 0:
                self.info["gzip_ratio"] = round(self.info["plain_dump_bytes"] / self.gz.stat().st_size, 2)
            # --no-exact-counts first, so that "latest" below is a default (exact counts) backup
            self.pgvault_backup("pgvault_noexact", "pgvault backup -d db --no-exact-counts", ["--no-exact-counts"], rnd)
            self.pgvault_backup("pgvault", "pgvault backup -d db (zstd, 2 threads, age)", [], rnd)
            self.restore_psql(rnd)
            self.pgvault_restore("restore_j2", 2, rnd)
            self.pgvault_restore("restore_j1", 1, rnd)
        self.info["loadavg_end"] = loadavg()
