#!/usr/bin/env python3
"""Benchmark: pgvault's base backup and point-in-time restore against pgBackRest's.

Not a test: a report.  It starts a throwaway PostgreSQL server (tests/support/pgcluster.py, the
settings of bench/logical.py: fsync off, 256 MB shared_buffers, autovacuum off), fills database
``benchdb`` with at least ``--size-gb`` GiB of realistic data (bench/_datagen.py, as logical.py,
about 35 s per GiB) while archive_command is ``true``, and stops it.  Then, one after the other,
for each of

  pgvault-age    pgvault, defaults (zstd level 3, 2 threads) + age encryption to a fresh key
  pgvault-plain  pgvault, defaults, no age recipients (pgvault encrypts whenever recipients are set)
  pgbackrest     pgBackRest: process-max=2, compress-type=zst (default level 3), archive-async=y,
                 start-fast=y, repo1-cipher-type none (``--pgbackrest-cipher aes-256-cbc``: with a
                 passphrase in its config file)

  1. starts an identical copy of the stopped source (its data directory copied, minus the
     recycled WAL segments a clean shutdown leaves) with archive_command set to that tool, run by
     the postgres OS user: pgvault's ``wal push %p`` through a launcher running a copy of src/ (like
     tests/support/launcher.py) into its own local repository, or ``pgbackrest archive-push %p``
     after ``stanza-create``; ``pg_switch_wal()`` must reach the repository.  A copy per tool
     rather than one server whose archive_command is switched: every backup reads the same files,
     and no archiving helper of one tool (pgBackRest's and pgvault's asynchronous pushers outlive
     the archive_command call) can still be at work while the next tool is measured;
  2. CHECKPOINT + sync, then times the backup, run as the postgres OS user:
     ``pgvault basebackup --json`` (PGVAULT_CONFIG = a YAML readable by postgres, connection in PG*
     variables) or ``pgbackrest --stanza=bench --type=full backup``.  Both make a fast checkpoint
     and wait until the WAL the backup needs is archived;
  3. ``pg_switch_wal()`` again and waits until it is archived: each repository's archive ends just
     after its backup, so every restore replays about the same WAL; then stops and removes the copy.

Then each backup is restored into a new directory owned by postgres, to the end of its archive,
timed until the restored server is promoted and accepts connections:

  pgvault     ``pgvault restore-cluster -D NEW --start --port P --pgvault-command LAUNCHER --json``
              (run as root: it lays out the data directory, writes restore_command, starts the
              server as the directory's owner and follows recovery until promotion);
  pgBackRest  ``pgbackrest --stanza=bench restore --pg1-path NEW --type=default --archive-mode=off``
              then ``pg_ctl start`` and polling until ``pg_is_in_recovery()`` is false.
              (--type=default recovers to the end of the archive and then promotes; pgBackRest
              refuses --target-action without a target.)

Each restored server is checked: out of recovery, and every table of benchdb holds the row count
of the source; then it is stopped and removed.

Reported: wall seconds, stored bytes (the backup's own objects: pgvault's ``<cluster>/base/<id>/``,
pgBackRest's ``backup/bench/<label>/``; archived WAL is not counted), CPU, and the ratios the
project targets (PASS/MISS): pgvault basebackup / pgBackRest backup <= 1.0, pgvault restore /
pgBackRest restore <= 1.0, stored bytes pgvault / pgBackRest <= 1.10.  The primary ratios compare
like with like (pgvault-plain against unencrypted pgBackRest, pgvault-age against aes-256-cbc);
the other pgvault variant is shown below them for information.

Exit status: 0 when every step ran (whatever the ratios), 1 when a step failed (the others still
run and are reported), 130 on Ctrl-C.  Servers and temporary files are removed at the end in
every case.

Run it with the project's virtualenv (``source scripts/env.sh``), as root (the servers and the
archivers run as the ``postgres`` OS user)::

    python bench/physical.py --size-gb 1 --major 15
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as cm  # noqa: E402
import _datagen as datagen  # noqa: E402
import _procs as pr  # noqa: E402
import psycopg  # noqa: E402
from _datagen import DB  # noqa: E402
from _procs import MiB, StepError, log  # noqa: E402

from support.cli import clean_env  # noqa: E402
from support.pgcluster import (  # noqa: E402
    PG_OS_USER,
    PgCluster,
    PgClusterError,
    free_port,
    postgres_tmpdir,
)

SERVER_SETTINGS: dict[str, str | int | bool] = {
    **datagen.SERVER_SETTINGS,
    "archive_mode": "on",
    "archive_command": "true",  # while the data is generated; switched per tool afterwards
}
ARCHIVE_TIMEOUT = 300.0

#: (key, description, limit)
TARGETS = [
    ("backup_wall", "backup wall, pgvault / pgBackRest", 1.0),
    ("restore_wall", "restore wall until promoted, pgvault / pgBackRest", 1.0),
    ("stored_bytes", "stored bytes, pgvault / pgBackRest", 1.10),
]

CAVEATS = [
    ("Warm runs: the database was just generated and fits in the page cache, as do the repositories when they are "
     "restored; on real servers both tools alike wait for the disks."),
    "fsync=off on the server; both tools fsync what they write to their repositories and restored data directories.",
    ("Each tool backs up its own identical copy of the stopped source (started just before, so its shared buffers "
     "are cold; the files are in the OS page cache). Before each timed step: CHECKPOINT and sync."),
    ("Backup walls include the fast checkpoint and the wait until the backup's WAL is archived (each tool by its own "
     "archive_command). Restore walls run from the command's start until the restored server is promoted and "
     "accepts connections; the row-count check afterwards is not timed."),
    "Stored bytes are the backup's own files (data and manifest), not the archived WAL.",
    "pgvault runs as a python process per command (start-up included); pgBackRest is C.",
]


@dataclass
class Variant:
    key: str  # pgvault-age | pgvault-plain | pgbackrest
    label: str
    encrypted: bool
    archive_command: str = ""
    config: Path | None = None  # pgvault YAML
    repo: Path | None = None
    backup_id: str | None = None


@dataclass
class Result:
    key: str
    title: str
    wall: float | None = None
    stored_bytes: int | None = None
    raw_bytes: int | None = None
    tool_cpu: float | None = None  # the measured process tree (backups)
    server_cpu: float | None = None  # the source server (backups)
    machine_busy: float | None = None  # every CPU of the machine during the step
    steal: float | None = None
    peak_rss_mb: float | None = None  # largest single process of the tool
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base
        self.work = cm.postgres_dir(base / "work", 0o755)
        self.launcher = cm.build_launcher(base / "launcher")
        self.key = cm.make_age_key(self.work)
        self.results: dict[str, Result] = {}
        self.info: dict[str, Any] = {}
        self.source: PgCluster | None = None  # generated once, then stopped
        self.copy: PgCluster | None = None  # the running copy being backed up
        self.sockets = cm.postgres_dir(base / "run", 0o755)  # socket dir of the copies and restored servers
        self.redo_segment = ""
        self.restored: list[Path] = []  # data directories of restored servers (stopped in cleanup)
        self.fresh_repositories(self.work)

    def fresh_repositories(self, work: Path) -> None:
        """Every variant gets a new, empty repository under ``work`` (a new postgres-owned directory).

        bench/perf.py calls it per round: each copy of the source writes the same WAL segment names
        again, which a repository that already archived them rightly refuses."""
        self.work = work
        self.br = cm.PgBackRest(cm.postgres_dir(work / "pgbackrest", 0o750), cipher=self.args.pgbackrest_cipher)
        self.variants = [self._pgvault_variant("pgvault-age", True), self._pgvault_variant("pgvault-plain", False),
                         Variant("pgbackrest", f"pgBackRest (zst, cipher {self.br.cipher})", self.br.cipher != "none",
                                 self.br.archive_command, repo=self.br.repo)]

    def _pgvault_variant(self, key: str, encrypted: bool) -> Variant:
        repo = cm.postgres_dir(self.work / f"repo-{key}", 0o750)
        settings: dict[str, object] = {"cluster": "bench", "repository.url": str(repo)}
        if encrypted:
            settings["encryption.age_recipients"] = [self.key.recipient]
            settings["encryption.age_identity_file"] = str(self.key.identity_file)
        conf = cm.write_pgvault_config(self.work / f"{key}.yaml", settings)
        label = "pgvault (zstd, age)" if encrypted else "pgvault (zstd, no encryption)"
        return Variant(key, label, encrypted, cm.pgvault_archive_command(self.launcher, conf), conf, repo)

    def result(self, key: str, title: str) -> Result:
        return self.results.setdefault(key, Result(key, title))

    def step(self, key: str, title: str, fn: Callable[[Result], None]) -> bool:
        """Run one step; a StepError is recorded on it and the benchmark goes on."""
        res = self.result(key, title)
        log(title)
        try:
            fn(res)
        except (StepError, PgClusterError, psycopg.Error) as e:
            res.error = f"{type(e).__name__}: {e}" if not isinstance(e, StepError) else str(e)
            log(f"  FAILED: {res.error}")
            return False
        if res.wall is not None:
            log(f"  {res.wall:.1f} s" + (f", {res.stored_bytes / MiB:,.1f} MiB stored" if res.stored_bytes else ""))
        return True

    # --- backups -----------------------------------------------------------------------------------

    def start_copy(self, v: Variant) -> PgCluster:
        """Start a copy of the stopped source, archiving with ``v``'s archive_command."""
        src = self.source
        assert src is not None
        dest = self.base / f"pg-{v.key}"
        wal_dir = src.datadir / "pg_wal"

        def skip(directory: str, names: list[str]) -> list[str]:
            if Path(directory) != wal_dir:
                return []
            return [n for n in names if len(n) == cm.SEGMENT_NAME_LEN and n != self.redo_segment]

        dest.mkdir()
        shutil.copytree(src.datadir, dest / "data", symlinks=True, ignore=skip)
        if cm.AS_ROOT:
            cm.run_checked(["chown", "-R", f"{PG_OS_USER}:{PG_OS_USER}", str(dest)], "chown")
        copy = self.copy = PgCluster(bindir=src.bindir, base_dir=dest, port=free_port(), password=src.password,
                                     socket_dir=self.sockets)
        copy.settings = dict(src.settings)
        copy.set_config(archive_command=v.archive_command)
        copy.start()
        return copy

    def retire_copy(self) -> None:
        """Stop the running copy, end its leftover archiving helpers, remove it."""
        copy, self.copy = self.copy, None
        if copy is None:
            return
        with contextlib.suppress(Exception):
            copy.stop(mode="fast")
        with contextlib.suppress(Exception):
            copy.stop(mode="immediate")
        strays = cm.kill_strays(str(copy.base_dir))
        if strays:
            log(f"  ended {len(strays)} archiving helper(s) still running after the server stopped: {strays}")
        shutil.rmtree(copy.base_dir, ignore_errors=True)

    def settle(self, cluster: PgCluster) -> None:
        cluster.psql("CHECKPOINT")
        os.sync()

    def stop_source(self) -> None:
        """Stop the source once its archive backlog is drained; its copies keep only the REDO segment."""
        cluster = self.source
        assert cluster is not None
        cm.wait_no_ready(cluster, 300)
        cluster.stop()
        control = cm.run_checked([str(cluster.bindir.program("pg_controldata")), str(cluster.datadir)],
                                 "pg_controldata", env=cm.server_env())
        self.redo_segment = next(ln.split(":", 1)[1].strip() for ln in control.splitlines()
                                 if ln.startswith("Latest checkpoint's REDO WAL file"))

    def backup(self, v: Variant, res: Result) -> None:
        try:
            self._backup(v, res, self.start_copy(v))
        finally:
            self.retire_copy()

    def _backup(self, v: Variant, res: Result, cluster: PgCluster) -> None:
        if v.key == "pgbackrest":
            self.br.write_config(cluster)
            self.br.run("stanza-create")
        segment, _ = cm.switch_and_wait(cluster, ARCHIVE_TIMEOUT)
        assert v.repo is not None
        if not any(p.name.startswith(segment) and not p.name.endswith(".json") for p in v.repo.rglob("*")):
            raise StepError(f"segment {segment} was reported archived but is not in {v.repo}")
        runner = pr.Runner(self.work, pr.postmaster_pid(cluster))
        self.settle(cluster)
        if v.key == "pgbackrest":
            cmd = self.br.argv("--type=full", "backup")
            env = cm.server_env()
        else:
            cmd = cm.as_postgres([str(self.launcher), "basebackup", "--json", "--archive-timeout", str(ARCHIVE_TIMEOUT)])
            env = clean_env(**cluster.env(), PGVAULT_CONFIG=str(v.config))
        run = runner.run(v.key, [cmd], env=env, capture=True)
        res.wall = run.wall
        res.tool_cpu = sum(p.cpu for p in run.procs)
        res.server_cpu = run.server_cpu
        res.machine_busy, res.steal = run.machine_busy, run.steal
        res.extra["other_cpu_s"] = round(run.other_cpu(), 2)
        res.peak_rss_mb = max((p.hwm_kb for p in run.procs), default=0) / 1024
        if v.key == "pgbackrest":
            info = json.loads(self.br.run("info", "--output=json"))
            b = info[0]["backup"][-1]
            v.backup_id = b["label"]
            res.stored_bytes = cm.tree_bytes(self.br.repo / "backup" / self.br.stanza / b["label"])
            res.raw_bytes = int(b["info"]["size"])
            res.extra.update(label=b["label"], repo_size_reported=b["info"]["repository"]["size"],
                             wal_start=b["archive"]["start"], wal_stop=b["archive"]["stop"])
        else:
            m = json.loads(run.stdout)["backup"]
            v.backup_id = m["backup_id"]
            res.stored_bytes = cm.tree_bytes(v.repo / "bench" / "base" / m["backup_id"])
            res.raw_bytes = int(m["raw_size"])
            res.extra.update(backup_id=m["backup_id"], internal_duration_s=m["duration_seconds"],
                             wal_start=m["first_wal"], wal_stop=m["last_wal"], pipeline=m["pipeline"],
                             base_files=m["base"]["files"])
        # End this repository's archive right after its backup.
        last, _ = cm.switch_and_wait(cluster, ARCHIVE_TIMEOUT)
        res.extra.update(archive_ends_at=last)

    # --- restores ----------------------------------------------------------------------------------

    def restore(self, v: Variant, res: Result) -> None:
        if v.backup_id is None:
            raise StepError("no backup to restore")
        dest = cm.postgres_dir(self.base / f"restore-{v.key}", 0o700)
        self.restored.append(dest)
        port = free_port()
        os.sync()
        try:
            busy0, steal0 = pr.machine_cpu()
            t0 = time.monotonic()
            if v.key == "pgbackrest":
                self._restore_pgbackrest(dest, port, res)
            else:
                self._restore_pgvault(v, dest, port, res)
            res.wall = time.monotonic() - t0
            busy1, steal1 = pr.machine_cpu()
            res.machine_busy, res.steal = busy1 - busy0, steal1 - steal0
            res.extra["rows_verified"] = self.verify(dest, port)
        finally:  # success or not: nothing of this restore may run on into the next step
            self.stop_restored(dest)
            strays = cm.kill_strays(str(dest))  # e.g. a WAL prefetcher
            if strays:
                log(f"  ended {len(strays)} helper(s) still running after the restored server stopped: {strays}")
            shutil.rmtree(dest, ignore_errors=True)
            self.restored.remove(dest)

    def _restore_pgvault(self, v: Variant, dest: Path, port: int, res: Result) -> None:
        cmd = [str(self.launcher), "restore-cluster", "--data-dir", str(dest), "--start", "--port", str(port),
               "--pgvault-command", str(self.launcher), "--timeout", str(self.args.restore_timeout), "--json"]
        env = clean_env(PGVAULT_CONFIG=str(v.config))
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=self.args.restore_timeout + 120,
                           check=False)
        (self.work / f"restore-{v.key}.stderr").write_text(r.stderr)
        if r.returncode != 0:
            tail = " | ".join(r.stderr.strip().splitlines()[-10:])
            raise StepError(f"pgvault restore-cluster exited {r.returncode}: {tail}")
        doc = json.loads(r.stdout)
        rec = doc.get("recovery") or {}
        res.extra.update(layout_s=doc.get("restore_seconds"), recovery_s=round(float(rec.get("seconds") or 0), 3),
                         wal_files_restored=rec.get("segments_restored"), state=rec.get("state"),
                         new_timeline=rec.get("new_timeline"), backup_id=(doc.get("plan") or {}).get("backup_id"))
        if rec.get("state") != "promoted":
            raise StepError(f"restore-cluster ended with recovery state {rec.get('state')!r}, not promoted")

    def _restore_pgbackrest(self, dest: Path, port: int, res: Result) -> None:
        t0 = time.monotonic()
        self.br.run("restore", f"--pg1-path={dest}", "--type=default", "--archive-mode=off",
                    timeout=self.args.restore_timeout)
        t1 = time.monotonic()
        logfile = self.base / f"restore-{res.key}.log"
        logfile.touch()
        cm.chown_postgres(logfile)
        pg_ctl = str(self.pg_bin("pg_ctl"))
        cm.run_checked(cm.as_postgres([pg_ctl, "-D", str(dest), "-l", str(logfile), "-W", "-o",
                                       f"-p {port} -c lc_messages=C", "start"]), "pg_ctl start", env=cm.server_env())
        # From t1: pg_ctl start -W does not wait for postmaster.pid, which wait_promoted's
        # "the server exited" check looks for once 5 s have passed since the time it is given.
        self.wait_promoted(dest, port, logfile, t1)
        t2 = time.monotonic()
        text = logfile.read_text(errors="replace")
        res.extra.update(layout_s=round(t1 - t0, 3), recovery_s=round(t2 - t1, 3),
                         wal_files_restored=text.count("restored log file"),
                         restore_command=next((ln for ln in (dest / "postgresql.auto.conf").read_text().splitlines()
                                               if ln.startswith("restore_command")), None))

    def wait_promoted(self, dest: Path, port: int, logfile: Path, t0: float) -> None:
        """Poll until the server at ``port`` accepts connections and is out of recovery."""
        assert self.source is not None
        deadline = t0 + self.args.restore_timeout
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5"
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(dsn, password=self.source.password, autocommit=True) as conn:
                    self.check_is(conn, dest, port, logfile)
                    if cm.scalar(conn, "SELECT pg_is_in_recovery()") is False:
                        return
            except psycopg.OperationalError:
                if not (dest / "postmaster.pid").exists() and time.monotonic() - t0 > 5:
                    tail = " | ".join(logfile.read_text(errors="replace").strip().splitlines()[-6:])
                    raise StepError(f"the restored server exited: {tail}") from None
            time.sleep(0.1)
        raise StepError(f"the restored server was not promoted within {self.args.restore_timeout:.0f}s")

    @staticmethod
    def check_is(conn: psycopg.Connection[Any], dest: Path, port: int, logfile: Path | None) -> None:
        """The server we are talking to is the one restored into ``dest`` (not another on the port)."""
        got = str(cm.scalar(conn, "SELECT current_setting('data_directory')"))
        if Path(got).resolve() != dest.resolve():
            tail = "" if logfile is None else " | ".join(logfile.read_text(errors="replace").strip().splitlines()[-4:])
            raise StepError(f"port {port} is served by another server ({got}), not the restored one: {tail}")

    def verify(self, dest: Path, port: int) -> int:
        """The restored server is out of recovery and every table has the source's row count."""
        assert self.source is not None
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=10"
        with psycopg.connect(dsn, password=self.source.password, autocommit=True) as conn:
            self.check_is(conn, dest, port, None)
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname={DB} connect_timeout=10"
        with psycopg.connect(dsn, password=self.source.password, autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is None or row[0] is not False:
                raise StepError("the restored server is still in recovery")
            total = 0
            for table, want in self.info["source_rows"].items():
                got_row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                got = int(got_row[0]) if got_row else -1
                if got != want:
                    raise StepError(f"restored {table} has {got} rows, the source {want}")
                total += got
        return total

    def pg_bin(self, name: str) -> Path:
        assert self.source is not None
        return self.source.bindir.program(name)

    def stop_restored(self, dest: Path) -> None:
        if (dest / "postmaster.pid").exists():
            subprocess.run(cm.as_postgres([str(self.pg_bin("pg_ctl")), "-D", str(dest), "-m", "fast", "-w", "-t", "60",
                                           "stop"]), capture_output=True, check=False, env=cm.server_env())
        cm.stop_datadir(self.pg_bin("pg_ctl"), dest)

    # --- the whole run -----------------------------------------------------------------------------

    def run_all(self) -> None:
        a = self.args
        self.info.update(
            host=platform.node(), cpus=os.cpu_count(), python=platform.python_version(),
            loadavg_start=pr.loadavg(), major=a.major, size_gb_requested=a.size_gb,
            server_settings={**SERVER_SETTINGS, "fsync": "off", "wal_level": "replica", "archive_command": "(per tool)"},
            pgbackrest_version=cm.pgbackrest_version(), pgbackrest_settings=self.br.settings(),
        )
        log(f"starting PostgreSQL {a.major}")
        cluster = self.source = PgCluster.create(a.major, self.base / "pg", settings=SERVER_SETTINGS)
        self.info["server_version"] = cluster.bindir.version
        log(f"generating >= {a.size_gb} GiB of data in {DB} (archive_command = true)")
        gen = datagen.generate(cluster, a.size_gb)
        self.info["data"] = gen
        self.info["source_rows"] = gen["rows"]
        self.info["cluster_size_bytes"] = int(cluster.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        log(f"  {gen['db_size_bytes'] / MiB:,.0f} MiB in {gen['seconds']} s")
        self.stop_source()
        for v in self.variants:
            self.step(f"backup:{v.key}", f"backup  {v.label}", functools.partial(self.backup, v))
        for v in self.variants:
            if v.backup_id is not None:
                self.step(f"restore:{v.key}", f"restore {v.label}", functools.partial(self.restore, v))
        self.info["loadavg_end"] = pr.loadavg()

    def errors(self) -> list[str]:
        return [f"{r.title}: {r.error}" for r in self.results.values() if r.error]


# --- report ----------------------------------------------------------------------------------------


def ratios(bench: Bench) -> list[dict[str, Any]]:
    r = bench.results
    like = "pgvault-age" if bench.br.cipher != "none" else "pgvault-plain"
    other = "pgvault-plain" if like == "pgvault-age" else "pgvault-age"
    out = []
    for variant, primary in ((like, True), (other, False)):
        for key, desc, limit in TARGETS:
            kind = key.split("_")[0]
            va: float | None
            vb: float | None
            if kind == "stored":
                a = r.get(f"backup:{variant}")
                b = r.get("backup:pgbackrest")
                va, vb = (a.stored_bytes if a else None), (b.stored_bytes if b else None)
            else:
                a = r.get(f"{kind}:{variant}")
                b = r.get(f"{kind}:pgbackrest")
                va, vb = (a.wall if a and not a.error else None), (b.wall if b and not b.error else None)
            value = round(va / vb, 3) if va is not None and vb else None
            status = "n/a" if value is None else ("PASS" if value <= limit else "MISS")
            name = "age" if variant == "pgvault-age" else "no encryption"
            out.append({"key": f"{key}:{variant}", "description": f"{desc} [pgvault {name}]", "value": value,
                        "target": f"<= {limit:.2f}", "status": status, "primary": primary})
    return out


def render(bench: Bench, fatal: str | None) -> str:
    info, res = bench.info, bench.results
    lines: list[str] = []
    add = lines.append
    data = info.get("data", {})
    add("")
    add(f"pgvault physical benchmark — PostgreSQL {info.get('server_version', info.get('major'))}, "
        f"{info.get('pgbackrest_version', 'pgBackRest ?')}")
    add(f"host {info.get('host')}: {info.get('cpus')} CPUs, Python {info.get('python')}, load average at start "
        f"{info.get('loadavg_start', '?')}, at end {info.get('loadavg_end', '?')}")
    if data:
        add(f"database {DB}: {data['db_size_bytes'] / MiB:,.0f} MiB (pg_database_size; whole cluster "
            f"{info.get('cluster_size_bytes', 0) / MiB:,.0f} MiB), rows {data['rows']}")
    add(f"pgBackRest: {', '.join(f'{k}={v}' for k, v in bench.br.settings().items() if 'path' not in k)}")
    add("pgvault: defaults (zstd level 3, 2 threads), local repository; with and without age encryption")
    add("")
    head = (f"{'step':<46} {'wall s':>8} {'stored MiB':>11} {'read MiB':>9} {'CPU s: tool':>11} {'server':>7} "
            f"{'machine':>8} {'peak RSS':>9}")
    add(head)
    add("-" * len(head))
    for r in res.values():
        if r.error:
            add(f"{r.title[:46]:<46} FAILED (see below)")
            continue

        def f(v: float | None, spec: str) -> str:
            width = int(spec.split(",")[0].split(".")[0])
            return f"{'-':>{width}}" if v is None else format(v, spec)

        add(f"{r.title[:46]:<46} {f(r.wall, '8.1f')} {f(None if r.stored_bytes is None else r.stored_bytes / MiB, '11,.1f')} "
            f"{f(None if r.raw_bytes is None else r.raw_bytes / MiB, '9,.0f')} {f(r.tool_cpu, '11.1f')} "
            f"{f(r.server_cpu, '7.1f')} {f(r.machine_busy, '8.1f')} {f(r.peak_rss_mb, '9.0f')}")
        if r.key.startswith("restore:") and "layout_s" in r.extra:
            add(f"    lay out {r.extra['layout_s'] or 0:.1f} s, start + recovery {r.extra.get('recovery_s') or 0:.1f} s, "
                f"{r.extra.get('wal_files_restored')} WAL files restored; {r.extra.get('rows_verified', 0):,} rows verified")
    add("")
    add("read MiB: what the backup read (pgvault raw_size, pgBackRest size). CPU s: tool = the measured process tree;")
    add("server = the source server's processes; machine = every CPU of the machine during the step (restores: the")
    add("restored server and its restore_command included). peak RSS: the tool's largest single process, MiB.")
    disturbed = [r.title.strip() for r in res.values() if (r.extra.get("other_cpu_s") or 0) > 1.0]
    if disturbed:
        add("WARNING: other work used more than 1 CPU second during: " + "; ".join(disturbed))
        add("         The machine was busy; those walls and ratios are not representative. Re-run when it is idle.")
    add("")
    add(f"{'ratio':<74} {'value':>7} {'target':>8}  result")
    add("-" * 100)
    for v in ratios(bench):
        label = v["description"] if v["primary"] else "  " + v["description"]
        val = "-" if v["value"] is None else f"{v['value']:.3f}"
        add(f"{label:<74} {val:>7} {v['target']:>8}  {v['status']}")
    add("")
    add("Caveats:")
    for c in CAVEATS:
        add(f"  - {c}")
    for e in bench.errors():
        add(f"FAILED: {e}")
    if fatal:
        add(f"FAILED: {fatal}")
    return "\n".join(lines)


def to_json(bench: Bench, fatal: str | None) -> str:
    doc = {
        "format": 1, "kind": "bench_physical", "info": bench.info,
        "steps": {k: r.to_json() for k, r in bench.results.items()},
        "ratios": ratios(bench), "caveats": CAVEATS, "errors": bench.errors(), "error": fatal,
    }
    return json.dumps(doc, indent=2, default=str)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--major", type=int, default=15, help="PostgreSQL major version of the server (default 15)")
    p.add_argument("--size-gb", type=float, default=1.0, help="database size in GiB, pg_database_size (default 1.0)")
    p.add_argument("--pgbackrest-cipher", choices=("none", "aes-256-cbc"), default="none",
                   help="pgBackRest repo1-cipher-type (default none)")
    p.add_argument("--restore-timeout", type=float, default=1800.0, help="seconds allowed per restore (1800)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.size_gb <= 0:
        p.error("--size-gb must be > 0")
    for tool in ("age-keygen", "pgbackrest"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not on PATH")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    base = postgres_tmpdir("pgvault-bench-physical-")
    bench: Bench | None = None
    fatal: str | None = None
    status = 0
    try:
        bench = Bench(args, base)
        bench.run_all()
        status = 1 if bench.errors() else 0
    except KeyboardInterrupt:
        fatal, status = "interrupted", 130
    except Exception as e:  # noqa: BLE001 - StepError or a bug: reported, then a nonzero exit
        fatal, status = f"{type(e).__name__}: {e}", 1
    finally:
        pr.kill_live()
        if bench is not None:
            for dest in bench.restored:
                with contextlib.suppress(Exception):
                    bench.stop_restored(dest)
            bench.retire_copy()
            if bench.source is not None:
                with contextlib.suppress(Exception):
                    bench.source.destroy()
        cm.kill_strays(str(base))
        shutil.rmtree(base, ignore_errors=True)
    if bench is not None:
        print(to_json(bench, fatal) if args.json else render(bench, fatal), flush=True)
    elif fatal:
        print(f"FAILED: {fatal}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
