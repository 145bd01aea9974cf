"""A throwaway real PostgreSQL server for tests.

``PgCluster.create(15, base_dir)`` runs that major's ``initdb`` into ``base_dir/data`` and starts the
server with ``pg_ctl`` on a free port of 127.0.0.1, with its Unix socket in ``base_dir/run`` and its
log in ``base_dir/postgres.log``.  Local (socket) connections are trusted; TCP connections need the
password (scram-sha-256).  PostgreSQL refuses to run as root, so when the tests run as root the
server programs run as the ``postgres`` OS user (``runuser``) and ``base_dir`` is handed to it:
``base_dir``'s parent must be traversable by that user -- :func:`postgres_tmpdir` makes such a dir
(pytest's ``tmp_path`` is not: ``/tmp/pytest-of-root`` is mode 0700).

The cluster owns ``base_dir``: it must be empty or missing, and :meth:`PgCluster.destroy` removes it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from types import TracebackType

from pgvault import sample
from pgvault.config import environment_value
from pgvault.pg.bindir import BinDir, bindir_for_major

#: OS user the server runs as when the tests run as root.
PG_OS_USER = "postgres"
#: Default superuser password.  Deliberately awkward (colon, space, quote) so that code writing it
#: into a conninfo string or a .pgpass file has to escape it properly.  No backslash: JSON would
#: escape it, which would blind "the password does not appear in this output" checks.
DEFAULT_PASSWORD = "pgv:secret pw'42"
#: Settings every test cluster gets (in ``data/pgvault_test.conf``, included from postgresql.conf).
BASE_SETTINGS: dict[str, str | int] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "wal_level": "replica",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "max_connections": 50,
    "shared_buffers": "32MB",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.65535.lock"
_TESTDATA_ENV = "PGVAULT_TESTDATA"


class PgClusterError(RuntimeError):
    """A test cluster could not be created, started, stopped or queried."""


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _as_pg_user(cmd: Sequence[str | os.PathLike[str]]) -> list[str]:
    args = [os.fspath(c) for c in cmd]
    return ["runuser", "-u", PG_OS_USER, "--", *args] if _running_as_root() else args


def _server_env() -> dict[str, str]:
    """The environment for initdb/pg_ctl/postgres: ours minus libpq/PG variables that could leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"  # messages in English, whatever the caller's locale
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


#: Directories made by :func:`postgres_tmpdir` in this process, removed at its exit at the latest.
_MADE_DIRS: list[tuple[int, Path]] = []


def _remove_made_dirs() -> None:
    """Remove what this process's :func:`postgres_tmpdir` made and nobody removed (not in a fork).

    Fixtures remove their directories when they are done; this is the net under the ones that do not
    (a test that made a work dir by hand, a session fixture killed mid-teardown).  Without it every
    run left gigabytes of data directories in /tmp, and a machine that runs the suite often filled
    its disk until the S3 server refused writes."""
    for pid, path in _MADE_DIRS:
        if pid == os.getpid():
            shutil.rmtree(path, ignore_errors=True)
    _MADE_DIRS.clear()


atexit.register(_remove_made_dirs)


def postgres_tmpdir(prefix: str = "pgvault-test-") -> Path:
    """A new temporary directory that the ``postgres`` OS user can traverse (mode 0755).

    Made under ``$PGVAULT_TEST_TMPDIR`` or ``/tmp`` (not ``$TMPDIR``, which may sit under /root);
    removed when this process exits if nothing removed it before.
    """
    parent = os.environ.get("PGVAULT_TEST_TMPDIR") or "/tmp"
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    _MADE_DIRS.append((os.getpid(), path))
    path.chmod(0o755)
    return path


def testdata_dir() -> Path:
    """Third-party sample databases (Pagila, Chinook): ``$PGVAULT_TESTDATA`` if set, else
    ``<repo>/../shared/testdata``.  They cannot be copied into the repository, so a fresh clone has
    none: code that must run there uses :meth:`PgCluster.load_sample` (support/testdata.py skips
    the tests that need these)."""
    env = os.environ.get(_TESTDATA_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "testdata"


def _testdata_file(*parts: str) -> Path:
    path = testdata_dir().joinpath(*parts)
    if not path.is_file():
        raise PgClusterError(
            f"third-party sample data file {path} not found: it comes from ../shared/testdata next to the "
            f"repository (or ${_TESTDATA_ENV}), which a fresh clone does not have; load_sample() needs nothing"
        )
    return path


@lru_cache(maxsize=1)
def _default_locale() -> str:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return "C"
    names = {line.strip().lower() for line in out.splitlines()}
    return "C.UTF-8" if names & {"c.utf8", "c.utf-8"} else "C"


def _quote_conf(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _quote_conninfo(value: str) -> str:
    if value and not any(c in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    """SQL identifier quoting."""
    return '"' + name.replace('"', '""') + '"'


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


_live: weakref.WeakSet[PgCluster] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # safety net: never leave a server behind when the process exits
    for cluster in list(_live):
        try:
            cluster.stop(mode="immediate")
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class PgCluster:
    """A real PostgreSQL server in a temporary directory.  Make one with :meth:`create`."""

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, *, bindir: BinDir, base_dir: Path, port: int, password: str, socket_dir: Path) -> None:
        self.bindir = bindir
        self.major = bindir.major
        self.base_dir = base_dir
        self.datadir = base_dir / "data"
        self.logfile = base_dir / "postgres.log"
        self.socket_dir = socket_dir
        self.port = port
        self.password = password
        self._own_socket_dir = socket_dir.parent != base_dir
        #: postgresql.conf settings written to data/pgvault_test.conf (port and socket dir come on top)
        self.settings: dict[str, str | int | bool] = dict(BASE_SETTINGS)

    def __repr__(self) -> str:
        return f"<PgCluster {self.bindir.version} {self.host}:{self.port} {self.datadir}>"

    # --- creation -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        major: int,
        base_dir: Path,
        *,
        password: str = DEFAULT_PASSWORD,
        port: int | None = None,
        settings: Mapping[str, str | int | bool] | None = None,
        start: bool = True,
        data_checksums: bool = False,
    ) -> PgCluster:
        """initdb a cluster of ``major`` into ``base_dir`` (empty or missing) and start it.

        ``port=None`` picks a free one (and retries with another if it is taken by the time the
        server binds).  ``settings`` are extra postgresql.conf settings.  ``data_checksums=True`` runs
        ``initdb --data-checksums`` (PostgreSQL 18 turns them on by default, earlier majors off; False
        leaves initdb's default, so other tests see the clusters they always had).
        """
        bindir = bindir_for_major(major, environment_value("postgres.bin_dirs"))
        base_dir = Path(base_dir).absolute()
        base_dir.mkdir(parents=True, exist_ok=True)
        if any(base_dir.iterdir()):
            raise PgClusterError(f"{base_dir} is not empty; a PgCluster needs a directory of its own")
        socket_dir = base_dir / "run"
        if len(str(socket_dir)) > _SOCKET_PATH_MAX - len("/.s.PGSQL.65535.lock"):
            socket_dir = postgres_tmpdir("pgvault-sock-") / "run"
        socket_dir.mkdir()
        if _running_as_root():
            for d in (base_dir, socket_dir):
                shutil.chown(d, PG_OS_USER, PG_OS_USER)
            probe = subprocess.run(_as_pg_user(["test", "-w", base_dir]), capture_output=True, check=False)
            if probe.returncode != 0:
                raise PgClusterError(
                    f"the {PG_OS_USER} OS user cannot write {base_dir}: some parent directory is not "
                    "traversable by it (use support.pgcluster.postgres_tmpdir(), not pytest's tmp_path)"
                )

        cluster = cls(bindir=bindir, base_dir=base_dir, port=port or free_port(), password=password,
                      socket_dir=socket_dir)
        cluster._initdb(data_checksums=data_checksums)
        cluster.settings.update(settings or {})
        cluster._write_settings()
        if start:
            attempts = 1 if port else 3
            for attempt in range(attempts):
                try:
                    cluster.start()
                    break
                except PgClusterError:
                    if attempt + 1 == attempts or "could not bind" not in _tail(cluster.logfile):
                        try:  # pg_ctl may give up while the server is still coming up
                            cluster.stop(mode="immediate")
                        except PgClusterError:
                            pass
                        raise
                    cluster.port = free_port()
                    cluster._write_settings()
        return cluster

    def _initdb(self, *, data_checksums: bool = False) -> None:
        pwfile = self.base_dir / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        try:
            if _running_as_root():
                shutil.chown(pwfile, PG_OS_USER, PG_OS_USER)
            cmd: list[str | os.PathLike[str]] = [
                self.bindir.program("initdb"),
                "-D", self.datadir,
                "-U", self.user,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E", "UTF8",
                f"--locale={_default_locale()}",
                "--no-sync",
                "--no-instructions",
                *(["--data-checksums"] if data_checksums else []),
            ]
            self._run_server_cmd(cmd, what="initdb", timeout=180)
        finally:
            pwfile.unlink(missing_ok=True)

    def _write_settings(self) -> None:
        conf = self.datadir / "postgresql.conf"
        include = "include_if_exists = 'pgvault_test.conf'"
        if include not in conf.read_text():
            with conf.open("a") as f:
                f.write(f"\n# pgvault test harness\n{include}\n")
        values = {**self.settings, "port": self.port, "unix_socket_directories": str(self.socket_dir)}
        lines = [f"{k} = {_quote_conf(v)}" for k, v in values.items()]
        (self.datadir / "pgvault_test.conf").write_text("\n".join(lines) + "\n")
        if _running_as_root():
            shutil.chown(self.datadir / "pgvault_test.conf", PG_OS_USER, PG_OS_USER)

    def set_config(self, **settings: str | int | bool) -> None:
        """Add/replace postgresql.conf settings; they take effect on :meth:`restart` (or a reload)."""
        self.settings.update(settings)
        self._write_settings()

    # --- lifecycle ----------------------------------------------------------------------------

    def _run_server_cmd(self, cmd: Sequence[str | os.PathLike[str]], *, what: str, timeout: float = 120,
                        check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            r = subprocess.run(_as_pg_user(cmd), capture_output=True, text=True, env=_server_env(),
                               cwd=self.base_dir, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise PgClusterError(f"{what} timed out after {timeout}s\n--- log tail ---\n{_tail(self.logfile)}") from e
        if check and r.returncode != 0:
            raise PgClusterError(
                f"{what} failed (exit {r.returncode}) for PostgreSQL {self.major} in {self.datadir}\n"
                f"{r.stdout}{r.stderr}\n--- last lines of {self.logfile} ---\n{_tail(self.logfile)}"
            )
        return r

    def is_running(self) -> bool:
        if not (self.datadir / "postmaster.pid").exists():
            return False
        r = self._run_server_cmd([self.bindir.program("pg_ctl"), "-D", self.datadir, "status"],
                                 what="pg_ctl status", check=False)
        return r.returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run_server_cmd(
            [self.bindir.program("pg_ctl"), "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "start"],
            what="pg_ctl start",
        )
        _live.add(self)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate); nothing if it is not running."""
        if not self.is_running():
            _live.discard(self)
            return
        r = self._run_server_cmd(
            [self.bindir.program("pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop"],
            what=f"pg_ctl stop -m {mode}", check=mode == "immediate",
        )
        if r.returncode != 0:  # a fast shutdown that hung: don't leave it running
            self.stop(mode="immediate")
        _live.discard(self)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server and remove ``base_dir`` (and a socket dir made elsewhere)."""
        try:
            self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            if self._own_socket_dir:
                shutil.rmtree(self.socket_dir.parent, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

    # --- connecting -----------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq keyword/value connection string over TCP, without the password (see :meth:`env`)."""
        parts = {"host": self.host, "port": str(self.port), "user": self.user, "dbname": dbname}
        return " ".join(f"{k}={_quote_conninfo(v)}" for k, v in parts.items())

    def env(self) -> dict[str, str]:
        """PG* variables that point a child process (psql, pg_dump, pgvault) at this server over TCP."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGPASSWORD": self.password}

    def client_env(self) -> dict[str, str]:
        """``os.environ`` without any other PG* variables, plus :meth:`env`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(self.env(), PGCONNECT_TIMEOUT="10")
        return env

    def _psql(self, args: Sequence[str | os.PathLike[str]], *, what: str, input: str | None = None,
              timeout: float = 600) -> str:
        cmd = [os.fspath(self.bindir.program("psql")), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
               *[os.fspath(a) for a in args]]
        try:
            r = subprocess.run(cmd, input=input, capture_output=True, text=True, env=self.client_env(),
                               timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise PgClusterError(f"psql timed out after {timeout}s: {what}") from e
        if r.returncode != 0:
            raise PgClusterError(f"psql failed (exit {r.returncode}) on {self!r}: {what}\n{r.stderr.strip()}")
        return r.stdout.strip()

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` (any number of statements, psql meta-commands allowed) and return the
        unaligned, tuples-only output, stripped.  Raises :class:`PgClusterError` with psql's stderr."""
        return self._psql(["-d", dbname, "-f", "-"], what=sql[:200], input=sql)

    def execute_file(self, path: Path | str, dbname: str = "postgres") -> str:
        """Run the SQL script ``path`` with psql (stops at the first error)."""
        return self._psql(["-d", dbname, "-f", path], what=f"file {path}")

    def database_exists(self, name: str) -> bool:
        lit = "'" + name.replace("'", "''") + "'"
        return self.psql(f"SELECT 1 FROM pg_database WHERE datname = {lit}") == "1"

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name``; returns the name."""
        self.psql(f"CREATE DATABASE {quote_ident(name)}")
        return name

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)``."""
        self.psql(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    # --- sample data ----------------------------------------------------------------------------

    def load_sample(self, dbname: str, *, scale: int = sample.DEFAULT_SCALE, seed: int = sample.DEFAULT_SEED,
                    timeout: float = 1800) -> str:
        """Create ``dbname`` (it must not exist) and fill it with pgvault's generated sample database
        (``pgvault.sample``), streamed into psql; returns ``dbname``.  A failed load drops the
        database again, so that a fixture checking "does it exist" never finds a half-made one."""
        self.create_database(dbname)
        cmd = [os.fspath(self.bindir.program("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f", "-"]
        ok = False
        # stderr to a file, not a pipe: a pipe nobody reads while we write stdin could fill and hang.
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                        env=self.client_env())
                assert proc.stdin is not None
                try:
                    for chunk in sample.Sample(scale, seed).script():
                        proc.stdin.write(chunk.encode())
                    proc.stdin.close()
                except BrokenPipeError:  # psql stopped at an error: its stderr says which
                    pass
                finally:
                    try:
                        rc = proc.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        raise PgClusterError(f"loading the sample into {dbname} took over {timeout:.0f}s") from None
                errors.seek(0)
                if rc != 0:
                    raise PgClusterError(f"psql failed (exit {rc}) loading the sample into {dbname} on {self!r}\n"
                                         f"{errors.read().decode(errors='replace').strip()}")
                ok = True
            finally:
                if not ok:
                    self.drop_database(dbname)
        return dbname

    def load_pagila(self, dbname: str) -> str:
        """Load the Pagila sample database into ``dbname`` (created if missing); returns ``dbname``."""
        schema = _testdata_file("pagila", "pagila-schema.sql")
        data = _testdata_file("pagila", "pagila-data.sql")
        if not self.database_exists(dbname):
            self.create_database(dbname)
        self.execute_file(schema, dbname)
        self.execute_file(data, dbname)
        return dbname

    def load_chinook(self) -> str:
        """Load Chinook; its script (re)creates database ``chinook_auto_increment``, whose name is returned."""
        self.execute_file(_testdata_file("chinook", "Chinook_PostgreSql_AutoIncrementPKs.sql"))
        return "chinook_auto_increment"
