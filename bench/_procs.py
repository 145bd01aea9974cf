"""Shared by every benchmark (bench/logical.py, bench/archive.py, bench/physical.py): the repository's
paths on sys.path, progress logging, StepError, /proc sampling of process trees (CPU, RSS, peak
RSS), machine and server CPU, and the Runner that times a pipeline of programs.

How memory and CPU are measured: see bench/logical.py's docstring and bench/README.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
if (REPO / "src").is_dir():
    sys.path.insert(0, str(REPO / "src"))

if TYPE_CHECKING:
    from support.pgcluster import PgCluster

CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report_tail(caveats: list[str], errors: list[str]) -> list[str]:
    """The end of every text report: a blank line, the caveats, a FAILED line per error."""
    return ["", "Caveats:", *(f"  - {c}" for c in caveats), *(f"FAILED: {e}" for e in errors)]


class StepError(RuntimeError):
    """A benchmark step failed (a program exited non-zero, or setup broke)."""


# --- /proc sampling ------------------------------------------------------------------------------


def read_stat(pid: int) -> tuple[str, int, float, float] | None:
    """(comm, ppid, own cpu seconds, reaped children's cpu seconds) or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    lpar, rpar = data.find(b"("), data.rfind(b")")
    comm = data[lpar + 1 : rpar].decode("utf-8", "replace")
    rest = data[rpar + 2 :].split()
    ppid = int(rest[1])
    own = (int(rest[11]) + int(rest[12])) / CLK_TCK
    children = (int(rest[13]) + int(rest[14])) / CLK_TCK
    return comm, ppid, own, children


def _read_mem(pid: int) -> tuple[int, int] | None:
    """(VmRSS kB, VmHWM kB) or None if gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    rss = hwm = None
    for line in text.splitlines():
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith(b"VmHWM:"):
            hwm = int(line.split()[1])
    if rss is None or hwm is None:
        return None
    return rss, hwm


def _thread_cpu(pid: int) -> dict[int, float]:
    out = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            cpu = _read_task_stat(pid, int(tid))
            if cpu is not None:
                out[int(tid)] = cpu
    return out


def _read_task_stat(pid: int, tid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


@dataclass
class ProcInfo:
    pid: int
    name: str
    ppid: int
    cpu: float = 0.0  # own utime+stime at the last sample (all threads)
    rss_kb: int = 0
    hwm_kb: int = 0  # VmHWM at the last sample: the process's peak RSS so far
    threads: dict[int, float] = field(default_factory=dict)  # tid -> cpu seconds (roots only)

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "cpu_s": round(self.cpu, 2), "peak_rss_mb": round(self.hwm_kb / 1024, 1)}


class TreeSampler(threading.Thread):
    """Every ``interval`` s: RSS, peak RSS and CPU of the process trees rooted at ``roots``."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(name="proc-sampler", daemon=True)
        self.interval = interval
        self.procs: dict[int, ProcInfo] = {}
        self.roots: set[int] = set()
        self.tree_peak_kb = 0
        self._alive: set[int] = set()
        self._not_ours: set[int] = set()
        self._min_pid = 1 << 62
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def add_root(self, pid: int) -> None:
        with self._lock:
            self.roots.add(pid)
            self._min_pid = min(self._min_pid, pid)
            st = read_stat(pid)
            self.procs[pid] = ProcInfo(pid, st[0] if st else "?", st[1] if st else 0)
            self._alive.add(pid)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def _discover(self) -> None:
        try:
            entries = os.listdir("/proc")
        except OSError:
            return
        new: list[tuple[int, str, int]] = []
        for e in entries:
            if not e.isdigit():
                continue
            pid = int(e)
            # pids grow: a descendant started after its root has a larger pid (wrap-around aside).
            if pid < self._min_pid or pid in self.procs or pid in self._not_ours:
                continue
            st = read_stat(pid)
            if st is not None:
                new.append((pid, st[0], st[1]))
        # a grandchild may be listed before its parent: settle in a few passes
        for _ in range(4):
            added = False
            for pid, name, ppid in new:
                if pid not in self.procs and ppid in self.procs:
                    self.procs[pid] = ProcInfo(pid, name, ppid)
                    self._alive.add(pid)
                    added = True
            if not added:
                break
        for pid, _, _ in new:
            if pid not in self.procs:
                self._not_ours.add(pid)

    def sample(self) -> None:
        with self._lock:
            self._discover()
            total = 0
            for pid in list(self._alive):
                info = self.procs[pid]
                st = read_stat(pid)
                mem = _read_mem(pid)
                if st is None or mem is None:  # exited (or zombie: memory already gone)
                    if st is None:
                        self._alive.discard(pid)
                    continue
                info.name, info.cpu = st[0], st[2]
                info.rss_kb, info.hwm_kb = mem[0], max(info.hwm_kb, mem[1])
                if pid in self.roots:
                    info.threads.update(_thread_cpu(pid))
                total += mem[0]
            self.tree_peak_kb = max(self.tree_peak_kb, total)


# --- running programs --------------------------------------------------------------------------

LIVE: dict[int, subprocess.Popen[bytes]] = {}  # process groups we started, killed on abort


def kill_live() -> None:
    for pid, proc in list(LIVE.items()):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # our own child's group (start_new_session)
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        LIVE.pop(pid, None)


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


def postmaster_pid(cluster: PgCluster) -> int:
    return int((cluster.datadir / "postmaster.pid").read_text().splitlines()[0])


def server_cpu(postmaster: int) -> float:
    """CPU seconds used so far by the server: postmaster + reaped backends + live children."""
    st = read_stat(postmaster)
    if st is None:
        return 0.0
    total = st[2] + st[3]
    for e in os.listdir("/proc"):
        if e.isdigit() and int(e) != postmaster:
            child = read_stat(int(e))
            if child is not None and child[1] == postmaster:
                total += child[2]
    return total


@dataclass
class ChildUsage:
    name: str
    pid: int
    returncode: int
    cpu: float  # wait4: utime+stime of the child and its reaped descendants
    maxrss_kb: int  # wait4: max RSS of the child or any reaped descendant


@dataclass
class Run:
    label: str
    wall: float
    children: list[ChildUsage]
    procs: list[ProcInfo]
    tree_peak_kb: int
    server_cpu: float
    machine_busy: float = 0.0  # CPU seconds the whole machine was busy during the run
    steal: float = 0.0  # of which stolen by the hypervisor
    stdout: str = ""

    def own_cpu(self) -> float:
        """CPU seconds of the processes this run is about: the measured tree plus the server."""
        return sum(p.cpu for p in self.procs) + self.server_cpu

    def other_cpu(self) -> float:
        """CPU seconds used by everything else meanwhile (other users, kernel threads)."""
        return max(0.0, self.machine_busy - self.steal - self.own_cpu())

    def proc(self, name: str) -> list[ProcInfo]:
        return [p for p in self.procs if p.name == name]

    def to_json(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall, 3),
            "server_cpu_s": round(self.server_cpu, 2),
            "other_cpu_s": round(self.other_cpu(), 2),
            "steal_s": round(self.steal, 2),
            "tree_peak_rss_mb": round(self.tree_peak_kb / 1024, 1),
            "children": [
                {"name": c.name, "cpu_s_incl_descendants": round(c.cpu, 2), "ru_maxrss_mb": round(c.maxrss_kb / 1024, 1)}
                for c in self.children
            ],
            "processes": [p.to_json() for p in self.procs],
        }


class Runner:
    def __init__(self, workdir: Path, postmaster: int) -> None:
        self.workdir = workdir
        self.postmaster = postmaster
        self._n = 0

    def run(
        self,
        label: str,
        cmds: Sequence[Sequence[str]],
        *,
        env: dict[str, str],
        stdin_path: Path | None = None,
        stdout_path: Path | None = None,
        capture: bool = False,
    ) -> Run:
        """Run ``cmds`` as a pipeline (cmd0 | cmd1 | ...); raise StepError unless all exit 0."""
        self._n += 1
        errs = [self.workdir / f"stderr-{self._n}-{i}.txt" for i in range(len(cmds))]
        out_path = self.workdir / f"stdout-{self._n}.txt" if capture else stdout_path
        sampler = TreeSampler()
        procs: list[subprocess.Popen[bytes]] = []
        opened: list[Any] = []
        try:
            stdin: Any = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
            if stdin_path:
                opened.append(stdin)
            final_out: Any = open(out_path, "wb") if out_path else subprocess.DEVNULL
            if out_path:
                opened.append(final_out)
            cpu0 = server_cpu(self.postmaster)
            busy0, steal0 = machine_cpu()
            t0 = time.monotonic()
            prev: Any = stdin
            for i, argv in enumerate(cmds):
                last = i == len(cmds) - 1
                err = open(errs[i], "wb")
                opened.append(err)
                p = subprocess.Popen(
                    list(argv), stdin=prev, stdout=final_out if last else subprocess.PIPE, stderr=err,
                    env=env, start_new_session=True,
                )
                LIVE[p.pid] = p
                if prev is not stdin and prev is not None:
                    prev.close()  # the next program holds it now
                prev = p.stdout
                procs.append(p)
                sampler.add_root(p.pid)
            sampler.start()
            children = []
            for p in procs:
                _, status, ru = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
                wall = time.monotonic() - t0
                children.append(
                    ChildUsage(Path(p.args[0]).name if isinstance(p.args, list) else "?", p.pid, p.returncode,
                               ru.ru_utime + ru.ru_stime, ru.ru_maxrss)
                )
                LIVE.pop(p.pid, None)
            sampler.stop()
            busy1, steal1 = machine_cpu()
            time.sleep(0.2)  # let the postmaster reap the backends that served us
            cpu1 = server_cpu(self.postmaster)
        finally:
            sampler.stop()
            for f in opened:
                with contextlib.suppress(Exception):
                    f.close()
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(OSError):
                        os.killpg(p.pid, signal.SIGKILL)
        failed = [(c, errs[i]) for i, c in enumerate(children) if c.returncode != 0]
        if failed:
            msgs = []
            for c, e in failed:
                tail = e.read_text(errors="replace").strip().splitlines()[-8:]
                msgs.append(f"{c.name} exited {c.returncode}: " + " | ".join(tail))
            raise StepError(f"{label} failed: " + "; ".join(msgs))
        text = out_path.read_text(errors="replace") if capture and out_path else ""
        for e in errs:
            e.unlink(missing_ok=True)
        if capture and out_path:
            out_path.unlink(missing_ok=True)
        infos = list(sampler.procs.values())
        return Run(label, wall, children, infos, sampler.tree_peak_kb, cpu1 - cpu0, busy1 - busy0, steal1 - steal0, text)
