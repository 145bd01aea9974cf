"""Disposable PostgreSQL servers for restore drills: private, local-only, always removed.

A :class:`ScratchServer` lives in a temporary directory: its Unix socket there (mode 0700 dir),
``listen_addresses = ''`` (no TCP), ``trust`` for local connections only, archiving off.  Nothing
outside the directory can reach it and it can reach nothing.  PostgreSQL refuses to run as root;
as root the server runs as ``run_as`` (default ``postgres``) and the directory is handed to it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pgvault.errors import ToolError
from pgvault.pg.bindir import BinDir
from pgvault.pg.conn import ConnInfo

DEFAULT_OS_USER = "postgres"
# Durability settings stay at their defaults: the restore time a drill measures should be the
# time a real restore takes.
_LOCAL_ONLY = {
    "listen_addresses": "''",
    "archive_mode": "off",
    "logging_collector": "off",
    "lc_messages": "'C'",
}


def _owner_for_root() -> str | None:
    return (os.environ.get("PGVAULT_DRILL_OS_USER") or DEFAULT_OS_USER) if os.geteuid() == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scratch_dir(prefix: str = "pgvault-drill-") -> Path:
    """A private temporary directory the server's OS user owns."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    user = _owner_for_root()
    if user:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            shutil.rmtree(path, ignore_errors=True)
            raise ToolError(f"running as root, but there is no OS user {user!r} to run PostgreSQL",
                            hint="set PGVAULT_DRILL_OS_USER to an unprivileged user") from None
        os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(0o700)
    return path


def as_owner(cmd: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *cmd] if owner and os.geteuid() == 0 else cmd


@dataclass
class ScratchServer:
    bindir: BinDir
    base: Path
    data_dir: Path
    port: int
    owner: str | None
    user: str = "postgres"

    @property
    def socket_dir(self) -> Path:
        return self.base

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    @classmethod
    def create(cls, bindir: BinDir, *, base: Path | None = None, environ: Mapping[str, str] | None = None) -> "ScratchServer":
        """initdb a new cluster (superuser ``postgres``) and start it."""
        base = base or scratch_dir()
        owner = _owner_for_root()
        server = cls(bindir, base, base / "data", free_port(), owner)
        server._run([str(bindir.program("initdb")), "-D", str(server.data_dir), "-U", server.user, "--auth=trust",
                     "-E", "UTF8", "--locale=C", "--no-sync"], what="initdb", environ=environ)
        server.configure({})
        server.start(environ=environ)
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

    def _run(self, cmd: list[str], *, what: str, environ: Mapping[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in (environ or os.environ).items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        r = subprocess.run(as_owner(cmd, self.owner), capture_output=True, text=True, env=env, cwd=self.base,
                           timeout=timeout, check=False)
        if r.returncode != 0:
            raise ToolError(f"{what} failed for the drill server in {self.data_dir}: {(r.stderr or r.stdout).strip()}")
        return r

    def start(self, *, environ: Mapping[str, str] | None = None, timeout: float = 120) -> None:
        self._run([str(self.bindir.program("pg_ctl")), "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                   "-t", str(int(timeout)), "start"], what="pg_ctl start", environ=environ, timeout=timeout + 10)

    def conninfo(self, user: str | None = None) -> ConnInfo:
        return ConnInfo({"host": str(self.socket_dir), "port": str(self.port), "user": user or self.user,
                         "dbname": "postgres"})

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        try:
            self._run([str(self.bindir.program("pg_ctl")), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                      what="pg_ctl stop", timeout=60)
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
