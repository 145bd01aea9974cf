"""A real server archiving into a pgvault repository (local or S3), plus helpers to take base
backups and to restore and query restored copies, as an operator would on the database host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.cli import Result, clean_env, pgvault
from support.launcher import postgres_writable_dir, server_config
from support.pgcluster import PG_OS_USER, PgCluster, free_port


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def daemons(data_dir: str, kinds: tuple[str, ...] = ("archive-daemon", "prefetch-daemon")) -> list[int]:
    """The pids of the background pushers / prefetchers (``wal KIND``) serving ``data_dir``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if any(k.encode() in argv for k in kinds) and data_dir.encode() in argv:
            out.append(int(pid))
    return out


def chown_pg(path: Path) -> Path:
    if os.geteuid() == 0:
        shutil.chown(path, PG_OS_USER, PG_OS_USER)
    return path


@dataclass
class Restored:
    """A server restore-cluster started; stopped by :meth:`stop`."""

    data_dir: Path
    port: int
    cluster: PgCluster
    result: dict[str, Any]

    def query(self, sql: str) -> str:
        psql = [str(self.cluster.bindir.program("psql")), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c", sql]
        env = {**self.cluster.client_env(), "PGPASSWORD": self.cluster.password}
        return subprocess.run(psql, env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    def wait_primary(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.query("SELECT pg_is_in_recovery()") != "f":
            assert time.monotonic() < deadline, "restored server did not leave recovery"
            time.sleep(0.2)

    def stop(self) -> None:
        pg_ctl = str(self.cluster.bindir.program("pg_ctl"))
        subprocess.run(as_postgres([pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, check=False)


@dataclass
class ArchivingCluster:
    """``cluster`` runs ``archive_command = pgvault wal push %p`` into ``repo_url``."""

    cluster: PgCluster
    work: Path
    conf: Path
    launcher: Path
    identity_file: Path
    repo_url: str
    secret_env: dict[str, str] = field(default_factory=dict)
    restored: list[Restored] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for pgvault run by the test (repository, identity and server settings)."""
        return clean_env(**self.cluster.env(), **self.secret_env, PGVAULT_CONFIG=str(self.conf),
                         PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(self.identity_file), **extra)

    def run_as_postgres(self, args: list[str], *, check: bool = True, env: Mapping[str, str] | None = None,
                        timeout: float = 600) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(as_postgres([str(self.launcher), *args]), env=dict(env or self.env()),
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"pgvault {' '.join(args)} exited {r.returncode}\n{r.stderr}"
        return r

    def basebackup(self, *args: str) -> dict[str, Any]:
        """``pgvault basebackup --json`` plus ``args`` (e.g. ``--type incr``); the manifest."""
        # On the database host it runs as the database's OS user, like the archiver does.
        r = self.run_as_postgres(["basebackup", "--json", "--archive-timeout", "120", *args])
        return dict(json.loads(r.stdout)["backup"])

    def switch_and_wait(self, timeout: float = 120) -> str:
        """Switch to a new segment and wait until the finished one is archived; returns its name."""
        self.cluster.psql("SELECT pg_current_xact_id()")  # a commit record: an idle segment would not switch
        name = self.cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        self.cluster.psql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while True:
            last, failed = self.cluster.psql("SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver").split("|")
            if last >= name:
                return name
            assert time.monotonic() < deadline, f"{name} not archived; failed_count={failed}"
            time.sleep(0.2)

    def restore(self, *args: str, start: bool = True, check: bool = True, name: str | None = None,
                env: Mapping[str, str] | None = None) -> tuple[Result, Restored]:
        """``pgvault restore-cluster`` into a new directory (run as the test's user, like an operator);
        ``env`` instead of :meth:`env`."""
        data_dir = self.work / (name or f"restored-{len(self.restored) + 1}")
        port = free_port()
        cmd = ["restore-cluster", "-D", str(data_dir), "--json", "--pgvault-command", str(self.launcher),
               "--option", f"unix_socket_directories={self.work}", "--option", "listen_addresses=127.0.0.1",
               "--option", f"port={port}", *args]
        if start:
            cmd += ["--start", "--timeout", "300"]
        r = pgvault(cmd, self.env() if env is None else env, check=check)
        restored = Restored(data_dir, port, self.cluster, r.json() if r.returncode == 0 else {})
        self.restored.append(restored)
        return r, restored

    def close(self) -> None:
        """Stop the restored servers and the archiving one, then remove the work directory
        (repository, restored data directories: up to half a gigabyte per test)."""
        for r in self.restored:
            r.stop()
        self.cluster.stop(mode="immediate")  # its archiver writes into work/repo
        shutil.rmtree(self.work, ignore_errors=True)


def make_archiving_cluster(
    make_pg_cluster: Callable[..., PgCluster], launcher: Path, age_key: Any, *, major: int | None,
    s3: Mapping[str, str] | None = None, settings: Mapping[str, str] | None = None, cluster_name: str = "pitr",
    data_checksums: bool = False, pgvault_settings: Mapping[str, object] | None = None,
) -> ArchivingCluster:
    """``s3``: ``{"url": "s3://bucket/prefix", "endpoint": ..., plus AWS_* credentials}``; else a local repository.
    ``data_checksums``: ``initdb --data-checksums`` (see :meth:`PgCluster.create`).
    ``pgvault_settings``: more pgvault settings for the config file (dotted names), e.g. retention.

    S3 credentials reach the archiver through the server's environment (inherited from ours),
    never through the config file or archive_command."""
    work = postgres_writable_dir("pgvault-pitr-")
    key = work / "age-key.txt"
    shutil.copy(age_key.identity_file, key)
    chown_pg(key)
    key.chmod(0o600)
    conf_settings: dict[str, object] = {
        "cluster": cluster_name, "encryption.age_recipients": [age_key.recipient], "encryption.age_identity_file": str(key),
    }
    secret_env: dict[str, str] = {}
    if s3:
        conf_settings.update({"repository.url": s3["url"], "repository.s3.endpoint_url": s3["endpoint"],
                              "repository.s3.force_path_style": True})
        secret_env = {k: v for k, v in s3.items() if k.startswith("AWS_")}
        repo_url = s3["url"]
    else:
        repo = work / "repo"
        repo.mkdir()
        chown_pg(repo)
        conf_settings["repository.url"] = str(repo)
        repo_url = str(repo)
    conf_settings.update(pgvault_settings or {})
    conf = server_config(work, conf_settings)
    saved = {k: os.environ.get(k) for k in secret_env}
    os.environ.update(secret_env)  # the server (and so archive_command) inherits them
    try:
        cluster = make_pg_cluster(major, settings={
            "archive_mode": "on", "archive_command": f"PGVAULT_CONFIG={conf} {launcher} wal push %p",
            "track_commit_timestamp": "on", **(settings or {}),
        }, data_checksums=data_checksums)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ArchivingCluster(cluster, work, conf, launcher, key, repo_url, secret_env)
