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
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
if (REPO / "src").is_dir():
    sys.path.insert(0, str(REPO / "src"))

import psycopg  # noqa: E402

from pgvault.pg.bindir import BinDir, bindir_for_server  # noqa: E402
from support.cli import clean_env  # noqa: E402
from support.pgcluster import PgCluster, postgres_tmpdir  # noqa: E402

DB = "benchdb"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
MiB = 1 << 20

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

# Server settings for the benchmark cluster (on top of the test harness's fsync=off etc.).
SERVER_SETTINGS: dict[str, str | int | bool] = {
    "shared_buffers": "256MB",
    "maintenance_work_mem": "256MB",
    "work_mem": "32MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "synchronous_commit": "off",
    "autovacuum": "off",  # no background ANALYZE of freshly restored tables skewing the next timing
    "jit": "off",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class StepError(RuntimeError):
    """A benchmark step failed (a program exited non-zero, or setup broke)."""


# --- /proc sampling ------------------------------------------------------------------------------


def _read_stat(pid: int) -> tuple[str, int, float, float] | None:
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
            st = _read_stat(pid)
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
            st = _read_stat(pid)
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
                st = _read_stat(pid)
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

_LIVE: dict[int, subprocess.Popen[bytes]] = {}  # process groups we started, killed on abort


def _kill_live() -> None:
    for pid, proc in list(_LIVE.items()):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # our own child's group (start_new_session)
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        _LIVE.pop(pid, None)


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


def _postmaster_pid(cluster: PgCluster) -> int:
    return int((cluster.datadir / "postmaster.pid").read_text().splitlines()[0])


def server_cpu(postmaster: int) -> float:
    """CPU seconds used so far by the server: postmaster + reaped backends + live children."""
    st = _read_stat(postmaster)
    if st is None:
        return 0.0
    total = st[2] + st[3]
    for e in os.listdir("/proc"):
        if e.isdigit() and int(e) != postmaster:
            child = _read_stat(int(e))
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
                _LIVE[p.pid] = p
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
                _LIVE.pop(p.pid, None)
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


# --- realistic data ------------------------------------------------------------------------------

WORDS = """
the of and to a in is it you that he was for on are with as I his they be at one have this from or
had by hot word but what some we can out other were all there when up use your how said an each she
which do their time if will way about many then them write would like so these her long make thing
see him two has look more day could go come did number sound no most people my over know water than
call first who may down side been now find any new work part take get place made live where after
back little only round man year came show every good me give our under name very through just form
sentence great think say help low line differ turn cause much mean before move right boy old too same
tell does set three want air well also play small end put home read hand port large spell add even
land here must big high such follow act why ask men change went light kind off need house picture try
us again animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye never last
let thought city tree cross farm hard start might story saw far sea draw left late run don't while
press close night real life few north open seem together next white children begin got walk example
ease paper group always music those both mark often letter until mile river car feet care second book
carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch
color face wood main enough plain girl usual young ready above ever red list though feel talk bird soon
body dog family direct pose leave song measure door product black short numeral class wind question
happen complete ship area half rock order fire south problem piece told knew pass since top whole king
space heard best hour better true during hundred five remember step early hold west ground interest
reach fast verb sing listen six table travel less morning ten simple several vowel toward war lay
against pattern slow center love person money serve appear road map rain rule govern pull cold notice
voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun
field rest correct able pound done beauty drive stood contain front teach week final gave green oh
quick develop ocean warm free minute strong special mind behind clear tail produce fact street inch
multiply nothing course stay wheel full force blue object decide surface deep moon island foot system
busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game
shape equate miss brought heat snow tire bring yes distant fill east paint language among customer
delivery package refund shipping arrived damaged replacement invoice discount warranty quality
""".split()

FIRST = """James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard
Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty Anthony
Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua Michelle Kenneth Carol
Kevin Amanda Brian Dorothy George Melissa Timothy Deborah Ronald Stephanie Edward Rebecca Jason Sharon
Jeffrey Laura Ryan Cynthia Jacob Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen
Brenda Larry Pamela Justin Emma Scott Nicole Brandon Helen Benjamin Samantha Samuel Katherine Sofia
Lukas Mia Noah Hannah Mateo Lucia Yuki Wei Priya Arjun Fatima Omar Olga Ivan Chloe Lea""".split()

LAST = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez
Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez
Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker
Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins
Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly
Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes
Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Muller Schmidt Schneider Fischer
Weber Meyer Wagner Becker Schulz Hoffmann Rossi Russo Ferrari Esposito Bianchi Dubois Moreau Laurent
Tanaka Suzuki Watanabe Chen Wang Zhang Liu Singh Kumar Sharma Ivanov Kowalski Nowak Jensen Hansen""".split()

CITIES = """Springfield Riverside Franklin Greenville Bristol Clinton Fairview Salem Madison Georgetown
Arlington Ashland Burlington Manchester Oxford Clayton Jackson Milton Auburn Dayton Lexington Milford
Winchester Hudson Kingston Dover Newport Marion Oakland Portland Chester Cleveland Lebanon Mount_Vernon
Hamilton Centerville Columbia Troy Lancaster Plymouth Berlin Hamburg Munich Cologne Vienna Zurich Lyon
Paris Madrid Barcelona Milan Rome Amsterdam Rotterdam Brussels Dublin London Leeds Glasgow Toronto
Vancouver Montreal Sydney Melbourne Auckland Osaka Tokyo Seoul Singapore Mumbai Austin Denver Seattle
Boston Chicago Houston Phoenix Atlanta Miami""".replace("_", " ").split()

STREETS = """Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Walnut Sunset Lincoln Jackson Church
River Highland Forest Willow Mill Meadow Ridge Spring Chestnut Franklin Jefferson Adams Madison Cherry
Dogwood Valley Birch Hickory Lakeview Sycamore Poplar Railroad Front Center Broad Water College Prospect
Orchard Harbor Bridge Garden Station King Queen Victoria Albert Market High""".split()
STREET_KINDS = "St Street Ave Avenue Rd Road Blvd Lane Ln Dr Drive Way Ct Court Pl Terrace".split()
DOMAINS = """gmail.com gmail.com gmail.com gmail.com yahoo.com outlook.com hotmail.com icloud.com
proton.me gmx.de web.de aol.com mail.com example.org acme-corp.com globex.net initech.io""".split()
COUNTRIES = "US US US US US US GB GB DE DE FR CA CA AU NL ES IT SE JP IN BR MX PL IE CH AT NZ SG".split()
STATUSES = "delivered delivered delivered delivered shipped shipped processing pending cancelled refunded".split()
PAYMENTS = "card card card card paypal paypal apple_pay google_pay bank_transfer invoice gift_card".split()
CURRENCIES = "USD USD USD USD EUR EUR GBP CAD AUD JPY".split()
KINDS = """page_view page_view page_view page_view page_view product_view product_view search search
add_to_cart add_to_cart remove_from_cart checkout_started checkout_completed login logout signup
wishlist_add review_submitted support_ticket""".split()
CATEGORIES = """Electronics Books Home Kitchen Garden Toys Sports Outdoors Clothing Shoes Jewelry Beauty Health
Grocery Automotive Tools Office Pet_Supplies Music Movies Baby Furniture Lighting Crafts""".replace("_", " ").split()
ADJECTIVES = """Classic Premium Deluxe Compact Portable Wireless Organic Vintage Modern Ergonomic Smart Heavy-Duty
Lightweight Waterproof Handmade Eco-Friendly Professional Essential Ultra Mini Large Small Stainless
Bamboo Leather Cotton Wooden Ceramic Glass Digital Rechargeable""".split()
NOUNS = """Lamp Chair Desk Mug Kettle Blender Headphones Speaker Backpack Jacket Sneakers Watch Wallet Notebook
Pen Charger Cable Mouse Keyboard Monitor Tent Bottle Blanket Pillow Towel Shirt Dress Scarf Candle
Planter Shovel Drill Hammer Puzzle Doll Ball Racket Helmet Camera Tripod Router Brush Shampoo Serum""".split()
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:124.0) Gecko/20100101 Firefox/124.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "Mozilla/5.0 (iPad; CPU OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "okhttp/4.12.0",
    "ShopApp/5.3.1 (iOS 17.4; iPhone15,2)",
]
REFERRERS = """direct direct direct https://www.google.com/ https://www.google.com/ https://www.bing.com/
https://duckduckgo.com/ https://www.facebook.com/ https://t.co/ https://www.instagram.com/
https://news.ycombinator.com/ https://www.reddit.com/ email newsletter""".split()
UTM = "google google facebook instagram newsletter tiktok affiliate bing".split()
CAMPAIGNS = "spring_sale summer_sale black_friday cyber_monday back_to_school holiday_gifts new_arrivals clearance".split()

PHRASES = 100_000  # pool of generated sentences; rows pick 1-3 at random (combinatorial variety)

SCHEMA_SQL = """
CREATE TABLE customers (
    id bigint PRIMARY KEY,
    first_name text NOT NULL,
    last_name text NOT NULL,
    email text NOT NULL,
    phone text,
    street text NOT NULL,
    city text NOT NULL,
    postal_code text NOT NULL,
    country char(2) NOT NULL,
    created_at timestamptz NOT NULL,
    birth_date date,
    loyalty_points integer NOT NULL DEFAULT 0,
    credit_limit numeric(12,2),
    marketing_opt_in boolean NOT NULL DEFAULT false,
    notes text
);
CREATE TABLE products (
    id integer PRIMARY KEY,
    sku text NOT NULL,
    name text NOT NULL,
    category text NOT NULL,
    description text NOT NULL,
    price numeric(10,2) NOT NULL,
    weight_grams integer,
    attributes jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    order_no text NOT NULL,
    status text NOT NULL,
    ordered_at timestamptz NOT NULL,
    shipped_at timestamptz,
    currency char(3) NOT NULL,
    subtotal numeric(12,2) NOT NULL,
    tax numeric(12,2) NOT NULL,
    shipping numeric(8,2) NOT NULL,
    total numeric(12,2) NOT NULL,
    shipping_address text NOT NULL,
    payment_method text NOT NULL,
    coupon_code text,
    note text
);
CREATE TABLE order_items (
    order_id bigint NOT NULL,
    line_no smallint NOT NULL,
    product_id integer NOT NULL,
    quantity integer NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    discount numeric(5,2) NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, line_no)
);
CREATE TABLE events (
    id bigint PRIMARY KEY,
    customer_id bigint,
    occurred_at timestamptz NOT NULL,
    kind text NOT NULL,
    session_id uuid NOT NULL,
    ip inet,
    user_agent text,
    url text NOT NULL,
    payload jsonb NOT NULL,
    message text
);
"""

INDEX_SQL = [
    "CREATE UNIQUE INDEX customers_email_key ON customers (email)",
    "CREATE INDEX customers_name_idx ON customers (last_name, first_name)",
    "CREATE UNIQUE INDEX products_sku_key ON products (sku)",
    "CREATE INDEX products_category_idx ON products (category)",
    "CREATE INDEX orders_customer_idx ON orders (customer_id)",
    "CREATE INDEX orders_ordered_at_idx ON orders (ordered_at)",
    "CREATE INDEX order_items_product_idx ON order_items (product_id)",
    "CREATE INDEX events_customer_time_idx ON events (customer_id, occurred_at)",
    "CREATE INDEX events_kind_time_idx ON events (kind, occurred_at)",
]
FK_SQL = [
    "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id)",
    "ALTER TABLE order_items ADD CONSTRAINT order_items_order_fk FOREIGN KEY (order_id) REFERENCES orders (id)"
    " ON DELETE CASCADE",
    "ALTER TABLE order_items ADD CONSTRAINT order_items_product_fk FOREIGN KEY (product_id) REFERENCES products (id)",
    "ALTER TABLE events ADD CONSTRAINT events_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id)",
]


def _array(words: Sequence[str]) -> str:
    return "ARRAY[" + ",".join("'" + w.replace("'", "''") + "'" for w in words) + "]::text[]"


def _helper_sql() -> str:
    """Helper schema: constant lists as inlinable IMMUTABLE functions, a skewed picker, phrases."""
    lists = {
        "words": WORDS, "first_names": FIRST, "last_names": LAST, "cities": CITIES, "streets": STREETS,
        "street_kinds": STREET_KINDS, "domains": DOMAINS, "countries": COUNTRIES, "statuses": STATUSES,
        "payments": PAYMENTS, "currencies": CURRENCIES, "kinds": KINDS, "categories": CATEGORIES,
        "adjectives": ADJECTIVES, "nouns": NOUNS, "agents": AGENTS, "referrers": REFERRERS, "utm": UTM,
        "campaigns": CAMPAIGNS,
    }
    parts = ["CREATE SCHEMA bench_gen;"]
    for name, values in lists.items():
        parts.append(
            f"CREATE FUNCTION bench_gen.{name}() RETURNS text[] LANGUAGE sql IMMUTABLE AS $f$ SELECT {_array(values)} $f$;"
        )
    # skew > 1 favours the first elements (a Zipf-like head); 1 is uniform
    parts.append(
        "CREATE FUNCTION bench_gen.pick(arr text[], skew float8) RETURNS text LANGUAGE sql VOLATILE AS "
        "$f$ SELECT arr[1 + floor(power(random(), skew) * cardinality(arr))::int] $f$;"
    )
    parts.append("CREATE UNLOGGED TABLE bench_gen.phrases (id integer PRIMARY KEY, txt text NOT NULL);")
    parts.append(
        f"""INSERT INTO bench_gen.phrases
        SELECT s.i, (SELECT string_agg(bench_gen.pick(bench_gen.words(), 2.6), ' ') FROM generate_series(1, s.len))
        FROM (SELECT i, 2 + floor(power(random(), 1.6) * 22)::int AS len FROM generate_series(1, {PHRASES}) i) s;"""
    )
    parts.append("ANALYZE bench_gen.phrases;")
    return "\n".join(parts)


def _p() -> str:
    """A random phrase id expression."""
    return f"1 + floor(random() * {PHRASES})::int"


PRODUCTS_SQL = f"""
INSERT INTO products
SELECT g.id,
       upper(left(g.cat, 3)) || '-' || lpad(g.id::text, 6, '0') || '-' || upper(substr(md5(g.id::text), 1, 4)),
       g.adj || ' ' || g.noun || CASE WHEN random() < 0.4 THEN ' ' || (ARRAY['Pro','Plus','Max','Lite','2','3','XL','S'])[1 + floor(random()*8)::int] ELSE '' END,
       g.cat,
       upper(left(d1.txt, 1)) || substr(d1.txt, 2) || '. ' || upper(left(d2.txt, 1)) || substr(d2.txt, 2) || '. ' || d3.txt || '.',
       round((2 + power(random(), 2) * 500)::numeric, 2),
       CASE WHEN random() < 0.9 THEN 50 + floor(random() * 5000)::int END,
       jsonb_build_object(
           'color', bench_gen.pick(ARRAY['black','white','red','blue','green','grey','silver','navy','beige'], 1.5),
           'material', bench_gen.pick(ARRAY['plastic','steel','aluminium','cotton','wood','glass','leather','bamboo'], 1.3),
           'rating', round((1 + random() * 4)::numeric, 1),
           'reviews', floor(power(random(), 3) * 5000)::int,
           'dimensions_cm', jsonb_build_array(round((random()*80)::numeric, 1), round((random()*60)::numeric, 1), round((random()*40)::numeric, 1)),
           'tags', jsonb_build_array(bench_gen.pick(bench_gen.words(), 2.0), bench_gen.pick(bench_gen.words(), 2.0))),
       timestamptz '2019-01-01' + random() * interval '1800 days'
FROM (SELECT id, bench_gen.pick(bench_gen.categories(), 1.4) AS cat, bench_gen.pick(bench_gen.adjectives(), 1.2) AS adj,
             bench_gen.pick(bench_gen.nouns(), 1.2) AS noun, {_p()} AS p1, {_p()} AS p2, {_p()} AS p3
      FROM generate_series(1, %(n)s) id) g
JOIN bench_gen.phrases d1 ON d1.id = g.p1
JOIN bench_gen.phrases d2 ON d2.id = g.p2
JOIN bench_gen.phrases d3 ON d3.id = g.p3
"""

CUSTOMERS_SQL = f"""
INSERT INTO customers
SELECT g.id, g.fn, g.ln,
       lower(g.fn) || CASE WHEN g.r < 0.5 THEN '.' WHEN g.r < 0.7 THEN '_' ELSE '' END || lower(g.ln)
         || g.id::text || '@' || bench_gen.pick(bench_gen.domains(), 1.0),
       CASE WHEN random() < 0.8 THEN '+1 (' || (200 + floor(random()*800))::int || ') ' || (200 + floor(random()*800))::int
            || '-' || lpad(floor(random()*10000)::int::text, 4, '0') END,
       (1 + floor(power(random(), 2) * 9999))::int || ' ' || bench_gen.pick(bench_gen.streets(), 1.5) || ' '
         || bench_gen.pick(bench_gen.street_kinds(), 1.5) || CASE WHEN random() < 0.2 THEN ' Apt ' || (1 + floor(random()*400))::int ELSE '' END,
       bench_gen.pick(bench_gen.cities(), 1.6),
       lpad(floor(random() * 99999)::int::text, 5, '0'),
       bench_gen.pick(bench_gen.countries(), 1.0),
       date_trunc('second', timestamptz '2016-01-01' + random() * interval '3000 days'),
       CASE WHEN random() < 0.6 THEN date '1950-01-01' + floor(random() * 20000)::int END,
       floor(power(random(), 3) * 20000)::int,
       CASE WHEN random() < 0.5 THEN round((500 + random() * 9500)::numeric, -2) END,
       random() < 0.35,
       CASE WHEN g.r < 0.25 THEN upper(left(n.txt, 1)) || substr(n.txt, 2) || '.' END
FROM (SELECT id, random() AS r, bench_gen.pick(bench_gen.first_names(), 1.6) AS fn,
             bench_gen.pick(bench_gen.last_names(), 1.6) AS ln, {_p()} AS pn
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) id) g
JOIN bench_gen.phrases n ON n.id = g.pn
"""

ORDERS_SQL = f"""
INSERT INTO orders
SELECT g.id, g.cust,
       'ORD-' || to_char(g.ts, 'YYYY') || '-' || lpad(g.id::text, 9, '0'),
       g.status, g.ts,
       CASE WHEN g.status IN ('delivered', 'shipped', 'refunded')
            THEN date_trunc('second', g.ts + (6 + random() * 90) * interval '1 hour') END,
       bench_gen.pick(bench_gen.currencies(), 1.0),
       g.sub, round(g.sub * 0.08, 2), g.ship, g.sub + round(g.sub * 0.08, 2) + g.ship,
       (1 + floor(power(random(), 2) * 9999))::int || ' ' || bench_gen.pick(bench_gen.streets(), 1.5) || ' '
         || bench_gen.pick(bench_gen.street_kinds(), 1.5) || ', ' || bench_gen.pick(bench_gen.cities(), 1.6) || ' '
         || lpad(floor(random() * 99999)::int::text, 5, '0'),
       bench_gen.pick(bench_gen.payments(), 1.0),
       CASE WHEN random() < 0.12 THEN upper(bench_gen.pick(bench_gen.campaigns(), 1.0)) || (5 * (1 + floor(random()*6))::int)::text END,
       CASE WHEN random() < 0.15 THEN upper(left(n.txt, 1)) || substr(n.txt, 2) || '.' END
FROM (SELECT id, 1 + floor(random() * %(customers)s)::bigint AS cust, bench_gen.pick(bench_gen.statuses(), 1.0) AS status,
             date_trunc('second', timestamptz '2020-01-01' + random() * interval '1600 days') AS ts,
             round((5 + power(random(), 2) * 800)::numeric, 2) AS sub,
             (ARRAY[0, 0, 4.99, 5.99, 9.99, 14.95])[1 + floor(random()*6)::int]::numeric AS ship, {_p()} AS pn
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) id) g
JOIN bench_gen.phrases n ON n.id = g.pn
"""

ITEMS_SQL = """
INSERT INTO order_items
SELECT o.id, l, 1 + floor(power(random(), 1.7) * %(products)s)::int,
       1 + floor(power(random(), 4) * 6)::int,
       round((2 + power(random(), 2) * 500)::numeric, 2),
       CASE WHEN random() < 0.2 THEN (ARRAY[5, 10, 15, 20, 25])[1 + floor(random()*5)::int] ELSE 0 END
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) o(id),
     generate_series(1, 1 + abs(hashint8(o.id)) %% 4 + CASE WHEN abs(hashint8(o.id + 7)) %% 5 = 0 THEN 3 ELSE 0 END) l
"""

EVENTS_SQL = f"""
INSERT INTO events
SELECT g.id, g.cust, g.ts, g.kind,
       md5(coalesce(g.cust, g.id)::text || g.ts::date::text)::uuid,
       CASE WHEN random() < 0.95 THEN inet '0.0.0.0' + floor(random() * 4294967295)::bigint END,
       bench_gen.pick(bench_gen.agents(), 1.8),
       CASE g.kind
         WHEN 'search' THEN '/search?q=' || replace(q.txt, ' ', '+')
         WHEN 'page_view' THEN (ARRAY['/', '/deals', '/new', '/account', '/cart', '/help/shipping', '/help/returns'])[1 + floor(random()*7)::int]
         ELSE '/products/' || g.prod || '-' || lower(replace(bench_gen.pick(bench_gen.nouns(), 1.0), ' ', '-'))
       END,
       jsonb_strip_nulls(jsonb_build_object(
           'referrer', bench_gen.pick(bench_gen.referrers(), 1.5),
           'utm', CASE WHEN random() < 0.3 THEN jsonb_build_object('source', bench_gen.pick(bench_gen.utm(), 1.3),
                                                                   'medium', bench_gen.pick(ARRAY['cpc','email','social','display'], 1.2),
                                                                   'campaign', bench_gen.pick(bench_gen.campaigns(), 1.2)) END,
           'duration_ms', floor(power(random(), 2) * 60000)::int,
           'viewport', jsonb_build_object('w', (ARRAY[390, 412, 768, 1280, 1366, 1440, 1920])[1 + floor(random()*7)::int],
                                          'h', (ARRAY[844, 915, 1024, 720, 768, 900, 1080])[1 + floor(random()*7)::int]),
           'product_id', CASE WHEN g.kind LIKE '%%cart%%' OR g.kind LIKE 'product%%' OR g.kind LIKE 'wishlist%%' THEN g.prod END,
           'quantity', CASE WHEN g.kind LIKE '%%cart%%' THEN 1 + floor(power(random(), 3) * 4)::int END,
           'price', CASE WHEN g.kind LIKE '%%cart%%' OR g.kind LIKE 'checkout%%' THEN round((2 + power(random(), 2) * 500)::numeric, 2) END,
           'query', CASE WHEN g.kind = 'search' THEN q.txt END,
           'results', CASE WHEN g.kind = 'search' THEN floor(power(random(), 2) * 400)::int END,
           'rating', CASE WHEN g.kind = 'review_submitted' THEN 1 + floor(random() * 5)::int END,
           'ab', jsonb_build_object('checkout_v2', random() < 0.5, 'reco_model', bench_gen.pick(ARRAY['baseline','als-v3','two-tower-v1'], 1.0)),
           'locale', bench_gen.pick(ARRAY['en-US','en-US','en-US','en-GB','de-DE','fr-FR','es-ES','ja-JP'], 1.0)
       )),
       CASE WHEN g.kind IN ('review_submitted', 'support_ticket') THEN upper(left(m1.txt, 1)) || substr(m1.txt, 2) || '. '
                 || upper(left(m2.txt, 1)) || substr(m2.txt, 2) || '. ' || m3.txt || '.'
            WHEN g.r < 0.35 THEN upper(left(m1.txt, 1)) || substr(m1.txt, 2) || '.' END
FROM (SELECT id, random() AS r,
             CASE WHEN random() < 0.15 THEN NULL ELSE 1 + floor(random() * %(customers)s)::bigint END AS cust,
             timestamptz '2022-01-01' + random() * interval '900 days' AS ts,
             bench_gen.pick(bench_gen.kinds(), 1.0) AS kind,
             1 + floor(power(random(), 1.7) * %(products)s)::int AS prod,
             {_p()} AS pq, {_p()} AS p1, {_p()} AS p2, {_p()} AS p3
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) id) g
JOIN bench_gen.phrases q ON q.id = g.pq
JOIN bench_gen.phrases m1 ON m1.id = g.p1
JOIN bench_gen.phrases m2 ON m2.id = g.p2
JOIN bench_gen.phrases m3 ON m3.id = g.p3
"""

# rows added per batch (one batch is roughly 40 MB of database)
BATCH_CUSTOMERS = 10_000
BATCH_ORDERS = 40_000
BATCH_EVENTS = 100_000
PRODUCTS_PER_GB = 50_000


@contextlib.contextmanager
def _connect(cluster: PgCluster, dbname: str) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(cluster.dsn(dbname), password=cluster.password, autocommit=True)
    try:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET jit = off")
        yield conn
    finally:
        conn.close()


def db_size(cluster: PgCluster, dbname: str = DB) -> int:
    return int(cluster.psql(f"SELECT pg_database_size('{dbname}')"))


def generate(cluster: PgCluster, size_gb: float) -> dict[str, Any]:
    """Create DB with at least ``size_gb`` GiB (pg_database_size) of realistic data."""
    target = int(size_gb * (1 << 30))
    t0 = time.monotonic()
    cluster.psql(f"CREATE DATABASE {DB} TEMPLATE template0")
    n_products = max(2_000, int(PRODUCTS_PER_GB * size_gb))
    with _connect(cluster, DB) as conn:
        conn.execute(SCHEMA_SQL)
        conn.execute(_helper_sql())
        conn.execute(PRODUCTS_SQL, {"n": n_products})
    state = {"customers": 0, "orders": 0, "events": 0}

    def orders_batch(conn: psycopg.Connection[Any], lo: int, hi: int, customers: int) -> None:
        conn.execute(ORDERS_SQL, {"lo": lo, "hi": hi, "customers": customers})
        conn.execute(ITEMS_SQL, {"lo": lo, "hi": hi, "products": n_products})

    def events_batch(conn: psycopg.Connection[Any], lo: int, hi: int, customers: int) -> None:
        conn.execute(EVENTS_SQL, {"lo": lo, "hi": hi, "customers": customers, "products": n_products})

    def one_batch(ca: psycopg.Connection[Any], cb: psycopg.Connection[Any]) -> None:
        c_lo = state["customers"] + 1
        state["customers"] += BATCH_CUSTOMERS
        ca.execute(CUSTOMERS_SQL, {"lo": c_lo, "hi": state["customers"]})
        o_lo, e_lo = state["orders"] + 1, state["events"] + 1
        state["orders"] += BATCH_ORDERS
        state["events"] += BATCH_EVENTS
        errors: list[BaseException] = []

        def ev() -> None:
            try:
                events_batch(cb, e_lo, state["events"], state["customers"])
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        t = threading.Thread(target=ev, name="gen-events", daemon=True)
        t.start()  # two server backends at once: one per core
        orders_batch(ca, o_lo, state["orders"], state["customers"])
        t.join()
        if errors:
            raise errors[0]

    with _connect(cluster, DB) as ca, _connect(cluster, DB) as cb:
        # Load with primary keys only, then build secondary indexes and foreign keys once (as a
        # restore would), then top up with indexes in place until the size is reached.
        batches = 0
        while db_size(cluster) < target * 0.80:
            one_batch(ca, cb)
            batches += 1
            if batches % 5 == 0:
                log(f"  generated {batches} batches, {db_size(cluster) / MiB:.0f} MiB")
        log("  building indexes and foreign keys")
        for stmt in INDEX_SQL:
            ca.execute(stmt)
        for stmt in FK_SQL:
            ca.execute(stmt)
        while db_size(cluster) < target:
            one_batch(ca, cb)
            batches += 1
        ca.execute("DROP SCHEMA bench_gen CASCADE")
        log("  VACUUM (FREEZE, ANALYZE)")
        ca.execute("VACUUM (FREEZE, ANALYZE)")
        ca.execute("CHECKPOINT")
        rows = {
            t: int(ca.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            for t in ("customers", "products", "orders", "order_items", "events")
        }
    size = db_size(cluster)
    return {"db_size_bytes": size, "rows": rows, "batches": batches, "seconds": round(time.monotonic() - t0, 1)}


# --- the benchmark -----------------------------------------------------------------------------


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


def _cpu_of(run: Run, names: Sequence[str]) -> float:
    return sum(p.cpu for p in run.procs if p.name in names)


def _peak_of(run: Run, names: Sequence[str]) -> float:
    return max((p.hwm_kb for p in run.procs if p.name in names), default=0) / 1024


def _python_proc(run: Run) -> ProcInfo | None:
    roots = [p for p in run.procs if p.name.startswith("python")]
    return roots[0] if roots else None


def _repo_bytes(repo: Path, backup_id: str) -> int:
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
        self.runner = Runner(workdir, _postmaster_pid(cluster))
        self.steps: dict[str, Step] = {}
        self.info: dict[str, Any] = {}
        pgdirs = os.environ.get("PGVAULT_PG_BINDIRS", "")
        # The bin dir pgvault itself picks for this server (same function, same search path).
        self.bindir: BinDir = bindir_for_server(cluster.major, tuple(d for d in pgdirs.split(os.pathsep) if d))
        self.pg_env = cluster.client_env()
        self.gz = workdir / "benchdb.sql.gz"
        self.repo = workdir / "repo"
        key = workdir / "age-key.txt"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        recipient = next(
            ln.split(":", 1)[1].strip() for ln in key.read_text().splitlines() if ln.startswith("# public key:")
        )
        self.pgvault_env = clean_env(
            **cluster.env(),
            PGVAULT_REPOSITORY_URL=str(self.repo),
            PGVAULT_CLUSTER=f"pg{cluster.major}",
            PGVAULT_ENCRYPTION_AGE_RECIPIENTS=recipient,
            PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(key),
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
    def pgvault_backup(self, key: str, title: str, extra: list[str], rnd: int) -> None:
        st = self.timed(
            key, title, rnd,
            lambda: self.runner.run(
                key, [[*self.pgvault, "backup", "-d", DB, "--json", *extra]], env=self.pgvault_env, capture=True
            ),
        )
        doc = json.loads(st.runs[-1].stdout)["backup"]
        backup_id = doc["backup_id"]
        st.stored_bytes = _repo_bytes(self.repo, backup_id)
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
        _LIVE[proc.pid] = proc
        n = 0
        assert proc.stdout is not None
        while chunk := proc.stdout.read(MiB):
            n += len(chunk)
        if proc.wait() != 0:
            raise StepError("warm-up pg_dump failed")
        _LIVE.pop(proc.pid, None)
        return n

    def run_all(self) -> None:
        a = self.args
        self.info.update(
            host=platform.node(), cpus=os.cpu_count(), python=platform.python_version(), loadavg_start=_loadavg(),
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
        self.info["loadavg_end"] = _loadavg()


# --- report ------------------------------------------------------------------------------------


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
        for p in [_python_proc(r)]
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
        py = _python_proc(r)
        tool_cpu = _cpu_of(r, tools)
        py_cpu = py.cpu if py else 0.0
        total_cpu = tool_cpu + py_cpu + r.server_cpu
        if py is not None:
            rss = f"py {py.hwm_kb / 1024:.0f}"
            extra = _peak_of(r, ("pg_dump", "pg_restore"))
            if extra:
                rss += f" / tool {extra:.0f}"
        else:
            rss = f"tool {_peak_of(r, ('pg_dump', 'psql', 'gzip')):.0f}"
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
        py = _python_proc(step.best)
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
        _kill_live()
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
