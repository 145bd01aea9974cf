"""One runner for PostgreSQL's client and server programs.

Programs get argv lists (never a shell), connection settings through the environment (see
:meth:`pgvault.pg.conn.ConnInfo.child_env`), and their stderr is drained by a thread into a bounded
buffer so a chatty program can never block on a full pipe, and so a failure carries the program's
own words into the :class:`~pgvault.errors.ToolError`.
"""

from __future__ import annotations

import collections
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pgvault.errors import ToolError
from pgvault.log import redact

_STDERR_LINES = 40


class Process:
    """A running program with its stderr captured in the background."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.popen = popen
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
        return redact("\n".join(self._stderr))

    def wait(self) -> int:
        """Wait for exit and for stderr to be fully read; return the exit status."""
        rc = self.popen.wait()
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
        """Stop the program now (used when the stream feeding it turned out to be corrupt)."""
        if self.popen.poll() is None:
            self.popen.kill()
        for pipe in (self.popen.stdin, self.popen.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        self.wait()


@dataclass(frozen=True)
class ToolRunner:
    """Starts PostgreSQL programs from one bin directory. Unit tests substitute a fake."""

    bindir: Path

    def path(self, program: str) -> str:
        """Full path of ``program`` in this bin directory."""
        return str(self.bindir / program)

    def start(
        self,
        program: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: bool = False,
        stdout: bool = True,
        stdin_from: IO[bytes] | None = None,
    ) -> Process:
        """Start ``program args`` with pipes for stdout (and stdin when asked, or reading
        ``stdin_from``, e.g. another program's stdout)."""
        argv = [self.path(program), *args]
        try:
            popen = subprocess.Popen(
                argv,
                stdin=stdin_from if stdin_from is not None else (subprocess.PIPE if stdin else subprocess.DEVNULL),
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=dict(env),
                bufsize=0,
            )
        except OSError as e:
            raise ToolError(f"cannot run {argv[0]}: {e.strerror or e}") from None
        return Process(program, popen)

    def run(self, program: str, args: Sequence[str], *, env: Mapping[str, str]) -> str:
        """Run to completion and return stdout; raise :class:`ToolError` on failure."""
        proc = self.start(program, args, env=env)
        out = proc.stdout.read()
        proc.check()
        return out.decode("utf-8", "replace")

    def version(self, program: str, env: Mapping[str, str]) -> str:
        """``program --version`` output, e.g. 'pg_dump (PostgreSQL) 18.6'."""
        return self.run(program, ["--version"], env=env).strip()
