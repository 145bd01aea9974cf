#!/usr/bin/env python3
"""Benchmark: can pgvault's WAL archiving keep up with the heaviest write load this machine makes?
And pgBackRest's asynchronous archive-push, on the identical run, for comparison.

Not a test: a report.  For each archiver in turn (pgvault, then pgBackRest) it

  1. starts a fresh throwaway PostgreSQL server (tests/support/pgcluster.py; 16 MB segments,
     fsync off, synchronous_commit off, full_page_writes on, max_wal_size 16GB so that no
     WAL-triggered checkpoint happens during the run, checkpoint_timeout at its 5 min default,
     archive_mode on) and loads ``pgbench -i -s SCALE`` while archive_command is ``true`` (the
     load's WAL is not what is measured);
  2. switches archive_command (a reload) to the archiver under test, as the postgres OS user:
       pgvault     ``PGVAULT_CONFIG=... pgvault wal push %p``: a launcher running a copy of src/
                   (like tests/support/launcher.py), local repository owned by postgres, age
                   encryption to a fresh key, every other setting at pgvault's defaults (zstd, and
                   whatever archiving mode is the default: no archive settings are written);
       pgBackRest  ``pgbackrest --config=... --stanza=bench archive-push %p`` with archive-async=y,
                   a spool path, process-max=2, compress-type=zst, repo1-cipher-type aes-256-cbc
                   (passphrase in its config file; ``--pgbackrest-cipher none`` to turn it off),
                   after ``stanza-create``;
     and proves it works: one ``pg_switch_wal()`` must reach the repository;
  3. runs CHECKPOINT (so the load starts with full-page writes, as after any checkpoint), then
     ``pgbench -c 4 -j 2 -T DURATION -N -M prepared`` (of the pgbench modes this one generated the
     most WAL per second here: no branch/teller updates, so no row-lock contention);
  4. samples every second ``pg_stat_archiver`` (archived_count, failed_count, last_archived_wal),
     the WAL position and the number of ``pg_wal/archive_status/*.ready`` files (the backlog);
  5. when pgbench ends, ``pg_switch_wal()`` and waits (``--drain-timeout``, default 300 s) until the
     switched segment is archived and no ``.ready`` is left.

Reported per archiver: WAL generated during the load (bytes, segments), pgbench's tps, the largest
backlog, the backlog when the load ended, the backlog over time (max per 5 s), the time to drain
after the load ended, failed_count, what the repository holds, and the CPU time outside the server
and pgbench (on an idle machine: the archiver's).  Target: pgvault's max backlog <= 4 segments and
drained to 0, PASS or MISS; pgBackRest's figures are printed beside it.

Exit status: 0 when every step ran (whatever the figures), 1 when a step failed, 130 on Ctrl-C.
Servers, leftover archiving processes and temporary files are removed at the end in every case.

Run it with the project's virtualenv (``source scripts/env.sh``), as root (the servers and
archivers then run as the ``postgres`` OS user) or as a user who can run PostgreSQL::

    python bench/archive.py --duration 60 --major 15
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as cm  # noqa: E402
import _procs as pr  # noqa: E402
import psycopg  # noqa: E402
from _procs import MiB, StepError, log  # noqa: E402

from support.pgcluster import PgCluster, PgClusterError, postgres_tmpdir  # noqa: E402

TOOLS = ("pgvault", "pgbackrest")
TITLES = {"pgvault": "pgvault", "pgbackrest": "pgBackRest"}
MAX_BACKLOG_TARGET = 4
WAL_POSITION = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
BUCKET_S = 5

SERVER_SETTINGS: dict[str, str | int | bool] = {
    "shared_buffers": "256MB",
    "max_wal_size": "16GB",
    "synchronous_commit": "off",
    "full_page_writes": True,
    "archive_mode": "on",
    "archive_command": "true",  # while pgbench -i loads; switched to the archiver under test afterwards
    "jit": "off",
}

CAVEATS = [
    ("fsync=off on the server (the test harness's default) so that WAL is generated as fast as the CPUs allow; "
     "both archivers fsync what they store in their repositories."),
    "The archived WAL of the timed load only: pgbench -i ran with archive_command = true.",
    ("CPU of archiving: the archive_command processes (reaped by the server's archiver) plus the helpers they "
     "detach (this script is their child subreaper, so their rusage comes to it when they exit). "
     "'Anything else' is the machine's busy time minus the server, pgbench, archiving and this script."),
    "Both archivers store into a local directory on the same disk as the server, so no network is involved.",
    ("Both archive asynchronously: pgBackRest's archive-push returns 0 once its background process has stored the "
     "segment, pgvault's wal push once the segment is durable in the repository (pushed by itself or by its "
     "background pusher). The .ready backlog is what PostgreSQL still holds, the same measure for both."),
]


@dataclass
class Sample:
    t: float  # seconds since the load started
    ready: int
    archived: int  # archived_count since the load started
    failed: int  # failed_count since the load started
    wal_bytes: int  # WAL written since the load started


PR_SET_CHILD_SUBREAPER = 36
#: Orphans reparented to us whose CPU is archiving work (the server's own processes are not).
HELPER_NAMES = ("pgbackrest", "python", "sh", "dash", "bash", "pgvault")


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    The servers are started below us (runuser → pg_ctl → postmaster, orphaned when pg_ctl exits),
    so a helper that an archive_command detaches (pgBackRest's async archive-push, pgvault's
    background pusher) is reparented to us when its parent exits, not to init, and its exit
    status and rusage (CPU of it and its reaped children) come to us.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class OrphanReaper:
    """Reaps orphaned descendants that were reparented to us and keeps the CPU of archiving helpers.

    Only zombies whose parent is us and whose name is a helper's or the server's are reaped; our
    own direct children (psql, pgbench, runuser) are left to whoever started them.
    """

    def __init__(self) -> None:
        self.reaped: dict[int, tuple[str, float]] = {}  # pid -> (name, CPU seconds incl. its reaped children)
        self._lock = threading.Lock()

    def reap(self) -> None:
        me = os.getpid()
        with self._lock:
            for e in os.listdir("/proc"):
                if not e.isdigit():
                    continue
                try:
                    with open(f"/proc/{e}/stat", "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                rpar = data.rfind(b")")
                name = data[data.find(b"(") + 1 : rpar].decode(errors="replace")
                rest = data[rpar + 2 :].split()
                if rest[0] != b"Z" or int(rest[1]) != me or not (name == "postgres" or name.startswith(HELPER_NAMES)):
                    continue
                try:
                    pid, _, ru = os.wait4(int(e), os.WNOHANG)
                except ChildProcessError:
                    continue
                if pid and name != "postgres":
                    self.reaped[pid] = (name, ru.ru_utime + ru.ru_stime)

    def clear(self) -> None:
        with self._lock:
            self.reaped.clear()


REAPER = OrphanReaper()


class ArchiverCpu:
    """CPU seconds spent archiving from now on: the archive_command processes (reaped by the
    server's archiver process, so they add up in its children's CPU) plus the helpers they detach
    (reaped by us, see :func:`become_subreaper`).  A helper already running now counts only with
    what it uses from now on."""

    def __init__(self, archiver_pid: int, marker: str) -> None:
        self.archiver_pid = archiver_pid
        st = pr.read_stat(archiver_pid)
        self.children0 = st[3] if st else 0.0
        self.children = self.children0
        REAPER.reap()
        REAPER.clear()
        self.running0: dict[int, float] = {}  # helpers alive now: pid -> CPU so far
        for e in os.listdir("/proc"):
            if e.isdigit() and int(e) != os.getpid():
                pst = pr.read_stat(int(e))
                if pst is not None and pst[0] != "postgres" and cm.mentions(int(e), marker):
                    self.running0[int(e)] = pst[2] + pst[3]

    def sample(self) -> None:
        st = pr.read_stat(self.archiver_pid)
        if st is not None:
            self.children = st[3]
        REAPER.reap()

    def seconds(self) -> tuple[float, float, list[str]]:
        """(archive_command processes, detached helpers, helper names); complete once the helpers
        have exited (after the server is stopped and leftovers are killed)."""
        helpers = sum(cpu - self.running0.get(pid, 0.0) for pid, (_, cpu) in REAPER.reaped.items())
        names = sorted({name for name, _ in REAPER.reaped.values()})
        return self.children - self.children0, helpers, names


class ArchiveSampler(threading.Thread):
    """Every ``interval`` s: pg_stat_archiver, the WAL position, the ``.ready`` count and the
    archiver's CPU."""

    def __init__(self, cluster: PgCluster, t0: float, lsn0: int, base: cm.ArchiverStats, cpu: ArchiverCpu,
                 interval: float = 1.0) -> None:
        super().__init__(name="archive-sampler", daemon=True)
        self.cluster, self.t0, self.lsn0, self.base, self.interval = cluster, t0, lsn0, base, interval
        self.cpu = cpu
        self.samples: list[Sample] = []
        self.error: str | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)

    def run(self) -> None:
        try:
            with contextlib.closing(cm.connect(self.cluster)) as conn:
                while not self._halt.is_set():
                    self.samples.append(self.sample(conn))
                    self.cpu.sample()
                    next_at = self.t0 + len(self.samples) * self.interval
                    self._halt.wait(max(0.0, next_at - time.monotonic()))
        except Exception as e:  # noqa: BLE001 - reported with the run
            self.error = f"{type(e).__name__}: {e}"

    def sample(self, conn: psycopg.Connection[Any]) -> Sample:
        st = cm.archiver_stats(conn)
        wal = int(cm.scalar(conn, WAL_POSITION))
        return Sample(round(time.monotonic() - self.t0, 2), cm.ready_count(self.cluster),
                      st.archived - self.base.archived, st.failed - self.base.failed, wal - self.lsn0)


@dataclass
class ToolRun:
    tool: str
    archiver: str = ""  # description of the archive_command set-up
    server_version: str = ""
    segment_size: int = 16 * MiB
    archiver_cpu: ArchiverCpu | None = None
    init_s: float | None = None
    first_push_s: float | None = None
    tps: float | None = None
    transactions: int | None = None
    load_s: float | None = None
    wal_bytes: int | None = None
    archived: int | None = None  # archived_count growth, load start to drained (incl. the final switch)
    failed: int | None = None
    max_backlog: int | None = None
    backlog_at_load_end: int | None = None
    drained: bool = False
    drain_s: float | None = None
    repo_segments: int | None = None
    repo_bytes: int | None = None
    cpu: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def title(self) -> str:
        return TITLES[self.tool]

    def segments_generated(self) -> float | None:
        return None if self.wal_bytes is None else self.wal_bytes / self.segment_size

    def series(self) -> tuple[list[int], int]:
        """Max backlog per BUCKET_S seconds, and the index of the bucket in which the load ended."""
        if not self.samples:
            return [], 0
        n = int(self.samples[-1].t // BUCKET_S) + 1
        out = [0] * n
        for s in self.samples:
            i = int(s.t // BUCKET_S)
            out[i] = max(out[i], s.ready)
        return out, int((self.load_s or 0) // BUCKET_S)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("samples", "archiver_cpu")}
        d["segments_generated"] = None if self.wal_bytes is None else round(self.wal_bytes / self.segment_size, 1)
        d["backlog_max_per_5s"] = self.series()[0]
        d["samples"] = [[s.t, s.ready, s.archived, s.failed, s.wal_bytes] for s in self.samples]
        d["samples_columns"] = ["t_s", "ready", "archived", "failed", "wal_bytes"]
        return d


def _wal_files(root: Path) -> tuple[int, int]:
    """(count, bytes) of archived WAL segments under ``root``: files named after a segment
    (24 hex digits, then a suffix), not their JSON sidecars, not history or backup files."""
    n = size = 0
    for p in root.rglob("*"):
        name = p.name
        if (p.is_file() and len(name) > 24 and all(c in "0123456789ABCDEF" for c in name[:24])
                and not name.endswith(".json") and ".backup" not in name and ".partial" not in name):
            n += 1
            size += p.stat().st_size
    return n, size


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base  # postgres-traversable, unique: also the marker for stray processes
        self.work = cm.postgres_dir(base / "work", 0o755)
        self.launcher = cm.build_launcher(base / "launcher")
        self.key = cm.make_age_key(self.work)
        self.runs: dict[str, ToolRun] = {}
        self.info: dict[str, Any] = {}
        self.cluster: PgCluster | None = None

    # --- one archiver ------------------------------------------------------------------------------

    def run_tool(self, tool: str) -> ToolRun:
        a = self.args
        run = self.runs.setdefault(tool, ToolRun(tool))
        cdir = self.base / f"pg-{tool}"
        log(f"[{run.title}] starting PostgreSQL {a.major}")
        cluster = self.cluster = PgCluster.create(a.major, cdir, settings=SERVER_SETTINGS)
        try:
            self._run_on(cluster, run)
        finally:
            self.cluster = None
            self.teardown(cluster)
        if run.archiver_cpu is not None and run.cpu:
            time.sleep(0.3)  # let the helpers killed in teardown become zombies
            REAPER.reap()
            commands, helpers, names = run.archiver_cpu.seconds()
            archiving = commands + helpers
            c = run.cpu
            c.update(archiving_s=round(archiving, 1), archive_commands_s=round(commands, 1),
                     archive_helpers_s=round(helpers, 1), helpers=names,
                     other_s=round(max(0.0, c["machine_busy_s"] - c["steal_s"] - c["server_s"] - c["pgbench_s"]
                                       - c["bench_script_s"] - archiving), 1))
        return run

    def teardown(self, cluster: PgCluster) -> None:
        with contextlib.suppress(Exception):
            cluster.stop(mode="immediate")
        strays = cm.kill_strays(str(self.base))
        if strays:
            log(f"  killed {len(strays)} leftover archiving process(es): {strays}")
        with contextlib.suppress(Exception):
            cluster.destroy()

    def _run_on(self, cluster: PgCluster, run: ToolRun) -> None:
        a = self.args
        env = cluster.client_env()
        pgbench = str(cluster.bindir.program("pgbench"))
        run.server_version = cluster.bindir.version
        run.segment_size = int(cluster.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))
        log(f"[{run.title}] pgbench -i -s {a.scale} (archive_command = true)")
        t = time.monotonic()
        cm.run_checked([pgbench, "-i", "-q", "-s", str(a.scale), "postgres"], "pgbench -i", env=env, timeout=1800)
        run.init_s = round(time.monotonic() - t, 1)
        cm.wait_no_ready(cluster, 120)

        if run.tool == "pgvault":
            repo = cm.postgres_dir(self.work / "repo-pgvault", 0o750)
            conf = cm.write_pgvault_config(self.work / "pgvault.yaml", {
                "cluster": "bench", "repository.url": str(repo), "encryption.age_recipients": [self.key.recipient],
            })
            command = cm.pgvault_archive_command(self.launcher, conf)
            run.archiver = "pgvault wal push (defaults: zstd; age encryption; local repository)"
            repo_wal = repo
        else:
            br = cm.PgBackRest(cm.postgres_dir(self.work / "pgbackrest", 0o750), cipher=a.pgbackrest_cipher)
            br.write_config(cluster)
            br.run("stanza-create")
            command = br.archive_command
            run.archiver = (f"pgbackrest archive-push, archive-async=y, process-max={br.process_max}, "
                            f"compress-type=zst, repo1-cipher-type={br.cipher}")
            repo_wal = br.repo / "archive"
        log(f"[{run.title}] archive_command = {command}")
        cm.set_archive_command(cluster, command)
        segment, first = cm.switch_and_wait(cluster, 120)
        run.first_push_s = round(first, 2)
        if not any(p.name.startswith(segment) and not p.name.endswith(".json") for p in repo_wal.rglob("*")):
            raise StepError(f"{run.title}: segment {segment} was reported archived but is not in {repo_wal}")
        log(f"  first segment {segment} archived in {run.first_push_s:.1f} s")
        cluster.psql("CHECKPOINT")

        # --- the timed load ---
        postmaster = pr.postmaster_pid(cluster)
        with contextlib.closing(cm.connect(cluster)) as conn:
            archiver = int(cm.scalar(conn, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'"))
            arch_cpu = run.archiver_cpu = ArchiverCpu(archiver, str(self.base))
            base_stats = cm.archiver_stats(conn)
            lsn0 = int(cm.scalar(conn, WAL_POSITION))
            busy0, steal0 = pr.machine_cpu()
            srv0, self0 = pr.server_cpu(postmaster), _self_cpu()
            t0 = time.monotonic()
            sampler = ArchiveSampler(cluster, t0, lsn0, base_stats, arch_cpu)
            sampler.start()
            try:
                argv = [pgbench, "-c", str(a.clients), "-j", str(a.threads), "-T", str(a.duration), "-N", "-M",
                        "prepared", "postgres"]
                log(f"[{run.title}] {' '.join(['pgbench', *argv[1:]])}")
                out, pgbench_cpu = self.pgbench(argv, env)
                t_end = time.monotonic()
                run.load_s = round(t_end - t0, 2)
                run.backlog_at_load_end = cm.ready_count(cluster)
                lsn1 = int(cm.scalar(conn, WAL_POSITION))
                run.wal_bytes = lsn1 - lsn0
                for line in out.splitlines():
                    if line.startswith("tps = "):
                        run.tps = float(line.split()[2])
                    elif line.startswith("number of transactions actually processed:"):
                        run.transactions = int(line.split(":")[1].split("/")[0])
                last = str(cm.scalar(conn, "SELECT pg_walfile_name(pg_switch_wal())"))
                log(f"  load done: {run.wal_bytes / MiB:,.0f} MiB of WAL, {run.backlog_at_load_end} .ready; "
                    f"waiting for {last}")
                while True:
                    st = cm.archiver_stats(conn)
                    if cm.archived_past(st, last) and cm.ready_count(cluster) == 0:
                        run.drained, run.drain_s = True, round(time.monotonic() - t_end, 2)
                        break
                    if time.monotonic() - t_end > a.drain_timeout:
                        log(f"  NOT drained after {a.drain_timeout:.0f} s: {cm.ready_count(cluster)} .ready left")
                        break
                    time.sleep(0.25)
            finally:
                sampler.stop()
            arch_cpu.sample()
            busy1, steal1 = pr.machine_cpu()
            srv1, self1 = pr.server_cpu(postmaster), _self_cpu()
            end_stats = cm.archiver_stats(conn)
        wall = time.monotonic() - t0
        if sampler.error:
            raise StepError(f"sampling pg_stat_archiver failed: {sampler.error}")
        run.samples = sampler.samples
        run.samples.append(Sample(round(wall, 2), cm.ready_count(cluster), end_stats.archived - base_stats.archived,
                                  end_stats.failed - base_stats.failed, run.wal_bytes))
        run.archived = end_stats.archived - base_stats.archived
        run.failed = end_stats.failed - base_stats.failed
        run.max_backlog = max(s.ready for s in run.samples)
        run.repo_segments, run.repo_bytes = _wal_files(repo_wal)
        run.cpu = {  # the archiving figures are added once the helpers have exited (run_tool)
            "wall_s": round(wall, 2), "machine_busy_s": round(busy1 - busy0, 2), "steal_s": round(steal1 - steal0, 2),
            "server_s": round(srv1 - srv0, 2), "pgbench_s": round(pgbench_cpu, 2), "bench_script_s": round(self1 - self0, 2),
        }
        if run.failed:
            log(f"  {run.failed} archive_command failure(s): {cm.archive_failures(cluster)}")
        drained = f"in {run.drain_s:.1f} s" if run.drained and run.drain_s is not None else "NO"
        log(f"  max backlog {run.max_backlog}, drained {drained}, "
            f"{run.archived} archived, {run.failed} failed")

    def pgbench(self, argv: list[str], env: dict[str, str]) -> tuple[str, float]:
        """Run pgbench; (stdout, CPU seconds from wait4)."""
        err = self.work / "pgbench.stderr"
        with open(err, "wb") as ef:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=ef, env=env, start_new_session=True)
            pr.LIVE[p.pid] = p
            assert p.stdout is not None
            out = p.stdout.read().decode(errors="replace")
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            pr.LIVE.pop(p.pid, None)
        if p.returncode != 0:
            tail = " | ".join(err.read_text(errors="replace").strip().splitlines()[-6:])
            raise StepError(f"pgbench exited {p.returncode}: {tail}")
        return out, ru.ru_utime + ru.ru_stime

    def run_all(self) -> list[str]:
        a = self.args
        self.info.update(
            host=platform.node(), cpus=os.cpu_count(), python=platform.python_version(),
            loadavg_start=pr.loadavg(), major=a.major, scale=a.scale, duration_s=a.duration,
            clients=a.clients, threads=a.threads, drain_timeout_s=a.drain_timeout,
            pgbench=f"pgbench -c {a.clients} -j {a.threads} -T {a.duration} -N -M prepared (after pgbench -i -s {a.scale})",
            server_settings={**SERVER_SETTINGS, "fsync": "off", "wal_level": "replica", "archive_command": "(per run)"},
            pgbackrest_version=cm.pgbackrest_version() if "pgbackrest" in a.tools else None,
        )
        errors = []
        for tool in a.tools:
            try:
                self.run_tool(tool)
            except (StepError, PgClusterError) as e:
                self.runs[tool].error = str(e)
                errors.append(f"{TITLES[tool]}: {e}")
                log(f"[{TITLES[tool]}] FAILED: {e}")
        self.info["loadavg_end"] = pr.loadavg()
        return errors


# --- report ----------------------------------------------------------------------------------------


def verdict(run: ToolRun | None) -> dict[str, Any]:
    if run is None or run.max_backlog is None:
        status, value = "n/a", None
    else:
        value = run.max_backlog
        status = "PASS" if run.drained and run.max_backlog <= MAX_BACKLOG_TARGET else "MISS"
    return {"key": "pgvault_max_backlog", "description": "pgvault max .ready backlog (segments), then drained to 0",
            "value": value, "drained": bool(run and run.drained), "target": f"<= {MAX_BACKLOG_TARGET} and drained",
            "status": status}


def _fmt(v: Any, spec: str = "", unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def render(bench: Bench, errors: list[str], fatal: str | None) -> str:
    info, runs = bench.info, [bench.runs[t] for t in bench.args.tools if t in bench.runs]
    lines: list[str] = []
    add = lines.append
    version = next((r.server_version for r in runs if r.server_version), str(info.get("major")))
    add("")
    add(f"pgvault archive benchmark — PostgreSQL {version}; {info.get('pgbench')}")
    add(f"host {info.get('host')}: {info.get('cpus')} CPUs, Python {info.get('python')}, load average at start "
        f"{info.get('loadavg_start', '?')}, at end {info.get('loadavg_end', '?')}")
    add("server: fsync off, synchronous_commit off, full_page_writes on, 16 MB segments, max_wal_size 16GB, "
        "checkpoint_timeout 5min, CHECKPOINT right before the load")
    if info.get("pgbackrest_version"):
        add(f"{info['pgbackrest_version']}")
    add("")
    for r in runs:
        add(f"{r.title}: {r.archiver}")
    add("")

    def row(label: str, fn: Any) -> None:
        add(f"{label:<44}" + "".join(f"{fn(r):>22}" for r in runs))

    row("", lambda r: r.title)
    add("-" * (44 + 22 * len(runs)))
    row("pgbench -i (archive_command = true)", lambda r: _fmt(r.init_s, ".1f", " s"))
    row("first archived segment (empty archive)", lambda r: _fmt(r.first_push_s, ".1f", " s"))
    row("load (pgbench wall)", lambda r: _fmt(r.load_s, ".1f", " s"))
    row("pgbench tps", lambda r: _fmt(r.tps, ",.0f"))
    row("WAL generated during the load", lambda r: _fmt(None if r.wal_bytes is None else r.wal_bytes / MiB, ",.0f", " MiB"))
    row("  in segments", lambda r: _fmt(r.segments_generated(), ",.1f"))
    row("  rate", lambda r: _fmt(None if not r.wal_bytes or not r.load_s else r.wal_bytes / MiB / r.load_s, ".1f", " MiB/s"))
    row("segments archived (incl. final switch)", lambda r: _fmt(r.archived))
    row("archive failures (failed_count)", lambda r: _fmt(r.failed))
    row("max .ready backlog", lambda r: _fmt(r.max_backlog))
    row(".ready backlog when the load ended", lambda r: _fmt(r.backlog_at_load_end))
    row("drained after the load ended", lambda r: "-" if r.max_backlog is None else
        (f"{r.drain_s:.1f} s" if r.drained else f"NO (>{bench.args.drain_timeout:.0f} s)"))
    row("archive rate, load start to drained", lambda r: "-" if not (r.archived and r.cpu) else
        f"{r.archived * r.segment_size / MiB / r.cpu['wall_s']:.1f} MiB/s")
    row("WAL segments in the repository", lambda r: _fmt(r.repo_segments))
    row("  stored", lambda r: "-" if r.repo_bytes is None or not r.repo_segments else
        f"{r.repo_bytes / MiB:,.0f} MiB ({100 * r.repo_bytes / (r.repo_segments * r.segment_size):.0f}%)")
    row("CPU of archiving", lambda r: "-" if "archiving_s" not in r.cpu else
        f"{r.cpu['archiving_s']:.1f} s ({r.cpu['archiving_s'] / r.cpu['wall_s']:.2f} cores)")
    row("  archive_command / detached helpers", lambda r: "-" if "archiving_s" not in r.cpu else
        f"{r.cpu['archive_commands_s']:.1f} / {r.cpu['archive_helpers_s']:.1f} s")
    row("  per archived segment", lambda r: "-" if not ("archiving_s" in r.cpu and r.archived) else
        f"{r.cpu['archiving_s'] / r.archived:.2f} s")
    row("CPU of server processes / pgbench", lambda r: "-" if not r.cpu else
        f"{r.cpu['server_s']:.0f} / {r.cpu['pgbench_s']:.0f} s")
    row("machine CPU busy, of CPUs available", lambda r: "-" if not r.cpu else
        f"{100 * r.cpu['machine_busy_s'] / (r.cpu['wall_s'] * (info.get('cpus') or 1)):.0f}%")
    row("CPU used by anything else (other users)", lambda r: "-" if "other_s" not in r.cpu else f"{r.cpu['other_s']:.1f} s")
    add("")
    add(f".ready backlog, max per {BUCKET_S} s (| = load ended):")
    for r in runs:
        series, end = r.series()
        if not series:
            continue
        cells = [str(v) for v in series]
        cells.insert(end + 1, "|")
        add(f"  {r.title:<11} " + " ".join(cells))
    disturbed = [r.title for r in runs if "other_s" in r.cpu and r.cpu["other_s"] > max(2.0, 0.05 * r.cpu["wall_s"])]
    if disturbed:
        add("")
        add("WARNING: other work on the machine used CPU during the run of: " + ", ".join(disturbed) + ". With 2 cores")
        add("         the archivers compete with pgbench and with each other's load; re-run on an idle machine.")
    add("")
    v = verdict(bench.runs.get("pgvault"))
    add(f"{'target':<58} {'value':>6} {'target':>16}  result")
    add("-" * 90)
    add(f"{v['description']:<58} {_fmt(v['value']):>6} {v['target']:>16}  {v['status']}")
    br = bench.runs.get("pgbackrest")
    if br is not None and br.max_backlog is not None:
        add(f"  for comparison, pgBackRest: max backlog {br.max_backlog}, "
            + (f"drained {br.drain_s:.1f} s after the load" if br.drained else "not drained"))
    lines += pr.report_tail(CAVEATS, errors)
    if fatal:
        add(f"FAILED: {fatal}")
    return "\n".join(lines)


def to_json(bench: Bench, errors: list[str], fatal: str | None) -> str:
    doc = {
        "format": 1, "kind": "bench_archive", "info": bench.info,
        "runs": {t: r.to_json() for t, r in bench.runs.items()},
        "targets": [verdict(bench.runs.get("pgvault"))],
        "caveats": CAVEATS, "errors": errors, "error": fatal,
    }
    return json.dumps(doc, indent=2, default=str)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--major", type=int, default=15, help="PostgreSQL major version of the server (default 15)")
    p.add_argument("--duration", type=int, default=60, help="pgbench -T seconds (default 60)")
    p.add_argument("--scale", type=int, default=50, help="pgbench -i -s (default 50)")
    p.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for the backlog to drain (300)")
    p.add_argument("--pgbackrest-cipher", choices=("aes-256-cbc", "none"), default="aes-256-cbc",
                   help="pgBackRest repo1-cipher-type (default aes-256-cbc: pgvault encrypts with age too)")
    p.add_argument("--tools", default="pgvault,pgbackrest",
                   help="comma-separated, in order: pgvault, pgbackrest (default both)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not args.tools or any(t not in TOOLS for t in args.tools):
        p.error(f"--tools takes a comma-separated subset of {', '.join(TOOLS)}")
    if args.duration < 1 or args.scale < 1:
        p.error("--duration and --scale must be >= 1")
    need = ["age-keygen"] + (["pgbackrest"] if "pgbackrest" in args.tools else [])
    for tool in need:
        if shutil.which(tool) is None:
            p.error(f"{tool} is not on PATH")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if not become_subreaper():
        log("warning: cannot become a child subreaper; the CPU of detached archiving helpers is not counted")
    base = postgres_tmpdir("pgvault-bench-archive-")
    bench: Bench | None = None
    errors: list[str] = []
    fatal: str | None = None
    status = 0
    try:
        bench = Bench(args, base)
        errors = bench.run_all()
        status = 1 if errors else 0
    except KeyboardInterrupt:
        fatal, status = "interrupted", 130
    except Exception as e:  # noqa: BLE001 - StepError or a bug: reported, then a nonzero exit
        fatal, status = f"{type(e).__name__}: {e}", 1
    finally:
        pr.kill_live()
        if bench is not None and bench.cluster is not None:
            bench.teardown(bench.cluster)
        cm.kill_strays(str(base))
        shutil.rmtree(base, ignore_errors=True)
    if bench is not None:
        print(to_json(bench, errors, fatal) if args.json else render(bench, errors, fatal), flush=True)
    elif fatal:
        print(f"FAILED: {fatal}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
