"""The one way pgvault runs PostgreSQL's programs (pg_dump, pg_restore, psql, pg_ctl, initdb, ...).

Every verb takes its :class:`Runner` from the :class:`~pgvault.operations.context.Context`, so a
unit test can hand it one whose :meth:`Runner.spawn` returns scripted processes instead.

* Programs get argv lists (never a shell) and connection settings through the environment (see
  :meth:`pgvault.pg.conn.ConnInfo.child_env`): a password is never in argv.
* stderr is drained by a thread into a bounded buffer, so a chatty program can never block on a
  full pipe, and a failure carries the program's own last words, redacted, into its error.
* As root, ``as_user`` runs the program through ``runuser -u USER --`` (PostgreSQL's server
  programs refuse to run as root).
* Killing is the caller's decision for a started :class:`Process` (a stream feeding it turned out
  corrupt, SIGTERM unwinding the main thread: ``except BaseException: proc.kill()``); a program
  run to completion by :meth:`Runner.run` is killed by the runner itself when the wait is
  interrupted or times out.
"""

from __future__ import annotations

import collections
import os
import pwd
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from pgvault.errors import ToolError
from pgvault.log import redact

if TYPE_CHECKING:
    from pgvault.pg.bindir import BinDir

_STDERR_LINES = 40
# Secrets a child may be given in its environment (which need not be this process's): masked in
# its stderr as well as the ones log.redact knows.
_SECRET_VARS = ("PGPASSWORD",)


class Spawned(Protocol):
    """What :class:`Process` needs of a started program (``subprocess.Popen`` or a test's fake)."""

    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None

    def wait(self, timeout: float | None = None) -> int: ...

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...


class Process:
    """A running program with its stderr captured in the background."""

    def __init__(self, name: str, popen: Spawned, secrets: Iterable[str] = ()) -> None:
        self.name = name
        self.popen = popen
        self._secrets = tuple(s for s in secrets if len(s) >= 4)
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._drain = threading.Thread(target=self._read_stderr, name=f"{name}-stderr", daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    @property
    def stdout(self) -> IO[bytes]:
        assert self.popen.stdout is not None
        return self.popen.stdout

    @property
    def stdin(self) -> IO[bytes]:
        assert self.popen.stdin is not None
        return self.popen.stdin

    def stderr_text(self) -> str:
        """The last lines the program wrote to stderr (secrets redacted)."""
        text = redact("\n".join(self._stderr))
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and for stderr to be fully read; return the exit status."""
        rc = self.popen.wait(timeout=timeout)
        self._drain.join(timeout=10)
        return rc

    def check(self, what: str = "") -> None:
        """Wait, and raise :class:`ToolError` with the program's stderr if it failed."""
        rc = self.wait()
        if rc != 0:
            detail = self.stderr_text().strip().splitlines()
            tail = " | ".join(detail[-5:]) if detail else "(no output)"
            raise ToolError(f"{self.name}{' ' + what if what else ''} failed with exit status {rc}: {tail}")

    def kill(self) -> None:
        """Stop the program now (the stream feeding it turned out corrupt, or we are unwinding)."""
        if self.popen.poll() is None:
            self.popen.kill()
        for pipe in (self.popen.stdin, self.popen.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        self.wait()


def kill_all(procs: Iterable[Process]) -> None:
    """Stop every program of a group (one of them failed, or we are unwinding)."""
    for p in procs:
        p.kill()


@dataclass(frozen=True)
class Completed:
    """A program run to completion: its exit status, its stdout, and its stderr's last lines
    (redacted)."""

    name: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def detail(self) -> str:
        """What the program said: its stderr, else its stdout (e.g. pg_ctl's "could not start")."""
        return (self.stderr.strip() or redact(self.stdout).strip())


def owner_of(path: Path) -> str | None:
    """The OS user to run a server program for ``path`` (a data directory) as: its owner when we
    are root (PostgreSQL refuses to run as root), else None (we are the only user we can be)."""
    if os.geteuid() != 0:
        return None
    owner = pwd.getpwuid(path.stat().st_uid).pw_name
    return owner if owner != "root" else None


@dataclass(frozen=True)
class Runner:
    """Starts PostgreSQL programs; one per :class:`~pgvault.operations.context.Context`.

    :meth:`spawn` is the only place a process is created: a test substitutes a subclass whose
    ``spawn`` returns a scripted :class:`Spawned`, and every verb sees it through ``ctx.runner``.
    :meth:`using` binds a bin directory (the version that fits the server), in which a program
    given by name is found."""

    bindir: BinDir | None = None

    def using(self, bindir: BinDir) -> Runner:
        """This runner (a test's fake stays a fake) with programs found in ``bindir``."""
        return replace(self, bindir=bindir)

    def path(self, program: str | Path) -> Path:
        """``program`` in the bound bin directory (a path stays as given; not checked: starting it says)."""
        if isinstance(program, str) and self.bindir is not None:
            return self.bindir.program(program)
        return Path(program)

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None, stdin: int | IO[bytes],
              stdout: int, cwd: Path | None) -> Spawned:
        return subprocess.Popen(list(argv), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                env=None if env is None else dict(env), cwd=cwd, bufsize=0)

    def start(
        self,
        program: str | Path,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        stdin: bool = False,
        stdout: bool = True,
        stdin_from: IO[bytes] | None = None,
        as_user: str | None = None,
        cwd: Path | None = None,
    ) -> Process:
        """Start ``program args`` (``env`` None: this process's environment) with pipes for
        stdout (and stdin when asked, or reading ``stdin_from``, e.g. another program's stdout);
        as root, as ``as_user``."""
        path = self.path(program)
        argv = [str(path), *args]
        if as_user and os.geteuid() == 0:
            argv = ["runuser", "-u", as_user, "--", *argv]
        try:
            popen = self.spawn(
                argv, env=env, cwd=cwd,
                stdin=stdin_from if stdin_from is not None else (subprocess.PIPE if stdin else subprocess.DEVNULL),
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            )
        except OSError as e:
            raise ToolError(f"cannot run {path}: {e.strerror or e}") from None
        secrets = [env[v] for v in _SECRET_VARS if env and env.get(v)]
        return Process(path.name, popen, secrets)

    def run(
        self,
        program: str | Path,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        as_user: str | None = None,
        cwd: Path | None = None,
        timeout: float | None = None,
    ) -> Completed:
        """Run to completion; the caller judges the exit status.  A timeout kills the program
        and raises :class:`ToolError`; an interruption of the wait (SIGTERM, Ctrl-C) kills it
        and is re-raised: no program outlives the call."""
        proc = self.start(program, args, env=env, as_user=as_user, cwd=cwd)
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), name=f"{proc.name}-stdout",
                                  daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as e:
            # Not Process.kill: closing stdout under the reader thread would fail its next read.
            if proc.popen.poll() is None:
                proc.popen.kill()
            proc.wait()
            if isinstance(e, subprocess.TimeoutExpired):
                raise ToolError(f"{proc.name} did not finish within {timeout:g}s (killed)") from None
            raise
        # A program that exits may leave its pipes to a child that inherited them: don't wait
        # for their end forever.
        reader.join(timeout=10)
        return Completed(proc.name, rc, b"".join(out).decode("utf-8", "replace"), proc.stderr_text())

    def output(self, program: str | Path, args: Sequence[str], *, env: Mapping[str, str] | None) -> str:
        """Run to completion and return stdout; raise :class:`ToolError` on failure."""
        proc = self.start(program, args, env=env)
        out = proc.stdout.read()
        proc.check()
        return out.decode("utf-8", "replace")

    def version(self, program: str | Path, env: Mapping[str, str] | None) -> str:
        """``program --version`` output, e.g. 'pg_dump (PostgreSQL) 18.6'."""
        return self.output(program, ["--version"], env=env).strip()
