"""Shared by the benchmarks: what a server-side benchmark (bench/archive.py, bench/physical.py) needs
on top of bench/_procs.py (process sampling, the runner, logging) and bench/_datagen.py (the data
generator); bench/logical.py uses its age key and connection helpers too.

* a ``pgvault`` launcher the ``postgres`` OS user can execute (the server runs archive_command and
  restore_command as that user): the runtime venv under /var/cache/pgvault plus a *copy* of src/
  taken when the benchmark starts, like tests/support/launcher.py builds for the tests;
* pgvault YAML configs and a fresh age key, readable by that user;
* a pgBackRest stanza (config file, repository, spool, log and lock paths of its own);
* WAL archiver helpers: switch the archive_command (a reload), ``pg_stat_archiver``, the number of
  ``.ready`` files, "switch the segment and wait until it is archived".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs  # noqa: E402  (also puts tests/ and src/ on sys.path)
import psycopg  # noqa: E402
import yaml  # noqa: E402
from _procs import StepError, log  # noqa: E402

from support.pgcluster import PG_OS_USER, PgCluster  # noqa: E402

REPO = _procs.REPO
AS_ROOT = os.geteuid() == 0
SEGMENT_NAME_LEN = 24


def as_postgres(cmd: Sequence[str | os.PathLike[str]]) -> list[str]:
    """``cmd`` run as the server's OS user (``runuser``, which keeps the environment) when we are root."""
    args = [os.fspath(c) for c in cmd]
    return ["runuser", "-u", PG_OS_USER, "--", *args] if AS_ROOT else args


def chown_postgres(path: Path) -> None:
    if AS_ROOT:
        shutil.chown(path, PG_OS_USER, PG_OS_USER)


def postgres_dir(path: Path, mode: int = 0o700) -> Path:
    """A new directory owned by the server's OS user (its parents must be traversable by it)."""
    path.mkdir(parents=True, exist_ok=False)
    path.chmod(mode)
    chown_postgres(path)
    return path


def tree_bytes(path: Path) -> int:
    """Sum of the sizes of the regular files under ``path`` (apparent sizes, not blocks)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def run_checked(cmd: Sequence[str], what: str, *, env: Mapping[str, str] | None = None, timeout: float = 600) -> str:
    """Run ``cmd``; its stdout, or StepError with the tail of its stderr."""
    try:
        r = subprocess.run(list(cmd), capture_output=True, text=True, env=dict(env) if env is not None else None,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise StepError(f"{what} timed out after {timeout:.0f}s") from e
    if r.returncode != 0:
        tail = " | ".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-8:])
        raise StepError(f"{what} exited {r.returncode}: {tail}")
    return r.stdout


# --- pgvault as the postgres OS user ---------------------------------------------------------------


def runtime_python() -> Path:
    cache = Path(os.environ.get("PGVAULT_CACHE", "/var/cache/pgvault"))
    python = cache / "runtime-venv" / "bin" / "python"
    if not python.exists():
        raise StepError(f"{python} is missing: run scripts/setup.sh")
    return python


def build_launcher(dest: Path) -> Path:
    """``dest/pgvault``: runs a copy of the current src/ with the runtime venv, executable by anyone.

    ``dest`` must not exist; its parent must be traversable by the postgres OS user.  The copy is
    taken now, so every pgvault invocation of a benchmark (archive_command, basebackup,
    restore-cluster, restore_command) runs the same code even if src/ is edited meanwhile.
    """
    python = runtime_python()
    shutil.copytree(REPO / "src" / "pgvault", dest / "src" / "pgvault", ignore=shutil.ignore_patterns("__pycache__"))
    # As an installed pgvault runs: byte-compiled (pip compiles on install; without it every run
    # compiled each module it imports again, ~30 ms per wal push), and started the way the console
    # script starts it (not ``-m``, whose runpy imports cost ~5 ms per call).
    subprocess.run([str(python), "-m", "compileall", "-q", str(dest / "src")], check=True)
    launcher = dest / "pgvault"
    launcher.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={dest / 'src'} PYTHONDONTWRITEBYTECODE=1 exec {python} -c "
        "'import sys; from pgvault.entry import main; sys.exit(main())' \"$@\"\n"
    )
    dest.chmod(0o755)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    launcher.chmod(0o755)
    return launcher


@dataclass(frozen=True)
class AgeKey:
    identity_file: Path  # owned by the postgres OS user, mode 0600
    recipient: str


def make_age_key(directory: Path) -> AgeKey:
    """A fresh age key pair in ``directory/age-key.txt``, readable by the postgres OS user."""
    key = directory / "age-key.txt"
    run_checked(["age-keygen", "-o", str(key)], "age-keygen")
    recipient = next(ln.split(":", 1)[1].strip() for ln in key.read_text().splitlines() if ln.startswith("# public key:"))
    key.chmod(0o600)
    chown_postgres(key)
    return AgeKey(key, recipient)


def write_pgvault_config(path: Path, settings: Mapping[str, object]) -> Path:
    """A pgvault YAML config from dotted keys (``repository.url``), world-readable (no secrets)."""
    nested: dict[str, Any] = {}
    for dotted, value in settings.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(nested))
    path.chmod(0o644)
    return path


def pgvault_archive_command(launcher: Path, config: Path) -> str:
    return f"PGVAULT_CONFIG={config} {launcher} wal push %p"


# --- pgBackRest ------------------------------------------------------------------------------------


@dataclass
class PgBackRest:
    """One stanza in a directory of its own: config file, repository, spool, log and lock paths.

    Every command gets ``--config`` explicitly (the Debian package's /etc/pgbackrest.conf is never
    read) and runs as the postgres OS user, like the server's archive_command does.
    """

    root: Path  # owned by the postgres OS user
    cipher: str = "none"  # none | aes-256-cbc (passphrase in the config file)
    stanza: str = "bench"
    process_max: int = 2

    @property
    def config(self) -> Path:
        return self.root / "pgbackrest.conf"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    def write_config(self, cluster: PgCluster) -> None:
        for d in ("repo", "spool", "log", "lock"):
            if not (self.root / d).exists():
                postgres_dir(self.root / d, 0o750)
        lines = [
            "[global]",
            f"repo1-path={self.repo}",
            "repo1-retention-full=10",
            f"repo1-cipher-type={self.cipher}",
        ]
        if self.cipher != "none":
            lines.append("repo1-cipher-pass=pgvault-bench-cipher-passphrase-0123456789abcdef")
        lines += [
            f"spool-path={self.spool}",
            f"log-path={self.root / 'log'}",
            f"lock-path={self.root / 'lock'}",
            "log-level-console=warn",
            "log-level-stderr=warn",
            "log-level-file=info",
            f"process-max={self.process_max}",
            "compress-type=zst",
            "archive-async=y",
            "start-fast=y",
            "",
            f"[{self.stanza}]",
            f"pg1-path={cluster.datadir}",
            f"pg1-port={cluster.port}",
            f"pg1-socket-path={cluster.socket_dir}",
            f"pg1-user={cluster.user}",
            "",
        ]
        self.config.write_text("\n".join(lines))
        self.config.chmod(0o640)
        chown_postgres(self.config)

    def argv(self, *args: str) -> list[str]:
        return as_postgres(["pgbackrest", f"--config={self.config}", f"--stanza={self.stanza}", *args])

    def run(self, *args: str, timeout: float = 600) -> str:
        return run_checked(self.argv(*args), f"pgbackrest {' '.join(args)}", env=server_env(), timeout=timeout)

    @property
    def archive_command(self) -> str:
        return f"pgbackrest --config={self.config} --stanza={self.stanza} archive-push %p"

    def settings(self) -> dict[str, Any]:
        return {"process-max": self.process_max, "compress-type": "zst (default level 3)", "archive-async": "y",
                "repo1-cipher-type": self.cipher, "start-fast": "y", "spool-path": str(self.spool),
                "repo1-path": str(self.repo)}


def pgbackrest_version() -> str:
    return run_checked(["pgbackrest", "version"], "pgbackrest version").strip()


def server_env() -> dict[str, str]:
    """Our environment without libpq/pgvault variables (programs that find the server themselves)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}


# --- the WAL archiver ------------------------------------------------------------------------------


def connect(cluster: PgCluster, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.dsn(dbname), password=cluster.password, autocommit=True)


def scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
    """The first column of the first row of ``sql``."""
    row = conn.execute(sql).fetchone()
    if row is None:
        raise StepError(f"no row from {sql}")
    return row[0]


@dataclass(frozen=True)
class ArchiverStats:
    archived: int
    failed: int
    last_archived: str  # "" before the first
    last_failed: str


def archiver_stats(conn: psycopg.Connection[Any]) -> ArchiverStats:
    row = conn.execute(
        "SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') "
        "FROM pg_stat_archiver"
    ).fetchone()
    assert row is not None
    return ArchiverStats(int(row[0]), int(row[1]), str(row[2]), str(row[3]))


def ready_count(cluster: PgCluster) -> int:
    """``.ready`` files in pg_wal/archive_status: segments (and history files) not yet archived."""
    try:
        with os.scandir(cluster.datadir / "pg_wal" / "archive_status") as it:
            return sum(1 for e in it if e.name.endswith(".ready"))
    except FileNotFoundError:
        return 0


def set_archive_command(cluster: PgCluster, command: str) -> None:
    """Switch archive_command (a reload is enough) and give the archiver a moment to re-read it."""
    cluster.set_config(archive_command=command)
    cluster.psql("SELECT pg_reload_conf()")
    time.sleep(1.0)
    got = cluster.psql("SHOW archive_command")
    if got != command:
        raise StepError(f"archive_command did not change after a reload: {got!r}")


def archived_past(stats: ArchiverStats, segment: str) -> bool:
    return stats.last_archived[:SEGMENT_NAME_LEN] >= segment


def switch_and_wait(cluster: PgCluster, timeout: float, *, fail_on_error: bool = True) -> tuple[str, float]:
    """Write a WAL record, close the segment and wait until it and everything before it is archived.

    Returns the segment's name and the seconds waited.  With ``fail_on_error`` a failed
    archive_command raises StepError at once, with the server log's account of it.
    """
    with contextlib.closing(connect(cluster)) as conn:
        before = archiver_stats(conn)
        # A switch on an idle server is a no-op: write a record first so there is a segment to close.
        conn.execute("SELECT pg_logical_emit_message(false, 'pgvault-bench', 'switch')")
        segment = str(scalar(conn, "SELECT pg_walfile_name(pg_switch_wal())"))
        t0 = time.monotonic()
        while True:
            st = archiver_stats(conn)
            if archived_past(st, segment) and ready_count(cluster) == 0:
                return segment, time.monotonic() - t0
            if fail_on_error and st.failed > before.failed:
                raise StepError(f"archive_command failed on {st.last_failed}: {archive_failures(cluster)}")
            if time.monotonic() - t0 > timeout:
                raise StepError(f"segment {segment} not archived within {timeout:.0f}s (last archived "
                                f"{st.last_archived or '-'}, {ready_count(cluster)} .ready): {archive_failures(cluster)}")
            time.sleep(0.1)


def wait_no_ready(cluster: PgCluster, timeout: float) -> None:
    t0 = time.monotonic()
    while ready_count(cluster):
        if time.monotonic() - t0 > timeout:
            raise StepError(f"the archiver did not catch up within {timeout:.0f}s")
        time.sleep(0.2)


def archive_failures(cluster: PgCluster, lines: int = 12) -> str:
    """The server log's last lines about archiving (archive_command's own stderr lands there too)."""
    try:
        text = cluster.logfile.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no server log: {e})"
    keep = [ln for ln in text if "archive" in ln.lower() or "pgvault" in ln.lower() or "error" in ln.lower()]
    return " | ".join((keep or text)[-lines:]) or "(server log is empty)"


def server_log_lines(cluster: PgCluster, needle: str) -> list[str]:
    try:
        return [ln for ln in cluster.logfile.read_text(errors="replace").splitlines() if needle in ln]
    except OSError:
        return []


# --- cleanup ---------------------------------------------------------------------------------------


def mentions(pid: int, marker: str) -> bool:
    """Does process ``pid`` work in, run from or point at ``marker`` (cwd, command line, environment)?"""
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/{pid}/cwd").startswith(marker):
            return True
    for what in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if marker.encode() in Path(f"/proc/{pid}/{what}").read_bytes():
                return True
    return False


def kill_strays(marker: str) -> list[int]:
    """SIGKILL, by pid, the processes that work in or point into ``marker`` (this run's own unique
    temporary directory): a detached archiving helper (pgBackRest's async archive-push, a pgvault
    background pusher) that outlived its server.  Call it after the server stopped."""
    killed = []
    me = os.getpid()
    for e in os.listdir("/proc"):
        if not e.isdigit() or int(e) == me:
            continue
        pid = int(e)
        if mentions(pid, marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def stop_datadir(bindir_pg_ctl: Path, datadir: Path) -> None:
    """Immediate stop of a server started outside PgCluster (restored copies); nothing if not running."""
    if (datadir / "postmaster.pid").exists():
        subprocess.run(as_postgres([bindir_pg_ctl, "-D", datadir, "-m", "immediate", "-w", "-t", "60", "stop"]),
                       capture_output=True, check=False, env=server_env())


__all__ = [
    "AgeKey", "ArchiverStats", "PgBackRest", "StepError", "archive_failures", "archived_past", "archiver_stats",
    "as_postgres", "build_launcher", "chown_postgres", "connect", "kill_strays", "log", "make_age_key", "mentions",
    "pgbackrest_version", "pgvault_archive_command", "postgres_dir", "ready_count", "run_checked", "scalar", "server_env",
    "server_log_lines", "set_archive_command", "stop_datadir", "switch_and_wait", "tree_bytes", "wait_no_ready",
    "write_pgvault_config",
]


def sample_scenario_main(argv: Sequence[str] | None, description: str, prefix: str, wal_help: str,
                         run: Callable[[Any, Path, dict[str, Any]], None],
                         report: Callable[[dict[str, Any]], list[str]], ready: Callable[[dict[str, Any]], bool],
                         **extra: Any) -> int:
    """The command line and the run of a disaster-scenario benchmark on the sample database
    (``recover_table.py``, ``corruption.py``): ``run(args, base, info)`` fills ``info``; printed as
    JSON (``--json``), else as JSON without the bulky keys plus ``report(info)`` when ``ready(info)``.
    Exit 0, 1 if a step failed (named in ``info["error"]``), 130 on Ctrl-C; ``base`` is always removed."""
    import argparse
    import json
    import platform

    from support.pgcluster import postgres_tmpdir

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--major", type=int, default=15)
    p.add_argument("--scale", type=int, default=920, help="sample scale (about 1.1 MB each; 920: about 1 GiB)")
    p.add_argument("--wal-mb", type=int, default=256, help=wal_help)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    base = postgres_tmpdir(prefix)
    info: dict[str, Any] = {"scale": args.scale, "wal_mb": args.wal_mb, "major": args.major,
                            "machine": platform.machine(), "cpus": os.cpu_count(), **extra}
    code = 0
    try:
        run(args, base, info)
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # noqa: BLE001 - a report, not a test: say what failed
        info["error"] = f"{type(e).__name__}: {e}"
        log(f"FAILED: {info['error']}")
        code = 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(json.dumps({k: v for k, v in info.items() if k not in ("steps", "phases")}, indent=2))
        if ready(info):
            print("\n".join(report(info)))
    return code
