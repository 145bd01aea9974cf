"""Disposable PostgreSQL servers for restore drills: private, local-only, always removed.

A :class:`ScratchServer` lives in a temporary directory: its Unix socket there (mode 0700 dir),
``listen_addresses = ''`` (no TCP), ``trust`` for local connections only, archiving off.  Nothing
outside the directory can reach it and it can reach nothing.  PostgreSQL refuses to run as root;
as root the server runs as ``os_user`` (the ``drill.os_user`` setting, passed in by the caller) and
the directory is handed to it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pgvault import log
from pgvault.errors import ToolError
from pgvault.pg.bindir import BinDir, available_bindirs
from pgvault.pg.conn import ConnInfo
from pgvault.pg.runner import Runner, owner_of
from pgvault.procs import host_tag, process_alive, process_start

# Durability settings stay at their defaults: the restore time a drill measures should be the
# time a real restore takes.
_LOCAL_ONLY = {
    "listen_addresses": "''",
    "archive_mode": "off",
    "logging_collector": "off",
    "lc_messages": "'C'",
}


def _owner_for_root(os_user: str) -> str | None:
    return os_user if os.geteuid() == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PREFIX = "pgvault-drill"
# pgvault-drill.<host>.<pid>.<process start>.<random>: whose it is, so that a drill killed with
# -9 (its `finally` never ran, its server still running) can be recognised and swept.
_DIR_RE = re.compile(rf"^{PREFIX}\.([A-Za-z0-9-]+)\.(\d+)\.(\d+)\.")


def scratch_dir(directory: str | None = None, *, os_user: str) -> Path:
    """A private temporary directory the server's OS user owns, named after this process
    (``os_user`` when running as root, see ``drill.os_user``; else this process's user)."""
    pid = os.getpid()
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}.{host_tag()}.{pid}.{process_start(pid) or 0}.", dir=directory))
    user = _owner_for_root(os_user)
    if user:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            shutil.rmtree(path, ignore_errors=True)
            raise ToolError(f"running as root, but there is no OS user {user!r} to run PostgreSQL",
                            hint="set drill.os_user (PGVAULT_DRILL_OS_USER) to an unprivileged user") from None
        os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(0o700)
    return path


def _postmaster_pid(data_dir: Path) -> int | None:
    """The pid in ``postmaster.pid`` if that process still runs and is a postgres (a pid file
    left by a killed server may name a reused pid: never signal that one)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    if not process_alive(pid, 0):
        return None
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
            return None
    except OSError:
        pass  # no procfs: the pid file is all there is to go by
    return pid


def _stop_stale(runner: Runner, data_dir: Path, bin_dirs: tuple[str, ...]) -> str | None:
    """Stop the postmaster of a dead drill's ``data_dir`` as ``pg_ctl stop -m immediate`` does;
    None when stopped (or not running), else why not."""
    pid = _postmaster_pid(data_dir)
    if pid is None:
        return None
    try:
        major = int((data_dir / "PG_VERSION").read_text().strip())
        owner = owner_of(data_dir)
    except (OSError, ValueError, KeyError):
        major, owner = 0, None
    bindir = next((b for b in available_bindirs(bin_dirs) if b.major == major and b.program("pg_ctl").exists()), None)
    try:
        if bindir is not None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
            runner.using(bindir).run("pg_ctl", ["-D", str(data_dir), "-m", "immediate", "-w", "stop"], env=env,
                                     as_user=owner, timeout=60)
        else:  # no binaries of that major any more: SIGQUIT is what pg_ctl -m immediate sends
            os.kill(pid, signal.SIGQUIT)
    except (OSError, ToolError) as e:
        return f"could not stop its postmaster (pid {pid}): {e}"
    deadline = time.monotonic() + 15
    while _postmaster_pid(data_dir) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if _postmaster_pid(data_dir) == pid:
        return f"its postmaster (pid {pid}) did not stop"
    return None


def sweep_scratch_dirs(runner: Runner, bin_dirs: tuple[str, ...] = (), directory: str | None = None) -> list[str]:
    """Stop and remove the scratch servers of drills on this host whose process is gone.

    A drill killed with -9 (OOM, a node drain's grace period exceeded) runs no cleanup: its
    scratch server keeps running, holding memory, a port and disk.  Each drill first sweeps those
    (pid *and* start time dead: a reused pid does not keep one alive).  A server that cannot be
    stopped is left in place, with a warning saying how to stop it: deleting a running
    server's directory would leave it running with its files gone.  Returns one line per directory."""
    where = Path(directory or tempfile.gettempdir())
    me = host_tag()
    swept: list[str] = []
    try:
        entries = list(os.scandir(where))
    except OSError:
        return swept
    for entry in entries:
        m = _DIR_RE.match(entry.name)
        if not m or m.group(1) != me or not entry.is_dir(follow_symlinks=False):
            continue
        if process_alive(int(m.group(2)), int(m.group(3))):
            continue  # a drill still running (this one, or another in parallel)
        base = Path(entry.path)
        running = _postmaster_pid(base / "data")
        problem = _stop_stale(runner, base / "data", bin_dirs)
        if problem:
            log.get().warning("left %s of a drill that is gone (pid %s) in place: %s; stop it with "
                              "`pg_ctl -D %s stop -m immediate` and remove the directory", base, m.group(2), problem,
                              base / "data")
            continue
        shutil.rmtree(base, ignore_errors=True)
        swept.append(f"scratch directory {base} of drill pid {m.group(2)}"
                     + (f" (its server, pid {running}, stopped)" if running else ""))
    return swept


@dataclass
class ScratchServer:
    bindir: BinDir
    base: Path
    data_dir: Path
    port: int
    owner: str | None
    runner: Runner
    user: str = "postgres"

    @property
    def socket_dir(self) -> Path:
        return self.base

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    @classmethod
    def create(cls, runner: Runner, bindir: BinDir, *, os_user: str, base: Path | None = None,
               environ: Mapping[str, str] | None = None) -> ScratchServer:
        """initdb a new cluster (superuser ``postgres``) and start it; as root, owned by ``os_user``."""
        base = base or scratch_dir(os_user=os_user)
        owner = _owner_for_root(os_user)
        server = cls(bindir, base, base / "data", free_port(), owner, runner)
        try:
            server._run("initdb", ["-D", str(server.data_dir), "-U", server.user, "--auth=trust",
                                   "-E", "UTF8", "--locale=C", "--no-sync"], what="initdb", environ=environ)
            server.configure({})
            server.start(environ=environ)
        except BaseException:
            # The caller gets no server to destroy: a failed initdb, or SIGTERM while pg_ctl
            # started it, must not leave a directory (or a running postmaster) behind.
            server.destroy()
            raise
        return server

    def configure(self, extra: Mapping[str, str]) -> None:
        """Local-only settings (plus ``extra``) in postgresql.auto.conf and a trust-local pg_hba."""
        settings = {**_LOCAL_ONLY, "port": str(self.port), "unix_socket_directories": f"'{self.socket_dir}'",
                    "hba_file": f"'{self.base / 'pg_hba.conf'}'", **extra}
        (self.base / "pg_hba.conf").write_text("local all all trust\n")
        with open(self.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as f:
            f.write("\n# pgvault drill: a disposable, local-only server\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self._chown(self.base / "pg_hba.conf", self.data_dir / "postgresql.auto.conf")

    def _chown(self, *paths: Path) -> None:
        if self.owner and os.geteuid() == 0:
            pw = pwd.getpwnam(self.owner)
            for p in paths:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _run(self, program: str, args: list[str], *, what: str, environ: Mapping[str, str] | None = None,
             timeout: float = 300) -> None:
        env = {k: v for k, v in (environ or os.environ).items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        r = self.runner.using(self.bindir).run(program, args, env=env, as_user=self.owner, cwd=self.base,
                                               timeout=timeout)
        if not r.ok:
            raise ToolError(f"{what} failed for the drill server in {self.data_dir}: {r.detail()}")

    def start(self, *, environ: Mapping[str, str] | None = None, timeout: float = 120) -> None:
        self._run("pg_ctl", ["-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(int(timeout)), "start"],
                  what="pg_ctl start", environ=environ, timeout=timeout + 10)

    def conninfo(self, user: str | None = None) -> ConnInfo:
        return ConnInfo({"host": str(self.socket_dir), "port": str(self.port), "user": user or self.user,
                         "dbname": "postgres"})

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        try:
            self._run("pg_ctl", ["-D", str(self.data_dir), "-m", "immediate", "-w", "stop"], what="pg_ctl stop",
                      timeout=60)
        except ToolError:
            pass
        deadline = time.monotonic() + 10
        while (self.data_dir / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def destroy(self) -> None:
        """Stop it and delete everything it had."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
